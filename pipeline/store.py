"""The Zarr (v3) store of discovered regions: write one shard, read many.

Layout (``shared/DESIGN.md``)::

    <store>.zarr/              attrs: schema, model spec, checkpoint sha256, dataset, split, paths,
                               eps, dtype, method, versions, n_shards, K
      shard-00000/             attrs: complete=true (written last), n_segments, paths
        segments/  path_id, segment_index, length, region_offset (S+1), density, deviation (S,K),
                   total_variation (S,K), continuity_gap, f0 (S,K), f1 (S,K)
        regions/   t_start, t_end (float64, always), intercept, slope (R,K; optional, f64/f32)

A shard is written by one :class:`ShardWriter` under a temporary name beside its final place
(``shard-00000.tmp-<host>-<pid>-<token>``), marked complete, then renamed into place in one
step. So a killed job leaves no half shard under the final name (its leftovers are ignored and
listed by :func:`shard_status`), and two jobs given the same shard cannot interleave their
writes: the first rename wins, the second finds a complete shard and discards its copy.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from .config import local_field
from .measures import PATH_COLUMNS, combine_path_partials, path_partials

__all__ = ["SCHEMA_VERSION", "StoreConfig", "StoreError", "open_or_create", "ShardWriter", "shard_status",
           "StoreReader", "open_store", "open_stores", "shard_name", "shard_partials", "paths_table"]

SCHEMA_VERSION = 2  # 2: the engine's options and the path set id are identity attributes
SEGMENT_SCALARS = ("path_id", "segment_index", "length", "density", "continuity_gap")
SEGMENT_VECTORS = ("deviation", "total_variation", "f0", "f1")
# attributes that must not change between the jobs writing one store
IDENTITY_KEYS = ("schema", "checkpoint_sha256", "model", "dataset", "split", "paths", "path_set", "method", "eps",
                 "dtype", "certify", "n_shards", "keep_affine", "affine_dtype")


class StoreError(ValueError):
    """A store that cannot be used as asked (other schema, other checkpoint, other settings)."""


@dataclass(frozen=True)
class StoreConfig:
    """How a shard is written. ``keep_affine`` and ``affine_dtype`` change what is stored;
    the codec and chunking do not change a value and are left out of the config's identity."""

    keep_affine: bool = True  # per-region maps are large (ResNet18: 10^5+ regions per path x K)
    affine_dtype: str = "float64"  # or float32: halves the largest arrays; breakpoints stay float64
    compressor: str = local_field("zstd")  # zstd | blosc
    level: int = local_field(3)
    region_chunk: int = local_field(65_536)  # rows per chunk of the region arrays

    def __post_init__(self):
        if self.affine_dtype not in ("float64", "float32"):
            raise ValueError(f"affine_dtype must be float64 or float32, got {self.affine_dtype!r}")
        if self.compressor not in ("zstd", "blosc"):
            raise ValueError(f"compressor must be zstd or blosc, got {self.compressor!r}")

    def codec(self):
        from zarr.codecs import BloscCodec, ZstdCodec

        return ZstdCodec(level=self.level) if self.compressor == "zstd" else BloscCodec(cname="zstd", clevel=self.level)


def shard_name(i: int) -> str:
    """The group name of shard ``i`` in a store."""
    return f"shard-{i:05d}"


def open_or_create(path, attrs: dict) -> Path:
    """Create the store with ``attrs``, or check that an existing one was made with the same.

    Raises :class:`StoreError` naming every identity attribute that differs (another schema
    version, checkpoint, path set, eps...); nothing is overwritten.
    """
    path = Path(path)
    attrs = {"schema": SCHEMA_VERSION, **attrs}
    if (path / "zarr.json").exists():
        have = dict(zarr.open_group(str(path), mode="r").attrs)
        if have.get("schema") != SCHEMA_VERSION:
            raise StoreError(f"{path} has schema version {have.get('schema')}, this code writes "
                             f"{SCHEMA_VERSION}: use a new store path (or the version that wrote it)")
        diff = [k for k in IDENTITY_KEYS if k in attrs and _norm(have.get(k)) != _norm(attrs[k])]
        if diff:
            detail = "; ".join(f"{k}: store has {have.get(k)!r}, asked for {attrs[k]!r}" for k in diff)
            raise StoreError(f"{path} was written with other settings ({detail}). Nothing was overwritten: "
                             "write to a new store path, or resume with the store's settings.")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{secrets.token_hex(4)}")
    zarr.open_group(str(tmp), mode="w").attrs.update(attrs)
    try:
        os.rename(tmp, path)  # atomic: two jobs creating one store cannot half-create it
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return open_or_create(path, {k: v for k, v in attrs.items() if k != "schema"})
    return path


