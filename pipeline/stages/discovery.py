"""The discovery stage: a trained run's path set -> the region engine -> one sharded Zarr store.

    from pipeline.stages.discovery import DiscoverConfig, discover_run
    status = discover_run("runs/digits-vgg8", DiscoverConfig(n_shards=4), shards=[0])

Each shard holds a contiguous block of the path set; a complete shard is skipped, any other
(missing, interrupted, or damaged: its files differ from its manifest) is written again from
scratch (``pipeline/store/shards.py``). The store goes to
``<run>/regions/<checkpoint>-<path set id>.zarr``. :func:`write_shards` is the loop from a
network and its segments to shards, shared by :func:`discover_run` and the synthetic sweeps
of ``analysis/synthetic.py``; ``jobs/discover.py`` is the command line around this module.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.config import identity_dict, local_field, to_dict
from pipeline.inputs.paths import PathConfig, path_set_id
from pipeline.inputs.plane_sets import PlaneSetConfig, plane_set_id
from pipeline.store.identity import StoreConfig
from pipeline.store.placement import file_sha256

__all__ = ["DiscoverConfig", "discover_run", "write_shards", "write_plane_shards", "store_path", "plane_store_path",
           "store_paths", "shard_done", "shard_paths", "engine_attrs", "plane_engine_attrs"]

log = logging.getLogger("pipeline.stages.discovery")


@dataclass(frozen=True)
class DiscoverConfig:
    """How to discover the regions of one checkpoint along one path set.

    ``batch_size``, ``max_vertices``, ``chunk_segments`` and ``device`` change how the work is done, not its
    result: they are left out of the config's identity (:func:`pipeline.config.identity_dict`).
    The engine's result-affecting options (``method``, ``eps``, ``dtype``, ``certify``) are
    part of the store's identity: one store never mixes shards discovered differently.

    With ``planes`` (a :class:`pipeline.inputs.plane_sets.PlaneSetConfig`), each shard index also
    covers a block of that plane set, whose exact 2-D regions (:func:`pipeline.engine.planes.discover_plane`,
    in ``dtype``) go to a second store, :func:`plane_store_path`; a shard is done when it is
    complete in both (:func:`shard_done`).
    """

    paths: PathConfig = field(default_factory=PathConfig)
    checkpoint: str = "final"  # init | final | epoch-NNNN: "trained vs initialisation" needs both
    method: str = "subdivide"  # subdivide (exact, faster: docs/benchmarks.md) | walk (the paper's, eps)
    eps: float = 1e-6  # the paper's sensitivity, in t units
    dtype: str = "float64"  # the paper's precision
    certify: str = "all"  # the certificate, 1-D and planes: all (every region; float32 screen) | strict | sample
    batch_size: int | None = local_field(None)  # segments in flight; None: sized for the device (pipeline.engine.worksize)
    max_vertices: int | None = local_field(None)  # vertices per chain (1-D) or tile (planes); None: for the device
    chunk_segments: int = local_field(64)  # segments per write: bounds memory, whatever the region count
    n_shards: int = 1
    device: str = local_field("auto")  # auto: cuda when present
    store: StoreConfig = field(default_factory=StoreConfig)
    planes: PlaneSetConfig | None = None  # also the exact 2-D regions of these planes, in a second store
    chunk_planes: int = local_field(4)  # planes per write
    # raise: a failing certificate stops the shard (nothing of it is published); warn: the shard
    # is written and its failing rows are flagged (their gap_tol is stored with them, and the
    # aggregation leaves their paths out). Local: it changes no stored number, only whether a
    # shard with failing rows is published, so switching to warn to look at a failure resumes
    # the same store.
    on_certificate: str = local_field("raise")

    def __post_init__(self):
        from pipeline.engine.lines import CERTIFY, METHODS

        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be float64 or float32; got {self.dtype!r}")
        if self.certify not in CERTIFY:
            raise ValueError(f"certify must be one of {', '.join(CERTIFY)}; got {self.certify!r}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ValueError(f"device must be auto, cpu or cuda[:N]; got {self.device!r}")
        for name in ("batch_size", "chunk_segments", "n_shards", "chunk_planes"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_vertices is not None and self.max_vertices < 16:
            raise ValueError(f"max_vertices must be >= 16 (or null: sized for the device); got {self.max_vertices}")
        if self.planes is not None and not isinstance(self.planes, PlaneSetConfig):
            raise TypeError(f"planes must be a PlaneSetConfig or None, got {type(self.planes).__name__}")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"eps must be a finite number > 0; got {self.eps}")
        from pipeline.engine.certificate import ON_CERTIFICATE

        if self.on_certificate not in ON_CERTIFICATE:
            raise ValueError(f"on_certificate must be one of {', '.join(ON_CERTIFICATE)}; got {self.on_certificate!r}")


def store_path(run_dir, cfg: DiscoverConfig) -> Path:
    """Where :func:`discover_run` writes: decided by the config alone (no data is read)."""
    return Path(run_dir) / "regions" / f"{cfg.checkpoint}-{path_set_id(cfg.paths)}.zarr"


def plane_store_path(run_dir, cfg: DiscoverConfig) -> Path | None:
    """Where :func:`discover_run` writes the plane regions (``None`` without ``cfg.planes``)."""
    if cfg.planes is None:
        return None
    return Path(run_dir) / "regions" / f"{cfg.checkpoint}-planes-{plane_set_id(cfg.planes)}.zarr"


def store_paths(run_dir, cfg: DiscoverConfig) -> list[Path]:
    """Every store :func:`discover_run` writes: the segments', then the planes' if any."""
    planes = plane_store_path(run_dir, cfg)
    return [store_path(run_dir, cfg)] + ([planes] if planes is not None else [])


def shard_done(status: dict, shard: int) -> bool:
    """Whether :func:`discover_run`'s returned status lists ``shard`` complete in every store."""
    return shard in status["complete"] and ("planes" not in status or shard in status["planes"]["complete"])


