"""From the pieces the mode produced to a :class:`PlaneResult`: pieces merged into regions by
(plane, pattern hashes), each region's affine map fitted over its vertices, its polygon (the
convex hull of its pieces), the certificate and the measures (numpy, on the host)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from pipeline.engine.certificate import gap_tolerance
from pipeline.engine.planes.certify import certify_centroids
from pipeline.engine.planes.geometry import convex_hull, plane_deviation, polygon_stats
from pipeline.engine.planes.result import PlaneResult, domain_area

__all__ = ["Chunk", "Pieces", "assemble_chunk"]


@dataclass(frozen=True)
class Chunk:
    """The planes of one chunk, as the driver set them up."""

    plane_index: np.ndarray  # (P,) positions in the caller's input
    x0: torch.Tensor  # (P, *input_shape) the planes' origins
    d1: torch.Tensor  # x1 - x0
    d2: torch.Tensor  # x2 - x0
    input_area: np.ndarray  # (P,) |d1 ^ d2|
    f_corners: np.ndarray  # (P, C, K) the network at the domain's corners
    gram: np.ndarray | None = None  # (P, 3) d1.d1, d1.d2, d2.d2


@dataclass(frozen=True)
class Pieces:
    """What the mode produced: the pieces at the network's output, with the slivers it dropped."""

    plane: np.ndarray  # (N,) each piece's plane (position in the chunk)
    count: np.ndarray  # (N,) its vertices (CSR over uv and f)
    uv: np.ndarray  # (V, 2) the vertices, counter-clockwise per piece
    f: np.ndarray  # (V, K) the network's output at each vertex
    h1: np.ndarray  # (N,) the two hashes of each piece's activation pattern
    h2: np.ndarray
    dropped_pieces: np.ndarray  # (P,) slivers below min_area, and their area
    dropped_area: np.ndarray


class _Merge(NamedTuple):
    """Pieces grouped into regions: one region per (plane, pattern hashes)."""

    order: np.ndarray  # the pieces sorted by (plane, h1, h2)
    rid: np.ndarray  # (N,) each piece's region
    plane: np.ndarray  # (R,) each region's plane
    area: np.ndarray  # (R,)
    centroid: np.ndarray  # (R, 2)
    piece_offset: np.ndarray  # (N+1,) the pieces' CSR offsets


class _Fit(NamedTuple):
    """Each region's least-squares affine map over its vertices, and its vertices grouped by region."""

    intercept: np.ndarray  # (R, K)
    g0: np.ndarray  # (R, K) the gradient along u
    g1: np.ndarray  # (R, K) along v
    gap: np.ndarray  # (R,) the fit's largest residual at a vertex
    vorder: np.ndarray  # vertex rows sorted by region (stable)
    starts: np.ndarray  # (R,) each region's first position in vorder
    nv: np.ndarray  # (R,) its vertex rows


def _merge(pieces: Pieces) -> _Merge:
    parea, pcen, poff, _ = polygon_stats(pieces.uv, pieces.count)
    pplane = pieces.plane
    order = np.lexsort((pieces.h2, pieces.h1, pplane))
    key = np.stack([pplane[order], pieces.h1[order], pieces.h2[order]], 1)
    new = np.r_[True, (key[1:] != key[:-1]).any(1)] if order.size else np.zeros(0, dtype=bool)
    rid = np.empty(order.size, dtype=np.int64)
    rid[order] = np.cumsum(new) - 1
    n_reg = int(new.sum())
    area = np.bincount(rid, parea, n_reg)
    cen = np.stack([np.bincount(rid, parea * pcen[:, 0], n_reg),
                    np.bincount(rid, parea * pcen[:, 1], n_reg)], 1) / area[:, None]
    return _Merge(order, rid, pplane[order][new], area, cen, poff)