def _norm(v):
    import json

    return json.dumps(v, sort_keys=True, default=str)


class ShardWriter:
    """Write one shard in chunks of consecutive segments; :meth:`commit` publishes it.

    ``path_id`` and ``segment_index`` (``(S,)``) describe the shard's segments in order; each
    :meth:`write` takes a :class:`pipeline.result.RegionResult` whose ``segment_index`` are
    positions ``0..S-1`` in this shard.
    """

    def __init__(self, store, shard: int, path_id, segment_index, k: int, cfg: StoreConfig = StoreConfig()):
        self.store = Path(store)
        self.final = self.store / shard_name(shard)
        token = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.tmp = self.store / f"{shard_name(shard)}.tmp-{token}"
        self.cfg = cfg
        self.n = len(path_id)
        self.written = 0
        self.regions = 0
        g = zarr.open_group(str(self.tmp), mode="w")
        g.attrs.update({"complete": False, "n_segments": self.n, "shard": shard})
        codec = cfg.codec()
        seg = g.require_group("segments")

        def make(group, name, shape, dtype, chunks):
            return group.create_array(name, shape=shape, dtype=dtype, chunks=chunks, compressors=codec)

        s_chunk = max(1, min(self.n, 65_536))
        self.seg = {
            "path_id": make(seg, "path_id", (self.n,), "i8", (s_chunk,)),
            "segment_index": make(seg, "segment_index", (self.n,), "i8", (s_chunk,)),
            "length": make(seg, "length", (self.n,), "f8", (s_chunk,)),
            "density": make(seg, "density", (self.n,), "i8", (s_chunk,)),
            "continuity_gap": make(seg, "continuity_gap", (self.n,), "f8", (s_chunk,)),
            "region_offset": make(seg, "region_offset", (self.n + 1,), "i8", (s_chunk + 1,)),
        }
        for name in SEGMENT_VECTORS:
            self.seg[name] = make(seg, name, (self.n, k), "f8", (s_chunk, k))
        self.seg["path_id"][:] = np.asarray(path_id, dtype=np.int64)
        self.seg["segment_index"][:] = np.asarray(segment_index, dtype=np.int64)
        self.seg["region_offset"][0:1] = np.zeros(1, dtype=np.int64)
        reg = g.require_group("regions")
        rc = cfg.region_chunk
        self.reg = {"t_start": make(reg, "t_start", (0,), "f8", (rc,)), "t_end": make(reg, "t_end", (0,), "f8", (rc,))}
        if cfg.keep_affine:
            self.reg["intercept"] = make(reg, "intercept", (0, k), cfg.affine_dtype, (rc, k))
            self.reg["slope"] = make(reg, "slope", (0, k), cfg.affine_dtype, (rc, k))
        self.group = g

    def write(self, res) -> None:
        lo, hi = int(res.segment_index[0]), int(res.segment_index[-1]) + 1
        if lo != self.written or hi - lo != res.n_segments:
            raise ValueError(f"shard chunks must arrive in order: expected segment {self.written}, got {lo}..{hi - 1}")
        if hi > self.n:
            raise ValueError(f"chunk ends at segment {hi - 1} but the shard has {self.n}")
        for name in ("length", "density", "continuity_gap", *SEGMENT_VECTORS):
            self.seg[name][lo:hi] = getattr(res, name)
        self.seg["region_offset"][lo + 1:hi + 1] = res.region_offset[1:] + self.regions
        self.reg["t_start"].append(res.t_start)
        self.reg["t_end"].append(res.t_end)
        if self.cfg.keep_affine:
            if res.intercept is None:
                raise ValueError("the store keeps affine maps but the result has none: discover with keep_affine=True")
            self.reg["intercept"].append(res.intercept.astype(self.cfg.affine_dtype))
            self.reg["slope"].append(res.slope.astype(self.cfg.affine_dtype))
        self.regions += res.n_regions
        self.written = hi

    def commit(self) -> bool:
        """Mark complete (last) and publish. Returns False if another job had already done so."""
        if self.written != self.n:
            raise ValueError(f"shard incomplete: {self.written} of {self.n} segments written")
        self.group.attrs.update({"complete": True, "n_regions": self.regions})
        if self.final.exists():
            if _is_complete(self.final):  # another job finished the same shard first
                shutil.rmtree(self.tmp, ignore_errors=True)
                return False
            shutil.rmtree(self.final)  # an incomplete shard under the final name (older writers): replace
        try:
            os.rename(self.tmp, self.final)
        except OSError:
            if _is_complete(self.final):
                shutil.rmtree(self.tmp, ignore_errors=True)
                return False
            raise
        return True

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _is_complete(shard: Path) -> bool:
    try:
        return bool(zarr.open_group(str(shard), mode="r").attrs.get("complete", False))
    except Exception:  # unreadable metadata: not complete
        return False