def shard_paths(n_paths: int, n_shards: int, shard: int) -> np.ndarray:
    """Positions of the paths in ``shard``: contiguous, sizes differing by at most one."""
    return np.array_split(np.arange(n_paths), n_shards)[shard]


def engine_attrs(cfg: DiscoverConfig) -> dict:
    """The store attributes naming how the regions were found (identity keys of the store)."""
    return {"method": cfg.method, "eps": cfg.eps, "dtype": cfg.dtype,
            "certify": cfg.certify if cfg.method == "subdivide" else None}


def plane_engine_attrs(cfg: DiscoverConfig) -> dict:
    """The plane store attributes naming how its regions were found (identity keys)."""
    from pipeline.engine.planes import MIN_AREA, default_rel_tol

    dtype = _torch_dtype(cfg)
    return {"geometry": "plane", "dtype": cfg.dtype, "domain": cfg.planes.domain,
            "plane_engine": {"rel_tol": default_rel_tol(dtype), "min_area": MIN_AREA, "certify": cfg.certify}}


def discover_run(run_dir, cfg: DiscoverConfig, shards=None, progress: bool = True, store=None,
                 deep: bool = False) -> dict:
    """Write the missing (or damaged) shards among ``shards`` (default: all) of a run's store
    (and of its plane store, with ``cfg.planes``); returns the store's
    :func:`pipeline.store.verify.shard_status`, with the plane store's under ``"planes"``
    (:func:`shard_done` reads both). ``deep``: judge existing shards by their checksums too
    (reads them), so flipped bytes are rewritten as well. ``store``: the segment store's path
    (default :func:`store_path`)."""
    from pipeline.config import from_dict
    from pipeline.inputs.data import DataConfig, load
    from pipeline.inputs.paths import bundle_paths
    from pipeline.stages.train import load_checkpoint

    run_dir = Path(run_dir)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device: {cfg.device} asked for, but torch sees no GPU here (torch.cuda.is_available() "
                           "is False): use device: auto (GPU when present, else CPU) or cpu, or run this job on "
                           "a GPU node")
    model, ckpt = load_checkpoint(run_dir, cfg.checkpoint)
    ckpt_file = run_dir / "checkpoints" / f"{cfg.checkpoint}.pt"
    train_cfg = ckpt["config"]
    data_cfg = from_dict(DataConfig, train_cfg["data"])
    data = load(data_cfg)
    paths = bundle_paths(data, cfg.paths)  # bases chosen by clean labels: one path set for every network
    if cfg.n_shards > paths.n_paths:
        raise ValueError(f"n_shards ({cfg.n_shards}) is larger than the number of paths ({paths.n_paths})")
    attrs = {
        "checkpoint_sha256": file_sha256(ckpt_file), "checkpoint": cfg.checkpoint, "run": str(run_dir.resolve()),
        "model": train_cfg["model"], "dataset": identity_dict(data_cfg), "split": cfg.paths.split,
        "paths": to_dict(paths.config), "discover_config": to_dict(cfg),  # resolved, beside the results
    }
    status = write_shards(store or store_path(run_dir, cfg), model, paths.x0, paths.x1, paths.path_id,
                          paths.segment_index, cfg, attrs, path_config=cfg.paths, shards=shards, progress=progress,
                          deep=deep)
    if cfg.planes is not None:
        from pipeline.inputs.plane_sets import bundle_planes

        planes = bundle_planes(data, cfg.planes)
        plane_attrs = {**attrs, "split": cfg.planes.split, "paths": to_dict(planes.config)}
        status["planes"] = write_plane_shards(plane_store_path(run_dir, cfg), model, planes, cfg, plane_attrs,
                                              shards=shards, progress=progress, deep=deep)
    return status