def _fit(pieces: Pieces, rid: np.ndarray) -> _Fit:
    """The least-squares affine map over every vertex of each region's pieces."""
    vrid = np.repeat(rid, pieces.count)
    vorder = np.argsort(vrid, kind="stable")
    vr, u, v, f = vrid[vorder], pieces.uv[vorder, 0], pieces.uv[vorder, 1], pieces.f[vorder]
    starts = np.r_[0, np.flatnonzero(vr[1:] != vr[:-1]) + 1]
    nv = np.diff(np.r_[starts, vr.size])
    ub, vb = np.add.reduceat(u, starts) / nv, np.add.reduceat(v, starts) / nv
    fb = np.add.reduceat(f, starts, axis=0) / nv[:, None]
    du, dv, df = u - ub[vr], v - vb[vr], f - fb[vr]
    # the fit by modified Gram-Schmidt on [du dv | df] (the longer of du, dv first), not the
    # normal equations: on a sliver (area 7e-12, on ResNet18 planes) their determinant cancels
    # to a few digits (conditioning squared) and the map missed its own vertices by 6e-7 of f
    red = lambda q: np.add.reduceat(q, starts, axis=0)  # noqa: E731
    swap = red(dv * dv) > red(du * du)
    a, b = np.where(swap[vr], dv, du), np.where(swap[vr], du, dv)
    r11 = np.sqrt(red(a * a))
    q1 = a / r11[vr]
    r12 = red(q1 * b)
    b2 = b - r12[vr] * q1
    c = red(q1 * b2)  # once more against q1: b2 is small where the region is thin
    b2 -= c[vr] * q1
    r12 += c
    r22 = np.sqrt(red(b2 * b2))
    q2 = b2 / r22[vr]
    c1 = red(q1[:, None] * df)
    c2 = red(q2[:, None] * (df - c1[vr] * q1[:, None]))
    gb = c2 / r22[:, None]
    ga = (c1 - r12[:, None] * gb) / r11[:, None]
    g0, g1 = np.where(swap[:, None], gb, ga), np.where(swap[:, None], ga, gb)
    intercept = fb - ub[:, None] * g0 - vb[:, None] * g1
    resid = np.abs(df - du[:, None] * g0[vr] - dv[:, None] * g1[vr]).max(1)
    return _Fit(intercept, g0, g1, np.maximum.reduceat(resid, starts), vorder, starts, nv)


def _polygons(pieces: Pieces, merge: _Merge, fit: _Fit, n_planes: int):
    """Each region's polygon: a one-piece region keeps its vertex list, a merged one is the
    convex hull of its pieces. Returns the vertex offsets ``(R+1,)``, the vertices ``(V, 2)``
    and per plane the largest ``|hull area - area|`` of a merged region."""
    rid, order, poff, puv = merge.rid, merge.order, merge.piece_offset, pieces.uv
    n_reg = merge.area.size
    npieces = np.bincount(rid, minlength=n_reg)
    first_piece = np.empty(n_reg, dtype=np.int64)
    first_piece[rid[order][::-1]] = order[::-1]
    hull_gap = np.zeros(n_planes)
    counts = np.diff(poff)[first_piece]
    hulls = {}
    for r in np.flatnonzero(npieces > 1):
        hull = convex_hull(puv[fit.vorder[fit.starts[r]:fit.starts[r] + fit.nv[r]]])
        hulls[r] = hull
        counts[r] = hull.shape[0]
        ha, _, _, _ = polygon_stats(hull, np.array([hull.shape[0]]))
        hull_gap[merge.plane[r]] = max(hull_gap[merge.plane[r]], abs(float(ha[0]) - merge.area[r]))
    voff = np.zeros(n_reg + 1, dtype=np.int64)
    np.cumsum(counts, out=voff[1:])
    # one-piece regions copy their piece's vertex list
    src = np.repeat(poff[first_piece], counts) + np.arange(voff[-1]) - np.repeat(voff[:-1], counts)
    uv = puv[np.minimum(src, max(puv.shape[0] - 1, 0))] if voff[-1] else np.zeros((0, 2))
    for r, hull in hulls.items():
        uv[voff[r]:voff[r + 1]] = hull
    return voff, uv, hull_gap


