"""The Zarr (v3) store of discovered regions: write one shard, read many, verify each.

Layout (``shared/DESIGN.md``)::

    <store>.zarr/              attrs: schema, model spec, checkpoint sha256, dataset, split, paths,
                               eps, dtype, method, versions, n_shards, K, run, discover_config
      shard-00000/             attrs: complete=true and manifest (written last), n_segments, n_regions,
                               n_uncertified (rows whose certificate failed)
        segments/  path_id, segment_index, length, region_offset (S+1), density, deviation (S,K),
                   total_variation (S,K), continuity_gap, certificate_tol, gap_tol, f0 (S,K), f1 (S,K)
        regions/   t_start, t_end (float64, always), intercept, slope (R,K; optional, f64/f32)

This module is the only one that knows this layout: everything else reads through
:class:`StoreReader`, :func:`shard_partials`, :func:`shard_info`, :func:`shard_state` and
:func:`shard_status`. It also holds what every store's shards share whatever their layout
(:class:`ShardFolder`: publication and manifest; :func:`verify_shard`, :func:`read_array`):
plane stores (``geometry: plane``) lay out their shards in :mod:`pipeline.store.planes`.

**Publication.** A shard is written by one :class:`ShardWriter` under a temporary name beside
its final place (``shard-00000.tmp-<host>-<pid>-<token>``), marked complete together with its
manifest, flushed to disk, then renamed into place in one step. So a killed job leaves no half
shard under the final name (its leftovers are ignored and listed by :func:`shard_status`), and
two jobs given the same shard cannot interleave their writes: the first rename wins, the
second finds a valid complete shard and discards its copy. A damaged or incomplete shard under
the final name is renamed aside (``shard-00000.damaged-<token>``), replaced, then deleted.

**Manifest.** The completion marker (the shard group's attributes) records, for every array of
the shard, its shape and dtype, and for every file of the shard but its own ``zarr.json``
(chunks and metadata), its size and CRC-32::

    {"version": 1, "checksum": "crc32",
     "arrays": {"segments/deviation": {"shape": [S, K], "dtype": "float64"}, ...},
     "files": {"segments/deviation/c/0/0": [394, "1a2b3c4d"], "segments/deviation/zarr.json": [...], ...}}

Zarr reads a missing chunk as its fill value without complaint, so a reader checks before it
trusts (:func:`verify_shard`): the cheap check stats every file (missing, truncated or added
files, a missing manifest); the deep one also reads them and compares checksums (flipped
bytes). :func:`shard_status` sorts shards by the cheap check, :class:`StoreReader` reads only
shards that pass it, :func:`shard_partials` checks the per-segment arrays it reads deeply, and a
read that still fails inside Zarr is a :class:`DamagedShardError` naming store, shard and array.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import zlib
from dataclasses import dataclass
from typing import NamedTuple
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from pipeline.atomic import fsync_dir, fsync_tree, unique_suffix
from pipeline.config import local_field
from pipeline.engine.measures import PATH_COLUMNS, combine_path_partials, path_partials

__all__ = ["SCHEMA_VERSION", "StoreConfig", "StoreError", "DamagedShardError", "open_or_create", "ShardFolder",
           "ShardWriter", "shard_status", "verify_shard", "read_array", "store_geometry", "shard_info", "shard_state",
           "is_store", "store_attrs", "rewrite_command",
           "StoreReader", "open_store", "open_stores", "shard_name", "shard_partials", "paths_table"]

log = logging.getLogger("pipeline.store.lines")

SCHEMA_VERSION = 2  # 2: the engine's options and the path set id are identity attributes
SEGMENT_SCALARS = ("path_id", "segment_index", "length", "density", "continuity_gap", "certificate_tol", "gap_tol")
# arrays added since schema 2, read as NaN from shards written before them (gap_tol: the
# certificate's pass/fail tolerance; NaN = no verdict recorded, counted as passed)
LATER_ARRAYS = ("segments/gap_tol", "planes/gap_tol")
SEGMENT_VECTORS = ("deviation", "total_variation", "f0", "f1")
REGION_ARRAYS = ("t_start", "t_end", "intercept", "slope")
# the per-segment arrays shard_partials reads (checked deeply: they are small)
PARTIAL_ARRAYS = ("path_id", "density", "length", "deviation", "total_variation", "continuity_gap", "gap_tol")
# attributes that must not change between the jobs writing one store
IDENTITY_KEYS = ("schema", "checkpoint_sha256", "model", "dataset", "split", "paths", "path_set", "method", "eps",
                 "dtype", "certify", "n_shards", "keep_affine", "affine_dtype", "domain", "plane_engine")
MANIFEST_VERSION = 1
_SHARD = re.compile(r"shard-(\d+)")
_LEFTOVER = re.compile(r"shard-\d+\.(tmp|damaged)-.+")
_PUBLISH_ATTEMPTS = 8


class StoreError(ValueError):
    """A store that cannot be used as asked (other schema, other checkpoint, other settings)."""


class DamagedShardError(StoreError):
    """A complete shard whose files no longer match its manifest, or cannot be decoded.

    The message names the store, the shard, the array and the file, and says how to rewrite the
    shard; the same are attributes (``store``, ``shard``, ``array``, ``file``; ``None`` where
    unknown).
    """

    def __init__(self, message: str, store=None, shard=None, array=None, file=None):
        super().__init__(message)
        self.store, self.shard, self.array, self.file = store, shard, array, file

    def __reduce__(self):  # Dask workers send errors back pickled: keep the fields
        return type(self), (self.args[0], self.store, self.shard, self.array, self.file)


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
        """The chunk codec. Zstd frames carry their own checksum, so a corrupt chunk fails to
        decode even where only the cheap check ran."""
        from zarr.codecs import BloscCodec, ZstdCodec

        if self.compressor == "zstd":
            return ZstdCodec(level=self.level, checksum=True)
        return BloscCodec(cname="zstd", clevel=self.level)


def shard_name(i: int) -> str:
    """The group name of shard ``i`` in a store."""
    return f"shard-{i:05d}"


# ---- the store ----------------------------------------------------------------------------------

def open_or_create(path, attrs: dict) -> Path:
    """Create the store with ``attrs``, or check that an existing one was made with the same.

    Raises :class:`StoreError` naming every identity attribute that differs (another schema
    version, checkpoint, path set, eps...); nothing is overwritten.
    """
    path = Path(path)
    attrs = {"schema": SCHEMA_VERSION, **attrs}
    if is_store(path):
        have = store_attrs(path)
        if have.get("schema") != SCHEMA_VERSION:
            raise StoreError(f"{path} has schema version {have.get('schema')}, this code writes "
                             f"{SCHEMA_VERSION}: use a new store path (or the version that wrote it)")
        if store_geometry(have) != store_geometry(attrs):
            raise StoreError(f"{path} holds {store_geometry(have)}s, this job writes {store_geometry(attrs)}s: "
                             "nothing was overwritten; write to a new store path")
        diff = [k for k in IDENTITY_KEYS if k in attrs and _norm(have.get(k)) != _norm(attrs[k])]
        if diff:
            detail = "; ".join(f"{k}: store has {have.get(k)!r}, asked for {attrs[k]!r}" for k in diff)
            raise StoreError(f"{path} was written with other settings ({detail}). Nothing was overwritten: "
                             "write to a new store path, or resume with the store's settings.")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{unique_suffix()}")
    zarr.open_group(str(tmp), mode="w").attrs.update(attrs)
    fsync_tree(tmp)
    try:
        os.rename(tmp, path)  # atomic: two jobs creating one store cannot half-create it
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return open_or_create(path, {k: v for k, v in attrs.items() if k != "schema"})
    fsync_dir(path.parent)
    return path


def store_geometry(attrs: dict) -> str:
    """What a store's items are, from its attributes: ``"line"`` (segments; stores written
    before planes existed have no ``geometry``) or ``"plane"`` (:mod:`pipeline.store.planes`)."""
    return str(attrs.get("geometry", "line"))


def is_store(path) -> bool:
    """Whether ``path`` holds a store (its root metadata exists): nothing is verified."""
    return (Path(path) / "zarr.json").is_file()


def store_attrs(path) -> dict:
    """The attributes of the store at ``path``.

    Raises
    ------
    StoreError
        ``path`` holds no store (no ``zarr.json``), or its metadata cannot be read.
    """
    path = Path(path)
    if not is_store(path):
        raise StoreError(f"{path} is not a store (no zarr.json): has discovery run yet?")
    try:
        return dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception as err:  # noqa: BLE001 - any failure to parse the root metadata
        raise StoreError(f"{path}: the store's metadata (zarr.json) cannot be read ({type(err).__name__}: {err}); "
                         "the store must be written again") from err


def _norm(v):
    return json.dumps(v, sort_keys=True, default=str)


# ---- writing ------------------------------------------------------------------------------------

class ShardFolder:
    """One shard being written under its temporary name; :meth:`commit` publishes it.

    The part of a shard writer that knows no layout: the temporary group (attributes
    ``complete=False`` and ``extra``), :meth:`array` to create its arrays, and the manifest,
    flush and rename of :meth:`commit`. :class:`ShardWriter` (segments) and
    :class:`pipeline.store.planes.PlaneShardWriter` (planes) lay their arrays out on it.
    """

    item = "items"  # what the layout's items are called, in messages

    def __init__(self, store, shard: int, cfg: "StoreConfig", extra: dict):
        self.store = Path(store)
        self.shard = shard
        self.final = self.store / shard_name(shard)
        self.tmp = self.store / f"{shard_name(shard)}.tmp-{unique_suffix()}"
        self.cfg = cfg
        self.regions = 0
        self.uncertified = 0  # items whose certificate failed (written with on_certificate="warn")
        self.arrays: dict = {}  # key ("segments/density") -> zarr array: what the manifest lists
        self.group = zarr.open_group(str(self.tmp), mode="w")
        self.group.attrs.update({"complete": False, "shard": shard, **extra})
        self._codec = cfg.codec()

    def array(self, key: str, shape, dtype, chunks):
        """Create array ``key`` (``group/name``) of the shard, compressed with the store's codec."""
        group, name = key.split("/")
        arr = self.group.require_group(group).create_array(name, shape=shape, dtype=dtype, chunks=chunks,
                                                           compressors=self._codec)
        self.arrays[key] = arr
        return arr

    def _chunk(self, index, count: int) -> tuple[int, int]:
        """``(lo, hi)`` of a chunk whose items are ``index`` (positions in the shard), after
        checking it is the next ``count`` items and ends within the shard."""
        lo, hi = int(index[0]), int(index[-1]) + 1
        one = self.item[:-1]
        if lo != self.written or hi - lo != count:
            raise ValueError(f"shard chunks must arrive in order: expected {one} {self.written}, got {lo}..{hi - 1}")
        if hi > self.n:
            raise ValueError(f"chunk ends at {one} {hi - 1} but the shard has {self.n}")
        return lo, hi

    def complete(self) -> bool:
        """Whether every item was written (checked by :meth:`commit`): the layout keeps
        ``n`` (items of the shard) and ``written`` (items written so far)."""
        return self.written == self.n

    def commit(self, deep: bool = False) -> bool:
        """Mark complete with the shard's manifest, flush it to disk and publish it.

        Parameters
        ----------
        deep : bool
            How to judge a shard already under the final name: by checksums (``True``) or by
            file sizes (the default, as :func:`shard_status`).

        Returns
        -------
        bool
            ``True`` if this copy was published; ``False`` if another job had already published
            a valid complete shard (this copy is then discarded). A damaged or incomplete shard
            under the final name is replaced.
        """
        if not self.complete():
            raise ValueError(f"shard incomplete: {self.written} of {self.n} {self.item} written")
        manifest = _make_manifest(self.tmp, self.arrays)
        self.group.attrs.update({"complete": True, "n_regions": self.regions, "n_uncertified": self.uncertified,
                                 "manifest": manifest})
        fsync_tree(self.tmp)  # on a shared filesystem, all of it is on disk before the name is
        return self._publish(deep)

    def _publish(self, deep: bool) -> bool:
        """Rename the temporary into place; see :meth:`commit`. Another job may publish, or move
        aside, the same shard at any moment: every step is a rename that either happens whole or
        fails, and each failure is judged again from what is then on disk."""
        aside = []
        try:
            for _ in range(_PUBLISH_ATTEMPTS):
                try:
                    os.rename(self.tmp, self.final)
                except OSError as err:
                    if err.errno not in (errno.EEXIST, errno.ENOTEMPTY) and not self.final.exists():
                        raise
                else:
                    fsync_dir(self.store)
                    return True
                state, _, problem = _inspect(self.final, deep)
                if state == "complete":  # another job finished the same shard first
                    self.abort()
                    return False
                moved = self._move_aside(state, problem, deep)
                if moved is False:
                    return False
                if moved is not None:
                    aside.append(moved)
            raise StoreError(f"{self.final}: could not publish {self.tmp.name} after {_PUBLISH_ATTEMPTS} attempts "
                             "(other jobs keep replacing the shard?); the temporary is kept, run the job again")
        finally:
            for p in aside:  # damaged or incomplete copies: the shard is in place now (ours or another job's)
                shutil.rmtree(p, ignore_errors=True)

    def _move_aside(self, state: str, problem, deep: bool):
        """Rename the shard under the final name aside. Returns its new path; ``None`` if it was
        gone already; ``False`` if what was moved is another job's valid shard, published since
        it was judged: it is put back and this copy is discarded."""
        moved = self.store / f"{self.final.name}.damaged-{unique_suffix()}"
        try:
            os.rename(self.final, moved)
        except FileNotFoundError:
            return None
        if _inspect(moved, deep)[0] == "complete":  # judged bad, whole now: replaced in between
            try:
                os.rename(moved, self.final)
            except OSError:
                shutil.rmtree(moved, ignore_errors=True)  # a third job published meanwhile: a duplicate
                return None
            self.abort()
            return False
        log.warning("%s: replacing the %s shard %s (%s)", self.store, state, self.final.name,
                    problem.what if problem else "not marked complete")
        return moved

    def abort(self) -> None:
        """Remove this writer's temporary."""
        shutil.rmtree(self.tmp, ignore_errors=True)