def write_shards(store, model, x0, x1, path_id, segment_index, cfg: DiscoverConfig, attrs: dict, *,
                 path_config=None, shards=None, progress: bool = False, deep: bool = False) -> dict:
    """Create (or check) ``store`` and write its missing shards among ``shards``.

    ``x0``, ``x1`` (``(S, *input_shape)``), ``path_id`` and ``segment_index`` (``(S,)``) are
    the whole path set; shard ``i`` holds the ``i``-th contiguous block of its paths.
    ``attrs`` are the caller's store attributes (checkpoint, model, dataset, paths...); the
    engine's options, the path set id, the shard count and ``K`` are added here. A shard is
    missing unless :func:`pipeline.store.verify.shard_status` lists it complete: a damaged one is
    written again and replaces it. ``deep`` judges shards by their checksums too.
    """
    path_config = path_config if path_config is not None else attrs["paths"]
    items = _Segments(x0, x1, np.asarray(path_id), np.asarray(segment_index), path_config)
    return _write_store(store, model, items, cfg, attrs, shards, progress, deep)


def write_plane_shards(store, model, planes, cfg: DiscoverConfig, attrs: dict, *, shards=None,
                       progress: bool = False, deep: bool = False) -> dict:
    """Create (or check) the plane store ``store`` and write its missing shards among
    ``shards``: shard ``i`` holds the ``i``-th contiguous block of ``planes`` (a
    :class:`pipeline.inputs.plane_sets.PlaneSet`, ``cfg.planes`` built). As :func:`write_shards`."""
    if cfg.n_shards > planes.n_planes:
        raise ValueError(f"n_shards ({cfg.n_shards}) is larger than the number of planes ({planes.n_planes}): "
                         "raise planes.n_planes, or use fewer shards")
    return _write_store(store, model, _Planes(planes, cfg), cfg, attrs, shards, progress, deep)


class _Segments:
    """What writing a segment store has of its own (:func:`write_shards`): which segments a
    shard holds (whole paths), their writer, the engine that finds their regions, their names."""

    what, label, bar_unit = "segments", "shard", "seg"  # the engine draws no bar: the stage does

    def __init__(self, x0, x1, path_id: np.ndarray, segment_index: np.ndarray, path_config):
        self.x0, self.x1, self.path_id, self.segment_index = x0, x1, path_id, segment_index
        self.path_config = path_config

    def identity(self, cfg: DiscoverConfig) -> tuple[dict, str, dict]:
        """The engine's attributes, the path set id, the count of paths."""
        return engine_attrs(cfg), path_set_id(self.path_config), {"n_paths": int(np.unique(self.path_id).size)}

    def positions(self, n_shards: int, shard: int) -> np.ndarray:
        ids = np.unique(self.path_id)
        return np.flatnonzero(np.isin(self.path_id, ids[shard_paths(ids.size, n_shards, shard)]))

    def writer(self, store, shard: int, pos, k: int, cfg: DiscoverConfig):
        from pipeline.store.lines import ShardWriter

        return ShardWriter(store, shard, self.path_id[pos], self.segment_index[pos], k, cfg.store)

    def results(self, ready, pos, cfg: DiscoverConfig, dtype, device, progress: bool):
        from pipeline.engine.lines import discover_iter

        return discover_iter(ready, self.x0[pos], self.x1[pos], eps=cfg.eps, dtype=dtype, batch_size=cfg.batch_size,
                             device=device, keep_affine=cfg.store.keep_affine, method=cfg.method,
                             chunk_segments=cfg.chunk_segments, certify=cfg.certify,
                             on_certificate=cfg.on_certificate, max_vertices=cfg.max_vertices)

    def names(self, pos) -> list[str]:
        return [f"path {p} segment {s}" for p, s in zip(self.path_id[pos], self.segment_index[pos])]

    @staticmethod
    def count(chunk) -> tuple[int, int]:
        """Items and regions of a chunk of results."""
        return chunk.n_segments, chunk.n_regions


