"""Polygon geometry on the host (numpy): areas and centroids of CSR polygons, convex hulls, and
the 2-D absolute deviation of a plane's regions from the affine map through its corners."""

from __future__ import annotations

import numpy as np

__all__ = ["convex_hull", "plane_deviation", "polygon_stats"]


def convex_hull(p: np.ndarray) -> np.ndarray:
    """Counter-clockwise convex hull of points ``(n, 2)`` (monotone chain, collinear points dropped)."""
    p = np.unique(p, axis=0)
    if p.shape[0] <= 2:
        return p
    origin = p.min(0)
    p = p - origin  # tolerance relative to the points' extent
    tol = 1e-12 * float(np.abs(p).max()) ** 2

    def half(points):
        out = []
        for q in points:
            while len(out) >= 2:
                o, a = out[-2], out[-1]
                if (a[0] - o[0]) * (q[1] - o[1]) - (a[1] - o[1]) * (q[0] - o[0]) <= tol:
                    out.pop()
                else:
                    break
            out.append(q)
        return out

    lower, upper = half(p), half(p[::-1])
    return np.array(lower[:-1] + upper[:-1]) + origin


def polygon_stats(uv, count):
    """Area (signed), centroid of CSR polygons (numpy)."""
    off = np.zeros(count.size + 1, dtype=np.int64)
    np.cumsum(count, out=off[1:])
    nxt = np.arange(uv.shape[0]) + 1
    nxt[off[1:] - 1] = off[:-1]
    origin = uv[off[:-1]] if count.size else np.zeros((0, 2))
    uv = uv - np.repeat(origin, count, axis=0)  # relative to each polygon's first vertex: no cancellation
    x, y, xn, yn = uv[:, 0], uv[:, 1], uv[nxt, 0], uv[nxt, 1]
    cr = x * yn - xn * y
    starts = off[:-1]
    area = 0.5 * np.add.reduceat(cr, starts) if count.size else np.zeros(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = np.add.reduceat((x + xn) * cr, starts) / (6 * area) if count.size else np.zeros(0)
        cy = np.add.reduceat((y + yn) * cr, starts) / (6 * area) if count.size else np.zeros(0)
    return area, np.stack([cx, cy], 1) + origin, off, nxt


def _triangle_abs(a, b, c):
    """``∫ |h| / area`` over a triangle on which ``h`` is affine with values ``a, b, c`` at its corners."""
    total = (a + b + c) / 3.0
    pos = (a > 0).astype(np.int8) + (b > 0) + (c > 0)
    neg = (a < 0).astype(np.int8) + (b < 0) + (c < 0)
    mixed = (pos > 0) & (neg > 0)
    out = np.abs(total)
    if mixed.any():
        a, b, c, p = a[mixed], b[mixed], c[mixed], pos[mixed]
        # the isolated vertex: the one positive corner (pos == 1) or the one negative (-h)
        flip = np.where(p == 1, 1.0, -1.0)
        a, b, c = a * flip, b * flip, c * flip
        iso_a, iso_b = a > 0, (b > 0) & ~(a > 0)
        x = np.where(iso_a, a, np.where(iso_b, b, c))
        y = np.where(iso_a, b, np.where(iso_b, a, a))
        z = np.where(iso_a, c, np.where(iso_b, c, b))
        # the positive part is a corner triangle of area fraction x^2 / ((x - y)(x - z)), mean x / 3
        plus = x ** 3 / (3.0 * (x - y) * (x - z))
        out[mixed] = 2.0 * plus - (x + y + z) / 3.0
    return out


def plane_deviation(area_uv, region_plane, vertex_offset, uv, intercept, grad, f_corners, n_planes):
    """The 2-D absolute deviation ``(P, K)``: ``∫ |f_k - g_k| du dv`` over each plane's domain,
    ``g`` the affine map with ``g(0,0), g(1,0), g(0,1) = f(x0), f(x1), f(x2)``; exact per polygon
    (fan triangles, each split by the zero line of the affine ``h = f - g``)."""
    k = intercept.shape[1]
    out = np.zeros((n_planes, k))
    if area_uv.size == 0:
        return out
    f0, f1, f2 = f_corners[:, 0], f_corners[:, 1], f_corners[:, 2]
    cnt = np.diff(vertex_offset)
    vreg = np.repeat(np.arange(cnt.size), cnt)
    vp = region_plane[vreg]
    h = (intercept[vreg] - f0[vp]) + uv[:, :1] * (grad[vreg, 0] - (f1 - f0)[vp]) + uv[:, 1:] * (
        grad[vreg, 1] - (f2 - f0)[vp])
    # fan triangles (first, j, j+1) for j = first+1 .. last-1
    first = vertex_offset[:-1]
    rows = np.arange(uv.shape[0])
    inner = (rows > first[vreg]) & (rows < vertex_offset[1:][vreg] - 1)
    j = rows[inner]
    o = first[vreg[j]]
    e1, e2 = uv[j] - uv[o], uv[j + 1] - uv[o]
    tri = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    val = tri[:, None] * _triangle_abs(h[o], h[j], h[j + 1])
    np.add.at(out, vp[j], val)
    return out