class ShardWriter(ShardFolder):
    """Write one shard of a segment store in chunks of consecutive segments; :meth:`commit`
    publishes it.

    ``path_id`` and ``segment_index`` (``(S,)``) describe the shard's segments in order; each
    :meth:`write` takes a :class:`pipeline.engine.result.RegionResult` whose ``segment_index`` are
    positions ``0..S-1`` in this shard.
    """

    item = "segments"

    def __init__(self, store, shard: int, path_id, segment_index, k: int, cfg: StoreConfig = StoreConfig()):
        self.n = len(path_id)
        self.written = 0
        super().__init__(store, shard, cfg, {"n_segments": self.n})
        s_chunk = max(1, min(self.n, 65_536))
        self.seg = {name: self.array(f"segments/{name}", (self.n,), "i8" if name in ("path_id", "segment_index",
                                                                                      "density") else "f8", (s_chunk,))
                    for name in SEGMENT_SCALARS}
        self.seg["region_offset"] = self.array("segments/region_offset", (self.n + 1,), "i8", (s_chunk + 1,))
        for name in SEGMENT_VECTORS:
            self.seg[name] = self.array(f"segments/{name}", (self.n, k), "f8", (s_chunk, k))
        self.seg["path_id"][:] = np.asarray(path_id, dtype=np.int64)
        self.seg["segment_index"][:] = np.asarray(segment_index, dtype=np.int64)
        self.seg["region_offset"][0:1] = np.zeros(1, dtype=np.int64)
        rc = cfg.region_chunk
        self.reg = {"t_start": self.array("regions/t_start", (0,), "f8", (rc,)),
                    "t_end": self.array("regions/t_end", (0,), "f8", (rc,))}
        if cfg.keep_affine:
            self.reg["intercept"] = self.array("regions/intercept", (0, k), cfg.affine_dtype, (rc, k))
            self.reg["slope"] = self.array("regions/slope", (0, k), cfg.affine_dtype, (rc, k))

    def write(self, res) -> None:
        """Append the next chunk of segments (a :class:`pipeline.engine.result.RegionResult`)."""
        lo, hi = self._chunk(res.segment_index, res.n_segments)
        for name in ("length", "density", "continuity_gap", *SEGMENT_VECTORS):
            self.seg[name][lo:hi] = getattr(res, name)
        tol = res.certificate_tol
        self.seg["certificate_tol"][lo:hi] = np.zeros(res.n_segments) if tol is None else tol
        self.seg["gap_tol"][lo:hi] = np.full(res.n_segments, np.nan) if res.gap_tol is None else res.gap_tol
        self.uncertified += uncertified(res.continuity_gap, res.gap_tol)
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