class _Planes:
    """What writing a plane store has of its own (:func:`write_plane_shards`), as :class:`_Segments`."""

    what, label, bar_unit = "planes", "plane shard", None  # the plane engine draws its own bar

    def __init__(self, planes, cfg: DiscoverConfig):
        self.planes, self.x0, self.domain = planes, planes.x0, cfg.planes.domain

    def identity(self, cfg: DiscoverConfig) -> tuple[dict, str, dict]:
        """The engine's attributes, the plane set id, the count of planes."""
        return plane_engine_attrs(cfg), plane_set_id(cfg.planes), {"n_planes": self.planes.n_planes}

    def positions(self, n_shards: int, shard: int) -> np.ndarray:
        return shard_paths(self.planes.n_planes, n_shards, shard)

    def writer(self, store, shard: int, pos, k: int, cfg: DiscoverConfig):
        from pipeline.engine.planes import DOMAINS
        from pipeline.store.planes import PlaneShardWriter

        p, corners = self.planes, len(DOMAINS[self.domain].corners)
        return PlaneShardWriter(store, shard, p.plane_id[pos], p.label[pos], p.corner_index[pos], k, corners, cfg.store)

    def results(self, ready, pos, cfg: DiscoverConfig, dtype, device, progress: bool):
        from pipeline.engine.planes import discover_plane_iter

        idx, p = torch.as_tensor(pos), self.planes
        return discover_plane_iter(ready, p.x0[idx], p.x1[idx], p.x2[idx], dtype=dtype, device=device,
                                   max_vertices=cfg.max_vertices, domain=self.domain,
                                   keep_affine=cfg.store.keep_affine, progress=progress,
                                   chunk_planes=cfg.chunk_planes, certify=cfg.certify,
                                   on_certificate=cfg.on_certificate)

    def names(self, pos) -> list[str]:
        return [f"plane {p}" for p in self.planes.plane_id[pos]]

    @staticmethod
    def count(chunk) -> tuple[int, int]:
        """Items and regions of a chunk of results."""
        return chunk.n_planes, chunk.total_regions


def _write_store(store, model, items, cfg: DiscoverConfig, attrs: dict, shards, progress: bool, deep: bool) -> dict:
    """:func:`write_shards` and :func:`write_plane_shards`, given what their ``items`` are."""
    from pipeline.store.verify import shard_status

    store = Path(store)
    k = _n_outputs(model, items.x0)
    engine, set_id, count = items.identity(cfg)
    attrs = {**attrs, **engine, "path_set": set_id, "n_shards": cfg.n_shards, **count, "K": k,
             "keep_affine": cfg.store.keep_affine, "affine_dtype": cfg.store.affine_dtype, "versions": _versions()}
    for shard in _shards_to_write(store, attrs, cfg.n_shards, shards, deep):
        _write_shard(model, items, shard, cfg, store, k, progress, deep, attrs)
    return shard_status(store)  # what was not rewritten was judged above


def _device(cfg: DiscoverConfig) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device


def _torch_dtype(cfg: DiscoverConfig) -> torch.dtype:
    return {"float64": torch.float64, "float32": torch.float32}[cfg.dtype]


def _n_outputs(model, x) -> int:
    """``K``: the network's outputs, from one input of ``x`` in the model's own precision."""
    param = next(iter(model.parameters()), None)
    with torch.no_grad():
        return int(model(x[:1].to(param.dtype if param is not None else torch.float32)).shape[1])


