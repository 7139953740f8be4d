"""Whether an aggregation folder is the sweep's current one: the last aggregation's verdict, kept beside it.

    from analysis.status import stale_reason
    stale_reason("sweeps/demo/analysis", "sweeps/demo")   # None: succeeded, and no store changed since

:func:`analysis.aggregation.aggregate` writes ``aggregation.json`` into its output folder (in
one rename each time) when it starts (``running``), when it fails (``failed``, with the error)
and when it succeeds (``ok``). Each records the fingerprint
(:func:`analysis.collect.store_fingerprint`) of every store it found when it started, used or
left out, and ``ok`` records the stores it left out and why. An aggregation is current when its
last run succeeded and every store of the sweep has the fingerprint it recorded: ``sweep
status`` calls only such an aggregation done, and ``report`` refuses any other unless asked.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from pipeline.config import write_atomic
from pipeline.store.identity import StoreError

from .collect import find_stores, store_fingerprint

__all__ = ["STATUS_FILE", "write_status", "read_status", "sweep_fingerprints", "stale_reason"]

STATUS_FILE = "aggregation.json"


def write_status(out_dir, state: str, root, stores: dict, **fields) -> None:
    """Record the aggregation's ``state`` (``running``, ``failed``, ``ok``) in ``out_dir``, with
    the sweep ``root`` and ``stores`` (key -> fingerprint, :func:`sweep_fingerprints`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {"state": state, "time": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
              "root": str(Path(root).resolve()), "stores": stores, **fields}
    write_atomic(out / STATUS_FILE, json.dumps(record, indent=1, sort_keys=True, default=str))


def read_status(out_dir) -> dict | None:
    """The last aggregation's record in ``out_dir``; ``None`` if there is none (or it cannot be read)."""
    f = Path(out_dir) / STATUS_FILE
    try:
        record = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def sweep_fingerprints(root) -> dict:
    """``{store key: fingerprint}`` of every store under ``root`` (key: its path relative to
    ``root``); a store that cannot be read has ``unreadable: <why>`` instead."""
    root = Path(root)
    out = {}
    for store in find_stores(root):
        try:
            out[store.relative_to(root).as_posix()] = store_fingerprint(store)
        except (StoreError, OSError, ValueError) as err:
            out[store.relative_to(root).as_posix()] = f"unreadable: {err}"
    return out


def stale_reason(out_dir, root=None) -> str | None:
    """Why the aggregation in ``out_dir`` is not the current one of the sweep in ``root``
    (default: the root it recorded), in words; ``None`` if it succeeded and no store changed,
    appeared or went since it started."""
    record = read_status(out_dir)
    if record is None:
        return (f"{Path(out_dir)} records no aggregation ({STATUS_FILE} is missing: never aggregated, or by a "
                "version that did not record it)")
    when = record.get("time", "?")
    if record.get("state") == "running":
        return f"the aggregation started at {when} has not finished (it is running, or was killed)"
    if record.get("state") != "ok":
        return f"the last aggregation failed at {when}: {record.get('error', 'no error recorded')}"
    root = Path(root) if root is not None else Path(record.get("root", ""))
    if not root.is_dir():
        return f"the sweep it aggregated, {root}, is not there"
    then, now = record.get("stores") or {}, sweep_fingerprints(root)
    changed = [k for k in now if k in then and now[k] != then[k]]
    added, gone = [k for k in now if k not in then], [k for k in then if k not in now]
    if not (changed or added or gone):
        return None
    parts = [f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
             for label, keys in (("changed", changed), ("new", added), ("gone", gone)) if keys]
    return f"stores changed since the aggregation of {when} ({'; '.join(parts)})"
