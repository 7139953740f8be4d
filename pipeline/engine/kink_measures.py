"""Measures past counting: how much the function bends at each breakpoint, and sampled counts
(pure numpy, from stored regions; ``docs/design.md``, "Kinks along a path").

    from pipeline.engine.kink_measures import kink_partials, combine_kink_partials
    part = kink_partials(path_id, length, region_offset, t_start, slope)   # one shard
    table = combine_kink_partials([part, ...])                              # KINK_COLUMNS per path

A **breakpoint** is the boundary between consecutive regions ``i, i+1`` of one segment (a
segment's ends, the path's anchors, are not breakpoints: the path turns there). ``f`` is
continuous, so only the slope along the segment changes there; with slopes ``b_i`` in ``t``
units and ``|d| = length`` the segment's input length:

* ``jump`` ``|Δ| = |b_{i+1} - b_i| / |d|``: the size (L2 over logits) of the change of the
  derivative along the line, per unit input length;
* ``rel_jump`` ``|b_{i+1} - b_i| / (|b_i| + |b_{i+1}|)`` in ``[0, 1]``, scale-free; 0 when both
  slopes are 0;
* ``cos`` between ``b_i`` and ``b_{i+1}``, in ``[-1, 1]``; 1 when both slopes are 0 (the maps
  agree), 0 when exactly one is (the zero vector is orthogonal to every slope).

Per path (``KINK_COLUMNS``): ``cos_median``, ``rel_jump_median``, ``rel_jump_p90`` (numpy's
linear quantile over the path's breakpoints; NaN without breakpoints), ``jump_total`` ``Σ|Δ_j|``,
``jump_per_length`` (over the path's length), ``effective_density`` ``n_segments + exp(H)`` with
``H`` the entropy of the shares ``|Δ_j| / jump_total`` (the term is 0 without breakpoints or
when ``jump_total`` is 0), ``n_kinks_90`` the fewest breakpoints whose jumps carry at least 90%
of ``jump_total`` (0 when it is 0); all NaN where the store kept no affine maps. And
``sampled_density_<N>`` for ``N`` in ``SAMPLE_POINTS``: the regions hit by ``N`` equally spaced
points ``t = i / (N - 1)`` of each segment, summed over the path's segments; a point exactly on
a breakpoint counts for the region starting there.

Partials of disjoint segment sets (shards) combine exactly: they carry each breakpoint's values,
and :func:`combine_kink_partials` sorts them within each path before any sum, so the result does
not depend on how the path was split.
"""

from __future__ import annotations

import numpy as np

from pipeline.engine.measures import segment_ids

__all__ = ["SAMPLE_POINTS", "KINK_COLUMNS", "inner_breakpoints", "slope_jumps", "breakpoint_measures",
           "sampled_density", "kink_partials", "combine_kink_partials"]

# points per segment of the sampled counts (the paper's Section 2.2: sampling undercounts)
SAMPLE_POINTS = (8, 32, 128, 512)
# the per-path columns of this module, in order (after pipeline.engine.measures.PATH_COLUMNS)
KINK_COLUMNS = ("cos_median", "rel_jump_median", "rel_jump_p90", "jump_total", "jump_per_length",
                "effective_density", "n_kinks_90", *(f"sampled_density_{n}" for n in SAMPLE_POINTS))
N_FLOAT = 7  # the first columns are floats, NaN without affine maps; the sampled counts are ints


def inner_breakpoints(region_offset: np.ndarray) -> np.ndarray:
    """The rows ``i`` whose next row ``i + 1`` is a region of the same segment: one per breakpoint,
    ``(B,)`` with ``B = R - S`` (segments without regions aside)."""
    seg = segment_ids(region_offset)
    return np.flatnonzero(seg[:-1] == seg[1:])


def slope_jumps(slope: np.ndarray, region_offset: np.ndarray, length: np.ndarray):
    """``Δ = (b_{i+1} - b_i) / |d|`` at every breakpoint, ``(B, K)``, and its segment ``(B,)``.

    ``slope`` is ``(R, K)`` in ``t`` units, ``length`` ``(S,)`` the segments' input lengths; a
    segment of length 0 has slope 0 (:func:`pipeline.engine.result.assemble`), its jumps are 0.
    """
    rows = inner_breakpoints(region_offset)
    seg = segment_ids(region_offset)[rows]
    slope = np.asarray(slope, dtype=np.float64)
    d = np.asarray(length, dtype=np.float64)[seg][:, None]
    diff = slope[rows + 1] - slope[rows]
    return np.divide(diff, d, out=np.zeros_like(diff), where=d > 0), seg