def _shards_to_write(store: Path, attrs: dict, n_shards: int, shards, deep: bool) -> list[int]:
    """Create (or check) ``store`` with ``attrs``; the shards among ``shards`` (default: all)
    that it does not list complete (missing, interrupted or damaged), logged."""
    from pipeline.store.identity import open_or_create
    from pipeline.store.verify import shard_status

    open_or_create(store, attrs)
    status = shard_status(store, deep=deep)
    todo = [s for s in (range(n_shards) if shards is None else shards) if s not in status["complete"]]
    log.info("store %s: %d of %d shards complete, %d to write now", store, len(status["complete"]), n_shards,
             len(todo))
    for shard in (s for s in status["damaged"] if s in todo):
        log.warning("store %s: shard %d is damaged (its files differ from its manifest): writing it again", store,
                    shard)
    return todo


def _where(store, shard, attrs) -> str:
    """Where a shard's certificate failed, for its message: the network and the store."""
    net = f"run {attrs['run']}, checkpoint {attrs['checkpoint']}" if "run" in attrs else "network"
    return f" of shard {shard} of {store} ({net})"


def _certificate_failed(err, store, shard, attrs, names, of, prepared):
    """A :class:`pipeline.engine.certificate.CertificateError` from the engine, renamed for the stage:
    the rows by their ids (``names[i]`` for position ``i`` in the shard), the store and shard,
    the network (``of``: "segments" or "planes"); the shard is not published, and the
    completed shards stay."""
    from pipeline.engine.certificate import CertificateError, failure_message

    rows = [names[int(i)] for i in err.index]
    msg = failure_message(rows, err.gap, err.tol, len(names), of, prepared, _where(store, shard, attrs))
    return CertificateError(f"{msg} Shard {shard} was not written (the complete shards are kept); rerun with "
                            "on_certificate: warn in the discovery config to store it with the failing rows "
                            "flagged (the aggregation leaves their paths out).", err.index, err.gap, err.tol)


def _warn_uncertified(chunk_failed: int, store, shard, attrs, what: str):
    if chunk_failed:
        log.warning("certificate failed on %d %s%s (on_certificate: warn: stored, flagged)", chunk_failed, what,
                    _where(store, shard, attrs))


def _write_shard(model, items, shard, cfg, store, k, progress, deep, attrs):
    """Find the regions of one shard's ``items`` and publish the shard; on any failure its
    temporary is removed (a SIGKILL leaves a ``*.tmp-*``) and the complete shards stay."""
    from pipeline.engine.certificate import CertificateError
    from pipeline.engine.prepared import prepare
    from pipeline.store.shards import uncertified

    pos = items.positions(cfg.n_shards, shard)
    writer = items.writer(store, shard, pos, k, cfg)
    bar = _bar(items.bar_unit, len(pos), shard, cfg.n_shards) if progress and items.bar_unit else None
    start, regions = time.perf_counter(), 0
    dtype, device = _torch_dtype(cfg), _device(cfg)
    ready = prepare(model, dtype, device)
    try:
        for chunk in items.results(ready, pos, cfg, dtype, device, progress):
            writer.write(chunk)
            n, r = items.count(chunk)
            regions += r
            _warn_uncertified(uncertified(chunk.continuity_gap, chunk.gap_tol), store, shard, attrs, items.what)
            if bar is not None:
                bar.update(n)
                bar.set_postfix(regions=regions, per_s=f"{regions / (time.perf_counter() - start):,.0f}")
    except CertificateError as err:
        writer.abort()  # the shard is not published; the complete ones are untouched
        if bar is not None:
            bar.close()
            bar = None
        raise _certificate_failed(err, store, shard, attrs, items.names(pos), items.what, ready) from err
    except BaseException:
        writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    published = writer.commit(deep=deep)
    log.info("%s %d: %d %s, %d regions in %.1f s%s", items.label, shard, len(pos), items.what, regions,
             time.perf_counter() - start, "" if published else " (another job had completed it: kept theirs)")


def _bar(unit: str, total: int, shard: int, n_shards: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, desc=f"shard {shard}/{n_shards}")


def _versions() -> dict:
    import zarr

    from pipeline import __version__

    return {"relu-regions": __version__, "torch": torch.__version__, "zarr": zarr.__version__}
