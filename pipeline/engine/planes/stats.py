"""Statistics of one plane's partition, exactly from its regions (a :class:`PlaneResult`; no new
discovery): the regions' areas and vertex counts, the region adjacency graph, the decision
boundary inside the plane and the gradient jumps across shared edges (``docs/design.md``,
"Plane partition statistics").

    from pipeline.engine.planes.stats import adjacency, decision_boundary, plane_stats
    edges = adjacency(result, 0)          # region i, region j, shared length (uv, input)
    seg = decision_boundary(result, 0)    # the tie segments of the top two logits
    row = plane_stats(result, 0)          # the per-plane columns (STATS_COLUMNS)

Lengths in input space need the plane's Gram matrix ``G = [[d1.d1, d1.d2], [d1.d2, d2.d2]]``
(``d1 = x1 - x0``, ``d2 = x2 - x0``): a step ``du`` in ``(u, v)`` has input length
``sqrt(du^T G du)``, and the plane's part of a logit's gradient has input norm
``sqrt(g^T G^-1 g)`` for its ``(u, v)`` gradient ``g``. ``input_area = sqrt(det G)`` alone does not
fix them: without ``gram`` (the result's or the caller's) those measures are NaN.

Geometry is matched with a tolerance ``tol`` in ``(u, v)`` (default :data:`REL_TOL` times the
plane's extent): two edges are collinear where each lies within ``tol`` of the other's line over
their common stretch, and touch where that stretch is longer than ``tol``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["STATS_COLUMNS", "REL_TOL", "region_areas", "adjacency", "decision_boundary", "boundary_pieces",
           "plane_stats", "plane_stats_table"]

REL_TOL = 1e-7  # default tolerance, as a fraction of the plane's extent in (u, v)

STATS_COLUMNS = ("area_median", "area_p10", "area_p90", "effective_regions", "vertices_mean", "vertices_max",
                 "n_adjacent", "mean_degree", "boundary_length", "boundary_length_input", "boundary_pieces",
                 "grad_jump_per_length", "edge_cos_median")


# --- helpers ---------------------------------------------------------------------------------------

def _gram(result, i: int, gram) -> np.ndarray | None:
    """The plane's Gram matrix ``(2, 2)``, or None where neither the caller nor the result gave it."""
    g = gram if gram is not None else getattr(result, "gram", None)
    if g is None:
        return None
    g = np.asarray(g, dtype=np.float64)
    if g.shape == (2, 2):
        return g
    row = g.reshape(-1, 3)[i]
    if not np.isfinite(row).all():
        return None
    return np.array([[row[0], row[1]], [row[1], row[2]]])


def _input_length(duv: np.ndarray, g: np.ndarray | None) -> np.ndarray:
    """Input-space lengths of ``(n, 2)`` steps in ``(u, v)`` (NaN without ``g``)."""
    if g is None:
        return np.full(duv.shape[0], np.nan)
    return np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", duv, g, duv), 0.0))


def _plane_polygons(result, i: int):
    """The plane's regions as local CSR: ``(rows, voff, uv)`` with ``rows`` the global region rows."""
    sl = result.region_slice(i)
    rows = np.arange(sl.start, sl.stop)
    off = result.vertex_offset[sl.start:sl.stop + 1]
    return rows, off - off[0], result.uv[off[0]:off[-1]]


def _tolerance(uv: np.ndarray, tol: float | None) -> float:
    if tol is not None:
        return float(tol)
    extent = float(np.ptp(uv, axis=0).max()) if uv.size else 1.0
    return REL_TOL * max(extent, np.finfo(float).tiny)


# --- areas and vertices ----------------------------------------------------------------------------

def region_areas(result, i: int) -> tuple[np.ndarray, np.ndarray]:
    """The areas of plane ``i``'s regions in ``(u, v)`` units and in input-space units
    (``x input_area``)."""
    a = np.asarray(result.area[result.region_slice(i)], dtype=np.float64)
    return a, a * float(result.input_area[i])