def breakpoint_measures(slope: np.ndarray, region_offset: np.ndarray, length: np.ndarray) -> dict:
    """Per breakpoint (``(B,)`` each): ``segment``, ``jump`` ``|Δ|``, ``rel_jump`` and ``cos``
    (module docstring: definitions and the conventions for zero slopes)."""
    rows = inner_breakpoints(region_offset)
    delta, seg = slope_jumps(slope, region_offset, length)
    slope = np.asarray(slope, dtype=np.float64)
    b0, b1 = slope[rows], slope[rows + 1]
    n0, n1 = np.linalg.norm(b0, axis=1), np.linalg.norm(b1, axis=1)
    dn = np.linalg.norm(b1 - b0, axis=1)
    total = n0 + n1
    rel = np.divide(dn, total, out=np.zeros_like(dn), where=total > 0)
    # dot / sqrt(|b0|² |b1|²): exactly 1 for two equal slopes (sqrt(x²) == x in floating point)
    both = np.sqrt(np.einsum("bk,bk->b", b0, b0) * np.einsum("bk,bk->b", b1, b1))
    cos = np.divide(np.einsum("bk,bk->b", b0, b1), both, out=np.zeros_like(dn), where=both > 0)
    cos = np.where((n0 == 0) & (n1 == 0), 1.0, np.clip(cos, -1.0, 1.0))
    return {"segment": seg, "jump": np.linalg.norm(delta, axis=1), "rel_jump": rel, "cos": cos}


def sampled_density(t_start: np.ndarray, region_offset: np.ndarray, sample_points=SAMPLE_POINTS) -> np.ndarray:
    """Regions hit by ``N`` points ``t = i / (N - 1)``, ``i = 0..N-1``, of each segment, for each
    ``N`` of ``sample_points``: ``(S, len(sample_points))`` int64.

    Region ``r`` holds ``[t_start_r, t_start_{r+1})`` (the last one up to and with ``t = 1``), so a
    point on a breakpoint counts for the region starting there. Each region meets a line in one
    interval, so this is the number of distinct activation patterns the points see; it never
    exceeds the segment's density and equals it once the spacing is below the thinnest region.
    """
    s = region_offset.size - 1
    seg = segment_ids(region_offset)
    lo = np.asarray(t_start, dtype=np.float64).copy()
    hi = np.empty_like(lo)
    hi[:-1] = lo[1:]
    has = region_offset[1:] > region_offset[:-1]
    lo[region_offset[:-1][has]] = -np.inf  # nothing of the segment lies before its first region
    hi[region_offset[1:][has] - 1] = np.inf  # ... nor after its last one (t = 1 belongs to it)
    out = np.zeros((s, len(sample_points)), dtype=np.int64)
    for j, n in enumerate(sample_points):
        if n < 2:
            raise ValueError(f"sampled counts need at least 2 points per segment (its ends); got {n}")
        t = np.arange(n, dtype=np.float64) / (n - 1)
        hit = np.searchsorted(t, hi, side="left") > np.searchsorted(t, lo, side="left")
        out[:, j] = np.bincount(seg[hit], minlength=s)
    return out


def kink_partials(path_id, length, region_offset, t_start, slope=None) -> dict:
    """What :func:`combine_kink_partials` needs from some of a path set's segments (one shard).

    Per segment: ``path_id``, ``length`` ``(S,)``, ``region_offset`` ``(S+1,)``; per region
    ``t_start`` ``(R,)`` and ``slope`` ``(R, K)`` (None where the store kept no affine maps).

    Returns, over the sorted unique path ids: ``path_id``, ``n_segments``, ``length`` (summed),
    ``sampled`` ``(P, len(SAMPLE_POINTS))`` (summed) and ``has_affine``; and per breakpoint
    ``bp_path_id``, ``jump``, ``rel_jump``, ``cos`` (empty without ``slope``).
    """
    path_id = np.asarray(path_id, dtype=np.int64)
    length = np.asarray(length, dtype=np.float64)
    region_offset = np.asarray(region_offset, dtype=np.int64)
    ids, inverse = np.unique(path_id, return_inverse=True)
    p = ids.size
    sampled = np.zeros((p, len(SAMPLE_POINTS)), dtype=np.int64)
    np.add.at(sampled, inverse, sampled_density(t_start, region_offset, SAMPLE_POINTS))
    total_length = np.zeros(p)
    np.add.at(total_length, inverse, length)
    out = {"path_id": ids, "n_segments": np.bincount(inverse, minlength=p).astype(np.int64), "length": total_length,
           "sampled": sampled, "has_affine": np.full(p, slope is not None)}
    if slope is None:
        empty = np.zeros(0)
        return {**out, "bp_path_id": np.zeros(0, np.int64), "jump": empty, "rel_jump": empty, "cos": empty}
    bp = breakpoint_measures(slope, region_offset, length)
    return {**out, "bp_path_id": path_id[bp["segment"]], "jump": bp["jump"], "rel_jump": bp["rel_jump"],
            "cos": bp["cos"]}


