"""Exact layer-wise subdivision: carry each segment's vertices through the network.

The network is traced with ``torch.fx`` and its graph interpreted on a batch of *vertices*
(points ``x0 + t d`` of many segments, in order). Before each piecewise-linear op every live
tensor is affine on each piece between consecutive vertices of a segment (all earlier kinks
are already vertices), so a unit whose input changes sign inside a piece (a clamp: crosses
either bound) does so at the linear interpolation root; a max-pool window changes argmax at
a kink of the upper envelope of its (affine) elements. Each such point becomes a new vertex,
and every live tensor (skip connections included) is interpolated there. No ``eps``, no
sequential stepping.

A ReLU or clamp whose input nothing reads afterwards (the graph's last use, no other live
value in the same memory, not a view: the sub-chains of a split hold views of one tensor)
rectifies that input in place, which saves one tensor of the chain's size per such layer.

Memory stays bounded: when a chain of vertices grows past ``max_vertices`` it is split into
sub-chains (sharing their end vertex) that continue depth-first, left to right, so vertices
reach the output in order.

The affine map of each region is the chord between its vertices' outputs (``f`` is affine
there); :mod:`pipeline.engine.certificate` checks every map against the network at its midpoint.

The modules: :mod:`pipeline.engine.tracing` (the fx trace), :mod:`pipeline.engine.graph` (the
traced graph and its runner), :mod:`pipeline.engine.subdivide_mode` (the chains and the mode
that inserts their vertices); this one drives them over batches of segments and turns the
vertices into regions.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from pipeline.engine.certificate import certify_regions
# Plan, SplitRequest, SubdivideMode, run_graph and trace are imported from here by planes.py and tests
from pipeline.engine.graph import Plan, SplitRequest, run_graph
from pipeline.engine.result import RegionResult, assemble
from pipeline.engine.subdivide_mode import Chain, SubdivideMode
from pipeline.engine.tracing import trace
from pipeline.engine.worksize import shrink_on_oom

__all__ = ["subdivide", "trace", "Plan", "SplitRequest", "SubdivideMode", "run_graph"]


def subdivide(prepared, x0: torch.Tensor, x1: torch.Tensor, *, batch_size: int, keep_affine: bool,
              chunk_segments: int, max_vertices: int, row_block: int = 0, certify: str = "all",
              certify_rows: int, progress=None) -> Iterator[RegionResult]:
    """Yield :class:`RegionResult` chunks of consecutive segments (see ``discover_iter``);
    ``prepared`` is a :class:`pipeline.engine.prepared.PreparedModel`. On out-of-memory a batch of
    segments is redone with half the vertices per chain (and half the segments per batch)."""
    dtype, device = prepared.dtype, prepared.device
    example = x0[:1].to(device=device, dtype=dtype)
    plan = prepared.plan_for(example)
    tol = 16 * torch.finfo(dtype).eps  # vertices closer than this in t are one numerical point
    mode = SubdivideMode(plan, tol, row_block, prepared.assumed, example)
    n_seg = x0.shape[0]
    d_all = x1 - x0
    length = torch.linalg.vector_norm(d_all.double().reshape(n_seg, -1), dim=1).numpy()
    bcast = (-1,) + (1,) * (x0.ndim - 1)
    step = max(1, min(batch_size, chunk_segments))
    rows = certify_rows
    lo = 0
    while lo < n_seg:
        hi = min(n_seg, lo + max(chunk_segments, step))
        parts = []  # (seg, t, f) of each finished chain, on the device
        b0 = lo
        while b0 < hi:
            def batch(vertices, b0=b0):  # one batch of segments; leaves nothing behind on failure
                b1 = min(hi, b0 + max(1, min(step, vertices // 2)))
                seg = torch.arange(b0, b1, device=device).repeat_interleave(2)
                t = torch.tensor([0.0, 1.0], dtype=torch.float64, device=device).repeat(b1 - b0)
                xs0 = x0[b0:b1].to(device=device, dtype=dtype).repeat_interleave(2, 0)
                ds = d_all[b0:b1].to(device=device, dtype=dtype).repeat_interleave(2, 0)
                x = torch.addcmul(xs0, t.to(dtype).view(bcast), ds)
                done = []
                with torch.no_grad():  # the chains' parts, kept on the device: one copy to the host per
                    # chunk (_regions drops the vertex two parts of a split chain share)
                    run_graph(plan, mode, Chain(seg, t, {plan.input: x}, 0), vertices,
                              lambda ch, out: done.append((ch.seg, ch.t, out.double())))
                return done, b1

            (done, b1), max_vertices = shrink_on_oom("subdivide: a batch of segments", max_vertices, batch, floor=4)
            parts += done
            if progress is not None:
                progress.update(b1 - b0)
            b0 = b1
        seg, t, fv = (torch.cat(p).cpu().numpy() for p in zip(*parts))
        (result, rows) = shrink_on_oom(
            "subdivide: the certificate", rows,
            lambda r: _regions(prepared, x0, d_all, lo, hi, seg, t, fv, length, r, keep_affine, tol, row_block,
                               certify),
            floor=1)
        yield result
        lo = hi


def _regions(prepared, x0, d_all, lo, hi, seg, t, fv, length, rows_per_pass, keep_affine, tol, row_block, certify):
    # vertices are in order; _insert never puts two within tol, so this only drops the copies
    # of a vertex shared by two chunks of one chain
    keep = np.ones(seg.size, dtype=bool)
    keep[1:] = (seg[1:] != seg[:-1]) | (t[1:] - t[:-1] > tol)
    seg, t, fv = seg[keep], t[keep], fv[keep]
    bad = ~np.isfinite(fv).all(axis=1)
    if bad.any():
        raise FloatingPointError(f"the network produced nan or inf inside segment(s) {np.unique(seg[bad])[:5].tolist()}: "
                                 "check the weights and the input scale (overflow?)")
    first = np.r_[True, seg[1:] != seg[:-1]]
    last = np.r_[seg[1:] != seg[:-1], True]
    f0, f1 = fv[first], fv[last]
    inner = np.flatnonzero(seg[1:] == seg[:-1])
    t_start, t_end, rseg = t[inner], t[inner + 1], seg[inner]
    # the maps are the chords between vertex values: f is affine between consecutive vertices
    slope = (fv[inner + 1] - fv[inner]) / (t_end - t_start)[:, None]
    intercept = fv[inner] - slope * t_start[:, None]
    gap, screen_tol = certify_regions(prepared, certify, x0, d_all, lo, hi, rseg, 0.5 * (t_start + t_end), intercept,
                                      slope, f0, f1, fv[inner], rows_per_pass, row_block)
    return assemble(np.arange(lo, hi), rseg - lo, t_start, t_end, intercept, slope, f0, f1, length[lo:hi],
                    keep_affine, extra_gap=gap, certificate_tol=screen_tol, dtype=prepared.dtype)
