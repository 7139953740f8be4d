"""A shard's manifest: what it records when the shard is completed, and how a folder differs from it.

The completion marker (the shard group's attributes) records, for every array of the shard, its
shape, dtype and chunk shape (shards written before chunks were recorded have none), and for
every file of the shard but its own ``zarr.json`` (chunks and metadata), its size and CRC-32::

    {"version": 1, "checksum": "crc32",
     "arrays": {"segments/deviation": {"shape": [S, K], "dtype": "float64", "chunks": [C, K]}, ...},
     "files": {"segments/deviation/c/0/0": [394, "1a2b3c4d"], "segments/deviation/zarr.json": [...], ...}}

Zarr reads a missing chunk as its fill value without complaint, so a reader compares the files
with the manifest before it trusts them (:func:`manifest_problem`): the cheap check stats every
file (missing, truncated or added files) and compares each array's own metadata (its
``zarr.json``: shape, dtype, chunks) and chunk files with the manifest; the deep one also reads
every file and compares checksums (flipped bytes). It is the one check every reader, the
aggregation and ``python -m jobs verify`` apply, so any damage one of them finds, all find:
:func:`array_problem` is also what a reader applies to the array Zarr opened. Written by :mod:`pipeline.store.shards`, checked by :mod:`pipeline.store.verify`.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import NamedTuple

__all__ = ["MANIFEST_VERSION", "Problem", "make_manifest", "manifest_problem", "array_problem", "metadata_problem",
           "shard_files", "checksum"]

MANIFEST_VERSION = 1


class Problem(NamedTuple):
    """What is wrong with a shard: in words, the array and the file concerned (``None`` where
    no one array or file is), and whether only the deep check (checksums) can see it."""

    what: str
    array: str | None = None
    file: str | None = None
    deep_only: bool = False


def make_manifest(folder: Path, arrays: dict) -> dict:
    """The manifest of the shard written in ``folder`` whose arrays are ``arrays`` (key such as
    ``segments/density`` -> zarr array)."""
    files = {}
    for key in shard_files(folder):
        files[key] = list(checksum(folder / key))
    return {"version": MANIFEST_VERSION, "checksum": "crc32",
            "arrays": {k: {"shape": list(a.shape), "dtype": str(a.dtype), "chunks": list(a.chunks)}
                       for k, a in sorted(arrays.items())},
            "files": files}


def shard_files(folder: Path) -> list[str]:
    """Keys (``/``-separated, relative) of every file of a shard but its own ``zarr.json``;
    hidden files (``.nfs*`` of a shared filesystem) are not part of it."""
    out = []
    for here, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(here).relative_to(folder)
        out += [(rel / n).as_posix() for n in names if not n.startswith(".")]
    return sorted(k for k in out if k != "zarr.json")


def checksum(path: Path) -> tuple[int, str]:
    """Size and CRC-32 (8 hex digits) of a file."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            crc = zlib.crc32(block, crc)
            size += len(block)
    return size, f"{crc:08x}"


def array_of(key: str, arrays) -> str | None:
    """The array a file key belongs to (``segments/deviation/c/0/0`` -> ``segments/deviation``)."""
    return next((a for a in arrays if key.startswith(a + "/")), None)


