"""Writes a reader never sees half of: one file (:func:`write_atomic`) or a folder tree
published by one rename (:func:`fsync_tree` before it, :func:`fsync_dir` after it).

    write_atomic(run_dir / "LAST", "epoch-0003.pt")
    fsync_tree(tmp); os.rename(tmp, final); fsync_dir(final.parent)

On a shared filesystem another node may read a file as soon as its name is visible, so the
bytes are flushed to disk (``fsync``) before the rename that makes them visible, and the
folder holding the new name is synced after it so the rename itself survives a crash.
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

__all__ = ["write_atomic", "fsync_dir", "fsync_tree", "unique_suffix"]


def unique_suffix() -> str:
    """``<host>-<pid>-<random>``: a temporary name no other process or call shares."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


def write_atomic(path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` so a reader never sees half of it.

    The bytes go to a temporary with a name unique to this host, process and call beside
    ``path``, are flushed to disk (``fsync``: on a shared filesystem another node may read the
    file as soon as the rename is visible), then renamed over ``path`` in one step, and the
    folder is synced so the rename itself survives a crash. A killed writer leaves only its
    own ``*.tmp-*`` file; two writers of one path cannot mix their bytes (the last rename wins).
    """
    path = Path(path)
    blob = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    tmp = path.with_name(f"{path.name}.tmp-{unique_suffix()}")
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(folder) -> None:
    """Make a rename or creation inside ``folder`` durable (a no-op where folders cannot be
    opened, as on Windows)."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root) -> None:
    """Flush every file below ``root`` to disk, then every folder, deepest first (``root``
    last): after this, renaming ``root`` publishes a tree whose contents are all on disk.

    Raises
    ------
    OSError
        A file cannot be opened or synced (the tree must not be published then).
    """
    for here, _, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(os.path.join(here, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(here)
