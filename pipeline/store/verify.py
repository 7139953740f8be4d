"""Which shards of a store are whole, from the filesystem alone, and what to do about the rest.

    from pipeline.store.verify import shard_status, verify_shard
    shard_status("runs/x/regions/final-1a2b3c4d.zarr")   # complete, incomplete, damaged, missing, leftovers
    verify_shard("runs/x/regions/final-1a2b3c4d.zarr", 0, deep=True)

A shard is *complete* when it is marked so and its files agree with its manifest
(:mod:`pipeline.store.manifest`: sizes and each array's own metadata for the cheap check,
CRC-32s too for the deep one; the check every reader and the aggregation apply),
*incomplete* when it is not marked (an interrupted older writer), *damaged* otherwise. A damaged
shard is a :class:`pipeline.store.identity.DamagedShardError` naming the store, the shard, the
array and the file, and the command that rewrites it (:func:`rewrite_command`). The same for
every layout: segments (:mod:`pipeline.store.lines`) and planes (:mod:`pipeline.store.planes`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from pipeline.store.identity import DamagedShardError, StoreError, shard_name, store_attrs
from pipeline.store.manifest import Problem, manifest_problem

__all__ = ["shard_status", "verify_shard", "shard_info", "shard_state", "rewrite_command", "shard_meta", "inspect",
           "damage", "scan"]

_SHARD = re.compile(r"shard-(\d+)")
_LEFTOVER = re.compile(r"shard-\d+\.(tmp|damaged)-.+")


def shard_meta(folder: Path):
    """The shard's attributes from its ``zarr.json``; a :class:`pipeline.store.manifest.Problem`
    if that file is missing or cannot be parsed."""
    meta = folder / "zarr.json"
    try:
        return json.loads(meta.read_text()).get("attributes") or {}
    except FileNotFoundError:
        return Problem("its metadata file zarr.json is missing", None, "zarr.json")
    except (OSError, ValueError, AttributeError) as err:
        return Problem(f"its metadata file zarr.json cannot be read ({type(err).__name__}: {err})", None, "zarr.json")


def inspect(folder: Path, deep: bool = False, arrays=None):
    """``(state, attributes, problem)`` of the shard folder: state ``complete`` (whole by the
    check asked for), ``incomplete`` (not marked complete) or ``damaged``; ``problem`` is
    a :class:`pipeline.store.manifest.Problem` for a damaged shard, else ``None``."""
    meta = shard_meta(folder)
    if isinstance(meta, Problem):
        return "damaged", None, meta
    if not meta.get("complete", False):
        return "incomplete", meta, None
    problem = manifest_problem(folder, meta.get("manifest"), deep, arrays)
    return ("damaged" if problem else "complete"), meta, problem


def rewrite_command(store, shard: int, deep: bool = False, attrs: dict | None = None) -> str:
    """How to rewrite shard ``shard`` of ``store``, in plain words: from its ``n_shards`` and
    ``discover_config`` attributes (``attrs``, read if not given) and the run folder the store
    sits in now (``<run>/regions/<store>``: a sweep moved whole is rewritten where it is; its
    ``run`` attribute, where it was written, only for a store that sits elsewhere)."""
    if attrs is None:
        try:
            attrs = store_attrs(store)
        except StoreError:
            attrs = {}
    n, run = attrs.get("n_shards", "N"), attrs.get("run")
    if run and Path(store).parent.name == "regions":
        run = Path(store).parent.parent
    flag = " --deep" if deep else ""
    if not (run and attrs.get("discover_config")):
        return ("the store records no discovery config (it was written by pipeline.stages.discovery.write_shards "
                "directly, e.g. analysis.synthetic): run what wrote it again, which rewrites the damaged shard")
    text = (f"rewrite it with `python -m jobs discover {run} --from-store {store} --shard {shard}/{n}{flag}` "
            "(--from-store: the discovery config the store was written with, its discover_config attribute)")
    if deep:
        return text + "; only a --deep check sees this damage, so `sweep resume` would not rewrite it"
    return text + ", or, if the store is part of a sweep, with `python -m jobs sweep resume <sweep.yaml>`"


def damage(store: Path, shard: int, problem: Problem, attrs=None) -> DamagedShardError:
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
    state, meta, problem = inspect(folder, deep, arrays)
    if state == "incomplete":
        raise StoreError(f"{store}: shard {shard_name(shard)} is not complete (left by an interrupted writer): "
                         "resume discovery, which rewrites it")
    if state == "damaged":
        raise damage(store, shard, problem)
    return meta


def scan(store: Path, deep: bool):
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
            state, meta, problem = inspect(p, deep)
            if state == "complete":
                complete.append(i)
                metas[i] = meta
            elif state == "incomplete":
                incomplete.append(i)
            else:
                damaged.append(i)
                errors[i] = damage(store, i, problem, attrs)
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
    return scan(Path(store), deep)[0]


def shard_info(store, shard: int) -> dict:
    """The attributes of one shard (``complete``, ``n_segments``, ``n_regions``; no manifest),
    from its metadata alone: nothing is verified.

    Raises
    ------
    StoreError
        The shard's metadata is missing or unreadable.
    """
    meta = shard_meta(Path(store) / shard_name(shard))
    if isinstance(meta, Problem):
        raise StoreError(f"{store}: shard {shard_name(shard)}: {meta.what}")
    return {k: v for k, v in meta.items() if k != "manifest"}


def shard_state(store, shard: int) -> dict:
    """What the shard's data depends on, for a cache key: its manifest and, for each file of
    it, the current size and modification time (``None`` for a missing file). A ``stat`` per
    file and one read of the shard's ``zarr.json``: no data is read."""
    folder = Path(store) / shard_name(shard)
    meta = shard_meta(folder)
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
