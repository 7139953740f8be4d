"""Measures of nonlinearity from breakpoints and per-region affine maps (pure numpy).

Conventions (``../shared/DESIGN.md``): on region ``i`` of a segment, ``[t_start, t_end]``,
``f_k(t) = intercept_ik + slope_ik * t``; ``g(t) = f0 + t (f1 - f0)`` is the straight line
between the endpoint values. Region arrays are concatenated over segments, and
``region_offset`` (``S + 1``, CSR) says which rows belong to which segment.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "abs_linear_integral",
    "segment_ids",
    "absolute_deviation",
    "total_variation",
    "continuity_gap",
    "path_partials",
    "combine_path_partials",
    "path_measures",
    "PATH_COLUMNS",
]

# the per-path table, in order (StoreReader.paths and the analysis' Dask tasks)
PATH_COLUMNS = ("path_id", "density", "length", "density_per_length", "deviation", "total_variation",
                "continuity_gap", "n_segments", "n_uncertified")


def segment_ids(region_offset: np.ndarray) -> np.ndarray:
    """The segment index of every region row."""
    counts = np.diff(region_offset)
    return np.repeat(np.arange(counts.size), counts)


def abs_linear_integral(u: np.ndarray, v: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Exact ``∫ |h|`` over an interval of ``width`` on which ``h`` is affine, ``h = u`` at the
    start and ``v`` at the end.

    Where ``h`` changes sign the interval is split at its root: the two triangles add up to
    ``width (u² + v²) / (2 (|u| + |v|))``; otherwise it is the trapezoid ``width (|u| + |v|) / 2``.
    """
    au, av = np.abs(u), np.abs(v)
    total = au + av
    crossing = (u * v) < 0
    with np.errstate(invalid="ignore", divide="ignore"):
        tri = (u * u + v * v) / (2.0 * np.where(crossing, total, 1.0))
    return width * np.where(crossing, tri, total / 2.0)


def _reduce(values: np.ndarray, region_offset: np.ndarray) -> np.ndarray:
    """Sum region rows ``(R, K)`` per segment ``(S, K)`` (empty segments give zero)."""
    s = region_offset.size - 1
    out = np.zeros((s,) + values.shape[1:], dtype=np.float64)
    np.add.at(out, segment_ids(region_offset), values)
    return out


def absolute_deviation(t_start, t_end, intercept, slope, region_offset, f0, f1, length):
    """Paper Eq. 4–7 per segment and logit: ``‖d‖ Σ_i ∫ |f_k - g_k| dt``, ``(S, K)``."""
    seg = segment_ids(region_offset)
    g0 = f0[seg]
    gs = (f1 - f0)[seg]
    c = intercept - g0  # h(t) = f(t) - g(t) = c + e t on the region
    e = slope - gs
    ts, te = t_start[:, None], t_end[:, None]
    per_region = abs_linear_integral(c + e * ts, c + e * te, te - ts)
    return _reduce(per_region, region_offset) * np.asarray(length, dtype=np.float64)[:, None]


def total_variation(t_start, t_end, slope, region_offset):
    """``Σ_i |slope_ik| (t_end - t_start)`` per segment and logit, ``(S, K)``: the variation of
    ``f_k`` along the segment (in units of ``f`` per unit ``t``, i.e. along the whole segment)."""
    return _reduce(np.abs(slope) * (t_end - t_start)[:, None], region_offset)


def continuity_gap(t_start, t_end, intercept, slope, region_offset, f0, f1):
    """Per segment, the largest disagreement between adjacent affine maps at their shared
    breakpoint, and between the end regions and ``f(x0)``, ``f(x1)``. ``(S,)``.

    ``f`` is continuous, so this is zero up to rounding when every region was found with its
    correct map; a skipped region or an op the engine misread shows up here.
    """
    s = region_offset.size - 1
    gap = np.zeros(s)
    if t_start.size == 0:
        return gap
    seg = segment_ids(region_offset)
    first, last = region_offset[:-1], region_offset[1:] - 1
    has = region_offset[1:] > region_offset[:-1]
    left = intercept + slope * t_end[:, None]  # each region's value at its right end
    right = intercept + slope * t_start[:, None]  # ... and at its left end
    inner = np.abs(left[:-1] - right[1:]).max(axis=1) if left.shape[1] else np.zeros(left.shape[0] - 1)
    inner = np.where(seg[:-1] == seg[1:], inner, 0.0)
    np.maximum.at(gap, seg[:-1], inner)
    start_gap = np.abs(right[first[has]] - f0[has]).max(axis=1, initial=0.0)
    end_gap = np.abs(left[last[has]] - f1[has]).max(axis=1, initial=0.0)
    gap[has] = np.maximum(gap[has], np.maximum(start_gap, end_gap))
    return gap


