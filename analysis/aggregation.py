"""Aggregate a sweep: the per-path table (Parquet), summary tables (CSV + Markdown), figures.

    from analysis import aggregate
    written = aggregate("runs/sweep", "results/sweep", on_incomplete="report")

Layout of ``out_dir``::

    paths.parquet          one row per (store, path): labels, measures, run metrics
    planes.parquet         one row per (plane store, plane), when discovery wrote planes
    stores.csv             every store found: status, what was done with it, shards, paths
    tables/spearman.{csv,md}       paper Table 1
    tables/paired.{csv,md}         paper Table 2
    tables/noise_medians.{csv,md}  paper Fig. 5 as numbers
    tables/plane_vs_line.{csv,md}  2-D against 1-D density per network (with plane stores)
    tables/sampling_recall.{csv,md}  sampled_density_N / density per network (with those columns)
    local_complexity.parquet     LC per (store, path), with config.local_complexity
    tables/lc_density.{csv,md}   Spearman of LC against density per network (the same)
    figures/*.{png,pdf}
    analysis_config.yaml   the resolved config
    aggregation.json       the last aggregation's verdict: running, failed (why) or ok, the fingerprint
                           of every store it found, the stores it left out and why (:mod:`analysis.status`)
    cache/                 per-store measures and fingerprints (incremental reruns)
    cache/planes/*.npz     the plane figures' regions, one per run, keyed by its checkpoint's
                           hash and the plane options (:mod:`analysis.plane_runs`)
"""

from __future__ import annotations

import logging
import io
from dataclasses import replace
from pathlib import Path

import pandas as pd

from pipeline.config import save_config, write_atomic

from . import tables
from .collect import collect, uncertified_note
from .config import AnalysisConfig, AnalysisError
from .planes import collect_planes, plane_vs_line
from .status import sweep_fingerprints, write_status

__all__ = ["aggregate", "write_tables", "left_out", "TABLES"]

log = logging.getLogger("analysis.aggregation")

# table name -> (title, number format in Markdown)
TABLES = {
    "spearman": ("Spearman correlation between density and absolute deviation across paths (paper Table 1)", ".3f"),
    "paired": ("Fraction of matched paths on which each measure increases (paper Table 2)", ".3f"),
    "noise_medians": ("Median density and deviation over paths per noise level (paper Fig. 5)", ".4g"),
    "plane_vs_line": ("2-D against 1-D density on the same images, per network (regions per plane and per path)",
                      ".3g"),
    "sampling_recall": ("Regions seen at N equally spaced points per segment over regions found, per network", ".3f"),
    "lc_density": ("Local complexity (Humayun et al. 2024) against the exact density across paths, per network",
                   ".3g"),
}


