"""Region discovery for one trained run: paths -> engine -> one Zarr store, sharded, resumable.

    python -m jobs discover runs/digits-vgg8 --config configs/discover/digits.yaml --shard 0/4

Each shard holds a contiguous block of the path set; a complete shard is skipped, any other
is written again from scratch (see ``pipeline/store.py``). Without ``--shard`` every missing
shard is written in turn. The store goes to ``<run>/regions/<checkpoint>-<paths hash>.zarr``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.config import config_hash, to_dict
from pipeline.paths import PathConfig
from pipeline.store import StoreConfig

log = logging.getLogger("jobs.discover")


@dataclass(frozen=True)
class DiscoverConfig:
    paths: PathConfig = field(default_factory=PathConfig)
    checkpoint: str = "final"  # init | final | epoch-NNNN: "trained vs initialisation" needs both
    method: str = "subdivide"  # subdivide (exact, faster: docs/benchmarks.md) | walk (the paper's, eps)
    eps: float = 1e-6  # the paper's sensitivity, in t units
    dtype: str = "float64"  # the paper's precision
    batch_size: int = 64  # segments in flight
    chunk_segments: int = 64  # segments per write: bounds memory, whatever the region count
    n_shards: int = 1
    device: str = "auto"  # auto: cuda when present
    store: StoreConfig = field(default_factory=StoreConfig)

    def __post_init__(self):
        if self.method not in ("subdivide", "walk"):
            raise ValueError(f"method must be subdivide or walk; got {self.method!r}")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be float64 or float32; got {self.dtype!r}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ValueError(f"device must be auto, cpu or cuda[:N]; got {self.device!r}")
        if min(self.batch_size, self.chunk_segments, self.n_shards) < 1:
            raise ValueError("batch_size, chunk_segments and n_shards must be >= 1")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0; got {self.eps}")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def store_path(run_dir, cfg: DiscoverConfig) -> Path:
    return Path(run_dir) / "regions" / f"{cfg.checkpoint}-{config_hash(cfg.paths, 8)}.zarr"


def shard_paths(n_paths: int, n_shards: int, shard: int) -> np.ndarray:
    """Positions of the paths in ``shard``: contiguous, sizes differing by at most one."""
    return np.array_split(np.arange(n_paths), n_shards)[shard]


def run(run_dir, cfg: DiscoverConfig, shards=None, progress: bool = True, store=None) -> dict:
    """Write the missing shards among ``shards`` (default: all); returns the store's status."""
    from pipeline.config import from_dict
    from pipeline.data import DataConfig, load
    from pipeline.paths import bundle_paths
    from pipeline.store import open_or_create, shard_status
    from pipeline.train import load_checkpoint

    run_dir = Path(run_dir)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device: {cfg.device} asked for, but torch sees no GPU here (torch.cuda.is_available() "
                           "is False): use device: auto (GPU when present, else CPU) or cpu, or run this job on "
                           "a GPU node")
    model, ckpt = load_checkpoint(run_dir, cfg.checkpoint)
    ckpt_file = run_dir / "checkpoints" / f"{cfg.checkpoint}.pt"
    train_cfg = ckpt["config"]
    data = load(from_dict(DataConfig, train_cfg["data"]))
    paths = bundle_paths(data, cfg.paths)  # bases chosen by clean labels: one path set for every network
    n_paths = paths.n_paths
    if cfg.n_shards > n_paths:
        raise ValueError(f"n_shards ({cfg.n_shards}) is larger than the number of paths ({n_paths})")
    dtype = {"float64": torch.float64, "float32": torch.float32}[cfg.dtype]
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    with torch.no_grad():
        k = model(paths.x0[:1].float()).shape[1]
    store = Path(store or store_path(run_dir, cfg))
    attrs = {
        "checkpoint_sha256": sha256(ckpt_file), "checkpoint": cfg.checkpoint, "run": str(run_dir.resolve()),
        "model": train_cfg["model"], "dataset": train_cfg["data"], "split": cfg.paths.split,
        "paths": to_dict(paths.config), "eps": cfg.eps, "dtype": cfg.dtype, "method": cfg.method,
        "n_shards": cfg.n_shards, "n_paths": n_paths, "K": int(k), "keep_affine": cfg.store.keep_affine,
        "affine_dtype": cfg.store.affine_dtype, "versions": _versions(),
        "discover_config": to_dict(cfg),  # the resolved config, beside the results (not an identity key)
    }
    open_or_create(store, attrs)
    status = shard_status(store)
    todo = [s for s in (range(cfg.n_shards) if shards is None else shards) if s not in status["complete"]]
    log.info("store %s: %d of %d shards complete, %d to write now", store, len(status["complete"]), cfg.n_shards,
             len(todo))
    for shard in todo:
        _write_shard(model, paths, shard, cfg, store, k, dtype, device, progress)
    return shard_status(store)


