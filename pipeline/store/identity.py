"""What a store is: its attributes, its schema, and the settings every job writing it must share.

    from pipeline.store.identity import open_or_create, store_attrs
    open_or_create("runs/x/regions/final-1a2b3c4d.zarr", {"n_shards": 4, "eps": 1e-6})

A store is a Zarr (v3) group whose attributes name what wrote it (schema, model, checkpoint,
path set, the engine's options, ``n_shards``...; ``shared/DESIGN.md``). :func:`open_or_create`
creates it in one rename, or refuses, by name, every identity attribute that differs from the
existing store's: one store never mixes shards written differently. Its shards, their
publication and their checks are :mod:`pipeline.store.shards` and :mod:`pipeline.store.verify`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import zarr

from pipeline.atomic import fsync_dir, fsync_tree, unique_suffix
from pipeline.config import local_field

__all__ = ["SCHEMA_VERSION", "IDENTITY_KEYS", "StoreConfig", "StoreError", "DamagedShardError", "open_or_create",
           "store_geometry", "is_store", "store_attrs", "shard_name"]

SCHEMA_VERSION = 2  # 2: the engine's options and the path set id are identity attributes
# attributes that must not change between the jobs writing one store
IDENTITY_KEYS = ("schema", "checkpoint_sha256", "model", "dataset", "split", "paths", "path_set", "method", "eps",
                 "dtype", "certify", "n_shards", "keep_affine", "affine_dtype", "domain", "plane_engine")


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
        if self.region_chunk < 1:
            raise ValueError(f"region_chunk must be >= 1, got {self.region_chunk}")

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


def open_or_create(path, attrs: dict) -> Path:
    """Create the store with ``attrs``, or check that an existing one was made with the same.

    Raises :class:`StoreError` naming every identity attribute that differs (another schema
    version, checkpoint, path set, eps...); nothing is overwritten.
    """
    path = Path(path)
    attrs = {"schema": SCHEMA_VERSION, **attrs}
    if is_store(path):
        _check_identity(path, store_attrs(path), attrs)
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


def _check_identity(path: Path, have: dict, attrs: dict) -> None:
    """Refuse to write ``attrs`` into the store at ``path`` whose attributes are ``have``."""
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
