"""Every figure of a sweep written into one folder, named ``<kind>-<group>.<fmt>``.

    from analysis.figures import draw_all
    files = draw_all(table, pairs, medians, "results/sweep/figures", sweep_root="runs/sweep")

The report (:mod:`analysis.report`) finds the figures by their ``<kind>-`` prefix, and the plane
figures' captions and notes in ``planes.json`` beside them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from pipeline.config import write_atomic

from ..config import AnalysisConfig
from ..tables import GROUP
from .common import group_title, save, slug
from .paths import path_figure
from .planes import plane_caption, plane_figure, plane_labels
from .sweep import density2d_figure, double_descent_figure, ecdf_figure, noise_figure, paired_hist_figure, \
    test_loss_figure

__all__ = ["draw_all", "draw_density2d", "draw_planes", "PLANES_JSON"]

PLANES_JSON = "planes.json"  # beside the plane figures: their captions and notes, for the report


def draw_all(table: pd.DataFrame, pairs: pd.DataFrame, medians: pd.DataFrame, out_dir, sweep_root=None,
             config: AnalysisConfig = AnalysisConfig(), planes=None) -> list[Path]:
    """Write every figure of a sweep into ``out_dir``; returns the files written.

    ECDFs per data/architecture/path-set group (double-descent runs excluded), median measures
    vs noise per group with noisy networks, measures vs test loss per path set, double descent
    per dataset and path set, paired-difference histograms per comparison and group,
    ``config.path_plots`` paths of the first trained store that kept its affine maps (needs
    ``sweep_root``, to which the table's ``store`` column is relative), and the planes computed
    by the aggregation (``planes``, a :class:`analysis.plane_runs.PlaneRuns`; None: no plane
    figures).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    main = table[table["setting"] != "double_descent"]
    for k, rows in main.groupby(GROUP, sort=True):
        keys = dict(zip(GROUP, k))
        fig = ecdf_figure(rows, config, title=f"ECDF over paths — {group_title(keys)}")
        written += save(fig, out, slug("ecdf", *k[:4], k[4]), config)
    for k, rows in medians.groupby(GROUP, sort=True):
        keys = dict(zip(GROUP, k))
        fig = noise_figure(rows, title=f"Median measures vs label noise — {group_title(keys)}")
        written += save(fig, out, slug("noise", *k), config)
    for k, rows in table.groupby(["paths", "path_set"], sort=True):
        fig = test_loss_figure(rows, config, title=f"Measures vs test loss — paths {k[0]} (one point per network)")
        written += save(fig, out, slug("test-loss", *k), config)
    dd = table[table["setting"] == "double_descent"]
    for k, rows in dd.groupby(["dataset", "model", "paths", "path_set"], sort=True):
        fig = double_descent_figure(rows, config, title=f"Double descent — {k[0]} · {k[1]} · paths {k[2]}")
        written += save(fig, out, slug("double-descent", *k), config)
    for k, rows in pairs.groupby(["comparison"] + GROUP, sort=True):
        keys = dict(zip(GROUP, k[1:]))
        fig = paired_hist_figure(rows, title=f"Paired differences, {k[0]} — {group_title(keys)}")
        written += save(fig, out, slug("paired", k[0].replace(" ", "_"), *k[1:]), config)
    if config.path_plots and sweep_root is not None:
        written += _draw_paths(table, Path(sweep_root), out, config)
    if planes is not None:
        written += draw_planes(planes, out, config)
    return written


def draw_density2d(per_network: pd.DataFrame, out_dir, config: AnalysisConfig = AnalysisConfig()) -> list[Path]:
    """One :func:`density2d_figure` per data set, architecture and plane set; returns the files
    written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for k, rows in per_network.groupby(["dataset", "model", "width", "planes", "plane_set"], sort=True):
        fig = density2d_figure(rows, title=f"2-D against 1-D density — {k[0]} · {k[1]} (width {k[2]}) · "
                                           f"{k[3]} {k[4]}")
        written += save(fig, out, slug("density2d", *k[:3], k[3].replace("/", "_"), k[4]), config)
    return written


def draw_planes(planes, out_dir, config: AnalysisConfig = AnalysisConfig()) -> list[Path]:
    """One figure per plane of ``planes`` (a :class:`analysis.plane_runs.PlaneRuns`, computed by
    the aggregation), named ``plane-<model>-<run>-<checkpoint>``, and ``planes.json`` (their
    captions, timings and notes); returns the files written. Draws only: no engine runs here."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records, written = [], []
    for run in planes.runs:
        t0 = time.perf_counter()
        p, res = run.plane, run.plane["result"]
        fig = plane_figure(res, images=p["corners"], color=config.plane_color, labels=plane_labels(p),
                           boundary=res.intercept is not None,  # the decision boundary inside the plane
                           title=f"{run.model} · {run.setting}, seed {run.seed} · {run.checkpoint} · run {run.run_id}")
        written += save(fig, out, run.name, config)
        drawn = time.perf_counter() - t0
        caption = (f"{run.model} ({run.setting}, seed {run.seed}, run {run.run_id}, checkpoint {run.checkpoint}): "
                   f"{plane_caption(p)}; {run.total_seconds:.1f} s with loading, {drawn:.1f} s to draw.")
        records.append({"key": run.key, "file": f"{run.name}.png", "model": run.model, "run_id": run.run_id,
                        "regions": int(res.n_regions[0]), "density": float(res.density[0]), "scale": p["scale"],
                        "indices": [int(i) for i in p["indices"]], "seconds": p["seconds"],
                        "total_seconds": run.total_seconds, "reused": run.reused, "caption": caption})
    meta_file = out / PLANES_JSON
    write_atomic(meta_file, json.dumps({"planes": records, "notes": list(planes.notes)}, indent=1))
    return written + [meta_file]


def _draw_paths(table, root: Path, out: Path, config: AnalysisConfig) -> list[Path]:
    from pipeline.store.identity import store_attrs

    trained = table[table["checkpoint"] == config.trained]
    for store in sorted(trained["store"].unique()):
        if not store_attrs(root / store).get("keep_affine", True):
            continue
        rows = trained[trained["store"] == store]
        written = []
        for pid in sorted(rows["path_id"].unique())[:config.path_plots]:
            r = rows[rows["path_id"] == pid].iloc[0]
            title = (f"{r['setting']}{f' p={r.noise:g}' if r['noise'] else ''}, seed {r['seed']}, run {r['run_id']}, "
                     f"path {pid}: {r['density']} regions, deviation {r['deviation']:.3g}")
            fig = path_figure(root / store, int(pid), config.logits, title=title)
            written += save(fig, out, slug("path", r["run_id"], r["checkpoint"], r["path_set"], pid), config)
        return written
    return []
