"""Write a sweep's report: findings in plain words, tables and figures (HTML and Markdown).

    python -m jobs report configs/demo.yaml             # or the sweep folder: sweeps/demo

Reads ``<root>/analysis`` (written by ``python -m jobs aggregate``) and writes
``<root>/report/index.html``, ``report.md``, ``findings.json`` and ``figures/``. An aggregation
that failed, or is older than the stores, is refused (``--allow-stale`` reports it, marked so at
the top of the page).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("jobs.report")


def report(root: Path, out: Path | None = None, title: str | None = None, notes=(), allow_stale: bool = False) -> dict:
    """The report of the sweep in ``root`` (after aggregation); returns the files written.
    Refuses an aggregation that failed or is older than the stores unless ``allow_stale``
    (:func:`analysis.report.write_report`)."""
    from analysis.config import AnalysisConfig
    from analysis.report import write_report
    from pipeline.config import load_config

    cfg_file = root / "analysis" / "analysis_config.yaml"
    cfg = load_config(cfg_file, AnalysisConfig) if cfg_file.exists() else AnalysisConfig()
    return write_report(root / "analysis", out or root / "report", title=title or root.name, config=cfg, notes=notes,
                        sweep_root=root, allow_stale=allow_stale)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jobs report", description=__doc__.splitlines()[0],
        epilog="example: python -m jobs report configs/demo.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweep", type=Path, help="the sweep's YAML file or its root folder")
    p.add_argument("--out", type=Path, default=None, help="report folder (default: <root>/report)")
    p.add_argument("--allow-stale", action="store_true",
                   help="report an aggregation that failed or is older than the stores (the page says so at its top)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from analysis.config import AnalysisError
    from pipeline.config import ConfigError

    from .sweep import sweep_root

    try:
        root, sweep = sweep_root(a.sweep)
        written = report(root, a.out, title=sweep.name if sweep else None, allow_stale=a.allow_stale)
    except (ConfigError, AnalysisError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report: {written['html']}\n        {written['markdown']}")
    return 0