def _has(manifest: dict, key: str) -> bool:
    return key in (manifest or {}).get("arrays", {})


def uncertified(gap, gap_tol) -> int:
    """How many rows failed their certificate (``gap > gap_tol`` or a non-finite gap; a NaN
    ``gap_tol``, no verdict recorded, passes)."""
    if gap_tol is None:
        return 0
    gap, tol = np.asarray(gap, dtype=np.float64), np.asarray(gap_tol, dtype=np.float64)
    return int(np.sum(~(gap <= tol) & ~np.isnan(tol)))


def _make_manifest(folder: Path, arrays: dict) -> dict:
    """The manifest of the shard written in ``folder`` (see the module's docstring)."""
    files = {}
    for key in _files(folder):
        files[key] = list(_checksum(folder / key))
    return {"version": MANIFEST_VERSION, "checksum": "crc32",
            "arrays": {k: {"shape": list(a.shape), "dtype": str(a.dtype)} for k, a in sorted(arrays.items())},
            "files": files}


def _files(folder: Path) -> list[str]:
    """Keys (``/``-separated, relative) of every file of a shard but its own ``zarr.json``;
    hidden files (``.nfs*`` of a shared filesystem) are not part of it."""
    out = []
    for here, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(here).relative_to(folder)
        out += [(rel / n).as_posix() for n in names if not n.startswith(".")]
    return sorted(k for k in out if k != "zarr.json")


