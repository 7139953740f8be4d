"""Local complexity along each store's paths, beside the exact region count, cached per checkpoint.

    from analysis.local_complexity import lc_paths, lc_vs_density, sampling_recall
    lc, notes = lc_paths(table, "sweeps/demo", "sweeps/demo/analysis/cache/local_complexity")
    lc.to_parquet("sweeps/demo/analysis/local_complexity.parquet")
    lc_vs_density(table, lc)       # Spearman of LC against the exact density, per network
    sampling_recall(table)         # sampled_density_N / density per network and N

The local complexity (LC) of Humayun, Balestriero & Baraniuk, "Deep Networks Always Grok and
Here is Why" (ICML 2024; code github.com/AhmedImtiazPrio/grok-adversarial) is the number of
neurons whose sign changes over a cross-polytope of radius ``lc_radius`` around a point
(:mod:`pipeline.engine.local_complexity`). Here it is evaluated at ``lc_points`` equally spaced
points of every segment of a store's paths (``x0 + (i / N)(x1 - x0)``, ``i = 0..N-1``:
:func:`pipeline.engine.local_complexity.segment_points`) and averaged per path (``lc_mean``), so
that it can be set beside the exact density the store holds for the same path.

For each line store of the per-path table, the run's checkpoint is loaded, its sha256 compared
with the one the store recorded (a changed checkpoint is left out with a note: its LC would
not be the stored network's), the path set rebuilt from the store's attributes
(:func:`pipeline.inputs.paths.bundle_paths`) and the LC computed. Each store's result is kept
in ``<cache_dir>/<lc-run-checkpoint-pathset>.npz`` with its key (the checkpoint's sha256, the
path set, radius, points, directions, seed, :data:`CACHE_SCHEMA`), as :mod:`analysis.plane_runs`
keeps its planes.

Cost: ``points x 2 lc_dirs`` forward rows per segment (float64, CPU): 12.6 s for one store of
160 segments at the defaults (a digits VGG8 of widths 4, 8, one thread), so minutes for the
demo's 40 stores. The aggregation does not call it unless asked (``AnalysisConfig.local_complexity``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.engine.kink_measures import SAMPLE_POINTS

from .config import AnalysisConfig
from .npz_cache import load_arrays, save_arrays
from .figures.common import slug

__all__ = ["CACHE_SCHEMA", "LC_COLUMNS", "SAMPLED_N", "lc_paths", "store_lc", "lc_vs_density", "sampling_recall"]

log = logging.getLogger("analysis.local_complexity")

CACHE_SCHEMA = 1  # bump when what a cached file holds, or how LC is computed, changes
LC_COLUMNS = ["run_id", "model", "checkpoint", "store", "path_id", "lc_mean", "lc_points", "lc_radius", "lc_dirs"]
SAMPLED_N = SAMPLE_POINTS  # the paths table's sampled_density_<N> columns (pipeline.engine.kink_measures)


def store_lc(store, path_ids=None, config: AnalysisConfig = AnalysisConfig(), threads: int | None = 1) -> dict:
    """LC along the paths of one line store: ``{"path_id", "lc_mean", "seconds", "sha256"}``
    (arrays per path, in the path set's order; only ``path_ids`` when given).

    Raises ``ValueError`` when the run's checkpoint is not the one the store was written from.
    """
    import torch

    from pipeline.config import from_dict
    from pipeline.engine.local_complexity import lc_along_segments
    from pipeline.inputs.data import DataConfig, load
    from pipeline.inputs.paths import PathConfig, bundle_paths
    from pipeline.stages.train import load_checkpoint
    from pipeline.store.identity import store_attrs
    from pipeline.store.placement import file_sha256

    store = Path(store)
    attrs = store_attrs(store)
    run_dir = store.parents[1]  # <run>/regions/<store>.zarr
    ckpt_file = run_dir / "checkpoints" / f"{attrs['checkpoint']}.pt"
    sha = file_sha256(ckpt_file)
    if sha != attrs.get("checkpoint_sha256"):
        raise ValueError(f"{ckpt_file} is not the checkpoint {store.name} was written from (sha256 differs): "
                         "its local complexity would not be the stored network's")
    model, ckpt = load_checkpoint(run_dir, attrs["checkpoint"])
    paths = bundle_paths(load(from_dict(DataConfig, ckpt["config"]["data"])), from_dict(PathConfig, attrs["paths"]))
    keep = np.ones(len(paths.path_id), dtype=bool) if path_ids is None else np.isin(paths.path_id, path_ids)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)  # as plane_runs: small ops, one thread is fastest on a shared machine
    try:
        t0 = time.perf_counter()
        lc = lc_along_segments(model, paths.x0[keep], paths.x1[keep], config.lc_points, config.lc_radius,
                               config.lc_dirs, config.lc_seed).numpy()
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)
    pid = paths.path_id[keep]
    ids, inverse = np.unique(pid, return_inverse=True)
    per_segment = lc.mean(1)  # every segment has lc_points points: the path mean is the mean of means
    lc_mean = np.bincount(inverse, per_segment) / np.bincount(inverse)
    return {"path_id": ids, "lc_mean": lc_mean, "seconds": seconds, "sha256": sha}


def _key(store: Path, sha: str, config: AnalysisConfig) -> str:
    from pipeline.store.identity import store_attrs

    return json.dumps({"schema": CACHE_SCHEMA, "sha256": sha, "paths": store_attrs(store).get("paths"),
                       "radius": config.lc_radius, "points": config.lc_points, "dirs": config.lc_dirs,
                       "seed": config.lc_seed}, sort_keys=True, default=str)


def lc_paths(table: pd.DataFrame, root, cache_dir, config: AnalysisConfig = AnalysisConfig()
             ) -> tuple[pd.DataFrame, list[str]]:
    """LC per (line store, path) of the per-path table: a frame with :data:`LC_COLUMNS` and
    notes on the stores left out. Cached per store under ``cache_dir`` (module docstring)."""
    from pipeline.store.placement import file_sha256

    root, cache_dir = Path(root), Path(cache_dir)
    frames, notes, keep = [], [], set()
    for store_rel, rows in table.groupby("store", sort=True):
        store = root / store_rel
        first = rows.iloc[0]
        name = slug("lc", first["run_id"], first["checkpoint"], store.stem)
        file = cache_dir / f"{name}.npz"
        keep.add(file.name)
        ckpt = store.parents[1] / "checkpoints" / f"{first['checkpoint']}.pt"
        if not ckpt.is_file():
            notes.append(f"No local complexity for {store_rel}: its run has no checkpoints/{ckpt.name}.")
            continue
        key = _key(store, file_sha256(ckpt), config)
        got = _load(file, key)
        if got is None:
            try:
                got = store_lc(store, rows["path_id"].to_numpy(), config)
            except ValueError as err:
                notes.append(f"No local complexity for {store_rel}: {err}")
                continue
            _save(file, key, got)
            log.info("local complexity of %s: %d paths in %.1f s", store_rel, len(got["path_id"]), got["seconds"])
        frames.append(pd.DataFrame({"run_id": first["run_id"], "model": first["model"],
                                    "checkpoint": first["checkpoint"], "store": store_rel,
                                    "path_id": np.asarray(got["path_id"], dtype=np.int64),
                                    "lc_mean": np.asarray(got["lc_mean"], dtype=np.float64),
                                    "lc_points": config.lc_points, "lc_radius": config.lc_radius,
                                    "lc_dirs": config.lc_dirs}))
    if cache_dir.is_dir():
        for stale in cache_dir.glob("lc-*.npz*"):
            if stale.name not in keep:
                stale.unlink()
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=LC_COLUMNS)
    return out[LC_COLUMNS], notes


def _save(file: Path, key: str, got: dict) -> None:
    save_arrays(file, key, {"path_id": got["path_id"], "lc_mean": got["lc_mean"], "seconds": got["seconds"]})


def _load(file: Path, key: str) -> dict | None:
    data = load_arrays(file, key, "local complexity cache")
    if data is None:
        return None
    try:
        return {"path_id": data["path_id"], "lc_mean": data["lc_mean"], "seconds": float(data["seconds"])}
    except KeyError as err:  # written by another version: recomputed
        log.warning("local complexity cache %s lacks %s: computing it again", file, err)
        return None


NETWORK = ["run_id", "model", "checkpoint", "store"]


def lc_vs_density(table: pd.DataFrame, lc: pd.DataFrame) -> pd.DataFrame:
    """Per network (store): Spearman correlation across paths of ``lc_mean`` against the exact
    ``density``, with the paths compared (NaN where fewer than 3 paths or a constant column)."""
    both = table[NETWORK + ["path_id", "density"]].merge(lc, on=NETWORK + ["path_id"], how="inner",
                                                         validate="one_to_one")
    rows = []
    for keys, g in both.groupby(NETWORK, sort=True):
        ok = len(g) >= 3 and g["lc_mean"].nunique() > 1 and g["density"].nunique() > 1
        rho = g["lc_mean"].rank().corr(g["density"].rank()) if ok else np.nan
        rows.append({**dict(zip(NETWORK, keys)), "n_paths": len(g), "lc_mean": g["lc_mean"].mean(),
                     "density_mean": g["density"].mean(), "spearman_lc_density": rho})
    return pd.DataFrame(rows, columns=NETWORK + ["n_paths", "lc_mean", "density_mean", "spearman_lc_density"])


def sampling_recall(table: pd.DataFrame, ns=SAMPLED_N) -> pd.DataFrame:
    """How much sampling misses as ``N`` grows: per network and ``N``, the mean over paths of
    ``sampled_density_N / density`` (``recall``; 1 when every region was hit) and its minimum.

    The ``sampled_density_<N>`` columns (regions seen at ``N`` equally spaced points per segment,
    on the density's scale) are the paths table's; the ``N`` whose column is missing are left
    out, and a table with none of them gives an empty frame. A path of density 0 cannot be
    (it has at least one region); one would raise here rather than divide by it."""
    have = [n for n in ns if f"sampled_density_{n}" in table.columns]
    cols = NETWORK + ["n", "recall", "recall_min", "n_paths"]
    if not have:
        return pd.DataFrame(columns=cols)
    if (table["density"] <= 0).any():
        raise ValueError("a path with density <= 0 in the table: the recall of its sampling is undefined")
    rows = []
    for keys, g in table.groupby(NETWORK, sort=True):
        for n in have:
            r = g[f"sampled_density_{n}"] / g["density"]
            rows.append({**dict(zip(NETWORK, keys)), "n": n, "recall": r.mean(), "recall_min": r.min(),
                         "n_paths": len(g)})
    return pd.DataFrame(rows, columns=cols)