def path_partials(path_id, density, length, deviation, total_variation_, continuity_gap_=None, gap_tol=None) -> dict:
    """Per-path partial sums of some of a path set's segments (one shard, say).

    Arrays run over segments; ``deviation`` and ``total_variation_`` are per logit, ``(S, K)``.
    Returns, over the sorted unique path ids: ``path_id``, sums of ``density``, ``length``,
    ``deviation`` and ``total_variation`` (per logit), the largest ``continuity_gap`` and the
    segment count ``n_segments``, and ``n_uncertified`` the segments whose certificate failed
    (``continuity_gap > gap_tol``; none where ``gap_tol`` is not given or NaN). Partials of disjoint segment sets combine with
    :func:`combine_path_partials` (a path may span shards).
    """
    path_id = np.asarray(path_id)
    ids, inverse = np.unique(path_id, return_inverse=True)

    def per_path(x):
        x = np.asarray(x, dtype=np.float64)
        out = np.zeros((ids.size,) + x.shape[1:])
        np.add.at(out, inverse, x)
        return out

    gap = np.full(ids.size, -np.inf)
    failed = np.zeros(ids.size, dtype=np.int64)
    if continuity_gap_ is not None:
        g = np.asarray(continuity_gap_, dtype=np.float64)
        np.maximum.at(gap, inverse, g)
        if gap_tol is not None:
            tol = np.asarray(gap_tol, dtype=np.float64)
            np.add.at(failed, inverse, (~(g <= tol) & ~np.isnan(tol)).astype(np.int64))
    return {"path_id": ids.astype(np.int64), "density": per_path(density), "length": per_path(length),
            "deviation": per_path(deviation), "total_variation": per_path(total_variation_),
            "continuity_gap": gap, "n_segments": np.bincount(inverse, minlength=ids.size).astype(np.int64),
            "n_uncertified": failed}


def combine_path_partials(parts) -> dict:
    """The per-path measures (``PATH_COLUMNS``) from partial sums of disjoint segment sets.

    Density (the number of regions) and length add up; absolute deviation and total
    variation add up per logit over the path's segments, then take the L2 norm over logits;
    the certificate is the largest ``continuity_gap`` of the path's segments, ``n_uncertified``
    how many of them failed it.
    """
    parts = list(parts)
    if not parts:
        return {"path_id": np.zeros(0, np.int64), "density": np.zeros(0, np.int64), "length": np.zeros(0),
                "density_per_length": np.zeros(0), "deviation": np.zeros(0), "total_variation": np.zeros(0),
                "continuity_gap": np.zeros(0), "n_segments": np.zeros(0, np.int64),
                "n_uncertified": np.zeros(0, np.int64)}
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    ids, inverse = np.unique(cat["path_id"], return_inverse=True)

    def total(x):
        out = np.zeros((ids.size,) + x.shape[1:], dtype=x.dtype)
        np.add.at(out, inverse, x)
        return out

    gap = np.full(ids.size, -np.inf)
    np.maximum.at(gap, inverse, cat["continuity_gap"])
    dens, length = total(cat["density"]), total(cat["length"])
    return {
        "path_id": ids.astype(np.int64),
        "density": np.rint(dens).astype(np.int64),
        "length": length,
        "density_per_length": np.divide(dens, length, out=np.full(ids.size, np.nan), where=length > 0),
        "deviation": np.linalg.norm(total(cat["deviation"]), axis=1),
        "total_variation": np.linalg.norm(total(cat["total_variation"]), axis=1),
        "continuity_gap": gap,
        "n_segments": total(cat["n_segments"]).astype(np.int64),
        "n_uncertified": total(cat["n_uncertified"]).astype(np.int64) if "n_uncertified" in cat
        else np.zeros(ids.size, np.int64),
    }


def path_measures(path_id, density, deviation, total_variation_, length):
    """Per-path measures from per-segment ones (arrays over segments, grouped by ``path_id``):
    :func:`combine_path_partials` of one :func:`path_partials`, without the certificate."""
    out = combine_path_partials([path_partials(path_id, density, length, deviation, total_variation_)])
    del out["continuity_gap"], out["n_uncertified"]
    return out