def _checksum(path: Path) -> tuple[int, str]:
    """Size and CRC-32 (8 hex digits) of a file."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            crc = zlib.crc32(block, crc)
            size += len(block)
    return size, f"{crc:08x}"


# ---- verification -------------------------------------------------------------------------------

class _Problem(NamedTuple):
    """What is wrong with a shard: in words, the array and the file concerned (``None`` where
    no one array or file is), and whether only the deep check (checksums) can see it."""

    what: str
    array: str | None = None
    file: str | None = None
    deep_only: bool = False


def _shard_meta(folder: Path):
    """The shard's attributes from its ``zarr.json``; a :class:`_Problem` if that file is
    missing or cannot be parsed."""
    meta = folder / "zarr.json"
    try:
        return json.loads(meta.read_text()).get("attributes") or {}
    except FileNotFoundError:
        return _Problem("its metadata file zarr.json is missing", None, "zarr.json")
    except (OSError, ValueError, AttributeError) as err:
        return _Problem(f"its metadata file zarr.json cannot be read ({type(err).__name__}: {err})", None, "zarr.json")


def _array_of(key: str, arrays) -> str | None:
    """The array a file key belongs to (``segments/deviation/c/0/0`` -> ``segments/deviation``)."""
    return next((a for a in arrays if key.startswith(a + "/")), None)


def _manifest_problem(folder: Path, manifest, deep: bool, arrays=None):
    """The first way the files of ``folder`` differ from ``manifest`` (a :class:`_Problem`);
    ``None`` if they agree. ``arrays`` (keys such as ``segments/deviation``) limits the
    check to those arrays' files (and skips the search for files the manifest does not list)."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return _Problem("it is marked complete but records no manifest (written before shards had one), so its "
                        "files cannot be verified")
    known = manifest.get("arrays", {})
    if arrays is not None:
        absent = [a for a in arrays if a not in known]
        if absent:
            return _Problem(f"its manifest lists no array {absent[0]}", absent[0])
    files = {k: v for k, v in manifest["files"].items() if arrays is None or _array_of(k, arrays)}
    for key, (size, _) in files.items():
        try:
            have = os.stat(folder / key).st_size
        except FileNotFoundError:
            return _Problem(f"file {key} is missing (the manifest records {size} bytes)", _array_of(key, known), key)
        if have != size:
            return _Problem(f"file {key} has {have} bytes, the manifest records {size} (truncated or overwritten)",
                            _array_of(key, known), key)
    if arrays is None:
        extra = [k for k in _files(folder) if k not in files]
        if extra:
            return _Problem(f"file {extra[0]} is not in the manifest (added after the shard was completed)",
                            _array_of(extra[0], known), extra[0])
    if deep:
        for key, (_, digest) in files.items():
            if _checksum(folder / key)[1] != digest:
                return _Problem(f"file {key} does not match its checksum (its bytes changed)", _array_of(key, known),
                                key, deep_only=True)
    return None


