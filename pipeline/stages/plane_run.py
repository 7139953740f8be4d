"""Exact 2-D slices of a trained run: three of its images, its checkpoint, :func:`discover_plane`.

    from pipeline.stages.plane_run import run_plane
    out = run_plane("runs/digits-vgg8", checkpoint="final", scale=0.5)
    out["result"].n_regions, out["indices"], out["seconds"]

Used by ``python -m jobs plane`` and by the aggregation's plane figures (``analysis/plane_runs.py``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["choose_images", "shrink", "run_plane", "stored_plane"]


def choose_images(labels: np.ndarray, seed: int = 0, n: int = 3) -> np.ndarray:
    """``n`` indices into ``labels`` with ``n`` different labels (as many as there are, if
    fewer), picked by ``seed``: the classes first, then one image of each."""
    labels = np.asarray(labels)
    if labels.size < n:
        raise ValueError(f"{n} images asked for, but the split has only {labels.size}")
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(labels))
    picked = [int(rng.choice(np.flatnonzero(labels == c))) for c in classes[:n]]
    rest = np.setdiff1d(np.arange(labels.size), picked)
    picked += [int(i) for i in rng.choice(rest, size=n - len(picked), replace=False)]
    return np.array(picked, dtype=np.int64)


def shrink(x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, scale: float = 1.0):
    """The domain's corners shrunk towards ``x0`` by ``scale`` in ``(0, 1]``:
    ``x0, x0 + scale (x1 - x0), x0 + scale (x2 - x0)``."""
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    if scale == 1.0:
        return x0, x1, x2
    return x0, x0 + scale * (x1 - x0), x0 + scale * (x2 - x0)


def run_plane(run_dir, checkpoint: str = "final", indices=None, split: str = "train", domain: str = "triangle",
              scale: float = 1.0, seed: int = 0, progress: bool = False, threads: int | None = 1,
              **options) -> dict:
    """Every linear region of a run's checkpoint on the plane through three of its images.

    Parameters
    ----------
    run_dir : path
        A training run folder (``checkpoints/<checkpoint>.pt``).
    indices : three ints, optional
        Images of ``split`` (default: three of different classes chosen by ``seed``; for the
        training split by the clean labels, so every run of a sweep gets the same three).
    scale : float
        Shrink the domain towards the first image (:func:`shrink`).
    threads : int or None
        torch threads during the discovery (restored after; None: leave as is). One is the
        default: the engine's ops are small, and on a shared machine an OpenMP pool of two
        threads was 5-20x slower than one (measured on the demo's networks under load).
    **options
        Passed to :func:`pipeline.engine.planes.discover_plane`.

    Returns
    -------
    dict
        ``result`` (the :class:`~pipeline.engine.planes.PlaneResult`), ``images`` (the three images,
        ``(C, H, W)`` float32, as the network sees them), ``corners`` (the domain's corners,
        ``(C, H, W)`` float64: the images themselves unless ``scale < 1``), ``indices``, ``labels`` (their
        labels in the split, clean for ``"train"``), ``predicted`` (the network's class at each),
        ``seconds`` (discovery alone), ``checkpoint_file``, ``model`` (the model config dict),
        ``scale``, ``domain``, ``split``.
    """
    from pipeline.config import from_dict
    from pipeline.inputs.data import DataConfig, load
    from pipeline.engine.planes import discover_plane
    from pipeline.stages.train import load_checkpoint

    run_dir = Path(run_dir)
    model, ckpt = load_checkpoint(run_dir, checkpoint)
    data = load(from_dict(DataConfig, ckpt["config"]["data"]))
    images = data.images(split)
    labels = data.clean_labels if split == "train" else data.labels(split)
    idx = choose_images(labels, seed) if indices is None else np.asarray(indices, dtype=np.int64)
    if idx.shape != (3,) or (idx < 0).any() or (idx >= len(labels)).any():
        raise ValueError(f"indices: three images of the {split} split (0..{len(labels) - 1}), got {list(idx)}")
    x = images[torch.as_tensor(idx)]
    model = model.double()
    corners = shrink(*(x[i:i + 1].double() for i in range(3)), scale)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        result = discover_plane(model, *corners, domain=domain, progress=progress, **options)
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)
    with torch.no_grad():
        predicted = model(x.double()).argmax(1).numpy()
    return {"result": result, "images": [x[i] for i in range(3)], "corners": [c[0] for c in corners], "indices": idx, "labels": labels[idx],
            "predicted": predicted, "seconds": seconds, "checkpoint_file": run_dir / "checkpoints" / f"{checkpoint}.pt",
            "model": ckpt["config"]["model"], "scale": scale, "domain": domain, "split": split}


def stored_plane(store, plane_id) -> dict:
    """A plane of a plane store (:mod:`pipeline.store.planes`) with what a figure needs.

    Returns
    -------
    dict
        ``result`` (its :class:`~pipeline.engine.planes.PlaneResult`, as stored), ``corners`` (the
        domain's corners ``(C, H, W)``, rebuilt from the store's plane set and the run's data),
        ``labels`` (inset captions), ``run``, ``checkpoint``, ``kind``.

    Raises
    ------
    pipeline.store.identity.StoreError
        Not a plane store, or a damaged one; ``ValueError`` if ``plane_id`` is missing;
        ``KeyError`` if no complete shard holds it.
    """
    import yaml

    from pipeline.config import from_dict
    from pipeline.inputs.data import DataConfig, load
    from pipeline.inputs.plane_sets import PlaneSetConfig, bundle_planes
    from pipeline.store.planes import open_plane_store

    if plane_id is None:
        raise ValueError("--plane: which plane of the store (its id, the base image's index; "
                         "open_plane_store(store).plane_ids() lists them)")
    reader = open_plane_store(store)
    result = reader.plane(plane_id)
    attrs = reader.attrs
    cfg_file = Path(attrs["run"]) / "config.yaml"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: the store's run folder (attribute run) has no training config, so "
                                "the plane's images cannot be rebuilt")
    data = load(from_dict(DataConfig, (yaml.safe_load(cfg_file.read_text()) or {}).get("data")))
    planes = bundle_planes(data, from_dict(PlaneSetConfig, attrs["paths"]))
    i = int(np.searchsorted(planes.plane_id, plane_id))
    if i >= planes.n_planes or planes.plane_id[i] != plane_id:
        raise ValueError(f"plane {plane_id} is not in the store's plane set (rebuilt from its config): the data changed?")
    corners = [planes.x0[i], planes.x1[i], planes.x2[i]]
    kind = planes.config.kind
    if kind == "translate":
        r = planes.config.radius  # a, b: the image's shifts by r px right and down, minus the image
        labels = [f"#{plane_id} - a - b (a, b: shifts by {r:g} px)", "x + a - b", "x - a + b"]
    else:
        scale = planes.config.scale
        labels = [f"#{j}" + (f" ({scale:g} of the way)" if scale < 1 and n else "")
                  for n, j in enumerate(planes.corner_index[i])]
    return {"result": result, "corners": corners, "labels": labels, "run": attrs["run"],
            "checkpoint": attrs.get("checkpoint", "final"), "kind": kind}