def _write_shard(model, paths, shard, cfg, store, k, dtype, device, progress):
    from pipeline.regions import discover_iter
    from pipeline.store import ShardWriter

    ids = np.unique(paths.path_id)
    pos = np.flatnonzero(np.isin(paths.path_id, ids[shard_paths(ids.size, cfg.n_shards, shard)]))
    writer = ShardWriter(store, shard, paths.path_id[pos], paths.segment_index[pos], k, cfg.store)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pos), unit="seg", desc=f"shard {shard}/{cfg.n_shards}")
    start, regions = time.perf_counter(), 0
    try:
        for chunk in discover_iter(model, paths.x0[pos], paths.x1[pos], eps=cfg.eps, dtype=dtype,
                                   batch_size=cfg.batch_size, device=device, keep_affine=cfg.store.keep_affine,
                                   method=cfg.method, chunk_segments=cfg.chunk_segments):
            writer.write(chunk)
            regions += chunk.n_regions
            if bar is not None:
                bar.update(chunk.n_segments)
                bar.set_postfix(regions=regions, per_s=f"{regions / (time.perf_counter() - start):,.0f}")
    finally:
        if bar is not None:
            bar.close()
    published = writer.commit()
    log.info("shard %d: %d segments, %d regions in %.1f s%s", shard, len(pos), regions, time.perf_counter() - start,
             "" if published else " (another job had completed it: kept theirs)")


def _versions() -> dict:
    import pipeline
    import zarr

    return {"relu-regions": pipeline.__version__, "torch": torch.__version__, "zarr": zarr.__version__}


def _parse_shard(text: str):
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= i < n")
    return i, n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jobs discover", description=__doc__.splitlines()[0],
        epilog="example: python -m jobs discover runs/digits-vgg8 --config configs/discover/digits.yaml --shard 0/2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", type=Path, help="a training run folder (with checkpoints/)")
    p.add_argument("--config", type=Path, default=None, help="a discovery YAML (configs/discover/*.yaml)")
    p.add_argument("--shard", type=_parse_shard, default=None, help="i/n: write shard i of n (default: all missing)")
    p.add_argument("--checkpoint", default=None, help="override the config's checkpoint (init, final, epoch-NNNN)")
    p.add_argument("--store", type=Path, default=None, help="store path (default: <run>/regions/<ckpt>-<hash>.zarr)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from dataclasses import replace

    from pipeline.config import ConfigError, load_config

    try:
        cfg = load_config(a.config, DiscoverConfig) if a.config else DiscoverConfig()
    except ConfigError as err:
        p.error(str(err))
    if a.checkpoint:
        cfg = replace(cfg, checkpoint=a.checkpoint)
    shards = None
    if a.shard:
        cfg = replace(cfg, n_shards=a.shard[1])
        shards = [a.shard[0]]
    status = run(a.run, cfg, shards, store=a.store)
    log.info("complete shards %d/%d%s", len(status["complete"]), status["n_shards"],
             f"; leftovers of killed jobs: {status['leftovers']}" if status["leftovers"] else "")
    return 0