def _inspect(folder: Path, deep: bool = False, arrays=None):
    """``(state, attributes, problem)`` of the shard folder: state ``complete`` (whole by the
    check asked for), ``incomplete`` (not marked complete) or ``damaged``; ``problem`` is
    a :class:`_Problem` for a damaged shard, else ``None``."""
    meta = _shard_meta(folder)
    if isinstance(meta, _Problem):
        return "damaged", None, meta
    if not meta.get("complete", False):
        return "incomplete", meta, None
    problem = _manifest_problem(folder, meta.get("manifest"), deep, arrays)
    return ("damaged" if problem else "complete"), meta, problem


def rewrite_command(store, shard: int, deep: bool = False, attrs: dict | None = None) -> str:
    """How to rewrite shard ``shard`` of ``store``, in plain words: from the store's ``run``,
    ``n_shards`` and ``discover_config`` attributes (``attrs``, read if not given)."""
    if attrs is None:
        try:
            attrs = store_attrs(store)
        except StoreError:
            attrs = {}
    n, run = attrs.get("n_shards", "N"), attrs.get("run")
    flag = " --deep" if deep else ""
    if not (run and attrs.get("discover_config")):
        return ("the store records no discovery config (it was written by pipeline.stages.discovery.write_shards "
                "directly, e.g. analysis.synthetic): run what wrote it again, which rewrites the damaged shard")
    text = (f"rewrite it with `python -m jobs discover {run} --from-store {store} --shard {shard}/{n}{flag}` "
            "(--from-store: the discovery config the store was written with, its discover_config attribute)")
    if deep:
        return text + "; only a --deep check sees this damage, so `sweep resume` would not rewrite it"
    return text + ", or, if the store is part of a sweep, with `python -m jobs sweep resume <sweep.yaml>`"


