"""Exact 2-D slices: every linear region of a network on a plane through three inputs.

The plane ``x(u, v) = x0 + u (x1 - x0) + v (x2 - x0)`` over the triangle ``u, v >= 0,
u + v <= 1`` (``domain="triangle"``) or the unit square in ``(u, v)``
(``domain="parallelogram"``) is partitioned into the convex polygons on which the network is
affine: its linear regions, i.e. the sets of constant activation pattern (ReLU signs, clamp
states, max-pool argmaxes).

Algorithm (the 2-D analogue of :mod:`pipeline.engine.subdivide`, sharing its traced graph, op
recognition and graph runner):

* The domain is a set of convex *pieces*, each with its own vertex list (CSR, CCW). Every
  live tensor of the graph is carried at every vertex, so affine ops (linear, conv, BN in
  eval, residual adds, avg-pool, reshapes) run on vertex values directly; before each
  piecewise-linear op every tensor is affine on each piece.
* At a PWL op with input ``z``, a piece needs a cut iff some unit's state differs between its
  vertices: a ReLU / clamp input above ``+tol`` at one vertex and below ``-tol`` at another;
  for a max-pool window, no candidate is (within ``tol``) the max at every vertex (if one
  is, it is the max on the whole piece: ``z_a - z_j`` is affine). Each such piece is cut, one
  line per round, by a randomly chosen offending unit's zero line (for a window, the line
  ``z_a = z_b`` of the argmaxes at two vertices, picked so that it strictly separates them)
  with Sutherland-Hodgman clipping, vectorised over pieces; new vertices interpolate every
  live tensor along the crossed edge (exact: it is affine there). Vertices with ``|s| <= tol``
  lie on the line (``tol`` = ``rel_tol`` x the unit's largest ``|z|`` over the tile), and
  pieces below ``min_area`` x the domain's area are dropped (counted in ``dropped_*``).
  Rounds repeat until no piece needs a cut; then the state of every unit at each piece's
  vertex mean (an interior point) is folded into two 64-bit hashes of the piece's activation
  pattern, and the op is applied at the vertices with that state (so vertex values follow the
  piece's affine map exactly, and a unit off on a piece is exactly zero there).
* Memory: when a tile's vertices pass ``max_vertices`` (during the cut rounds or after an op)
  its pieces are split into groups that continue depth-first (mid-op, the op is run again on
  each group: cutting is stateless).
* At the output, pieces are merged by (plane, pattern hashes): one pattern is a convex set,
  so a region's polygon is the convex hull of its pieces' vertices, its area their sum.
  Pieces merge where a cut along ``z_a = z_b`` crossed an area where a third candidate is the
  max. The region's affine map is the least-squares fit over its vertices' outputs; its
  certificate ``region_gap`` is the larger of the fit's residual at the vertices and the
  disagreement with a plain forward of the network at the centroid.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np
import torch

from pipeline.engine import allowlist, pwl
from pipeline.engine.certificate import CertificateError, CertificateWarning, check_option, enforce, gap_tolerance, sampled, screen
from pipeline.engine.linearize import forward_blocked
from pipeline.engine.prepared import as_prepared, preflight
from pipeline.engine.subdivide import Plan, SplitRequest, SubdivideMode, run_graph
from pipeline.engine.worksize import shrink_on_oom, work_sizes

__all__ = ["PlaneResult", "discover_plane", "discover_plane_iter", "DOMAINS", "MIN_AREA", "default_rel_tol",
           "CertificateError", "CertificateWarning"]

# the domain's corners in (u, v), counter-clockwise, and its area
DOMAINS = {
    "triangle": (((0.0, 0.0), (1.0, 0.0), (0.0, 1.0)), 0.5),
    "parallelogram": (((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)), 1.0),
}
CERTIFY = ("all", "strict", "sample", None)  # the centroid certificate (see discover_plane)
MIN_AREA = 1e-14  # default: pieces below this fraction of the domain's area are dropped (and counted)
CERTIFY_ROWS = 2048  # centroids per forward of the certificate
_MIX1, _MIX2 = 0x100000001B3, 0x5851F42D4C957F2D  # odd multipliers that chain the per-op hashes


@dataclass(frozen=True)
class PlaneResult:
    """Linear regions on ``P`` planes, as numpy arrays (CSR over regions and over vertices).

    Per plane: ``plane_index (P,)`` (position in the caller's input), ``n_regions (P,)``,
    ``plane_offset (P+1,)``, ``input_area (P,)`` ``|d1 ^ d2|`` (the input-space area of the
    unit square in ``(u, v)``), ``density (P,)`` regions per unit ``(u, v)`` area,
    ``density_input (P,)`` per unit input-space area, ``f_corners (P, C, K)`` the network at
    ``x0, x1, x2`` (and ``x1 + x2 - x0`` for the parallelogram: ``C`` = 3 or 4), ``deviation (P, K)`` the 2-D absolute deviation
    (``∫ |f - g|`` over the domain in ``(u, v)`` units, ``g`` the affine map through
    ``f(x0), f(x1), f(x2)``), ``continuity_gap (P,)`` the largest ``region_gap``,
    ``certificate_tol (P,)`` the float32 screen's tolerance (every region whose centroid was not
    evaluated in the working precision agrees with the network there to within it; 0 where all
    were), ``gap_tol (P,)`` the certificate's pass/fail tolerance
    (:func:`pipeline.engine.certificate.gap_tolerance`) and ``certified (P,)`` ``continuity_gap <= gap_tol``,
    ``hull_gap (P,)`` the largest ``|hull area - area|`` of a merged region (a wrong merge
    shows here), ``n_pieces (P,)`` pieces before the merge, ``dropped_pieces (P,)`` and
    ``dropped_area (P,)`` the slivers below ``min_area``.
    Per region: ``area (R,)`` in ``(u, v)`` units, ``centroid (R, 2)``, ``vertex_offset
    (R+1,)`` into ``uv (V, 2)`` (each polygon convex, counter-clockwise), ``region_gap (R,)`` (the
    fit's residual at the vertices, and where the centroid was evaluated in the working precision
    the disagreement there)
    and, unless ``keep_affine=False``, ``intercept (R, K)`` and ``grad (R, 2, K)`` with
    ``f(x(u, v)) = intercept + u grad[:, 0] + v grad[:, 1]`` on the region.
    """

    plane_index: np.ndarray
    n_regions: np.ndarray
    plane_offset: np.ndarray
    input_area: np.ndarray
    density: np.ndarray
    density_input: np.ndarray
    f_corners: np.ndarray
    deviation: np.ndarray
    continuity_gap: np.ndarray
    certificate_tol: np.ndarray
    hull_gap: np.ndarray
    n_pieces: np.ndarray
    dropped_pieces: np.ndarray
    dropped_area: np.ndarray
    area: np.ndarray
    centroid: np.ndarray
    vertex_offset: np.ndarray
    uv: np.ndarray
    region_gap: np.ndarray
    intercept: np.ndarray | None
    grad: np.ndarray | None
    domain: str = "triangle"
    gap_tol: np.ndarray | None = None

    @property
    def certified(self) -> np.ndarray | None:
        """``(P,)`` bool: the certificate passed, ``continuity_gap <= gap_tol`` (None without ``gap_tol``)."""
        return None if self.gap_tol is None else self.continuity_gap <= self.gap_tol

    @property
    def domain_area(self) -> float:
        return DOMAINS[self.domain][1]

    @property
    def n_planes(self) -> int:
        return int(self.n_regions.size)

    @property
    def total_regions(self) -> int:
        return int(self.area.size)

    def polygon(self, r: int) -> np.ndarray:
        """The ``(n, 2)`` CCW vertices of region ``r`` (a global region row)."""
        return self.uv[self.vertex_offset[r]:self.vertex_offset[r + 1]]

    def region_slice(self, i: int) -> slice:
        """The region rows of plane ``i`` (position in this result)."""
        return slice(int(self.plane_offset[i]), int(self.plane_offset[i + 1]))

    def locate(self, i: int, uv) -> np.ndarray:
        """For points ``uv (N, 2)`` of plane ``i``, the (global) region row holding each, and
        -1 where none does (outside the domain). Points on a shared edge get one of them."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        out = np.full(uv.shape[0], -1, dtype=np.int64)
        best = np.full(uv.shape[0], -np.inf)
        for r in range(*self.region_slice(i).indices(self.total_regions)):
            p = self.polygon(r)
            q = np.roll(p, -1, axis=0)
            e = q - p
            # signed distance inside every edge (>= 0 inside a CCW polygon)
            cross = (e[None, :, 0] * (uv[:, None, 1] - p[None, :, 1]) - e[None, :, 1] * (uv[:, None, 0] - p[None, :, 0]))
            d = (cross / np.linalg.norm(e, axis=1)[None]).min(1)
            take = d > best
            best[take], out[take] = d[take], r
        out[best < -1e-12] = -1
        return out

    def evaluate(self, i: int, uv) -> np.ndarray:
        """The stored affine maps of plane ``i`` at points ``uv (N, 2)``: ``(N, K)``."""
        if self.intercept is None:
            raise ValueError("this result was computed with keep_affine=False: no affine maps kept")
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        r = self.locate(i, uv)
        if (r < 0).any():
            raise ValueError("some points lie outside the domain")
        return self.intercept[r] + uv[:, :1] * self.grad[r, 0] + uv[:, 1:] * self.grad[r, 1]

    @staticmethod
    def concat(parts: list["PlaneResult"]) -> "PlaneResult":
        """Join the results of consecutive chunks of planes."""
        if not parts:
            raise ValueError("nothing to concatenate")
        if len(parts) == 1:
            return parts[0]
        kw = {}
        for f in fields(PlaneResult):
            vals = [getattr(p, f.name) for p in parts]
            if f.name in ("plane_offset", "vertex_offset"):
                ends = np.cumsum([0] + [v[-1] for v in vals[:-1]])
                kw[f.name] = np.concatenate([vals[0][:1]] + [v[1:] + s for v, s in zip(vals, ends)])
            elif f.name == "domain":
                kw[f.name] = vals[0]
            elif vals[0] is None:
                kw[f.name] = None
            else:
                kw[f.name] = np.concatenate(vals)
        return PlaneResult(**kw)