def _output_scale(chunk: Chunk, pieces: Pieces) -> np.ndarray:
    """Per plane the largest ``|f|`` at the corners and vertices (the screen's floor)."""
    n_planes = chunk.plane_index.size
    out = np.abs(chunk.f_corners).reshape(n_planes, -1).max(axis=1, initial=0.0)
    if pieces.f.size:
        np.maximum.at(out, np.repeat(pieces.plane, pieces.count), np.abs(pieces.f).max(axis=1))
    return out


def _gap_tol(dtype, chunk: Chunk, pieces: Pieces, merge: _Merge, grad: np.ndarray, dom_area: float) -> np.ndarray:
    """The certificate's pass/fail tolerance: relative to the outputs' size on the plane (the
    largest |f| at corners and vertices, or the largest area-weighted |grad| over a logit)."""
    variation = np.zeros((chunk.plane_index.size, grad.shape[2]))
    np.add.at(variation, merge.plane, merge.area[:, None] * np.abs(grad).sum(1))
    return gap_tolerance(dtype, np.maximum(_output_scale(chunk, pieces), variation.max(axis=1, initial=0.0) / dom_area))


def assemble_chunk(prepared, chunk: Chunk, pieces: Pieces, *, domain: str, keep_affine: bool, certify,
                   row_block: int) -> PlaneResult:
    """The :class:`PlaneResult` of one chunk of planes from the pieces the mode produced
    (``certify`` and ``row_block`` as in :func:`pipeline.engine.planes.discover_plane`)."""
    n_planes = chunk.plane_index.size
    dom_area = domain_area(domain)
    if not np.isfinite(pieces.f).all():
        raise FloatingPointError("the network produced nan or inf on the plane(s): check the weights and the "
                                 "input scale")
    merge = _merge(pieces)
    fit = _fit(pieces, merge.rid)
    voff, uv, hull_gap = _polygons(pieces, merge, fit, n_planes)
    grad = np.stack([fit.g0, fit.g1], 1)
    pred = fit.intercept + merge.centroid[:, :1] * fit.g0 + merge.centroid[:, 1:] * fit.g1
    gap_tol = _gap_tol(prepared.dtype, chunk, pieces, merge, grad, dom_area)
    gap, ctol = fit.gap, np.zeros(n_planes)
    if certify is not None and merge.area.size:
        err, ctol = certify_centroids(prepared, certify, chunk, merge.plane, merge.centroid, pred,
                                      lambda: _output_scale(chunk, pieces), row_block)
        gap = np.maximum(gap, err)
    roff = np.zeros(n_planes + 1, dtype=np.int64)
    n_regions = np.bincount(merge.plane, minlength=n_planes)
    np.cumsum(n_regions, out=roff[1:])
    cgap = np.zeros(n_planes)
    np.maximum.at(cgap, merge.plane, gap)
    dev = plane_deviation(merge.area, merge.plane, voff, uv, fit.intercept, grad, chunk.f_corners, n_planes)
    return PlaneResult(
        plane_index=np.asarray(chunk.plane_index, dtype=np.int64), n_regions=n_regions, plane_offset=roff,
        input_area=np.asarray(chunk.input_area, dtype=np.float64), density=n_regions / dom_area,
        density_input=n_regions / (dom_area * np.asarray(chunk.input_area)), f_corners=chunk.f_corners,
        deviation=dev, continuity_gap=cgap, certificate_tol=ctol, hull_gap=hull_gap,
        n_pieces=np.bincount(pieces.plane, minlength=n_planes), dropped_pieces=pieces.dropped_pieces,
        dropped_area=pieces.dropped_area, area=merge.area, centroid=merge.centroid, vertex_offset=voff, uv=uv,
        region_gap=gap, intercept=fit.intercept if keep_affine else None, grad=grad if keep_affine else None,
        domain=domain, gap_tol=gap_tol, gram=chunk.gram)