def _damage(store: Path, shard: int, problem: _Problem, attrs=None) -> DamagedShardError:
    """The error for a damaged shard: what is wrong, where, and the command that rewrites it."""
    where = f"array {problem.array}, " if problem.array else ""
    msg = (f"{store}: shard {shard_name(shard)} is damaged: {where}{problem.what}. Its data is not read; "
           f"{rewrite_command(store, shard, deep=problem.deep_only, attrs=attrs)}.")
    return DamagedShardError(msg, store=str(store), shard=shard, array=problem.array, file=problem.file)


def verify_shard(store, shard: int, deep: bool = False, arrays=None) -> dict:
    """Check a complete shard against its manifest; returns its attributes (with the manifest).

    Parameters
    ----------
    store : path
    shard : int
    deep : bool
        ``False``: every file the manifest lists exists with the recorded size, and no other
        file was added (a ``stat`` per file). ``True``: also read each file and compare its
        CRC-32 (flipped bytes).
    arrays : sequence of str, optional
        Check only these arrays' files (keys such as ``segments/deviation``).

    Raises
    ------
    DamagedShardError
        The shard's metadata or manifest is missing, or a file differs from the manifest: the
        message names the store, the shard, the array and the file, and how to rewrite it.
    StoreError
        The shard does not exist, or is not marked complete.
    """
    store = Path(store)
    folder = store / shard_name(shard)
    if not folder.is_dir():
        raise StoreError(f"{store}: shard {shard_name(shard)} does not exist (not written yet): resume discovery")
    state, meta, problem = _inspect(folder, deep, arrays)
    if state == "incomplete":
        raise StoreError(f"{store}: shard {shard_name(shard)} is not complete (left by an interrupted writer): "
                         "resume discovery, which rewrites it")
    if state == "damaged":
        raise _damage(store, shard, problem)
    return meta


def _scan(store: Path, deep: bool):
    """``shard_status``, the attributes of each complete shard, the error of each damaged one."""
    attrs = store_attrs(store)
    n = int(attrs.get("n_shards", 0))
    complete, incomplete, damaged, leftovers, errors, metas = [], [], [], [], {}, {}
    for p in sorted(store.iterdir()):
        m = _SHARD.fullmatch(p.name)
        if _LEFTOVER.fullmatch(p.name):
            leftovers.append(p.name)
        elif m and p.is_dir():
            i = int(m.group(1))
            state, meta, problem = _inspect(p, deep)
            if state == "complete":
                complete.append(i)
                metas[i] = meta
            elif state == "incomplete":
                incomplete.append(i)
            else:
                damaged.append(i)
                errors[i] = _damage(store, i, problem, attrs)
    missing = [i for i in range(n) if i not in complete]
    status = {"n_shards": n, "complete": complete, "incomplete": incomplete, "damaged": damaged, "missing": missing,
              "leftovers": leftovers, "errors": {i: str(e) for i, e in errors.items()}}
    return status, metas, errors


def shard_status(store, deep: bool = False) -> dict:
    """Shards of a store from the filesystem alone.

    Parameters
    ----------
    store : path
    deep : bool
        Judge complete shards by their checksums too (reads every file), not only by their
        files' sizes.

    Returns
    -------
    dict
        ``n_shards``; ``complete`` (marked complete and whole by the check asked for),
        ``incomplete`` (under the final name but not marked complete: an interrupted older
        writer), ``damaged`` (marked complete, but differing from their manifest),
        ``missing`` (every shard index not complete: what resuming writes), ``leftovers``
        (temporaries of killed writers, copies moved aside), ``errors`` (shard -> the
        :class:`DamagedShardError` message of each damaged shard).

    Raises
    ------
    StoreError
        ``store`` is not a store.
    """
    return _scan(Path(store), deep)[0]


def shard_info(store, shard: int) -> dict:
    """The attributes of one shard (``complete``, ``n_segments``, ``n_regions``; no manifest),
    from its metadata alone: nothing is verified.

    Raises
    ------
    StoreError
        The shard's metadata is missing or unreadable.
    """
    meta = _shard_meta(Path(store) / shard_name(shard))
    if isinstance(meta, _Problem):
        raise StoreError(f"{store}: shard {shard_name(shard)}: {meta.what}")
    return {k: v for k, v in meta.items() if k != "manifest"}


def shard_state(store, shard: int) -> dict:
    """What the shard's data depends on, for a cache key: its manifest and, for each file of
    it, the current size and modification time (``None`` for a missing file). A ``stat`` per
    file and one read of the shard's ``zarr.json``: no data is read."""
    folder = Path(store) / shard_name(shard)
    meta = _shard_meta(folder)
    manifest = meta.get("manifest") if isinstance(meta, dict) else None
    files = {}
    for key in ["zarr.json", *((manifest or {}).get("files") or {})]:
        try:
            st = os.stat(folder / key)
            files[key] = [st.st_size, st.st_mtime_ns]
        except FileNotFoundError:
            files[key] = None
    return {"manifest": manifest, "n_regions": meta.get("n_regions") if isinstance(meta, dict) else None,
            "files": files}