# --- adjacency ---------------------------------------------------------------------------------------

def _edges(voff: np.ndarray, uv: np.ndarray):
    """Every polygon edge: (region (local), start, end)."""
    n = np.diff(voff)
    reg = np.repeat(np.arange(n.size), n)
    nxt = np.arange(uv.shape[0]) + 1
    nxt[voff[1:] - 1] = voff[:-1]
    return reg, uv, uv[nxt]


def _candidate_pairs(p: np.ndarray, q: np.ndarray, tol: float) -> np.ndarray:
    """Pairs ``(a, b)``, ``a < b``, of edges whose bounding boxes (grown by ``tol``) share a cell
    of a uniform grid: a superset of the pairs of edges that touch."""
    m = p.shape[0]
    if m < 2:
        return np.zeros((0, 2), dtype=np.int64)
    lo = np.minimum(p, q) - tol
    hi = np.maximum(p, q) + tol
    origin = lo.min(0)
    span = float((hi.max(0) - origin).max())
    h = max(2.0 * float(np.median(np.linalg.norm(q - p, axis=1))), span / 4096, 4 * tol)
    c0 = np.floor((lo - origin) / h).astype(np.int64)
    c1 = np.floor((hi - origin) / h).astype(np.int64)
    nx, ny = c1[:, 0] - c0[:, 0] + 1, c1[:, 1] - c0[:, 1] + 1
    cnt = nx * ny
    edge = np.repeat(np.arange(m), cnt)
    k = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    cx = c0[edge, 0] + k % nx[edge]
    cy = c0[edge, 1] + k // nx[edge]
    width = int(c1[:, 0].max()) + 2
    cell = cy * width + cx
    order = np.lexsort((edge, cell))
    cell, edge = cell[order], edge[order]
    pairs = []
    s = 1
    while True:
        same = cell[s:] == cell[:-s] if s < cell.size else np.zeros(0, dtype=bool)
        if not same.any():
            break
        idx = np.nonzero(same)[0]
        pairs.append(np.stack([edge[idx], edge[idx + s]], 1))
        s += 1
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    out = np.concatenate(pairs)
    return np.unique(out, axis=0)


def _touching(reg, p, q, tol: float):
    """Edge pairs ``(a, b)`` of different regions that run along each other, opposite ways, over
    a stretch longer than ``tol``; with the stretch's length and its direction."""
    cand = _candidate_pairs(p, q, tol)
    a, b = cand[:, 0], cand[:, 1]
    keep = reg[a] != reg[b]
    a, b = a[keep], b[keep]
    d = q[a] - p[a]
    la = np.linalg.norm(d, axis=1)
    ok = la > tol
    a, b, d, la = a[ok], b[ok], d[ok], la[ok]
    d = d / la[:, None]
    nrm = np.stack([-d[:, 1], d[:, 0]], 1)
    # b's end points along a's direction, and their signed distance from a's line
    tp = ((p[b] - p[a]) * d).sum(1)
    tq = ((q[b] - p[a]) * d).sum(1)
    sp = ((p[b] - p[a]) * nrm).sum(1)
    sq = ((q[b] - p[a]) * nrm).sum(1)
    lo = np.maximum(0.0, np.minimum(tp, tq))
    hi = np.minimum(la, np.maximum(tp, tq))
    opposite = tq < tp
    with np.errstate(invalid="ignore", divide="ignore"):
        # b's distance from a's line at both ends of the common stretch (b is straight: linear in t)
        w = np.where(tq != tp, 1.0 / (tq - tp), 0.0)
        s_lo = sp + (lo - tp) * (sq - sp) * w
        s_hi = sp + (hi - tp) * (sq - sp) * w
    ok = opposite & (hi - lo > tol) & (np.abs(s_lo) <= tol) & (np.abs(s_hi) <= tol)
    return a[ok], b[ok], (hi - lo)[ok], d[ok]


