"""2-D against 1-D: a sweep's plane stores as one table, and their density beside the paths'.

    from analysis.planes import collect_planes, plane_vs_line
    planes, stores = collect_planes("sweeps/demo")          # one row per (store, plane)
    per_network = plane_vs_line(paths_table, planes)         # one row per network and checkpoint

Plane stores (``<run>/regions/<checkpoint>-planes-<id>.zarr``, written by discovery when its
config has ``planes``) hold every linear region of each plane through one base image
(``pipeline/inputs/plane_sets.py``); a plane's id is its base image's index in the split, as a circle
path's. So on one network, plane ``i`` and path ``i`` go through the same image, and the two
densities can be compared image by image (Spearman over the shared images) and network by
network (Spearman over the networks' medians). Each shard is read by one Dask task, which
reads its per-plane arrays only, after checking them against the shard's manifest. Plane
tables are small (a row per plane), so they are read afresh on every aggregation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.engine.planes.stats import STATS_COLUMNS
from pipeline.store.planes import PLANE_COLUMNS, plane_stats_table, plane_table
from pipeline.store.identity import StoreError, store_attrs, store_geometry

from .collect import (LABEL_COLUMNS, METRIC_COLUMNS, ON_INCOMPLETE_HINT, compute_checked, find_stores, refusing,
                      run_labels, stores_info, stores_report)
from .config import AnalysisConfig, AnalysisError
from .findings import Finding, group_label
from .tables import spearman

__all__ = ["PLANE_TABLE_COLUMNS", "COMPARE_COLUMNS", "find_plane_stores", "shard_rows", "collect_planes",
           "plane_vs_line", "plane_findings"]

log = logging.getLogger("analysis.planes")

PLANE_TABLE_COLUMNS = (LABEL_COLUMNS + list(PLANE_COLUMNS) + list(STATS_COLUMNS) + METRIC_COLUMNS
                       + ["store", "store_complete"])
NETWORK_KEYS = ["dataset", "model", "width", "setting", "noise", "seed", "checkpoint", "run_id"]
COMPARE_COLUMNS = NETWORK_KEYS + ["paths", "path_set", "planes", "plane_set", "n_images", "density_1d",
                                  "regions_2d", "density_2d_input", "rho_density", "rho_deviation",
                                  "effective_regions_2d", "boundary_length_2d", "boundary_pieces_2d"]


def find_plane_stores(root) -> list[Path]:
    """The plane stores among :func:`analysis.collect.find_stores`."""
    return [s for s in find_stores(root) if store_geometry(store_attrs(s)) == "plane"]


def _plane_labels(run_dir: Path, attrs: dict) -> dict:
    labels = run_labels(run_dir, attrs)
    planes = attrs.get("paths") or {}
    labels["paths"] = f"planes-{planes.get('kind', '?')}/{planes.get('split', '?')}"
    return labels


def shard_rows(store, shard: int) -> pd.DataFrame:
    """One row per plane of a complete shard: :func:`pipeline.store.planes.plane_table`'s columns and
    the partition statistics (:func:`pipeline.store.planes.plane_stats_table`)."""
    rows = plane_table(store, shard)
    stats = plane_stats_table(store, shard)
    if not np.array_equal(rows["plane_id"].to_numpy(), stats["plane_id"].to_numpy()):
        raise StoreError(f"{store} shard {shard}: its planes and its regions disagree on the plane ids")
    return pd.concat([rows, stats.drop(columns="plane_id")], axis=1)


def collect_planes(sweep_root, scheduler=None, on_incomplete: str | None = None,
                   config: AnalysisConfig = AnalysisConfig()):
    """One row per (plane store, plane) under ``sweep_root``, and a row per plane store.

    Returns
    -------
    table : pandas.DataFrame
        ``PLANE_TABLE_COLUMNS``: the network's labels (``paths`` is ``planes-<kind>/<split>``,
        ``path_set`` the plane set's id), :data:`pipeline.store.planes.PLANE_COLUMNS`, the partition
        statistics :data:`pipeline.engine.planes.stats.STATS_COLUMNS` (NaN where the store kept no
        affine maps or, in input units, no Gram matrix), the run's metrics, the store and whether it
        is complete. Empty when the sweep has no plane store.
    stores : pandas.DataFrame
        As :func:`analysis.collect.collect`'s, for the plane stores (``n_paths``: planes).

    Raises
    ------
    AnalysisError
        An incomplete plane store with ``on_incomplete="fail"``, or a damaged shard.
    """
    root = Path(sweep_root)
    scheduler = config.scheduler if scheduler is None else scheduler
    on_incomplete = on_incomplete or config.on_incomplete
    info = stores_info(root, find_plane_stores(root), _plane_labels)
    incomplete = [k for k, v in info.items() if v["status"]["missing"]]
    if incomplete and on_incomplete == "fail":
        lines = "\n".join(f"  {k}: shards {info[k]['status']['missing']} of {info[k]['status']['n_shards']} missing"
                          for k in incomplete)
        raise AnalysisError(f"{len(incomplete)} incomplete plane store(s) under {root}:\n{lines}\nresume their "
                            f"discovery jobs, or {ON_INCOMPLETE_HINT}")
    use = [k for k in info if not (k in incomplete and on_incomplete == "skip")]

    from dask import delayed

    tasks = {k: [delayed(refusing, pure=True)(shard_rows, str(info[k]["path"]), i)
                 for i in info[k]["status"]["complete"]] for k in use}
    computed = compute_checked({k: delayed(list)(v) for k, v in tasks.items()}, scheduler, config, root,
                               "plane store")
    frames = []
    for k in use:
        parts = [p for p in computed[k] if len(p)]
        if parts:
            frames.append(pd.concat(parts, ignore_index=True).assign(
                store=k, store_complete=k not in incomplete, **info[k]["labels"]))
    table = (pd.concat(frames, ignore_index=True)[PLANE_TABLE_COLUMNS] if frames
             else pd.DataFrame(columns=PLANE_TABLE_COLUMNS))
    # a plane whose certificate failed (stored with on_certificate: warn) is left out, counted
    bad = (table["continuity_gap"] > table["gap_tol"]).to_numpy() if len(table) else np.zeros(0, dtype=bool)
    left_out = table.loc[bad, "store"].value_counts()
    for k, n in left_out.items():
        log.warning("%s: %d plane(s) left out of the tables: their certificate failed", k, n)
    table = table[~bad]
    table = table.sort_values(["run_id", "checkpoint", "path_set", "plane_id"], kind="mergesort").reset_index(drop=True)
    return table, stores_report(info, incomplete, use, table["store"].value_counts(), left_out=left_out)


def plane_vs_line(paths: pd.DataFrame, planes: pd.DataFrame) -> pd.DataFrame:
    """One row per network, checkpoint, path set and plane set: the images both go through.

    Paths of kind ``circle`` or ``shift`` (whose id is the base image's index) are matched to
    planes with the same id and split. Columns (``COMPARE_COLUMNS``): ``n_images`` matched;
    ``density_1d`` the median over those images of the path's density (regions along it),
    ``regions_2d`` the median of the plane's region count, ``density_2d_input`` the median
    regions per unit input-space area; ``rho_density`` Spearman over the images between the
    path's density and the plane's region count, ``rho_deviation`` between the two absolute
    deviations (NaN with fewer than 3 images); ``effective_regions_2d``, ``boundary_length_2d``
    (input units) and ``boundary_pieces_2d`` the medians over the planes of their partition
    statistics (``docs/design.md``, "Plane partition statistics"; NaN where not stored).
    """
    if planes.empty or paths.empty:
        return pd.DataFrame(columns=COMPARE_COLUMNS)
    kind = paths["paths"].str.split("/").str[0]
    lines = paths[kind.isin(["circle", "shift"])].assign(split=lambda d: d["paths"].str.split("/").str[1])
    pl = planes.assign(split=planes["paths"].str.split("/").str[1])
    merged = lines.merge(pl, left_on=["run_id", "checkpoint", "split", "path_id"],
                         right_on=["run_id", "checkpoint", "split", "plane_id"], suffixes=("", "_2d"))
    rows = []
    for k, g in merged.groupby(NETWORK_KEYS + ["paths", "path_set", "paths_2d", "path_set_2d"], sort=True,
                               dropna=False):
        n = len(g)
        rows.append({**dict(zip(NETWORK_KEYS + ["paths", "path_set", "planes", "plane_set"], k)), "n_images": n,
                     "density_1d": float(g["density"].median()), "regions_2d": float(g["n_regions"].median()),
                     "density_2d_input": float(g["density_input"].median()),
                     "rho_density": spearman(g["density"], g["n_regions"]) if n >= 3 else np.nan,
                     "rho_deviation": spearman(g["deviation"], g["deviation_2d"]) if n >= 3 else np.nan,
                     **{f"{c}_2d": _median(g, c) for c in ("effective_regions", "boundary_pieces")},
                     "boundary_length_2d": _median(g, "boundary_length_input")})
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


def _median(g: pd.DataFrame, column: str) -> float:
    return float(g[column].median()) if column in g and g[column].notna().any() else np.nan


def plane_findings(per_network: pd.DataFrame) -> list[Finding]:
    """Sentences on whether 2-D and 1-D density agree, per architecture and checkpoint: image by
    image (the median over networks of ``rho_density``) and network by network (Spearman over
    the networks between their medians)."""
    from .findings import strength

    out = []
    if per_network.empty:
        return out
    keys = ["dataset", "model", "width", "paths", "path_set", "checkpoint", "planes", "plane_set"]
    for k, g in per_network.groupby(keys, sort=True):
        label = group_label(dict(zip(keys, k)))
        images = float(g["rho_density"].median())
        across = spearman(g["density_1d"], g["regions_2d"]) if len(g) >= 3 else np.nan
        text = (f"{label}: at checkpoint {k[5]}, regions per plane ({k[6].removeprefix('planes-')} planes) and "
                f"regions per path through the same {int(g['n_images'].median())} images show {strength(images)} "
                f"rank correlation image by image (median Spearman {images:.2f} over {len(g)} "
                f"network{'s' if len(g) > 1 else ''})")
        if not np.isnan(across):
            text += f", and {strength(across)} one network by network (Spearman {across:.2f} between their medians)"
        eff = float(g["effective_regions_2d"].median()) if "effective_regions_2d" in g else np.nan
        if not np.isnan(eff):
            regions = float(g["regions_2d"].median())
            text += (f". By area, a plane's {regions:.0f} regions count as {eff:.1f} (the median effective number, "
                     "exp(entropy) of the area shares" + (": a few large regions hold most of the plane)"
                                                          if eff < 0.5 * regions else ")"))
        pieces = float(g["boundary_pieces_2d"].median()) if "boundary_pieces_2d" in g else np.nan
        if pieces == 0:
            text += "; on the median plane no decision boundary crosses it (one class throughout)"
        elif not np.isnan(pieces):
            length = float(g["boundary_length_2d"].median())
            text += (f"; the decision boundary inside a plane runs in {pieces:.0f} piece{'s' if pieces != 1 else ''}"
                     + (f" of total input-space length {length:.3g}" if not np.isnan(length) else "") + " (medians)")
        out.append(Finding("planes", label, text + ".", {"checkpoint": k[5], "planes": k[6], "plane_set": k[7],
                                                         "rho_images_median": images, "rho_networks": across,
                                                         "networks": len(g), "effective_regions_median": eff,
                                                         "boundary_pieces_median": pieces}))
    return out