# ---- reading ------------------------------------------------------------------------------------

def _open_array(store: Path, shard: int, manifest: dict, key: str):
    """Array ``key`` of a shard, its metadata checked against the manifest's shape and dtype."""
    want = manifest["arrays"].get(key)
    if want is None:
        raise StoreError(f"{store}: shard {shard_name(shard)} has no array {key} (arrays: "
                         f"{', '.join(manifest['arrays'])})")
    arr = _guarded(store, shard, key, lambda: zarr.open_array(str(store / shard_name(shard) / key), mode="r"))
    if list(arr.shape) != want["shape"] or str(arr.dtype) != want["dtype"]:
        raise _damage(store, shard, _Problem(f"its metadata says shape {list(arr.shape)} and dtype {arr.dtype}, the "
                                             f"manifest {want['shape']} and {want['dtype']}", key, f"{key}/zarr.json"))
    return arr


def _guarded(store: Path, shard: int, key: str, read):
    """``read()``, with any failure inside Zarr or its codecs (on bad bytes they raise
    RuntimeError, ValueError, KeyError...) raised as a :class:`DamagedShardError`."""
    try:
        return read()
    except Exception as err:  # noqa: BLE001 - the codec's own error is kept as the cause
        raise _damage(store, shard, _Problem(f"it cannot be decoded ({type(err).__name__}: {err})", key)) from err


def read_array(store: Path, shard: int, manifest: dict, key: str, sel=slice(None)) -> np.ndarray:
    """``sel`` of array ``key`` (``group/name``) of a complete shard whose ``manifest``
    (:func:`verify_shard`) is given, the array's shape and dtype checked against it; a read
    that fails in Zarr is a :class:`DamagedShardError` naming store, shard and array."""
    arr = _open_array(store, shard, manifest, key)
    return _guarded(store, shard, key, lambda: arr[sel])


class _ShardArray:
    """One region array of one shard as an array-like for ``dask.array.from_array``: every
    block read goes through :func:`read_array`."""

    def __init__(self, store: Path, shard: int, manifest: dict, key: str):
        self.store, self.shard, self.manifest, self.key = store, shard, manifest, key
        meta = manifest["arrays"][key]
        self.shape, self.dtype = tuple(meta["shape"]), np.dtype(meta["dtype"])
        self.ndim = len(self.shape)

    def __getitem__(self, sel):
        return read_array(self.store, self.shard, self.manifest, self.key, sel)