def adjacency(result, i: int = 0, tol: float | None = None, gram=None) -> dict:
    """The region adjacency graph of plane ``i``: the pairs of regions that share an edge of
    positive length (longer than ``tol``; a corner alone is no edge).

    Edges are matched by collinear overlap, not by shared vertices: a neighbour's side may be
    split where the other's is not (a vertex of one polygon in the middle of the other's edge).

    Returns
    -------
    dict of numpy arrays, one entry per adjacent pair (``i < j``)
        ``i``, ``j`` the regions' rows within the plane (0 .. n_regions - 1; add
        ``result.plane_offset[i]`` for the result's rows), ``length`` the shared length in
        ``(u, v)`` units, ``length_input`` in input units (NaN without the Gram matrix).
        A plain edge list; into NetworkX::

            import networkx as nx
            e = adjacency(result, 0)
            g = nx.Graph()
            g.add_nodes_from(range(int(result.n_regions[0])))
            g.add_weighted_edges_from(zip(e["i"], e["j"], e["length"]), weight="length")
    """
    _, voff, uv = _plane_polygons(result, i)
    tol = _tolerance(uv, tol)
    reg, p, q = _edges(voff, uv)
    a, b, length, d = _touching(reg, p, q, tol)
    g = _gram(result, i, gram)
    length_in = _input_length(d * length[:, None], g)
    ri, rj = np.minimum(reg[a], reg[b]), np.maximum(reg[a], reg[b])
    n = max(int(np.diff(voff).size), 1)
    key, inv = np.unique(ri * n + rj, return_inverse=True)
    out_len = np.bincount(inv, weights=length, minlength=key.size)
    out_in = np.bincount(inv, weights=length_in, minlength=key.size) if g is not None else np.full(key.size, np.nan)
    return {"i": (key // n).astype(np.int64), "j": (key % n).astype(np.int64), "length": out_len,
            "length_input": out_in}


# --- decision boundary -----------------------------------------------------------------------------

def _region_ties(poly: np.ndarray, c0: np.ndarray, g: np.ndarray, tol: float) -> list:
    """The decision boundary inside one region (a convex polygon) where the logits are
    ``c0 + u g[0] + v g[1]``: the segments where the top two logits tie, as ``(2, 2)`` arrays.

    The class cells are found by recursive cuts: while the vertices disagree on the winning class,
    the polygon is split by the line ``f_a = f_b`` of two vertex winners ``a, b``. A leaf's edge
    along a cut ``f_a = f_b`` (seen from its side ``f_a >= f_b``) is on the decision boundary iff
    the leaf's class is ``a`` (then ``a`` and ``b`` both lead there); each such segment is taken
    once, from the side of the smaller class index."""
    segs = []
    f = c0 + poly[:, :1] * g[0] + poly[:, 1:] * g[1]
    eps = 1e-12 * max(float(np.abs(f).max()), 1e-300)  # ties within eps of the region's logit scale
    # each edge k (vertex k -> k+1) labelled with the cut (a, b) it lies on, or None; and the classes
    # that may still lead on the piece
    stack = [(poly, [None] * poly.shape[0], np.arange(c0.size))]
    while stack:
        p, lab, cand = stack.pop()
        f = c0[cand] + p[:, :1] * g[0, cand] + p[:, 1:] * g[1, cand]
        top = f.max(1)
        leads = np.nonzero((f >= top[:, None] - eps).all(0))[0]
        if leads.size:
            winner = int(cand[leads[0]])
            for e, cutab in enumerate(lab):
                if cutab is not None and cutab[0] == winner < cutab[1]:
                    seg = np.stack([p[e], p[(e + 1) % p.shape[0]]])
                    if np.linalg.norm(seg[1] - seg[0]) > tol:
                        segs.append(seg)
            continue
        # a leads at vertex 0; b leads where a trails by more than eps
        a = int(f[0].argmax())
        b = int(f[int(np.argmax(f[:, a] < top - eps))].argmax())
        s = f[:, a] - f[:, b]
        if s.max() <= eps:  # b is at least a everywhere (to eps): a leads nowhere on its own
            stack.append((p, lab, np.delete(cand, a)))
            continue
        # a proper cut: a keeps its lead over b on one side, b on the other (neither leads the
        # other again there: each pair is cut at most once on a branch)
        ca, cb = int(cand[a]), int(cand[b])
        for sign, ab, drop in ((1.0, (ca, cb), b), (-1.0, (cb, ca), a)):
            piece, plab = _split(p, lab, sign * s, ab)
            if piece is not None:
                stack.append((piece, plab, np.delete(cand, drop)))
    return segs


def _split(p, lab, s, ab):
    """The part of polygon ``p`` (edge labels ``lab``) where ``s >= 0``, the new edge labelled ``ab``;
    None when it has no area."""
    n = p.shape[0]
    out, olab = [], []
    for k in range(n):
        k1 = (k + 1) % n
        sa, sb = s[k], s[k1]
        if sa >= 0:
            out.append(p[k])
            olab.append(lab[k])
        if (sa >= 0) != (sb >= 0):
            t = sa / (sa - sb)
            out.append(p[k] + t * (p[k1] - p[k]))
            # entering the kept side: this new vertex starts the rest of edge k; leaving it: the cut
            olab.append(lab[k] if sb >= 0 else ab)
    if len(out) < 3:
        return None, None
    q = np.array(out)
    x, y = q[:, 0] - q[0, 0], q[:, 1] - q[0, 1]
    if 0.5 * abs((x * np.roll(y, -1) - np.roll(x, -1) * y).sum()) <= 0.0:
        return None, None
    return q, olab


def decision_boundary(result, i: int = 0, tol: float | None = None) -> np.ndarray:
    """The decision boundary inside plane ``i``: ``(n, 2, 2)`` segments in ``(u, v)``, the ties of
    the top two logits inside regions (the predicted class is affine-per-region: its cells in a
    region are the convex pieces where one logit is largest). Region edges are not boundary
    segments unless a tie runs along them. Only regions whose vertices disagree on the winner
    are cut (where one class leads at every vertex it leads on the whole polygon).

    Raises ValueError where the result kept no affine maps."""
    if result.intercept is None:
        raise ValueError("this result was computed with keep_affine=False: no affine maps kept")
    rows, voff, uv = _plane_polygons(result, i)
    tol = _tolerance(uv, tol)
    cnt = np.diff(voff)
    vreg = np.repeat(np.arange(rows.size), cnt)
    r = rows[vreg]
    f = result.intercept[r] + uv[:, :1] * result.grad[r, 0] + uv[:, 1:] * result.grad[r, 1]
    w = f.argmax(1)
    mixed = np.zeros(rows.size, dtype=bool)
    if uv.shape[0]:
        mixed = (np.minimum.reduceat(w, voff[:-1]) != np.maximum.reduceat(w, voff[:-1])) if rows.size else mixed
    segs = []
    for k in np.nonzero(mixed)[0]:
        g = result.grad[rows[k]]
        segs += _region_ties(uv[voff[k]:voff[k + 1]], result.intercept[rows[k]], g, tol)
    return np.array(segs).reshape(-1, 2, 2)


def boundary_pieces(segs: np.ndarray, tol: float) -> int:
    """The number of connected pieces of a union of segments ``(n, 2, 2)``: two segments join where
    an end of one lies within ``tol`` of the other (an end or its middle)."""
    n = segs.shape[0]
    if n == 0:
        return 0
    parent = np.arange(n)

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    a, b = _candidate_pairs(segs[:, 0], segs[:, 1], tol).T if n > 1 else (np.zeros(0, int), np.zeros(0, int))
    if a.size:
        touch = np.zeros(a.size, dtype=bool)
        for end in (0, 1):
            touch |= _point_segment(segs[a, end], segs[b]) <= tol
            touch |= _point_segment(segs[b, end], segs[a]) <= tol
        for x, y in zip(a[touch], b[touch]):
            rx, ry = find(x), find(y)
            if rx != ry:
                parent[max(rx, ry)] = min(rx, ry)
    return int(len({find(x) for x in range(n)}))


def _point_segment(pt: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Distance from points ``(n, 2)`` to segments ``(n, 2, 2)``."""
    d = seg[:, 1] - seg[:, 0]
    ll = (d * d).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.clip(np.where(ll > 0, ((pt - seg[:, 0]) * d).sum(1) / ll, 0.0), 0.0, 1.0)
    return np.linalg.norm(pt - (seg[:, 0] + t[:, None] * d), axis=1)


# --- the per-plane row -----------------------------------------------------------------------------

def _gradient_jumps(result, rows, e, g):
    """Per adjacent pair: the jump of the plane-projected Jacobian (input units, L2 over logits)
    and the cosine between the two projected Jacobians (NaN where one is zero)."""
    if g is None or result.grad is None or e["i"].size == 0:
        nan = np.full(e["i"].size, np.nan)
        return nan, nan
    ginv = np.linalg.inv(g)
    ja, jb = result.grad[rows[e["i"]]], result.grad[rows[e["j"]]]  # (n, 2, K)

    def inner(x, y):
        return np.einsum("nik,ij,njk->n", x, ginv, y)

    diff = ja - jb
    jump = np.sqrt(np.maximum(inner(diff, diff), 0.0))
    na, nb = np.sqrt(np.maximum(inner(ja, ja), 0.0)), np.sqrt(np.maximum(inner(jb, jb), 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where((na > 0) & (nb > 0), inner(ja, jb) / (na * nb), np.nan)
    return jump, np.clip(cos, -1.0, 1.0)


def plane_stats(result, i: int = 0, tol: float | None = None, gram=None) -> dict:
    """The columns :data:`STATS_COLUMNS` of plane ``i`` (definitions in ``docs/design.md``,
    "Plane partition statistics"). Those that need the affine maps (the decision boundary, the
    gradient jumps) are NaN without them, those in input units NaN without the Gram matrix."""
    rows, voff, uv = _plane_polygons(result, i)
    tol = _tolerance(uv, tol)
    g = _gram(result, i, gram)
    area, _ = region_areas(result, i)
    n = rows.size
    out = dict.fromkeys(STATS_COLUMNS, np.nan)
    if n == 0:
        return out
    frac = area / result.domain_area
    share = area / area.sum()
    share = share[share > 0]
    cnt = np.diff(voff)
    out.update(area_median=float(np.median(frac)), area_p10=float(np.quantile(frac, 0.1)),
               area_p90=float(np.quantile(frac, 0.9)),
               effective_regions=float(np.exp(-(share * np.log(share)).sum())),
               vertices_mean=float(cnt.mean()), vertices_max=float(cnt.max()))
    e = adjacency(result, i, tol=tol, gram=g)
    out.update(n_adjacent=float(e["i"].size), mean_degree=2.0 * e["i"].size / n)
    if result.intercept is None:
        return out
    segs = decision_boundary(result, i, tol=tol)
    duv = segs[:, 1] - segs[:, 0]
    out.update(boundary_length=float(np.linalg.norm(duv, axis=1).sum()),
               boundary_length_input=float(_input_length(duv, g).sum()) if g is not None else np.nan,
               boundary_pieces=float(boundary_pieces(segs, tol)))
    jump, cos = _gradient_jumps(result, rows, e, g)
    if g is not None and e["i"].size:
        w = e["length_input"]
        out["grad_jump_per_length"] = float((jump * w).sum() / w.sum()) if w.sum() > 0 else np.nan
        finite = np.isfinite(cos)
        out["edge_cos_median"] = float(np.median(cos[finite])) if finite.any() else np.nan
    return out


def plane_stats_table(result, tol: float | None = None) -> dict:
    """:func:`plane_stats` of every plane of ``result``: a dict of ``(P,)`` arrays."""
    rows = [plane_stats(result, i, tol=tol) for i in range(result.n_planes)]
    return {c: np.array([r[c] for r in rows], dtype=np.float64) for c in STATS_COLUMNS}
