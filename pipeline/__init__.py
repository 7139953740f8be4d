"""Linear regions of ReLU networks along line segments and planes (Gamba et al., AISTATS 2022).

The public API, stable across internal moves (``docs/design.md`` draws the layers)::

    from pipeline import discover, discover_iter, discover_plane, prepare
    from pipeline import open_store, open_plane_store

Names are imported on first use, so ``import pipeline`` stays cheap and the engine alone
needs only torch and numpy (a GPU node without the analysis stack can still run it).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    # the engine: pure functions of a network and its inputs (pipeline/engine/)
    "discover": "pipeline.engine.lines",
    "discover_iter": "pipeline.engine.lines",
    "discover_plane": "pipeline.engine.planes",
    "discover_plane_iter": "pipeline.engine.planes",
    "prepare": "pipeline.engine.prepared",
    "PreparedModel": "pipeline.engine.prepared",
    "RegionResult": "pipeline.engine.result",
    "PlaneResult": "pipeline.engine.planes",
    "UnsupportedOpError": "pipeline.engine.pwl",
    "CertificateError": "pipeline.engine.certificate",
    "CertificateWarning": "pipeline.engine.certificate",
    # the stores: reading what the discovery stage wrote (pipeline/store/)
    "open_store": "pipeline.store.lines",
    "open_stores": "pipeline.store.lines",
    "open_plane_store": "pipeline.store.planes",
    "StoreError": "pipeline.store.identity",
    "DamagedShardError": "pipeline.store.identity",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}; its public names are: "
                             + ", ".join(__all__))
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