class StoreReader:
    """Read the complete shards of one store: tables as pandas, regions lazily as dask.

    Opening checks every shard cheaply (:func:`verify_shard`): a damaged one raises
    :class:`DamagedShardError`, unless ``allow_incomplete`` (it is then left out, like a
    missing one). ``deep`` checks every checksum too (reads the whole store).
    """

    def __init__(self, path, allow_incomplete: bool = False, deep: bool = False):
        self.path = Path(path)
        self.attrs = store_attrs(self.path)
        if self.attrs.get("schema") != SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {self.attrs.get('schema')}; this reader reads {SCHEMA_VERSION}")
        if store_geometry(self.attrs) != "line":
            raise StoreError(f"{self.path} is a store of {store_geometry(self.attrs)}s, not of segments: read it with "
                             "pipeline.store.planes.open_plane_store")
        self.status, self._meta, errors = _scan(self.path, deep)
        damaged = self.status["damaged"]
        if damaged and not allow_incomplete:
            first = errors[damaged[0]]
            if len(damaged) > 1:
                raise DamagedShardError(f"{first} ({len(damaged) - 1} more damaged shard(s): {damaged[1:10]}; "
                                        f"`python -m jobs verify {self.path}` lists them all)", first.store,
                                        first.shard, first.array, first.file)
            raise first
        if damaged:
            log.warning("%s: damaged shards %s are left out: %s", self.path, damaged, self.status["errors"][damaged[0]])
        if self.status["missing"] and not allow_incomplete:
            raise StoreError(f"{self.path}: shards {self.status['missing'][:10]} of {self.status['n_shards']} are not "
                             "complete; resume discovery, or open with allow_incomplete=True to read the rest")
        self.shards = self.status["complete"]
        self._index = None

    def _read(self, shard: int, key: str, sel=slice(None)) -> np.ndarray:
        return read_array(self.path, shard, self._meta[shard]["manifest"], key, sel)

    def segment_array(self, name: str) -> np.ndarray:
        """A per-segment array over all complete shards, in shard order (``gap_tol`` is NaN in
        shards written before it was recorded)."""
        parts = [self._read(i, f"segments/{name}") if _has(self._meta[i]["manifest"], f"segments/{name}")
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
        """One row per path (``pipeline.engine.measures.PATH_COLUMNS``): density (sum), length,
        density per length, deviation and total variation (per-logit sums over the path's
        segments, then L2 over logits), ``continuity_gap`` (the largest), ``n_segments``."""
        return paths_table([shard_partials(self.path, i) for i in self.shards])

    def regions(self, name: str):
        """A region array (``t_start``, ``t_end``, ``intercept``, ``slope``) as one lazy dask
        array; a block that cannot be decoded raises :class:`DamagedShardError`."""
        import dask.array as da
        from dask.base import tokenize

        if name not in REGION_ARRAYS:
            raise ValueError(f"region arrays are {', '.join(REGION_ARRAYS)}; got {name!r}")
        key = f"regions/{name}"
        if self.shards and key not in self._meta[self.shards[0]]["manifest"]["arrays"]:
            raise StoreError(f"{self.path} kept no region array {name!r} (discovered with keep_affine=False?)")
        parts = []
        for i in self.shards:
            manifest = self._meta[i]["manifest"]
            arr = _ShardArray(self.path, i, manifest, key)
            chunks = _open_array(self.path, i, manifest, key).chunks
            token = tokenize(str(self.path), i, key, {k: v for k, v in manifest["files"].items() if k.startswith(key)})
            parts.append(da.from_array(arr, chunks=chunks, name=f"{shard_name(i)}-{name}-{token}", lock=False,
                                       asarray=True, meta=np.zeros((0,) * arr.ndim, dtype=arr.dtype)))
        return da.concatenate(parts) if parts else da.zeros((0,))

    def _locate(self) -> dict:
        """``(path_id, segment_index) -> (shard, row)`` over the complete shards (read once)."""
        if self._index is None:
            self._index = {}
            for i in self.shards:
                pid, sidx = self._read(i, "segments/path_id"), self._read(i, "segments/segment_index")
                self._index.update({(int(p), int(s)): (i, r) for r, (p, s) in enumerate(zip(pid, sidx))})
        return self._index

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
            No complete shard holds that segment.
        """
        try:
            shard, row = self._locate()[(int(path_id), int(segment_index))]
        except KeyError:
            raise KeyError(f"segment {segment_index} of path {path_id} is in no complete shard of {self.path}") from None
        out = {"shard": shard}
        for name in ("length", "continuity_gap", "certificate_tol", "gap_tol"):
            present = _has(self._meta[shard]["manifest"], f"segments/{name}")
            out[name] = float(self._read(shard, f"segments/{name}", row)) if present else float("nan")
        out["density"] = int(self._read(shard, "segments/density", row))
        for name in SEGMENT_VECTORS:
            out[name] = self._read(shard, f"segments/{name}", row)
        lo, hi = (int(v) for v in self._read(shard, "segments/region_offset", slice(row, row + 2)))
        for name in REGION_ARRAYS:
            key = f"regions/{name}"
            present = key in self._meta[shard]["manifest"]["arrays"]
            out[name] = self._read(shard, key, slice(lo, hi)).astype(np.float64) if present else None
        return out


def shard_partials(store, shard: int) -> dict:
    """Per-path partial sums of one complete shard (:func:`pipeline.engine.measures.path_partials`):
    reads its per-segment arrays only, after checking them deeply (:func:`verify_shard`: they
    are small). The unit of work of the analysis' Dask graph.

    Raises
    ------
    DamagedShardError
        The arrays read differ from the shard's manifest, or cannot be decoded.
    """
    store = Path(store)
    keys = [f"segments/{name}" for name in PARTIAL_ARRAYS]
    meta = _shard_meta(store / shard_name(shard))  # a shard without gap_tol: written before it was recorded
    keys = [k for k in keys if k not in LATER_ARRAYS or (isinstance(meta, dict) and _has(meta.get("manifest"), k))]
    manifest = verify_shard(store, shard, deep=True, arrays=keys)["manifest"]
    cols = {key.split("/")[1]: read_array(store, shard, manifest, key) for key in keys}
    return path_partials(cols["path_id"], cols["density"], cols["length"], cols["deviation"],
                         cols["total_variation"], cols["continuity_gap"], cols.get("gap_tol"))


def paths_table(parts) -> pd.DataFrame:
    """The per-path table (``PATH_COLUMNS``) of one store from its shards' :func:`shard_partials`."""
    return pd.DataFrame(combine_path_partials(parts), columns=list(PATH_COLUMNS))


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
