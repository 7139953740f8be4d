"""One runner per sweep folder: an advisory lock, ``<root>/.lock``, held while a command runs it.

    from jobs.lock import sweep_lock
    with sweep_lock(root):      # SweepLocked, naming the holder, if another process runs it
        ...

Taken by ``python -m jobs run`` for its whole run (submission, the wait for SLURM, the report)
and by ``python -m jobs sweep submit / resume``; ``sweep status``, ``--dry-run``, ``verify`` and
``report`` only read and take none. SLURM jobs take none: the process that submits (and, for
``run``, waits) holds it for them. Two runners on one folder would each run every missing job.

The lock is a POSIX record lock (``fcntl.lockf``), not ``flock``: record locks are what NFS
implements (lockd / NLM for v3, in the protocol for v4), whereas ``flock`` on NFS is emulated
with record locks by Linux and not shared between hosts elsewhere, so lockf is the one that
holds on a cluster's shared filesystem. The kernel (or the NFS server) drops it when its holder
dies, SIGKILL included. The file records the holder (host, pid, start, command) and is removed
on release, so a file left behind whose lock is free marks a holder that was killed: it is
taken over, with a warning naming that holder.

POSIX locks belong to a process and are dropped when it closes *any* descriptor of the file:
a process opens the file once (nested ``sweep_lock`` calls share that lock) and never again
while it holds it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

__all__ = ["sweep_lock", "SweepLocked", "LOCK_NAME"]

LOCK_NAME = ".lock"
RETRY_S, RETRIES = 0.1, 10  # a holder that has the lock but has not yet recorded itself: look again
log = logging.getLogger("jobs.lock")
_HELD: dict = {}  # (pid, root) -> [fd, made_root, depth]: this process's locks
_GUARD = threading.Lock()


class SweepLocked(RuntimeError):
    """Another process runs this sweep folder: the message names it and what to do."""


@contextmanager
def sweep_lock(root):
    """Hold ``<root>/.lock`` for the block (``root`` is made if missing); :class:`SweepLocked` if
    another process holds it. Re-entrant within a process. Yields the lock file's path."""
    root = Path(root).resolve()
    key = (os.getpid(), root)  # a forked child does not inherit the lock
    with _GUARD:
        if key in _HELD:
            _HELD[key][2] += 1
        else:
            _HELD[key] = [*_acquire(root), 1]
    try:
        yield root / LOCK_NAME
    finally:
        with _GUARD:
            _HELD[key][2] -= 1
            if _HELD[key][2] == 0:
                fd, made_root, _ = _HELD.pop(key)
                _release(root, fd, made_root)


def _acquire(root: Path) -> tuple[int, bool]:
    path = root / LOCK_NAME
    made_root = not root.exists()
    for attempt in range(RETRIES + 100):
        root.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder was removed between mkdir and open: again
            continue
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read(fd)
            os.close(fd)
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                raise OSError(err.errno, f"cannot lock {path} ({err.strerror}): the sweep folder's filesystem "
                                         f"must support POSIX locks (on NFS: lockd running, no 'nolock' mount)")
            if attempt < RETRIES and not _plausible(holder):
                time.sleep(RETRY_S)  # just taken, not yet recorded
                continue
            raise SweepLocked(_refusal(root, path, holder)) from None
        if not _same_file(fd, path):  # its holder released and removed it meanwhile: lock the new one
            os.close(fd)
            continue
        left = _read(fd)
        if left is not None:
            log.warning("took over %s: a lock file left by %s, which ended without releasing it (killed?); what "
                        "it finished is on disk and the missing jobs run again", path, _who(left))
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "since": datetime.now().astimezone().isoformat(timespec="seconds"), "command": _command()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        return fd, made_root
    raise RuntimeError(f"could not take {path}: it kept being removed and made again")


def _command() -> str:
    argv = list(sys.argv)
    if argv and argv[0].endswith("__main__.py"):  # python -m <package>: argv[0] is the file
        argv[0] = f"python -m {Path(argv[0]).parent.name}"
    return " ".join(argv)


def _release(root: Path, fd: int, made_root: bool):
    try:
        os.unlink(root / LOCK_NAME)  # while still locked: whoever opened this file sees it is gone
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)
    if made_root:
        try:
            os.rmdir(root)  # only if this run wrote nothing else (it failed first)
        except OSError:
            pass


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _read(fd: int) -> dict | None:
    """The holder the file records: None if empty, ``{"raw": text}`` if it is not ours."""
    text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    if not text:
        return None
    try:
        got = json.loads(text)
    except ValueError:
        return {"raw": text[:200]}
    return got if isinstance(got, dict) else {"raw": text[:200]}


def _local_and_gone(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process: it exists
        return False
    return False


def _plausible(holder: dict | None) -> bool:
    return holder is not None and "pid" in holder and not _local_and_gone(holder)


def _who(holder: dict) -> str:
    if "pid" not in holder:
        return f"an unknown holder ({holder.get('raw', holder)!r})"
    return f"pid {holder['pid']} on host {holder.get('host', '?')} since {holder.get('since', '?')}"


def _refusal(root: Path, path: Path, holder: dict | None) -> str:
    find = (f"find the process holding it with `fuser -v {path}` or `lslocks`; if none runs this sweep, remove "
            f"{path} and run the command again")
    if holder is None or "pid" not in holder:
        return (f"sweep folder {root} is locked ({path}) by a process that did not record itself "
                f"({holder.get('raw') if holder else 'empty file'}): {find}")
    if _local_and_gone(holder):
        return (f"sweep folder {root} is locked ({path}), but the holder it records, pid {holder['pid']} on this "
                f"host ({holder['host']}), does not exist: another process holds the lock (in another container "
                f"or PID namespace of this host?); {find}")
    command = f" ({holder['command']})" if holder.get("command") else ""
    return (f"sweep folder {root} is being run by {_who(holder)}{command}; wait for it to finish, or stop it. "
            f"If that process is gone, the lock went with it: run the command again (were its host to have "
            f"crashed with the lock held on a shared filesystem, remove {path} once sure nothing runs there)")
