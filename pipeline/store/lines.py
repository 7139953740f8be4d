"""The segment layout of a store: one shard of segments written, many read.

    from pipeline.store.lines import open_store
    reader = open_store("runs/digits-vgg8/regions/final-1a2b3c4d.zarr")
    reader.paths()                    # one row per path: density, length, deviation, kinks, ...
    reader.regions("t_start")         # every region's start, lazily (dask)

Layout (``shared/DESIGN.md``)::

    <store>.zarr/              attrs: schema, model spec, checkpoint sha256, dataset, split, paths,
                               eps, dtype, method, versions, n_shards, K, run, discover_config
      shard-00000/             attrs: complete=true and manifest (written last), n_segments, n_regions,
                               n_uncertified (rows whose certificate failed)
        segments/  path_id, segment_index, length, region_offset (S+1), density, deviation (S,K),
                   total_variation (S,K), continuity_gap, certificate_tol, gap_tol, f0 (S,K), f1 (S,K)
        regions/   t_start, t_end (float64, always), intercept, slope (R,K; optional, f64/f32)

This module knows only this layout. What every store shares, whatever its items, lives below
it: the store's identity (:mod:`pipeline.store.identity`), a shard's publication
(:mod:`pipeline.store.shards`) and manifest (:mod:`pipeline.store.manifest`), its checks
(:mod:`pipeline.store.verify`) and the checked reads (:mod:`pipeline.store.reading`). Plane
stores (``geometry: plane``) lay out their shards in :mod:`pipeline.store.planes`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.engine.kink_measures import KINK_COLUMNS, combine_kink_partials, kink_partials
from pipeline.engine.measures import PATH_COLUMNS, combine_path_partials, path_partials
from pipeline.store.identity import StoreConfig, StoreError, shard_name
from pipeline.store.reading import ShardArray, ShardReader, read_checked
from pipeline.store.shards import ShardFolder

__all__ = ["SEGMENT_SCALARS", "SEGMENT_VECTORS", "REGION_ARRAYS", "PATH_TABLE_COLUMNS", "ShardWriter", "StoreReader",
           "open_store", "open_stores", "shard_partials", "paths_table"]

SEGMENT_SCALARS = ("path_id", "segment_index", "length", "density", "continuity_gap", "certificate_tol", "gap_tol")
SEGMENT_VECTORS = ("deviation", "total_variation", "f0", "f1")
REGION_ARRAYS = ("t_start", "t_end", "intercept", "slope")
# the per-segment arrays shard_partials reads (checked deeply: they are small)
PARTIAL_ARRAYS = ("path_id", "density", "length", "deviation", "total_variation", "continuity_gap", "gap_tol")
# ... and the region arrays the kink measures and sampled counts need (slope only where kept)
PARTIAL_REGION_ARRAYS = ("segments/region_offset", "regions/t_start", "regions/slope")
# the per-path table: counting and deviation (pipeline.engine.measures), then the kinks and the
# sampled counts (pipeline.engine.kink_measures)
PATH_TABLE_COLUMNS = (*PATH_COLUMNS, *KINK_COLUMNS)


class ShardWriter(ShardFolder):
    """Write one shard of a segment store in chunks of consecutive segments; :meth:`commit`
    publishes it.

    ``path_id`` and ``segment_index`` (``(S,)``) describe the shard's segments in order; each
    :meth:`write` takes a :class:`pipeline.engine.result.RegionResult` whose ``segment_index`` are
    positions ``0..S-1`` in this shard.
    """

    item = "segments"

    def __init__(self, store, shard: int, path_id, segment_index, k: int, cfg: StoreConfig = StoreConfig()):
        n, rc = len(path_id), cfg.region_chunk
        s_chunk = max(1, min(n, 65_536))
        super().__init__(store, shard, cfg, n, s_chunk, affine={"intercept": ((k,), rc), "slope": ((k,), rc)})
        self.seg = {name: self.array(f"segments/{name}", (n,), "i8" if name in ("path_id", "segment_index",
                                                                                 "density") else "f8", (s_chunk,))
                    for name in SEGMENT_SCALARS}
        for name in SEGMENT_VECTORS:
            self.seg[name] = self.array(f"segments/{name}", (n, k), "f8", (s_chunk, k))
        self.seg["path_id"][:] = np.asarray(path_id, dtype=np.int64)
        self.seg["segment_index"][:] = np.asarray(segment_index, dtype=np.int64)
        self.reg = {name: self.array(f"regions/{name}", (0,), "f8", (rc,)) for name in ("t_start", "t_end")}

    def write(self, res) -> None:
        """Append the next chunk of segments (a :class:`pipeline.engine.result.RegionResult`)."""
        lo, hi = self._chunk(res.segment_index, res.n_segments)
        for name in ("length", "density", "continuity_gap", *SEGMENT_VECTORS):
            self.seg[name][lo:hi] = getattr(res, name)
        tol = res.certificate_tol
        self.seg["certificate_tol"][lo:hi] = np.zeros(res.n_segments) if tol is None else tol
        self.seg["gap_tol"][lo:hi] = np.full(res.n_segments, np.nan) if res.gap_tol is None else res.gap_tol
        for name in ("t_start", "t_end"):
            self.reg[name].append(getattr(res, name))
        self._close_chunk(res, lo, hi, res.region_offset, res.n_regions)


class StoreReader(ShardReader):
    """Read the complete shards of one segment store: tables as pandas, regions lazily as dask.

    Opening checks every shard cheaply (:func:`pipeline.store.verify.verify_shard`): a damaged
    one raises :class:`pipeline.store.identity.DamagedShardError`, unless ``allow_incomplete``
    (it is then left out, like a missing one). ``deep`` checks every checksum too (reads the
    whole store).
    """

    geometry = "line"

    def _ids(self, shard: int) -> list:
        pid, sidx = self._read(shard, "segments/path_id"), self._read(shard, "segments/segment_index")
        return [(int(p), int(s)) for p, s in zip(pid, sidx)]

    def segment_array(self, name: str) -> np.ndarray:
        """A per-segment array over all complete shards, in shard order (``gap_tol`` is NaN in
        shards written before it was recorded)."""
        parts = [self._read(i, f"segments/{name}") if self._has(i, f"segments/{name}")
                 else np.full(self._meta[i]["n_segments"], np.nan) for i in self.shards]
        return np.concatenate(parts) if parts else np.zeros(0)

    def segments(self) -> pd.DataFrame:
        """One row per segment: ids, length, density, the certificate (``continuity_gap``, and
        ``certificate_tol``, the float32 screen's tolerance) and the L2-over-logits measures."""
        cols = {"shard": np.concatenate([np.full(self._meta[i]["n_segments"], i) for i in self.shards])
                if self.shards else np.zeros(0, dtype=int)}
        for name in SEGMENT_SCALARS:
            cols[name] = self.segment_array(name)
        for name in ("deviation", "total_variation"):
            cols[name] = np.linalg.norm(self.segment_array(name), axis=1) if self.shards else np.zeros(0)
        return pd.DataFrame(cols)

    def paths(self) -> pd.DataFrame:
        """One row per path (``PATH_TABLE_COLUMNS``): density (sum), length, density per length,
        deviation and total variation (per-logit sums over the path's segments, then L2 over
        logits), ``continuity_gap`` (the largest), ``n_segments``, ``n_uncertified``; then the
        kink measures and sampled counts (:mod:`pipeline.engine.kink_measures`; NaN but the
        sampled counts where the store kept no affine maps)."""
        return paths_table([shard_partials(self.path, i) for i in self.shards])

    def regions(self, name: str):
        """A region array (``t_start``, ``t_end``, ``intercept``, ``slope``) as one lazy dask
        array; a block that cannot be decoded raises :class:`DamagedShardError`."""
        import dask.array as da
        from dask.base import tokenize

        if name not in REGION_ARRAYS:
            raise ValueError(f"region arrays are {', '.join(REGION_ARRAYS)}; got {name!r}")
        key = f"regions/{name}"
        if self.shards and not self._has(self.shards[0], key):
            raise StoreError(f"{self.path} kept no region array {name!r} (discovered with keep_affine=False?)")
        parts = []
        for i in self.shards:
            manifest = self._manifest(i)
            arr = ShardArray(self.path, i, manifest, key)
            chunks = arr.zarr_chunks()
            token = tokenize(str(self.path), i, key, {k: v for k, v in manifest["files"].items() if k.startswith(key)})
            parts.append(da.from_array(arr, chunks=chunks, name=f"{shard_name(i)}-{name}-{token}", lock=False,
                                       asarray=True, meta=np.zeros((0,) * arr.ndim, dtype=arr.dtype)))
        return da.concatenate(parts) if parts else da.zeros((0,))

    def path_ids(self) -> list[int]:
        """The ids of the paths in the complete shards, sorted."""
        return sorted({p for p, _ in self._locate()})

    def segment_indices(self, path_id: int) -> list[int]:
        """The segment indices of path ``path_id`` in the complete shards, sorted."""
        return sorted(s for p, s in self._locate() if p == path_id)

    def segment(self, path_id: int, segment_index: int) -> dict:
        """The arrays of one segment.

        Returns
        -------
        dict
            ``shard``; the per-segment values ``length``, ``density``, ``continuity_gap``,
            ``certificate_tol`` (floats or ints), ``deviation``, ``total_variation``, ``f0``,
            ``f1`` (``(K,)``); the region rows ``t_start``, ``t_end`` (``(R,)``) and
            ``intercept``, ``slope`` (``(R, K)``, float64; ``None`` when the store kept no
            affine maps).

        Raises
        ------
        KeyError
            No complete shard holds that segment: it does not exist in the store (the valid ids
            are named), or it may be in a shard that is not complete.
        """
        try:
            shard, row = self._locate()[(int(path_id), int(segment_index))]
        except KeyError:
            paths = self.path_ids()
            if int(path_id) not in paths:
                raise self.not_found(f"path {path_id}", paths) from None
            raise self.not_found(f"segment {segment_index} of path {path_id}", self.segment_indices(path_id)) from None
        out = {"shard": shard}
        for name in ("length", "continuity_gap", "certificate_tol", "gap_tol"):
            present = self._has(shard, f"segments/{name}")
            out[name] = float(self._read(shard, f"segments/{name}", row)) if present else float("nan")
        out["density"] = int(self._read(shard, "segments/density", row))
        for name in SEGMENT_VECTORS:
            out[name] = self._read(shard, f"segments/{name}", row)
        lo, hi = (int(v) for v in self._read(shard, "segments/region_offset", slice(row, row + 2)))
        for name in REGION_ARRAYS:
            key = f"regions/{name}"
            out[name] = self._read(shard, key, slice(lo, hi)).astype(np.float64) if self._has(shard, key) else None
        return out


def shard_partials(store, shard: int) -> dict:
    """Per-path partials of one complete shard: ``{"paths": path_partials(...), "kinks":
    kink_partials(...)}`` (:mod:`pipeline.engine.measures`, :mod:`pipeline.engine.kink_measures`).
    Reads its per-segment arrays and the region arrays ``t_start`` and ``slope`` (where kept),
    after checking them deeply. The unit of work of the analysis' Dask graph.

    Raises
    ------
    DamagedShardError
        The arrays read differ from the shard's manifest, or cannot be decoded.
    """
    cols = read_checked(store, shard, [f"segments/{name}" for name in PARTIAL_ARRAYS] + list(PARTIAL_REGION_ARRAYS),
                        optional=("regions/slope",))
    paths = path_partials(cols["path_id"], cols["density"], cols["length"], cols["deviation"],
                          cols["total_variation"], cols["continuity_gap"], cols.get("gap_tol"))
    kinks = kink_partials(cols["path_id"], cols["length"], cols["region_offset"], cols["t_start"], cols.get("slope"))
    return {"paths": paths, "kinks": kinks}


def paths_table(parts) -> pd.DataFrame:
    """The per-path table (``PATH_TABLE_COLUMNS``) of one store from its shards' :func:`shard_partials`."""
    parts = list(parts)
    paths = combine_path_partials([p["paths"] for p in parts])
    kinks = combine_kink_partials([p["kinks"] for p in parts])
    if not np.array_equal(paths["path_id"], kinks["path_id"]):  # both from the same segments' path ids
        raise AssertionError("the kink measures' paths differ from the path table's")
    return pd.DataFrame({**paths, **kinks}, columns=list(PATH_TABLE_COLUMNS))


def open_store(path, allow_incomplete: bool = False, deep: bool = False) -> StoreReader:
    """A :class:`StoreReader` of the store at ``path``."""
    return StoreReader(path, allow_incomplete, deep)


def open_stores(paths, allow_incomplete: bool = False) -> pd.DataFrame:
    """The per-path tables of many stores, with a ``store`` column."""
    frames = []
    for p in paths:
        df = open_store(p, allow_incomplete).paths()
        df.insert(0, "store", str(p))
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
