"""Reading complete shards: arrays checked against their manifest, and the reader every layout shares.

    from pipeline.store.reading import read_checked
    cols = read_checked(store, 0, ["segments/density", "segments/length"])   # deep-checked, by name

A reader trusts a shard only after :mod:`pipeline.store.verify` passed it: :class:`ShardReader`
checks every shard once when the store is opened (cheaply, or deeply with ``deep``) and keeps
the manifests it read; :func:`read_checked` checks the small per-item arrays it reads deeply.
Every read checks the array's metadata against the manifest with the check
:mod:`pipeline.store.verify` applies (:func:`pipeline.store.manifest.array_problem`), and what it
read against the shape the manifest gives the selection; a read that still fails inside Zarr
is a :class:`pipeline.store.identity.DamagedShardError` naming store, shard and array. The layouts (:class:`pipeline.store.lines.StoreReader`,
:class:`pipeline.store.planes.PlaneStoreReader`) add what their items are.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import zarr

from pipeline.store.placement import check_placement
from pipeline.store.identity import (SCHEMA_VERSION, DamagedShardError, StoreError, shard_name, store_attrs,
                                     store_geometry)
from pipeline.store.manifest import Problem, array_problem
from pipeline.store.verify import damage, scan, shard_meta, verify_shard

__all__ = ["LATER_ARRAYS", "ShardReader", "read_array", "read_checked", "check_geometry", "has_array"]

log = logging.getLogger("pipeline.store.reading")

# arrays added since schema 2, read as NaN from shards written before them (gap_tol: the
# certificate's pass/fail tolerance; NaN = no verdict recorded, counted as passed)
LATER_ARRAYS = ("segments/gap_tol", "planes/gap_tol", "planes/gram")
# geometry -> (what its items are called, the function that opens its stores)
GEOMETRIES = {"line": ("segments", "pipeline.store.lines.open_store"),
              "plane": ("planes", "pipeline.store.planes.open_plane_store")}


def has_array(manifest: dict | None, key: str) -> bool:
    """Whether the shard whose manifest is ``manifest`` holds array ``key``."""
    return key in (manifest or {}).get("arrays", {})


def check_geometry(path: Path, attrs: dict, geometry: str) -> None:
    """Refuse a store of another schema, or whose items are not ``geometry``'s."""
    if attrs.get("schema") != SCHEMA_VERSION:
        raise StoreError(f"{path} has schema version {attrs.get('schema')}; this reader reads {SCHEMA_VERSION}")
    have = store_geometry(attrs)
    if have != geometry:
        opener = GEOMETRIES.get(have, (None, "the reader of its geometry"))[1]
        raise StoreError(f"{path} is a store of {have}s, not of {GEOMETRIES[geometry][0]}: read it with {opener}")


def _open_array(store: Path, shard: int, manifest: dict, key: str):
    """Array ``key`` of a shard, its metadata checked against the manifest's shape and dtype."""
    want = manifest["arrays"].get(key)
    if want is None:
        raise StoreError(f"{store}: shard {shard_name(shard)} has no array {key} (arrays: "
                         f"{', '.join(manifest['arrays'])})")
    arr = _guarded(store, shard, key, lambda: zarr.open_array(str(store / shard_name(shard) / key), mode="r"))
    problem = array_problem(key, arr.shape, arr.dtype, arr.chunks, want)  # the check verify applies
    if problem:
        raise damage(store, shard, problem)
    return arr


def _guarded(store: Path, shard: int, key: str, read):
    """``read()``, with any failure inside Zarr or its codecs (on bad bytes they raise
    RuntimeError, ValueError, KeyError...) raised as a :class:`DamagedShardError`."""
    try:
        return read()
    except Exception as err:  # noqa: BLE001 - the codec's own error is kept as the cause
        raise damage(store, shard, Problem(f"it cannot be decoded ({type(err).__name__}: {err})", key)) from err


def read_array(store: Path, shard: int, manifest: dict, key: str, sel=slice(None)) -> np.ndarray:
    """``sel`` of array ``key`` (``group/name``) of a complete shard whose ``manifest``
    (:func:`pipeline.store.verify.verify_shard`) is given, the array's shape and dtype checked
    against it; a read that fails in Zarr is a :class:`DamagedShardError` naming store, shard
    and array."""
    arr = _open_array(store, shard, manifest, key)
    data = _guarded(store, shard, key, lambda: np.asarray(arr[sel]))
    want = np.broadcast_to(np.empty((), dtype=data.dtype), tuple(manifest["arrays"][key]["shape"]))[sel].shape
    if data.shape != want:  # what was read is not what the manifest says the selection holds
        raise damage(store, shard, Problem(f"reading {sel!r} gave shape {list(data.shape)} where the manifest's "
                                           f"shape gives {list(want)}", key))
    return data