# --------------------------------------------------------------------------- tiles


def _offsets(count: torch.Tensor) -> torch.Tensor:
    off = torch.zeros(count.numel() + 1, dtype=torch.long, device=count.device)
    torch.cumsum(count, 0, out=off[1:])
    return off


class _Tile:
    """Pieces (plane, vertex count, two pattern hashes) and, per vertex, ``(u, v)`` and the
    values of every live graph node (``env``, rows in piece order)."""

    def __init__(self, plane, count, uv, env, pos, h1, h2):
        self.plane, self.count, self.uv, self.env, self.pos, self.h1, self.h2 = plane, count, uv, env, pos, h1, h2

    def size(self) -> int:
        return self.uv.shape[0]

    def split(self, plan: Plan, size: int) -> list["_Tile"]:
        """Contiguous groups of pieces of about ``size / 2`` vertices (views of this tile)."""
        target = max(1, size // 2)
        off = _offsets(self.count).cpu()
        group = off[:-1] // target
        starts = torch.cat([torch.zeros(1, dtype=torch.long, device="cpu"),  # host offsets: one wait per split
                            (group[1:] != group[:-1]).nonzero().flatten() + 1,
                            torch.tensor([self.count.numel()], device="cpu")]).tolist()
        out = []
        for p0, p1 in zip(starts[:-1], starts[1:]):
            a, b = int(off[p0]), int(off[p1])
            env = {n: plan.rows(n, val, a, b) for n, val in self.env.items()}
            out.append(_Tile(self.plane[p0:p1], self.count[p0:p1], self.uv[a:b], env, self.pos,
                             self.h1[p0:p1], self.h2[p0:p1]))
        return out


def _segment(values: torch.Tensor, piece: torch.Tensor, n: int, how: str) -> torch.Tensor:
    """Per-piece reduction ("amax", "amin", "sum") of vertex rows ``values (V, ...)``."""
    shape = (n, *values.shape[1:])
    if how == "sum":
        return values.new_zeros(shape).index_add_(0, piece, values)
    fill = -math.inf if how == "amax" else math.inf
    idx = piece.view(-1, *([1] * (values.ndim - 1))).expand_as(values)
    return values.new_full(shape, fill).scatter_reduce_(0, idx, values, how)


def _shoelace(uv: torch.Tensor, count: torch.Tensor):
    """Signed area of every polygon (CSR ``count``) and the row index of each vertex's successor."""
    off = _offsets(count)
    piece = torch.repeat_interleave(torch.arange(count.numel(), device=uv.device), count)
    nxt = torch.arange(uv.shape[0], device=uv.device) + 1
    nxt[off[1:] - 1] = off[:-1]
    uv = uv - uv[off[:-1]][piece]  # relative to each polygon's first vertex: no cancellation
    cross = uv[:, 0] * uv[nxt, 1] - uv[nxt, 0] * uv[:, 1]
    return 0.5 * _segment(cross, piece, count.numel(), "sum"), piece, nxt


class _PlaneMode(SubdivideMode):
    """Cuts the pieces of a tile at every piecewise-linear op (see the module docstring)."""

    def __init__(self, plan: Plan, row_block: int, max_vertices: int, rel_tol: float, min_area: float,
                 n_planes: int, seed: int, assumed=None, example=None):
        super().__init__(plan, 0.0, row_block, assumed, example)
        self.max_vertices, self.rel_tol, self.min_area = max_vertices, rel_tol, min_area
        self.gen = torch.Generator().manual_seed(seed)
        self.tables: dict = {}
        self.dropped_pieces = np.zeros(n_planes, dtype=np.int64)
        self.dropped_area = np.zeros(n_planes)
        self._rows_key, self._rows = None, None  # _distinct_rows' cache

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        call = pwl.recognise(func, args, kwargs, self.taint.any((args, kwargs)))
        if call is None:
            return allowlist.run_checked(func, args, kwargs, self.taint, self.assumed, self._run_affine)
        z = call.input
        self._check_exposed(func, call)
        z, tol = self._cut(call, z)
        state, piece = self._record(call, z, tol)
        out = self._apply_state(call, z, state, piece)
        self.taint.mark(out)
        return out

    def _run_affine(self, func, args, kwargs):
        x = args[0] if args else None
        if (pwl.is_conv(func) and isinstance(x, torch.Tensor) and x.ndim > 1
                and x.shape[0] == self.chain.size()):
            return self._shared(func, args, kwargs)
        return pwl.call_blocked(func, args, kwargs, self.row_block)

    def _shared(self, func, args, kwargs):
        """A convolution on the tile's vertices, run once per distinct vertex.

        Neighbouring pieces hold their shared vertices each (2-3 rows per point): rows of one
        plane with the same ``(u, v)`` bits are run once and the output copied back to each
        (the point's values agree up to rounding between the pieces: a unit on the line between
        them is ~0, within ``tol``, on one side and exactly 0 on the other). Dense layers are
        left alone: on the MLPs of bench/planes.py finding the distinct rows cost more than it
        saved."""
        x = args[0]
        first, inverse = self._distinct_rows()
        if first.numel() > 0.9 * x.shape[0]:
            return pwl.call_blocked(func, args, kwargs, self.row_block)
        out = pwl.call_blocked(func, (x[first], *args[1:]), kwargs, self.row_block)
        return out[inverse]

    def _distinct_rows(self):
        """``(first, inverse)``: one row of each distinct (plane, u, v) of the tile, and for every
        row the position of its own; cached until the tile's vertices change."""
        tile = self.chain
        if self._rows_key is not tile.uv:
            piece = torch.repeat_interleave(torch.arange(tile.count.numel(), device=tile.count.device), tile.count)
            key = torch.cat([tile.plane[piece].view(-1, 1), tile.uv.contiguous().view(torch.int64)], 1)
            _, inverse = torch.unique(key, dim=0, return_inverse=True)
            first = torch.empty(int(inverse.max()) + 1 if inverse.numel() else 0, dtype=torch.long,
                                device=inverse.device)
            first.scatter_(0, inverse, torch.arange(inverse.numel(), device=inverse.device))
            self._rows_key, self._rows = tile.uv, (first, inverse)
        return self._rows

    @staticmethod
    def _apply_state(call, z, state, piece):
        """The op at every vertex *with its piece's state* (not each vertex's own): vertex
        values then follow the piece's affine map exactly, a unit off on a piece is exactly 0
        there (no rounding noise for later ties to read), a window yields its piece's argmax."""
        if call.kind == "max":
            win, shape = call.windows(z)  # (V, C, kk, L)
            idx = state[piece].view(win.shape[0], win.shape[1], 1, win.shape[3])
            return call.finish(win.gather(2, idx), idx, shape)
        st = state[piece].view(z.shape)
        if call.kind == "relu":
            on = st.bool()
            if pwl.is_plain_relu(call.negative_slope):
                out = torch.where(on, z, 0.0)
            else:
                out = torch.where(on, z, call.negative_slope * z)
        else:
            out = torch.where(st == 0, call.lo, torch.where(st == 2, call.hi, z))
        if call.inplace:
            return z.copy_(out)
        return out

    # ------------------------------------------------------------------ unit features

    @staticmethod
    def _levels(call, z: torch.Tensor) -> torch.Tensor:
        """ReLU / clamp: ``(V, U)`` the signed distance of every unit to each kink level."""
        flat = z.reshape(z.shape[0], -1)
        if call.kind == "relu":
            return flat
        return torch.cat([flat - c for c in call.clamp_bounds()], 1)

    @staticmethod
    def _windows(call, z: torch.Tensor) -> torch.Tensor:
        win, _ = call.windows(z)  # (V, C, kk, L)
        return win.permute(0, 1, 3, 2).reshape(win.shape[0], -1, win.shape[2])  # (V, W, kk)

    # ------------------------------------------------------------------ cutting

    def _cut(self, call, z):
        """Cut the tile's pieces until no unit of this op changes state inside any of them.

        During the rounds the distinct batched tensors live in ``vals`` (one slot per tensor,
        aliases kept together); pieces that need no further cut are set aside once and joined
        back at the end, so each round only touches the pieces still being cut."""
        tile = self.chain
        v = tile.size()
        slots, vals, z_slot = {}, [], None
        for node, val in tile.env.items():
            if not self.plan.batched[node]:
                continue
            if not isinstance(val, torch.Tensor) or val.shape[:1] != (v,):
                continue  # a size read from the batch: follows the tile's size in _join
            if id(val) not in slots:
                slots[id(val)] = len(vals)
                vals.append(val)
        if id(z) not in slots:
            slots[id(z)] = len(vals)
            vals.append(z)
        z_slot = slots[id(z)]
        node_slot = {node: slots[id(val)] for node, val in tile.env.items()
                     if self.plan.batched[node] and id(val) in slots}
        sizes = [node for node, val in tile.env.items() if self.plan.batched[node] and id(val) not in slots]
        if call.kind == "max":
            win = self._windows(call, z)
            scale = torch.where(torch.isfinite(win), win.abs(), 0.0).amax(dim=(0, 2))  # (W,)
        else:
            scale = self._levels(call, z).abs().amax(0)  # (U,)
        tol = (self.rel_tol * scale).clamp_min(1e-300).double()
        act = [tile.plane, tile.count, tile.uv, tile.h1, tile.h2, vals]
        done = []
        n_done_rows = 0
        # The units (windows) that still change state on some active piece. A cut piece's halves
        # hold convex combinations of its vertices, so a unit that changes state on no piece of
        # a round changes state on none of their halves: later rounds look at these alone.
        cols = None
        while act[1].numel():
            cnt = act[1]
            pa = cnt.numel()
            piece = torch.repeat_interleave(torch.arange(pa, device=cnt.device), cnt)
            za = act[5][z_slot]
            if call.kind == "max":
                feats = self._windows(call, za)
                if cols is not None:
                    feats = feats[:, cols]
                need, sv, stol, live = self._pool_lines(feats, piece, pa, cnt, tol if cols is None else tol[cols])
            else:
                feats = self._levels(call, za)
                if cols is not None:
                    feats = feats[:, cols]
                need, sv, stol, live = self._unit_lines(feats, piece, pa, tol if cols is None else tol[cols])
            if not bool(need.any()):
                break
            cols = live if cols is None else cols[live]
            kept, act = self._clip(act, piece, cnt, need, sv, stol)
            if kept is not None:
                done.append(kept)
                n_done_rows += kept[2].shape[0]
            if n_done_rows + act[2].shape[0] > self.max_vertices and len(done) + act[1].numel() >= 2:
                self._join(tile, done, act, node_slot)
                self._rebatch(tile, sizes)
                raise SplitRequest
        out = self._join(tile, done, act, node_slot)[z_slot]
        self._rebatch(tile, sizes)
        return out, tol

    def _rebatch(self, tile, nodes):
        for node in nodes:
            tile.env[node] = self.plan.rebatch(node, tile.env[node], tile.size())

    @staticmethod
    def _join(tile, done, act, node_slot):
        """Write the set-aside pieces and the last active ones back into the tile."""
        parts = done + [act]
        if len(parts) == 1:
            vals = act[5]
        else:
            vals = [torch.cat([p[5][k] for p in parts]) for k in range(len(act[5]))]
        cat = lambda j: torch.cat([p[j] for p in parts]) if len(parts) > 1 else act[j]
        tile.plane, tile.count, tile.uv, tile.h1, tile.h2 = cat(0), cat(1), cat(2), cat(3), cat(4)
        for node, k in node_slot.items():
            tile.env[node] = vals[k]
        return vals

    def _unit_lines(self, lev, piece, pa, tol):
        """ReLU / clamp: which pieces need a cut, one offending unit's values at each vertex,
        its tolerance, and the columns of ``lev`` offending on some piece."""
        lev = lev.double()
        mx, mn = _segment(lev, piece, pa, "amax"), _segment(lev, piece, pa, "amin")
        needu = (mx > tol) & (mn < -tol)
        need = needu.any(1)
        # the offending unit of highest priority, priorities drawn at random every round
        prio = torch.randperm(needu.shape[1], generator=self.gen, dtype=torch.int32, device="cpu").to(needu.device) + 1
        unit = torch.where(needu, prio, 0).argmax(1)  # (Pa,)
        s = lev.gather(1, unit[piece].view(-1, 1)).flatten()
        return need, s, tol[unit], needu.any(0).nonzero().flatten()

    def _pool_lines(self, win, piece, pa, cnt, tol):
        """Max-pool: pieces on which no candidate of some window is the max everywhere, and for
        each a line ``z_a - z_b`` (argmaxes at two of its vertices) that strictly separates them;
        with its tolerance, and the windows (columns of ``win``) in that case on some piece."""
        win = win.double()
        finite = torch.isfinite(win)
        top, arg = win.amax(2), win.argmax(2)  # (V, W)
        gap = torch.where(finite, top.unsqueeze(2) - win, math.inf)  # (V, W, kk) >= 0
        worst = _segment(gap, piece, pa, "amax")  # (Pa, W, kk)
        bad = worst.amin(2) > tol  # (Pa, W)
        live = bad.any(0).nonzero().flatten()
        bad_p, bad_w = bad.nonzero(as_tuple=True)
        dev = win.device
        need = torch.zeros(pa, dtype=torch.bool, device=dev)
        s = torch.zeros(win.shape[0], dtype=torch.float64, device=dev)
        stol = torch.zeros(pa, dtype=torch.float64, device=dev)
        if bad_p.numel() == 0:
            return need, s, stol, live
        # candidate pairs: vertex i's argmax a, vertex j's argmax b; z_a - z_b is gap_b(i) >= 0
        # at i and -gap_a(j) <= 0 at j: a strict cut iff both exceed tol
        off = _offsets(cnt)
        m = int(cnt.max())
        col = torch.arange(m, device=dev)
        rows = off[bad_p].view(-1, 1) + torch.minimum(col.view(1, -1), cnt[bad_p].view(-1, 1) - 1)  # (nb, M)
        a_idx = arg[rows, bad_w.view(-1, 1)]  # (nb, M)
        g = gap[rows, bad_w.view(-1, 1)]  # (nb, M, kk)
        g2 = torch.gather(g, 2, a_idx.unsqueeze(1).expand(-1, m, -1))  # g2[n, i, j] = gap_{a(j)}(i)
        score = torch.minimum(g2, g2.transpose(1, 2))
        best, flat = score.flatten(1).max(1)
        real = best > tol[bad_w]
        if not bool(real.any()):
            return need, s, stol, live
        bad_p, bad_w, flat = bad_p[real], bad_w[real], flat[real]
        i, j = flat // m, flat % m
        # the line z_a - z_b with a, b the argmaxes at vertices i, j: > tol at i, < -tol at j
        a, b = a_idx[real].gather(1, i.view(-1, 1)).flatten(), a_idx[real].gather(1, j.view(-1, 1)).flatten()
        # one window per piece, at random
        key = torch.rand(bad_p.numel(), generator=self.gen, dtype=torch.float64, device="cpu").to(dev)  # the CPU's draws
        best_key = torch.full((pa,), -1.0, dtype=torch.float64, device=dev).scatter_reduce_(0, bad_p, key, "amax")
        pick = (key == best_key[bad_p]).nonzero().flatten()
        pick = pick[torch.cat([torch.ones(1, dtype=torch.bool, device=dev), bad_p[pick][1:] != bad_p[pick][:-1]])] \
            if pick.numel() else pick
        pp, ww, aa, bb = bad_p[pick], bad_w[pick], a[pick], b[pick]
        need[pp] = True
        stol[pp] = tol[ww]
        wpiece = torch.full((pa,), 0, dtype=torch.long, device=dev)
        apiece, bpiece = wpiece.clone(), wpiece.clone()
        wpiece[pp], apiece[pp], bpiece[pp] = ww, aa, bb
        v = torch.arange(win.shape[0], device=dev)
        wv = wpiece[piece]
        s = win[v, wv, apiece[piece]] - win[v, wv, bpiece[piece]]
        s = torch.where(need[piece], s, 0.0)
        return need, s, stol, live

    def _clip(self, act, piece, cnt, need, s, stol):
        """Cut every piece with ``need`` by the line ``s = 0`` (Sutherland-Hodgman). Returns the
        uncut pieces (done with this op; None if there are none) and the active set: the
        ``s >= 0`` halves, then the ``s <= 0`` halves, in piece order, without slivers."""
        plane, _, uv, h1, h2, vals = act
        va = int(cnt.sum())
        off = _offsets(cnt)
        nxt = torch.arange(va, device=cnt.device) + 1
        nxt[off[1:] - 1] = off[:-1]
        t = stol[piece]
        side = (s > t).long() - (s < -t).long()
        rows_need = need[piece]
        cross = (side * side[nxt]) < 0
        w = torch.where(cross, s / torch.where(cross, s - s[nxt], 1.0), 0.0)
        kept = None
        if not bool(need.all()):
            keep_rows = (~rows_need).nonzero().flatten()
            keep_p = (~need).nonzero().flatten()
            kept = [plane[keep_p], cnt[keep_p], uv[keep_rows], h1[keep_p], h2[keep_p], [v[keep_rows] for v in vals]]
        cut_rows = rows_need.nonzero().flatten()
        cut_pieces = need.nonzero().flatten()
        streams_a, streams_b, streams_w, counts = [], [], [], []
        for sign in (1, -1):
            on_side = (side[cut_rows] * sign) >= 0
            cr = cross[cut_rows]
            sel = torch.stack([on_side, cr], 1).flatten().nonzero().squeeze(1)  # one wait, three gathers
            streams_a.append(torch.stack([cut_rows, cut_rows], 1).flatten()[sel])
            streams_b.append(torch.stack([cut_rows, nxt[cut_rows]], 1).flatten()[sel])
            streams_w.append(torch.stack([torch.zeros_like(w[cut_rows]), w[cut_rows]], 1).flatten()[sel])
            counts.append(torch.bincount(piece[streams_a[-1]], minlength=cnt.numel())[cut_pieces])
        a, b, w = torch.cat(streams_a), torch.cat(streams_b), torch.cat(streams_w)
        count, parent = torch.cat(counts), torch.cat([cut_pieces, cut_pieces])
        uv_new = torch.lerp(uv[a], uv[b], w.view(-1, 1))
        area, _, _ = _shoelace(uv_new, count)
        ok = area >= self.min_area
        if not bool(ok.all()):
            gone = (~ok).nonzero().flatten()
            pl = plane[parent[gone]].cpu().numpy()
            np.add.at(self.dropped_pieces, pl, 1)
            np.add.at(self.dropped_area, pl, area[gone].clamp_min(0).cpu().numpy())
            vok = torch.repeat_interleave(ok, count)
            a, b, w, uv_new = a[vok], b[vok], w[vok], uv_new[vok]
            count, parent = count[ok], parent[ok]
        # most rows are kept vertices (w = 0: lerp would return v[a] exactly): interpolate the new ones only
        moved = (b != a).nonzero().flatten()
        am, bm, wm = a[moved], b[moved], w[moved]
        new_vals = []
        for v in vals:
            out = v[a]
            out[moved] = torch.lerp(v[am], v[bm], wm.to(v.dtype).view(-1, *([1] * (v.ndim - 1))))
            new_vals.append(out)
        return kept, [plane[parent], count, uv_new, h1[parent], h2[parent], new_vals]


    # ------------------------------------------------------------------ patterns

    def _table(self, units: int, states: int, device):
        key = (self.index, units, states, device)
        if key not in self.tables:
            g = torch.Generator().manual_seed(1_000_003 * (self.index + 1) + 7919 * states + units)
            big = 2 ** 62
            self.tables[key] = tuple(torch.randint(-big, big, (units * states,), generator=g, dtype=torch.long,
                                                   device="cpu").to(device) for _ in range(2))
        return self.tables[key]

    def _record(self, call, z, tol):
        """Fold each piece's state at its vertex mean (interior) into its pattern hashes.

        A state within ``tol`` of a kink is read canonically (a unit that is ~0 on the whole
        piece, e.g. a ReLU output pooled with others: off; tied window candidates: the first),
        so that rounding noise does not split one pattern in two."""
        tile = self.chain
        p = tile.count.numel()
        piece = torch.repeat_interleave(torch.arange(p, device=tile.count.device), tile.count)
        n = tile.count.to(torch.float64)
        if call.kind == "max":
            win = self._windows(call, z).double()
            mean = _segment(torch.where(torch.isfinite(win), win, -1e300), piece, p, "sum") / n.view(-1, 1, 1)
            near = mean >= mean.amax(2, keepdim=True) - tol.view(1, -1, 1)
            state, states = near.to(torch.uint8).argmax(2), win.shape[2]  # the first of the (near) maxima
        else:
            flat = z.reshape(z.shape[0], -1).double()
            mean = _segment(flat, piece, p, "sum") / n.view(-1, 1)
            if call.kind == "relu":
                state, states = (mean > tol).long(), 2
            else:
                u = flat.shape[1]
                lo = call.lo + (tol[:u] if math.isfinite(call.lo) else 0.0)
                hi = call.hi + (tol[-u:] if math.isfinite(call.hi) else 0.0)
                state, states = (mean > lo).long() + (mean > hi).long(), 3
        units = state.shape[1]
        idx = torch.arange(units, device=state.device).view(1, -1) * states + state
        t1, t2 = self._table(units, states, state.device)
        tile.h1 = tile.h1 * _MIX1 + t1[idx].sum(1)
        tile.h2 = tile.h2 * _MIX2 + t2[idx].sum(1)
        return state, piece


# --------------------------------------------------------------------------- entry points


def _as_batch(x, name):
    from pipeline.engine.lines import _as_tensor

    return _as_tensor(x, name)


def _check_planes(x0, x1, x2):
    xs = [_as_batch(x, n) for x, n in ((x0, "x0"), (x1, "x1"), (x2, "x2"))]
    if not (xs[0].shape == xs[1].shape == xs[2].shape):
        raise ValueError(f"x0, x1 and x2 must have the same shape (P, *input_shape); got "
                         f"{[tuple(x.shape) for x in xs]}")
    if xs[0].ndim < 2:
        raise ValueError(f"x0, x1 and x2 must be batches of plane corners, shape (P, *input_shape); got "
                         f"{tuple(xs[0].shape)}. For one plane use x0[None], x1[None], x2[None].")
    if xs[0].shape[0] == 0:
        raise ValueError("no planes given: x0, x1 and x2 have P = 0 rows")
    for name, x in zip(("x0", "x1", "x2"), xs):
        bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
        if bad.any():
            raise ValueError(f"{name} has non-finite values (nan or inf) in plane(s) {bad.nonzero().flatten()[:5].tolist()}")
    return xs


def default_rel_tol(dtype) -> float:
    """The default ``rel_tol`` in ``dtype``: 64 machine epsilons."""
    return 64 * torch.finfo(dtype).eps


def discover_plane_iter(model, x0, x1, x2, *, dtype=torch.float64, device=None, domain: str = "triangle",
                        keep_affine: bool = True, progress: bool = False, chunk_planes: int = 8,
                        max_vertices: int | None = None, rel_tol: float | None = None, min_area: float = MIN_AREA,
                        certify: str | None = "all", row_block: int | None = None,
                        seed: int = 0, on_certificate: str = "raise", assume_affine=(),
                        memory_bytes: int | None = None) -> Iterator[PlaneResult]:
    """Stream :func:`discover_plane` over chunks of ``chunk_planes`` consecutive planes; a chunk
    whose certificate fails raises :class:`CertificateError` before it is yielded (see
    ``on_certificate`` in :func:`discover_plane`)."""
    check_option(on_certificate)
    chunks = _plane_chunks(model, x0, x1, x2, dtype=dtype, device=device, domain=domain, keep_affine=keep_affine,
                           progress=progress, chunk_planes=chunk_planes, max_vertices=max_vertices, rel_tol=rel_tol,
                           min_area=min_area, certify=certify, row_block=row_block, seed=seed,
                           assume_affine=assume_affine, memory_bytes=memory_bytes)
    prepared = next(chunks)
    for chunk in chunks:
        enforce(chunk.continuity_gap, chunk.gap_tol, chunk.plane_index, "plane", prepared, on_certificate)
        yield chunk


def _plane_chunks(model, x0, x1, x2, *, dtype=torch.float64, device=None, domain: str = "triangle",
                  keep_affine: bool = True, progress: bool = False, chunk_planes: int = 8,
                  max_vertices: int | None = None, rel_tol: float | None = None, min_area: float = MIN_AREA,
                  certify: str | None = "all", row_block: int | None = None, seed: int = 0, assume_affine=(),
                  memory_bytes: int | None = None):
    """:func:`discover_plane_iter` without the certificate's verdict: yields the
    :class:`pipeline.engine.prepared.PreparedModel` first, then the chunks."""
    if isinstance(certify, bool):
        certify = "all" if certify else None
    if certify not in CERTIFY:
        raise ValueError(f"certify must be one of {CERTIFY}, got {certify!r}")
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {tuple(DOMAINS)}, got {domain!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float64 (default) or torch.float32, got {dtype}")
    if chunk_planes < 1 or (max_vertices is not None and max_vertices < 16):
        raise ValueError("chunk_planes must be >= 1 and max_vertices >= 16")
    if not (0.0 <= min_area < 1e-3):
        raise ValueError(f"min_area is a fraction of the domain's area, in [0, 1e-3); got {min_area}")
    prepared = as_prepared(model, dtype, device, assume_affine)
    x0, x1, x2 = (x.to(dtype) for x in _check_planes(x0, x1, x2))
    preflight(prepared, x0[:1], x1[:1])  # every op found, affine or refused by name, before any work
    example = x0[:1].to(device=prepared.device)
    plan = prepared.plan_for(example)
    sizes = work_sizes(prepared, x0[:1], "planes", max_vertices=max_vertices, row_block=row_block,
                       memory_bytes=memory_bytes)
    row_block, max_vertices = sizes.row_block, sizes.max_vertices
    if rel_tol is None:
        rel_tol = default_rel_tol(dtype)
    yield prepared
    corners, dom_area = DOMAINS[domain]
    dev = prepared.device
    cuv = torch.tensor(corners, dtype=torch.float64, device=dev)
    n_planes = x0.shape[0]
    d1, d2 = x1 - x0, x2 - x0
    a = d1.double().reshape(n_planes, -1)
    b = d2.double().reshape(n_planes, -1)
    gram = (a * a).sum(1) * (b * b).sum(1) - (a * b).sum(1) ** 2
    input_area = gram.clamp_min(0).sqrt().numpy()
    bcast = (-1,) + (1,) * (x0.ndim - 1)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_planes, unit="plane", desc="plane regions")
    try:
        for lo in range(0, n_planes, chunk_planes):
            hi = min(n_planes, lo + chunk_planes)
            n = hi - lo

            def chunk(vertices, lo=lo, hi=hi, n=n):  # leaves nothing behind when it fails
                c = cuv.shape[0]
                u = cuv[:, 0].repeat(n)
                v = cuv[:, 1].repeat(n)
                rep = lambda t: t[lo:hi].to(dev).repeat_interleave(c, 0)  # noqa: E731
                x = rep(x0) + u.to(dtype).view(bcast) * rep(d1) + v.to(dtype).view(bcast) * rep(d2)
                plane = torch.arange(n, device=dev)
                tile = _Tile(plane, torch.full((n,), c, dtype=torch.long, device=dev), cuv.repeat(n, 1),
                             {plan.input: x}, 0, torch.zeros(n, dtype=torch.long, device=dev),
                             torch.zeros(n, dtype=torch.long, device=dev))
                mode = _PlaneMode(plan, row_block, vertices, rel_tol, min_area * dom_area, n, seed, prepared.assumed,
                                  example)
                parts = []

                def emit(t, out):  # kept on the device until the chunk is done: one copy to the host
                    parts.append((t.plane.clone(), t.count.clone(), t.uv.clone(), out.double(), t.h1.clone(),
                                  t.h2.clone()))

                with torch.no_grad():
                    # the corners x0, x1, x2 (and x1 + x2 - x0 for the parallelogram)
                    f_corners = forward_blocked(prepared.work, x, row_block).double().reshape(n, c, -1)
                    if c == 4:
                        f_corners = f_corners[:, [0, 1, 3, 2]]
                    run_graph(plan, mode, tile, vertices, emit)
                cat = lambda k: torch.cat([p[k] for p in parts]).cpu().numpy()  # noqa: E731
                return _assemble(prepared, domain, np.arange(lo, hi), x0[lo:hi], d1[lo:hi], d2[lo:hi],
                                 input_area[lo:hi], f_corners.cpu().numpy(), cat(0), cat(1), cat(2), cat(3), cat(4),
                                 cat(5), mode, keep_affine, certify, row_block)

            result, max_vertices = shrink_on_oom("planes: a chunk of planes", max_vertices, chunk, floor=16)
            yield result
            if bar is not None:
                bar.update(n)
    finally:
        if bar is not None:
            bar.close()


def discover_plane(model, x0, x1, x2, *, dtype=torch.float64, device=None, domain: str = "triangle",
                   keep_affine: bool = True, progress: bool = False, on_certificate: str = "raise",
                   **options) -> PlaneResult:
    """Every linear region of ``model`` on the planes ``x0[p] + u (x1[p] - x0[p]) + v (x2[p] - x0[p])``.

    Parameters
    ----------
    model : torch.nn.Module or PreparedModel
        As for :func:`pipeline.engine.lines.discover` (``method="subdivide"``: a torch.fx-traceable
        network of affine layers, ReLU / LeakyReLU, clamps between constant bounds and
        max-pooling), in eval mode.
    x0, x1, x2 : Tensor or ndarray, shape ``(P, *input_shape)``
        The corners of each plane's domain.
    dtype, device
        Working precision (float64 default) and device (default: the model's; a GPU gives the
        CPU's regions: the random choices are drawn on the CPU and moved).
    domain : {"triangle", "parallelogram"}
        ``u, v >= 0, u + v <= 1`` (area 1/2), or the unit square in ``(u, v)``.
    keep_affine : bool
        Keep each region's ``intercept (R, K)`` and ``grad (R, 2, K)``.
    progress : bool
        A tqdm bar over planes.
    **options
        ``chunk_planes`` (planes per chunk, 8), ``max_vertices`` (vertices per tile before it
        is split; default from the largest activation, about 64 MB per live float64 tensor),
        ``rel_tol`` (a vertex lies on a line when ``|s| <= rel_tol x`` the unit's largest
        ``|z|`` on the tile; 64 eps), ``min_area`` (pieces smaller than this fraction of the
        domain are dropped and counted; 1e-14), ``certify`` (the network at each region's
        centroid against its map: ``"all"``, the default, screens every centroid with a float32
        copy of the network and evaluates in float64 16 regions per plane and every region the
        screen cannot vouch for; ``"strict"`` evaluates every centroid in float64; ``"sample"``
        only the 16; ``None`` none; True and False mean "all" and None), ``row_block``,
        ``seed`` (the choice of cut order).
    on_certificate : {"raise", "warn"}
        What a failing certificate does: a plane fails when its ``continuity_gap`` exceeds its
        ``gap_tol`` (:func:`pipeline.engine.certificate.gap_tolerance`: 1e-7 of the outputs' scale in
        float64, 1e-2 in float32). "raise" (default): :class:`CertificateError` naming the
        planes, gaps and tolerances; "warn": a :class:`CertificateWarning` with the same text,
        and the result with ``certified`` False on the failing planes.

    Raises
    ------
    UnsupportedOpError
        As in 1-D: the network uses an op that is not piecewise linear or not followed.
    CertificateError
        Some plane's certificate failed (``on_certificate="raise"``): an op read as affine
        that is not, or a missed kink.
    ValueError, TypeError
        Bad shapes or options, a model in training mode or not traceable.
    """
    check_option(on_certificate)
    chunks = _plane_chunks(model, x0, x1, x2, dtype=dtype, device=device, domain=domain, keep_affine=keep_affine,
                           progress=progress, **options)
    prepared = next(chunks)
    res = PlaneResult.concat(list(chunks))
    enforce(res.continuity_gap, res.gap_tol, res.plane_index, "plane", prepared, on_certificate)
    return res


# --------------------------------------------------------------------------- assembly


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


def _polygon_stats(uv, count):
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


def _certify(prepared, certify, x0, d1, d2, rplane, cen, pred, scale, n_planes, row_block):
    """The network at every region's centroid against the region's map (see
    :mod:`pipeline.engine.certificate`): ``"all"`` screens with a float32 copy of the network and
    evaluates in float64 a sample of each plane's regions and every region the screen cannot
    vouch for, ``"strict"`` evaluates every centroid in the working precision, ``"sample"``
    only the sample. ``scale()`` is each plane's largest ``|f|`` (computed for the screen only).
    Returns per region the working-precision disagreement (0 where not
    evaluated) and per plane the screen's tolerance (0 where every region was evaluated)."""
    dtype = prepared.dtype
    bcast = (-1,) + (1,) * (x0.ndim - 1)
    cu, cv = torch.from_numpy(cen[:, 0]).view(bcast), torch.from_numpy(cen[:, 1]).view(bcast)
    idx_plane = torch.from_numpy(rplane)
    # the points in float64, rounded once to the forward's precision
    x0d, d1d, d2d = x0.double(), d1.double(), d2.double()

    def at(model, dt, which, rows):
        ys = np.zeros((which.size, pred.shape[1]))
        with torch.no_grad():
            for r0 in range(0, which.size, CERTIFY_ROWS):
                sl = which[r0:r0 + CERTIFY_ROWS]
                p = idx_plane[sl]
                xs = (x0d[p] + cu[sl] * d1d[p] + cv[sl] * d2d[p]).to(device=prepared.device, dtype=dt)
                ys[r0:r0 + sl.size] = forward_blocked(model, xs, rows).double().reshape(sl.size, -1).cpu().numpy()
        with np.errstate(invalid="ignore"):
            err = np.abs(ys - pred[which]).max(axis=1, initial=0.0)
        err[~np.isfinite(ys).all(axis=1)] = np.inf
        return err, ys

    exact = lambda which: at(prepared.work, dtype, which, max(row_block, 256))  # noqa: E731
    every = np.arange(rplane.size)
    if certify == "strict" or (certify == "all" and dtype == torch.float32):  # float32: the screen is the check
        return exact(every)[0], np.zeros(n_planes)
    if certify == "sample":
        err = np.zeros(rplane.size)
        which = np.flatnonzero(sampled(rplane))
        err[which] = exact(which)[0]
        return err, np.zeros(n_planes)
    err32, y32 = at(prepared.screen, torch.float32, every, pwl.default_row_block(prepared.device, torch.float32))
    _, tol, err = screen(rplane, n_planes, err32, y32, scale(), exact)
    return err, tol


def _assemble(prepared, domain, plane_index, x0, d1, d2, input_area, f_corners, pplane, pcount, puv, pf, h1, h2, mode,
              keep_affine, certify, row_block) -> PlaneResult:
    n_planes = plane_index.size
    dom_area = DOMAINS[domain][1]
    if not np.isfinite(pf).all():
        raise FloatingPointError("the network produced nan or inf on the plane(s): check the weights and the input scale")
    parea, pcen, poff, _ = _polygon_stats(puv, pcount)
    order = np.lexsort((h2, h1, pplane))
    key = np.stack([pplane[order], h1[order], h2[order]], 1)
    new = np.r_[True, (key[1:] != key[:-1]).any(1)] if order.size else np.zeros(0, dtype=bool)
    rid = np.empty(order.size, dtype=np.int64)
    rid[order] = np.cumsum(new) - 1
    n_reg = int(new.sum())
    rplane = pplane[order][new]
    area = np.bincount(rid, parea, n_reg)
    cen = np.stack([np.bincount(rid, parea * pcen[:, 0], n_reg), np.bincount(rid, parea * pcen[:, 1], n_reg)], 1) / area[:, None]
    # least-squares affine map over every vertex of the region's pieces
    vrid = np.repeat(rid, pcount)
    vorder = np.argsort(vrid, kind="stable")
    vr, u, v, f = vrid[vorder], puv[vorder, 0], puv[vorder, 1], pf[vorder]
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
    grad = np.stack([g0, g1], 1)
    resid = np.abs(df - du[:, None] * g0[vr] - dv[:, None] * g1[vr]).max(1)
    gap = np.maximum.reduceat(resid, starts)
    # polygons: a one-piece region keeps its vertex list, a merged one is the hull of its pieces
    npieces = np.bincount(rid, minlength=n_reg)
    first_piece = np.empty(n_reg, dtype=np.int64)
    first_piece[rid[order][::-1]] = order[::-1]
    hull_gap = np.zeros(n_planes)
    counts = np.diff(poff)[first_piece]
    hulls = {}
    for r in np.flatnonzero(npieces > 1):
        hull = convex_hull(puv[vorder[starts[r]:starts[r] + nv[r]]])
        hulls[r] = hull
        counts[r] = hull.shape[0]
        ha, _, _, _ = _polygon_stats(hull, np.array([hull.shape[0]]))
        hull_gap[rplane[r]] = max(hull_gap[rplane[r]], abs(float(ha[0]) - area[r]))
    voff = np.zeros(n_reg + 1, dtype=np.int64)
    np.cumsum(counts, out=voff[1:])
    # one-piece regions copy their piece's vertex list
    src = np.repeat(poff[first_piece], counts) + np.arange(voff[-1]) - np.repeat(voff[:-1], counts)
    uv = puv[np.minimum(src, max(puv.shape[0] - 1, 0))] if voff[-1] else np.zeros((0, 2))
    for r, hull in hulls.items():
        uv[voff[r]:voff[r + 1]] = hull
    pred = intercept + cen[:, :1] * g0 + cen[:, 1:] * g1

    def scale():  # per plane the largest |f| at the corners and vertices (the screen's floor)
        out = np.abs(f_corners).reshape(n_planes, -1).max(axis=1, initial=0.0)
        if pf.size:
            np.maximum.at(out, np.repeat(pplane, pcount), np.abs(pf).max(axis=1))
        return out

    # the certificate's pass/fail tolerance: relative to the outputs' size on the plane (the
    # largest |f| at corners and vertices, or the largest area-weighted |grad| over a logit)
    variation = np.zeros((n_planes, intercept.shape[1]))
    np.add.at(variation, rplane, area[:, None] * np.abs(grad).sum(1))
    gap_tol = gap_tolerance(prepared.dtype, np.maximum(scale(), variation.max(axis=1, initial=0.0) / dom_area))
    ctol = np.zeros(n_planes)
    if certify is not None and n_reg:
        err, ctol = _certify(prepared, certify, x0, d1, d2, rplane, cen, pred, scale, n_planes, row_block)
        gap = np.maximum(gap, err)
    roff = np.zeros(n_planes + 1, dtype=np.int64)
    n_regions = np.bincount(rplane, minlength=n_planes)
    np.cumsum(n_regions, out=roff[1:])
    cgap = np.zeros(n_planes)
    np.maximum.at(cgap, rplane, gap)
    dev = plane_deviation(area, rplane, voff, uv, intercept, grad, f_corners, n_planes)
    return PlaneResult(
        plane_index=np.asarray(plane_index, dtype=np.int64), n_regions=n_regions, plane_offset=roff,
        input_area=np.asarray(input_area, dtype=np.float64), density=n_regions / dom_area,
        density_input=n_regions / (dom_area * np.asarray(input_area)), f_corners=f_corners, deviation=dev,
        continuity_gap=cgap, certificate_tol=ctol, hull_gap=hull_gap, n_pieces=np.bincount(pplane, minlength=n_planes),
        dropped_pieces=mode.dropped_pieces.copy(), dropped_area=mode.dropped_area.copy(), area=area, centroid=cen,
        vertex_offset=voff, uv=uv, region_gap=gap, intercept=intercept if keep_affine else None,
        grad=grad if keep_affine else None, domain=domain, gap_tol=gap_tol)