def write_tables(frames: dict, out_dir, notes=()) -> list[Path]:
    """Write each ``{name: DataFrame}`` as ``<name>.csv`` and ``<name>.md`` (fixed number
    formats, so the files are byte-for-byte reproducible); returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, df in frames.items():
        title, fmt = TABLES.get(name, (name, ".4g"))
        write_atomic(out / f"{name}.csv", tables.format_csv(df))
        write_atomic(out / f"{name}.md", tables.format_markdown(df, fmt, title=title, notes=notes))
        written += [out / f"{name}.csv", out / f"{name}.md"]
    return written


def aggregate(sweep_root, out_dir=None, scheduler=None, on_incomplete=None,
              config: AnalysisConfig = AnalysisConfig()) -> dict:
    """Aggregate every store under ``sweep_root`` into tables and figures in ``out_dir``.

    Parameters
    ----------
    sweep_root : path
        Folder holding the sweep's run folders (searched recursively for
        ``<run>/regions/*.zarr``).
    out_dir : path, optional
        Where results go; default ``<sweep_root>/analysis``. Reruns reuse ``out_dir/cache``:
        stores unchanged since the last call are not read again, and the plane figures' regions
        whose checkpoint and plane options are unchanged are not computed again.
    scheduler : str, optional
        A Dask scheduler address; default ``config.scheduler`` (None: a ``LocalCluster``).
    on_incomplete : {"fail", "skip", "report"}, optional
        Default ``config.on_incomplete`` (``"fail"``); see :class:`AnalysisConfig`.
    config : AnalysisConfig

    Returns
    -------
    dict
        ``{"paths": ..., "stores": ..., "config": ..., "tables": [...], "figures": [...]}``:
        the files written.

    Raises
    ------
    AnalysisError
        No store found, an incomplete store with ``on_incomplete="fail"``, an unlabelled run.
    """
    config = replace(config, **{k: v for k, v in (("scheduler", scheduler), ("on_incomplete", on_incomplete))
                                if v is not None})
    root = Path(sweep_root)
    out = Path(out_dir) if out_dir is not None else root / "analysis"
    if not root.is_dir():  # before anything is written: no output folder for a sweep that is not there
        raise AnalysisError(f"sweep root {root} does not exist or is not a folder")
    found = sweep_fingerprints(root)  # the stores as they are before any is read
    write_status(out, "running", root, found)
    try:
        written, stores = _aggregate(root, out, config)
    except BaseException as err:  # Ctrl-C too: the folder must never look current
        why = str(err) if isinstance(err, AnalysisError) else f"{type(err).__name__}: {err}"
        write_status(out, "failed", root, found, error=why)
        raise
    write_status(out, "ok", root, found, left_out=left_out(stores), on_incomplete=config.on_incomplete)
    return written


def left_out(stores: pd.DataFrame, certificates: bool = True) -> dict:
    """``{store: why}`` of each store found but not (wholly) in the tables: skipped incomplete
    stores, incomplete stores counted from their complete shards and, with ``certificates``,
    networks whose failing certificates left paths out (``stores.csv``'s rows)."""
    out = {}
    for r in stores.itertuples():
        shards = f"{r.complete_shards} of {r.n_shards} shards complete, missing or damaged {r.missing_shards}"
        if r.action == "skipped":
            out[r.store] = f"left out: incomplete ({shards}; on_incomplete skip)"
        elif r.status == "incomplete":
            out[r.store] = f"counted from its complete shards only: incomplete ({shards}; on_incomplete report)"
        if certificates and getattr(r, "uncertified_paths", 0) and r.uncertified_paths > 0:
            what = "planes" if "planes-" in r.store else "paths"
            out[r.store] = ((out[r.store] + "; ") if r.store in out else "") + \
                f"{int(r.uncertified_paths)} {what} left out: their certificate failed"
    return out


def _aggregate(root: Path, out: Path, config: AnalysisConfig):
    """:func:`aggregate` itself; returns the files written and the stores' report."""
    table, stores = collect(root, cache_dir=out / "cache", config=config)  # fails before any table is written
    planes, plane_stores = collect_planes(root, config=config)
    stores = pd.concat([stores, plane_stores], ignore_index=True) if len(plane_stores) else stores
    written = _write_collected(out, table, planes, stores, config)
    notes = _notes(stores)
    pairs = tables.paired_differences(table, config)
    frames = {"spearman": tables.spearman_table(table), "paired": tables.paired_table(pairs),
              "noise_medians": tables.noise_medians(table, config)}
    if len(planes):
        frames["plane_vs_line"] = plane_vs_line(table, planes)
    frames.update(_sampling_frames(table, root, out, config, written, notes))
    written["tables"] = write_tables(frames, out / "tables", notes)
    written["figures"] = []
    if config.figures:
        from .figures import draw_all
        from .plane_runs import plane_runs

        # the planes' regions are computed here (or read from the cache); the figures only draw
        planes_drawn = plane_runs(table, root, out / "cache" / "planes", config) if config.planes else None
        written["figures"] = draw_all(table, pairs, frames["noise_medians"], out / "figures", root, config,
                                      planes=planes_drawn)
        if "plane_vs_line" in frames:
            from .figures import draw_density2d

            written["figures"] += draw_density2d(frames["plane_vs_line"], out / "figures", config)
        if "sampling_recall" in frames:
            from .figures.common import save
            from .figures.sampling import sampling_figure

            fig = sampling_figure(frames["sampling_recall"], frames.get("lc_density"))
            written["figures"] += save(fig, out / "figures", "sampling_recall", config)
    log.info("%d paths of %d stores (%d read, %d cached, %d skipped) -> %s", len(table), len(stores),
             (stores["action"] == "read").sum(), (stores["action"] == "cached").sum(),
             (stores["action"] == "skipped").sum(), out)
    return written, stores


def _sampling_frames(table: pd.DataFrame, root: Path, out: Path, config: AnalysisConfig, written: dict,
                     notes: list) -> dict:
    """The sampled counts' recall (when the table has ``sampled_density_<N>`` columns) and, with
    ``config.local_complexity``, ``local_complexity.parquet`` and LC against density
    (:mod:`analysis.local_complexity`); stores left out are added to ``notes``."""
    from .local_complexity import lc_paths, lc_vs_density, sampling_recall

    frames = {}
    recall = sampling_recall(table)
    if len(recall):
        frames["sampling_recall"] = recall
    lc_file = out / "local_complexity.parquet"
    if not config.local_complexity:
        lc_file.unlink(missing_ok=True)  # from an earlier aggregation with other options: no longer true
        return frames
    lc, lc_notes = lc_paths(table, root, out / "cache" / "local_complexity", config)
    notes.extend(lc_notes)
    written["local_complexity"] = _write_parquet(lc, lc_file)
    frames["lc_density"] = lc_vs_density(table, lc)
    return frames


def _write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    """``frame`` as a Parquet file a reader never sees half of (:func:`pipeline.atomic.write_atomic`)."""
    blob = io.BytesIO()
    frame.to_parquet(blob, index=False)
    return write_atomic(path, blob.getvalue())


def _write_collected(out: Path, table: pd.DataFrame, planes: pd.DataFrame, stores: pd.DataFrame,
                     config: AnalysisConfig) -> dict:
    """``paths.parquet``, ``planes.parquet`` (removed when there are no planes), ``stores.csv``
    and the resolved config; returns them by name."""
    out.mkdir(parents=True, exist_ok=True)
    written = {"paths": out / "paths.parquet", "stores": out / "stores.csv", "config": out / "analysis_config.yaml"}
    _write_parquet(table, written["paths"])
    write_atomic(written["stores"], tables.format_csv(stores))
    if len(planes):
        written["planes"] = _write_parquet(planes, out / "planes.parquet")
    else:
        (out / "planes.parquet").unlink(missing_ok=True)  # from an earlier aggregation: no longer true
    save_config(config, written["config"])
    return written


def _notes(stores: pd.DataFrame) -> list[str]:
    """The notes under every Markdown table: incomplete stores counted or left out, networks
    whose failing certificates left paths out."""
    partial = stores[(stores["status"] == "incomplete") & (stores["action"] != "skipped")]
    skipped = stores[stores["action"] == "skipped"]
    notes = []
    if len(partial):
        notes.append(f"Incomplete stores counted (their complete shards only; rows flagged store_complete=False): "
                     f"{', '.join(partial['store'])}")
    if len(skipped):
        notes.append(f"Incomplete stores left out: {', '.join(skipped['store'])}")
    note = uncertified_note(stores)
    if note:
        notes.append(note)
    return notes