def manifest_problem(folder: Path, manifest, deep: bool, arrays=None) -> Problem | None:
    """The first way the files of ``folder`` differ from ``manifest`` (a :class:`Problem`);
    ``None`` if they agree. ``arrays`` (keys such as ``segments/deviation``) limits the
    check to those arrays' files (and skips the search for files the manifest does not list)."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return Problem("it is marked complete but records no manifest (written before shards had one), so its "
                       "files cannot be verified")
    known = manifest.get("arrays", {})
    if arrays is not None:
        absent = [a for a in arrays if a not in known]
        if absent:
            return Problem(f"its manifest lists no array {absent[0]}", absent[0])
    files = {k: v for k, v in manifest["files"].items() if arrays is None or array_of(k, arrays)}
    return (_size_problem(folder, files, known) or (_added_problem(folder, files, known) if arrays is None else None)
            or metadata_problem(folder, manifest, arrays)
            or (_checksum_problem(folder, files, known) if deep else None))


def array_problem(key: str, shape, dtype, chunks, want: dict) -> Problem | None:
    """How an array's own metadata (``shape``, ``dtype``, ``chunks``: from its ``zarr.json``, or
    the array Zarr opened) differs from what the manifest records for it (``want``)."""
    have = {"shape": [int(n) for n in shape], "dtype": str(dtype), "chunks": [int(c) for c in chunks]}
    recorded = {k: (str(v) if k == "dtype" else [int(n) for n in v]) for k, v in want.items()
                if k in ("shape", "dtype", "chunks")}
    diff = [f"{k} {have[k]} where the manifest records {v}" for k, v in recorded.items() if have[k] != v]
    if diff:
        return Problem(f"its metadata ({key}/zarr.json) says " + ", ".join(diff) + " (one of them was edited or "
                       "overwritten after the shard was completed)", key, f"{key}/zarr.json")
    return None


def metadata_problem(folder: Path, manifest: dict, arrays=None) -> Problem | None:
    """The first array (of ``arrays``, default all the manifest lists) whose own ``zarr.json``
    disagrees with the manifest (:func:`array_problem`), or one of whose chunk files lies
    outside the chunk grid its shape and chunks make: one small read per array, no data."""
    known = manifest.get("arrays", {})
    for key in (known if arrays is None else [a for a in arrays if a in known]):
        meta_file = folder / key / "zarr.json"
        try:
            meta = json.loads(meta_file.read_text())
            shape, dtype = meta["shape"], meta["data_type"]
            chunks = meta["chunk_grid"]["configuration"]["chunk_shape"]
        except FileNotFoundError:
            return Problem(f"its metadata file {key}/zarr.json is missing", key, f"{key}/zarr.json")
        except (OSError, ValueError, KeyError, TypeError) as err:
            return Problem(f"its metadata file {key}/zarr.json cannot be read ({type(err).__name__}: {err})", key,
                           f"{key}/zarr.json")
        try:
            problem = array_problem(key, shape, dtype, chunks, known[key]) or _grid_problem(key, shape, chunks,
                                                                                             manifest["files"])
        except (TypeError, ValueError, AttributeError) as err:  # a manifest or metadata of the wrong form
            return Problem(f"its manifest's record of the array, or its metadata, cannot be read "
                           f"({type(err).__name__}: {err})", key, f"{key}/zarr.json")
        if problem:
            return problem
    return None


def _grid_problem(key: str, shape, chunks, files: dict) -> Problem | None:
    """A chunk file of array ``key`` whose index lies outside the chunk grid of ``shape``."""
    grid = [-(-int(n) // max(int(c), 1)) for n, c in zip(shape, chunks)]
    prefix = f"{key}/c/"
    for f in files:
        if f.startswith(prefix):
            index = f[len(prefix):].split("/")
            if len(index) != len(grid) or any(not i.isdigit() or int(i) >= g for i, g in zip(index, grid)):
                return Problem(f"chunk file {f} lies outside the array's shape {list(shape)} (chunks {list(chunks)}): "
                               "the shape was changed after the data was written", key, f)
    return None


def _size_problem(folder: Path, files: dict, known) -> Problem | None:
    """A file of ``files`` missing, or of another size than recorded."""
    for key, (size, _) in files.items():
        try:
            have = os.stat(folder / key).st_size
        except FileNotFoundError:
            return Problem(f"file {key} is missing (the manifest records {size} bytes)", array_of(key, known), key)
        if have != size:
            return Problem(f"file {key} has {have} bytes, the manifest records {size} (truncated or overwritten)",
                           array_of(key, known), key)
    return None


def _added_problem(folder: Path, files: dict, known) -> Problem | None:
    """A file of the shard that ``files`` does not list."""
    extra = [k for k in shard_files(folder) if k not in files]
    if extra:
        return Problem(f"file {extra[0]} is not in the manifest (added after the shard was completed)",
                       array_of(extra[0], known), extra[0])
    return None


def _checksum_problem(folder: Path, files: dict, known) -> Problem | None:
    """A file of ``files`` whose bytes no longer match its CRC-32."""
    for key, (_, digest) in files.items():
        if checksum(folder / key)[1] != digest:
            return Problem(f"file {key} does not match its checksum (its bytes changed)", array_of(key, known),
                           key, deep_only=True)
    return None