def _grouped(pos: np.ndarray, values: np.ndarray, p: int):
    """``values`` sorted ascending within each group ``pos`` (groups in order), the groups'
    sizes and starts."""
    v = values[np.lexsort((values, pos))]
    n = np.bincount(pos, minlength=p)
    start = np.zeros(p, dtype=np.int64)
    np.cumsum(n[:-1], out=start[1:])
    return v, n, start


def _quantile(pos, values, p: int, q: float) -> np.ndarray:
    """numpy's linear ``q``-quantile of each group's values (NaN for an empty group)."""
    v, n, start = _grouped(pos, values, p)
    out = np.full(p, np.nan)
    has = n > 0
    h = q * (n[has] - 1)
    lo = np.floor(h).astype(np.int64)
    hi = np.minimum(lo + 1, n[has] - 1)
    a, b = v[start[has] + lo], v[start[has] + hi]
    out[has] = a + (b - a) * (h - lo)
    return out


def _jump_measures(pos, jump, p: int):
    """Per group: ``Σ|Δ|``, ``exp(H)`` of the shares, and the fewest jumps carrying 90% of the sum."""
    v, n, start = _grouped(pos, jump, p)  # ascending within each path: every sum is in one order
    g = np.repeat(np.arange(p), n)
    total = np.zeros(p)
    np.add.at(total, g, v)
    # exp(H) = S exp(-L / S) with q = |Δ| / max: S = Σ q, L = Σ q log q; q = 1 for equal jumps,
    # so equal jumps give exactly their number
    top = np.zeros(p)
    has = n > 0
    top[has] = v[start[has] + n[has] - 1]
    q = np.divide(v, top[g], out=np.zeros_like(v), where=top[g] > 0)
    s, ql = np.zeros(p), np.zeros(p)
    np.add.at(s, g, q)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.add.at(ql, g, np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0))
        perplexity = np.where(s > 0, s * np.exp(-ql / np.where(s > 0, s, 1.0)), 0.0)
    kinks = np.zeros(p, dtype=np.int64)
    for i in np.flatnonzero(top > 0):
        c = np.cumsum(v[start[i]:start[i] + n[i]][::-1])  # largest first
        kinks[i] = int(np.searchsorted(10 * c, 9 * c[-1], side="left")) + 1  # 10 c >= 9 total: >= 90%
    return total, perplexity, kinks


def combine_kink_partials(parts) -> dict:
    """``KINK_COLUMNS`` (and ``path_id``) per path from :func:`kink_partials` of disjoint segment
    sets; a path any of whose parts kept no affine maps has NaN in every column but the sampled
    counts."""
    parts = list(parts)
    if not parts:
        return {"path_id": np.zeros(0, np.int64), **{c: np.zeros(0) for c in KINK_COLUMNS[:N_FLOAT]},
                **{c: np.zeros(0, np.int64) for c in KINK_COLUMNS[N_FLOAT:]}}
    cat = {k: np.concatenate([pt[k] for pt in parts]) for k in parts[0]}
    ids, inverse = np.unique(cat["path_id"], return_inverse=True)
    p = ids.size
    n_seg, length = np.zeros(p, np.int64), np.zeros(p)
    np.add.at(n_seg, inverse, cat["n_segments"])
    np.add.at(length, inverse, cat["length"])
    sampled = np.zeros((p, len(SAMPLE_POINTS)), np.int64)
    np.add.at(sampled, inverse, cat["sampled"])
    affine = np.ones(p, dtype=bool)
    np.logical_and.at(affine, inverse, cat["has_affine"])

    pos = np.searchsorted(ids, cat["bp_path_id"])
    total, perplexity, kinks = _jump_measures(pos, cat["jump"], p)
    cols = {
        "cos_median": _quantile(pos, cat["cos"], p, 0.5),
        "rel_jump_median": _quantile(pos, cat["rel_jump"], p, 0.5),
        "rel_jump_p90": _quantile(pos, cat["rel_jump"], p, 0.9),
        "jump_total": total,
        "jump_per_length": np.divide(total, length, out=np.full(p, np.nan), where=length > 0),
        "effective_density": n_seg + perplexity,
        "n_kinks_90": kinks.astype(np.float64),
    }
    out = {"path_id": ids.astype(np.int64)}
    for name, col in cols.items():
        out[name] = np.where(affine, col, np.nan)
    for j, name in enumerate(KINK_COLUMNS[N_FLOAT:]):
        out[name] = sampled[:, j]
    return out
