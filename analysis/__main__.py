"""Aggregate a sweep's discovery stores into tables and figures.

    python -m analysis runs/sweep --out results/sweep

Reads every ``<run>/regions/*.zarr`` below the sweep root with Dask (a local cluster unless
``--scheduler`` names a running one), writes ``paths.parquet``, ``stores.csv``, ``tables/`` and
``figures/`` into ``--out``. Rerunning reads only the stores that changed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path


def main(argv=None, prog: str = "python -m analysis", resolve=None,
         example: str = "python -m analysis sweeps/demo --out results/demo --on-incomplete report") -> int:
    """The command line; ``resolve`` maps the positional argument to the sweep root (the jobs
    command line passes one that also accepts a sweep file)."""
    from .config import ON_INCOMPLETE, AnalysisConfig, AnalysisError

    p = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0], epilog=f"example: {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweep", type=Path, help="sweep root: searched recursively for <run>/regions/*.zarr"
                   + ("; or the sweep's YAML file" if resolve else ""))
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <sweep>/analysis)")
    p.add_argument("--config", type=Path, default=None, help="an AnalysisConfig YAML (fields that differ)")
    p.add_argument("--scheduler", default=None,
                   help="Dask scheduler address (tcp://host:8786), or synchronous|threads; default: a LocalCluster")
    p.add_argument("--workers", type=int, default=None, help="LocalCluster workers (default 1)")
    p.add_argument("--on-incomplete", choices=ON_INCOMPLETE, default=None,
                   help="a store with missing shards: fail (default), skip it, or report and count its complete shards")
    p.add_argument("--no-figures", action="store_true", help="tables only")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("distributed").setLevel(logging.WARNING)  # cluster start/stop chatter

    from pipeline.config import ConfigError, load_config

    from .aggregation import aggregate

    try:
        cfg = load_config(a.config, AnalysisConfig) if a.config else AnalysisConfig()
        root = resolve(a.sweep) if resolve else a.sweep
    except ConfigError as err:
        p.error(str(err))
    if a.workers is not None:
        cfg = replace(cfg, n_workers=a.workers)
    if a.no_figures:
        cfg = replace(cfg, figures=False)
    try:
        written = aggregate(root, a.out, scheduler=a.scheduler, on_incomplete=a.on_incomplete, config=cfg)
    except AnalysisError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"per-path table: {written['paths']}")
    print(f"stores:         {written['stores']}")
    for path in written["tables"]:
        if path.suffix == ".md":
            print(f"table:          {path}")
    print(f"figures:        {len(written['figures'])} files in {Path(written['paths']).parent / 'figures'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