def read_checked(store, shard: int, keys, optional=()) -> dict:
    """The arrays ``keys`` (``group/name``) of a complete shard, by name, after checking their
    files deeply (checksums: these are the small per-item arrays a table is built from). An
    array of ``LATER_ARRAYS`` or of ``optional`` (such as the affine maps, which a store may
    not keep) that the shard was written without is left out.

    Raises
    ------
    DamagedShardError
        The arrays differ from the shard's manifest, or cannot be decoded.
    """
    store = Path(store)
    meta = shard_meta(store / shard_name(shard))
    manifest = meta.get("manifest") if isinstance(meta, dict) else None
    keys = [k for k in keys if (k not in LATER_ARRAYS and k not in optional) or has_array(manifest, k)]
    manifest = verify_shard(store, shard, deep=True, arrays=keys)["manifest"]
    return {key.split("/")[1]: read_array(store, shard, manifest, key) for key in keys}


class ShardArray:
    """One array of one shard as an array-like for ``dask.array.from_array``: every block read
    goes through :func:`read_array`."""

    def __init__(self, store: Path, shard: int, manifest: dict, key: str):
        self.store, self.shard, self.manifest, self.key = store, shard, manifest, key
        meta = manifest["arrays"][key]
        self.shape, self.dtype = tuple(meta["shape"]), np.dtype(meta["dtype"])
        self.ndim = len(self.shape)

    def __getitem__(self, sel):
        return read_array(self.store, self.shard, self.manifest, self.key, sel)

    def zarr_chunks(self) -> tuple:
        """The array's chunk shape in the store (its metadata checked against the manifest)."""
        return _open_array(self.store, self.shard, self.manifest, self.key).chunks


class ShardReader:
    """The complete shards of one store of ``geometry``, each checked once on opening.

    Opening checks every shard cheaply (:func:`pipeline.store.verify.verify_shard`): a damaged
    one raises :class:`DamagedShardError`, unless ``allow_incomplete`` (it is then left out,
    like a missing one). ``deep`` checks every checksum too (reads the whole store). A layout
    names its ``geometry`` and how a row is found (:meth:`_ids`).
    """

    geometry = "line"

    def __init__(self, path, allow_incomplete: bool = False, deep: bool = False):
        self.path = Path(path)
        self.attrs = store_attrs(self.path)
        check_geometry(self.path, self.attrs, self.geometry)
        check_placement(self.path, self.attrs)
        self.status, self._meta, errors = scan(self.path, deep)
        damaged = self.status["damaged"]
        if damaged and not allow_incomplete:
            raise _first_damage(self.path, damaged, errors)
        if damaged:
            log.warning("%s: damaged shards %s are left out: %s", self.path, damaged, self.status["errors"][damaged[0]])
        if self.status["missing"] and not allow_incomplete:
            raise StoreError(f"{self.path}: shards {self.status['missing'][:10]} of {self.status['n_shards']} are not "
                             "complete; resume discovery, or open with allow_incomplete=True to read the rest")
        self.shards = self.status["complete"]
        self._index = None

    def _manifest(self, shard: int) -> dict:
        return self._meta[shard]["manifest"]

    def _has(self, shard: int, key: str) -> bool:
        return has_array(self._manifest(shard), key)

    def _read(self, shard: int, key: str, sel=slice(None)) -> np.ndarray:
        return read_array(self.path, shard, self._manifest(shard), key, sel)

    def _ids(self, shard: int) -> list:
        """The id of each row (item) of a shard, in order: what :meth:`_locate` finds a row by."""
        raise NotImplementedError

    def not_found(self, what: str, ids) -> KeyError:
        """The error for ``what`` (such as ``"path 7"``) asked for and not among ``ids`` (those of
        its kind the complete shards hold): when every shard is complete it does not exist in the
        store (and the valid ids are named); otherwise it may be in a shard not complete."""
        st = self.status
        if st["missing"]:
            return KeyError(f"{what} is not in the complete shards of {self.path}: shards {st['missing'][:10]} of "
                            f"{st['n_shards']} are not complete (not written, or damaged) and it may be in one of "
                            f"them; `python -m jobs verify {self.path}` says which, resuming discovery writes them")
        return KeyError(f"{what} does not exist in this store ({self.path}), whose shards are all complete: it "
                        f"holds {_describe(ids)}")

    def _locate(self) -> dict:
        """id -> ``(shard, row)`` over the complete shards (read once)."""
        if self._index is None:
            self._index = {key: (i, r) for i in self.shards for r, key in enumerate(self._ids(i))}
        return self._index


def _first_damage(path: Path, damaged: list, errors: dict) -> DamagedShardError:
    """The error of the first damaged shard, counting the others."""
    first = errors[damaged[0]]
    if len(damaged) == 1:
        return first
    return DamagedShardError(f"{first} ({len(damaged) - 1} more damaged shard(s): {damaged[1:10]}; "
                             f"`python -m jobs verify {path}` lists them all)", first.store, first.shard, first.array,
                             first.file)


def _describe(ids) -> str:
    """``ids`` (integers) in a few words: a range when they are consecutive, else the first ten."""
    ids = sorted({int(i) for i in ids})
    if not ids:
        return "none"
    if ids == list(range(ids[0], ids[-1] + 1)):
        return f"ids {ids[0]} to {ids[-1]}" if len(ids) > 1 else f"id {ids[0]} only"
    return f"{len(ids)} ids: {', '.join(map(str, ids[:10]))}{' ...' if len(ids) > 10 else ''}"
