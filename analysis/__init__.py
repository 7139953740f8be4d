"""The analysis stage: Dask aggregation of a sweep's Zarr stores into tables and figures.

    python -m analysis runs/sweep --out results/sweep

``collect`` builds the per-path table (one Dask task per store shard, incremental),
``tables`` the paper's statistics (pure pandas), ``figures`` the plots, ``aggregation.aggregate``
all of it into a folder; ``synthetic`` makes a tiny sweep of real stores to try it on.
"""

from .config import AnalysisConfig, AnalysisError


def aggregate(*args, **kwargs):
    """See :func:`analysis.aggregation.aggregate` (imported on first use: dask and pyarrow are heavy)."""
    from .aggregation import aggregate as run

    return run(*args, **kwargs)


__all__ = ["AnalysisConfig", "AnalysisError", "aggregate"]
