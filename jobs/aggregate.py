"""Aggregate a sweep's Zarr stores into the per-path table, summary tables and figures (Dask).

    python -m jobs aggregate configs/demo.yaml          # or the sweep folder: sweeps/demo

The same as ``python -m analysis``, naming the sweep by its file or its folder. Results go to
``<root>/analysis`` (``--out`` to change); a rerun reads only the stores that changed.
"""

from __future__ import annotations


def _root(arg):
    from .sweep import sweep_root

    return sweep_root(arg)[0]


def main(argv=None) -> int:
    from analysis.__main__ import main as analysis_main

    return analysis_main(argv, prog="python -m jobs aggregate", resolve=_root,
                         example="python -m jobs aggregate configs/demo.yaml --on-incomplete report")
