"""The report's planes: a few trained runs per architecture through the plane engine, cached.

    from analysis.plane_runs import plane_runs
    planes = plane_runs(table, "sweeps/demo", "sweeps/demo/analysis/cache/planes")
    planes.runs[0].plane["result"].n_regions, planes.notes

The aggregation (:func:`analysis.aggregation.aggregate`) calls this before drawing, and
:func:`analysis.figures.draw_planes` only draws what it returns. Per architecture it picks up to
``config.planes`` runs with a ``trained`` checkpoint (vanilla first, then the other settings;
lowest seed first) and finds every linear region on the plane through three of the run's
training images (:func:`pipeline.stages.plane_run.run_plane`: a few seconds to a minute each).

Each run's plane is kept in ``<cache_dir>/<plane-model-run-checkpoint>.npz`` with its key: the
checkpoint file's sha256, the checkpoint's name, ``plane_scale``, ``plane_seed``, the split, the
domain and :data:`CACHE_SCHEMA`. A rerun whose key is unchanged loads the file instead of
running the engine; a changed key (a retrained or resumed checkpoint, other plane options) or
an unreadable file computes it again; files of runs no longer chosen are removed. Drawing
options (``plane_color``, ``formats``) are not in the key: they change the figure, not the
regions.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from .config import AnalysisConfig
from .npz_cache import load_arrays, save_arrays
from .figures.common import slug

__all__ = ["PlaneRun", "PlaneRuns", "choose_runs", "plane_runs", "CACHE_SCHEMA"]

log = logging.getLogger("analysis.plane_runs")

CACHE_SCHEMA = 1  # bump when what a cached plane holds, or how the engine finds it, changes
SPLIT, DOMAIN = "train", "triangle"  # the report's planes: a triangle through three training images


@dataclass(frozen=True)
class PlaneRun:
    """One run's plane for the report.

    ``plane`` holds the keys of :func:`pipeline.stages.plane_run.run_plane`'s result that a
    figure and its caption need (``result``, ``corners``, ``indices``, ``labels``,
    ``predicted``, ``seconds``, ``scale``, ``domain``, ``split``); ``total_seconds`` is the
    computation with loading the checkpoint and data; ``reused``: read from the cache.
    """

    model: str
    run_id: str
    setting: str  # with the noise level: "noisy p=0.2"
    seed: int
    checkpoint: str
    plane: dict
    total_seconds: float
    key: str
    reused: bool = False

    @property
    def name(self) -> str:
        """The figure's and the cache file's name: ``plane-<model>-<run>-<checkpoint>``."""
        return slug("plane", self.model, self.run_id, self.checkpoint)


@dataclass(frozen=True)
class PlaneRuns:
    """The planes to draw, and notes on the architectures with fewer runs to draw than asked."""

    runs: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def choose_runs(table: pd.DataFrame, root: Path, config: AnalysisConfig = AnalysisConfig()) -> tuple[dict, list]:
    """Per architecture, up to ``config.planes`` ``(run folder, table row)`` with a ``trained``
    checkpoint (vanilla first, then the other settings; lowest seed first), and notes on the
    missing."""
    trained = table[table["checkpoint"] == config.trained]
    chosen, notes = {}, []
    if not config.planes:
        return chosen, notes
    for model, rows in trained.groupby("model", sort=True):
        runs = rows.drop_duplicates("run_id").assign(_v=lambda d: d["setting"] != "vanilla")
        runs = runs.sort_values(["_v", "setting", "noise", "seed", "run_id"])
        found, missing = [], 0
        for r in runs.itertuples():
            run_dir = (root / r.store).parents[1]  # <run>/regions/<store>.zarr
            if (run_dir / "checkpoints" / f"{config.trained}.pt").is_file():
                found.append((run_dir, r))
            else:
                missing += 1
            if len(found) == config.planes:
                break
        if found:
            chosen[model] = found
        if len(found) < config.planes:
            notes.append(f"No plane figure for {model}" + (f" beyond {len(found)}" if found else "") +
                         f": {missing} of its runs have no checkpoints/{config.trained}.pt (the sweep's stores "
                         "were written without training checkpoints).")
    return chosen, notes


def plane_runs(table: pd.DataFrame, root, cache_dir, config: AnalysisConfig = AnalysisConfig()) -> PlaneRuns:
    """The plane of each run :func:`choose_runs` picks, from ``cache_dir`` when its key is
    unchanged, else computed (and cached)."""
    root, cache_dir = Path(root), Path(cache_dir)
    chosen, notes = choose_runs(table, root, config)
    runs = [_plane_run(model, run_dir, r, cache_dir, config) for model, found in chosen.items()
            for run_dir, r in found]
    if cache_dir.is_dir():
        keep = {f"{run.name}.npz" for run in runs}
        for stale in cache_dir.glob("*.npz*"):  # runs no longer chosen, temporaries of an interrupted write
            if stale.name not in keep:
                stale.unlink()
    return PlaneRuns(runs, notes)


def _key(checkpoint_file: Path, config: AnalysisConfig) -> str:
    from pipeline.store.placement import file_sha256

    return json.dumps({"schema": CACHE_SCHEMA, "checkpoint": config.trained, "sha256": file_sha256(checkpoint_file),
                       "scale": config.plane_scale, "seed": config.plane_seed, "split": SPLIT, "domain": DOMAIN},
                      sort_keys=True)


def _plane_run(model: str, run_dir: Path, r, cache_dir: Path, config: AnalysisConfig) -> PlaneRun:
    key = _key(run_dir / "checkpoints" / f"{config.trained}.pt", config)
    setting = f"{r.setting}{f' p={r.noise:g}' if r.noise else ''}"
    run = PlaneRun(model, r.run_id, setting, int(r.seed), config.trained, plane={}, total_seconds=0.0, key=key)
    file = cache_dir / f"{run.name}.npz"
    cached = _load(file, key)
    if cached is not None:
        log.info("plane of run %s: from %s", r.run_id, file)
        return PlaneRun(**{**run.__dict__, **cached, "reused": True})
    from pipeline.stages.plane_run import run_plane

    t0 = time.perf_counter()
    out = run_plane(run_dir, config.trained, split=SPLIT, domain=DOMAIN, scale=config.plane_scale,
                    seed=config.plane_seed)
    total = time.perf_counter() - t0
    plane = {k: out[k] for k in ("result", "indices", "labels", "predicted", "seconds", "scale", "domain", "split")}
    plane["corners"] = [np.asarray(c.detach().cpu() if hasattr(c, "detach") else c) for c in out["corners"]]
    _save(file, key, plane, total)
    log.info("plane of run %s: %d regions in %.1f s -> %s", r.run_id, int(out["result"].n_regions[0]), total, file)
    return PlaneRun(**{**run.__dict__, "plane": plane, "total_seconds": total})


def _save(file: Path, key: str, plane: dict, total_seconds: float) -> None:
    """One ``.npz``: the PlaneResult's arrays as ``result.<field>`` (None fields left out), the
    rest of ``plane`` and the key (:func:`analysis.npz_cache.save_arrays`)."""
    res = plane["result"]
    arrays = {f"result.{f.name}": np.asarray(getattr(res, f.name)) for f in fields(res)
              if getattr(res, f.name) is not None}
    arrays.update({k: np.asarray(v) for k, v in plane.items() if k not in ("result", "corners")})
    arrays.update(corners=np.stack(plane["corners"]), total_seconds=np.asarray(total_seconds))
    save_arrays(file, key, arrays)


def _load(file: Path, key: str) -> dict | None:
    """``plane`` and ``total_seconds`` from ``file`` if it exists and holds ``key``; else None."""
    from pipeline.engine.planes import PlaneResult

    data = load_arrays(file, key, "plane cache")
    if data is None:
        return None
    value = {k[len("result."):]: v.item() if v.dtype.kind == "U" else v for k, v in data.items()
             if k.startswith("result.")}
    result = PlaneResult(**{f.name: value.get(f.name) for f in fields(PlaneResult)})  # left out: None
    plane = {k: v.item() if v.ndim == 0 else v for k, v in data.items()
             if not k.startswith("result.") and k not in ("total_seconds", "corners")}
    plane.update(result=result, corners=list(data["corners"]))
    return {"plane": plane, "total_seconds": float(data["total_seconds"])}