def shard_status(store) -> dict:
    """Shards of a store from the filesystem alone: complete, incomplete, missing, leftovers."""
    store = Path(store)
    if not (store / "zarr.json").exists():
        raise StoreError(f"{store} is not a store (no zarr.json): has discovery run yet?")
    attrs = dict(zarr.open_group(str(store), mode="r").attrs)
    n = int(attrs.get("n_shards", 0))
    complete, incomplete, leftovers = [], [], []
    for p in sorted(store.iterdir()):
        if not p.name.startswith("shard-"):
            continue
        if ".tmp-" in p.name:
            leftovers.append(p.name)
        elif _is_complete(p):
            complete.append(int(p.name.split("-")[1]))
        else:
            incomplete.append(int(p.name.split("-")[1]))
    missing = [i for i in range(n) if i not in complete]
    return {"n_shards": n, "complete": complete, "incomplete": incomplete, "missing": missing, "leftovers": leftovers}


class StoreReader:
    """Read the complete shards of one store: tables as pandas, regions lazily as dask."""

    def __init__(self, path, allow_incomplete: bool = False):
        self.path = Path(path)
        self.status = shard_status(self.path)
        self.attrs = dict(zarr.open_group(str(self.path), mode="r").attrs)
        if self.attrs.get("schema") != SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {self.attrs.get('schema')}; this reader reads {SCHEMA_VERSION}")
        if self.status["missing"] and not allow_incomplete:
            raise StoreError(f"{self.path}: shards {self.status['missing'][:10]} of {self.status['n_shards']} are not "
                             "complete; resume discovery, or open with allow_incomplete=True to read the rest")
        self.shards = self.status["complete"]

    def _group(self, i):
        return zarr.open_group(str(self.path / shard_name(i)), mode="r")

    def segment_array(self, name: str) -> np.ndarray:
        """A per-segment array over all complete shards, in shard order."""
        parts = [self._group(i)[f"segments/{name}"][:] for i in self.shards]
        return np.concatenate(parts) if parts else np.zeros(0)

    def segments(self) -> pd.DataFrame:
        """One row per segment: ids, length, density, certificate, and the L2-over-logits measures."""
        cols = {"shard": np.concatenate([np.full(self._group(i).attrs["n_segments"], i) for i in self.shards])
                if self.shards else np.zeros(0, dtype=int)}
        for name in SEGMENT_SCALARS:
            cols[name] = self.segment_array(name)
        for name in ("deviation", "total_variation"):
            cols[name] = np.linalg.norm(self.segment_array(name), axis=1) if self.shards else np.zeros(0)
        return pd.DataFrame(cols)

    def paths(self) -> pd.DataFrame:
        """One row per path (``pipeline.measures.PATH_COLUMNS``): density (sum), length,
        density per length, deviation and total variation (per-logit sums over the path's
        segments, then L2 over logits), ``continuity_gap`` (the largest), ``n_segments``."""
        return paths_table([shard_partials(self.path, i) for i in self.shards])

    def regions(self, name: str):
        """A region array (``t_start``, ``t_end``, ``intercept``, ``slope``) as one lazy dask array."""
        import dask.array as da

        parts = [da.from_zarr(str(self.path), component=f"{shard_name(i)}/regions/{name}") for i in self.shards]
        return da.concatenate(parts) if parts else da.zeros((0,))


def shard_partials(store, shard: int) -> dict:
    """Per-path partial sums of one complete shard (:func:`pipeline.measures.path_partials`):
    reads its per-segment arrays only. The unit of work of the analysis' Dask graph."""
    seg = zarr.open_group(str(Path(store) / shard_name(shard) / "segments"), mode="r")
    return path_partials(seg["path_id"][:], seg["density"][:], seg["length"][:], seg["deviation"][:],
                         seg["total_variation"][:], seg["continuity_gap"][:])


def paths_table(parts) -> pd.DataFrame:
    """The per-path table (``PATH_COLUMNS``) of one store from its shards' :func:`shard_partials`."""
    return pd.DataFrame(combine_path_partials(parts), columns=list(PATH_COLUMNS))


def open_store(path, allow_incomplete: bool = False) -> StoreReader:
    return StoreReader(path, allow_incomplete)


def open_stores(paths, allow_incomplete: bool = False) -> pd.DataFrame:
    """The per-path tables of many stores, with a ``store`` column."""
    frames = []
    for p in paths:
        df = open_store(p, allow_incomplete).paths()
        df.insert(0, "store", str(p))
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
