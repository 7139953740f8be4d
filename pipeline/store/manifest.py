"""A shard's manifest: what it records when the shard is completed, and how a folder differs from it.

The completion marker (the shard group's attributes) records, for every array of the shard, its
shape and dtype, and for every file of the shard but its own ``zarr.json`` (chunks and
metadata), its size and CRC-32::

    {"version": 1, "checksum": "crc32",
     "arrays": {"segments/deviation": {"shape": [S, K], "dtype": "float64"}, ...},
     "files": {"segments/deviation/c/0/0": [394, "1a2b3c4d"], "segments/deviation/zarr.json": [...], ...}}

Zarr reads a missing chunk as its fill value without complaint, so a reader compares the files
with the manifest before it trusts them (:func:`manifest_problem`): the cheap check stats every
file (missing, truncated or added files), the deep one also reads them and compares checksums
(flipped bytes). Written by :mod:`pipeline.store.shards`, checked by :mod:`pipeline.store.verify`.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import NamedTuple

__all__ = ["MANIFEST_VERSION", "Problem", "make_manifest", "manifest_problem", "shard_files", "checksum"]

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
            "arrays": {k: {"shape": list(a.shape), "dtype": str(a.dtype)} for k, a in sorted(arrays.items())},
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
            or (_checksum_problem(folder, files, known) if deep else None))


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
