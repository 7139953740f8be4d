"""A cache file of NumPy arrays that names what it was computed from: the aggregation's steps
that need the network (the report's planes, local complexity) keep their results this way.

    save_arrays(file, key, {"lc_mean": ...})     # atomically, with the key
    load_arrays(file, key, "plane cache")        # the arrays, or None: missing, stale or unreadable

The key is a string (JSON of the checkpoint's sha256 and the options): a file written for
another key is stale and recomputed; a damaged file is recomputed, never trusted.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np

from pipeline.atomic import write_atomic

log = logging.getLogger("analysis.cache")

__all__ = ["save_arrays", "load_arrays"]


def save_arrays(file: Path, key: str, arrays: dict) -> None:
    """One ``.npz`` holding ``arrays`` and ``key``, written atomically (:func:`pipeline.atomic.write_atomic`)."""
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    blob = io.BytesIO()
    np.savez(blob, **{k: np.asarray(v) for k, v in arrays.items()}, key=np.asarray(key))
    write_atomic(file, blob.getvalue())


def load_arrays(file: Path, key: str, what: str = "cache") -> dict | None:
    """The arrays of ``file`` (without the key) if it exists and was written for ``key``; else None."""
    file = Path(file)
    if not file.is_file():
        return None
    try:
        with np.load(file, allow_pickle=False) as z:
            if str(z["key"]) != key:
                log.info("%s %s: its checkpoint or options changed, computing it again", what, file)
                return None
            return {k: z[k] for k in z.files if k != "key"}
    except (OSError, ValueError, KeyError) as err:  # a damaged cache is recomputed, never trusted
        log.warning("%s %s is unreadable (%s): computing it again", what, file, err)
        return None
