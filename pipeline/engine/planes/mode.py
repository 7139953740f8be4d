"""The planes' graph mode: at every piecewise-linear op, cut the tile's pieces until no unit
changes state inside any of them, fold each piece's state into its pattern hashes and apply
the op with that state (see :mod:`pipeline.engine.planes`); affine ops run on the vertices."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from pipeline.engine import allowlist, pwl
from pipeline.engine.planes.cuts import Active, Lines, clip, pool_lines, unit_lines
from pipeline.engine.planes.tiles import Tile, piece_index, segment_reduce
from pipeline.engine.subdivide import Plan, SplitRequest, SubdivideMode

__all__ = ["PlaneMode"]

_MIX1, _MIX2 = 0x100000001B3, 0x5851F42D4C957F2D  # odd multipliers that chain the per-op hashes


class _Slots(NamedTuple):
    """The distinct batched tensors of a tile during the cuts of one op (aliases share a slot)."""

    vals: list  # one tensor per slot
    z: int  # the slot of the op's input
    node: dict  # graph node -> its slot
    sizes: list  # the nodes holding a size read from the batch: they follow the tile's size


def _slots(tile: Tile, z: torch.Tensor, batched: dict) -> _Slots:
    v = tile.size()
    slots, vals = {}, []
    for node, val in tile.env.items():
        if not batched[node]:
            continue
        if not isinstance(val, torch.Tensor) or val.shape[:1] != (v,):
            continue  # a size read from the batch: rebatched after the cuts
        if id(val) not in slots:
            slots[id(val)] = len(vals)
            vals.append(val)
    if id(z) not in slots:
        slots[id(z)] = len(vals)
        vals.append(z)
    node_slot = {node: slots[id(val)] for node, val in tile.env.items() if batched[node] and id(val) in slots}
    sizes = [node for node, val in tile.env.items() if batched[node] and id(val) not in slots]
    return _Slots(vals, slots[id(z)], node_slot, sizes)


class PlaneMode(SubdivideMode):
    """Cuts the pieces of a tile at every piecewise-linear op (see the module docstring).

    ``min_area`` is absolute, in ``(u, v)`` units; ``dropped_pieces`` and ``dropped_area``
    ``(n_planes,)`` count the slivers below it."""

    def __init__(self, plan: Plan, *, row_block: int, max_vertices: int, rel_tol: float, min_area: float,
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
            piece = piece_index(tile.count)
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

    def _tolerance(self, call, z: torch.Tensor) -> torch.Tensor:
        """Per unit (window) ``rel_tol`` x its largest ``|z|`` over the tile (float64)."""
        if call.kind == "max":
            win = self._windows(call, z)
            scale = torch.where(torch.isfinite(win), win.abs(), 0.0).amax(dim=(0, 2))  # (W,)
        else:
            scale = self._levels(call, z).abs().amax(0)  # (U,)
        return (self.rel_tol * scale).clamp_min(1e-300).double()

    # ------------------------------------------------------------------ cutting

    def _cut(self, call, z):
        """Cut the tile's pieces until no unit of this op changes state inside any of them.

        During the rounds the distinct batched tensors live in slots (aliases kept together);
        pieces that need no further cut are set aside once and joined back at the end, so each
        round only touches the pieces still being cut. Returns the op's input on the new
        vertices and the units' tolerances."""
        tile = self.chain
        slots = _slots(tile, z, self.plan.batched)
        tol = self._tolerance(call, z)
        act = Active(tile.plane, tile.count, tile.uv, tile.h1, tile.h2, slots.vals)
        done, n_done_rows = [], 0
        # The units (windows) that still change state on some active piece. A cut piece's halves
        # hold convex combinations of its vertices, so a unit that changes state on no piece of
        # a round changes state on none of their halves: later rounds look at these alone.
        cols = None
        while act.count.numel():
            piece = piece_index(act.count)
            lines = self._lines(call, act.vals[slots.z], piece, act.count, tol, cols)
            if not bool(lines.need.any()):
                break
            cols = lines.live if cols is None else cols[lines.live]
            clipped = clip(act, piece, lines, self.min_area)
            if clipped.dropped is not None:
                plane, area = clipped.dropped
                np.add.at(self.dropped_pieces, plane, 1)
                np.add.at(self.dropped_area, plane, area)
            act = clipped.active
            if clipped.kept is not None:
                done.append(clipped.kept)
                n_done_rows += clipped.kept.uv.shape[0]
            if n_done_rows + act.uv.shape[0] > self.max_vertices and len(done) + act.count.numel() >= 2:
                self._join(tile, done, act, slots.node)
                self._rebatch(tile, slots.sizes)
                raise SplitRequest
        out = self._join(tile, done, act, slots.node)[slots.z]
        self._rebatch(tile, slots.sizes)
        return out, tol

    def _lines(self, call, z, piece, count, tol, cols) -> Lines:
        """This round's cuts, looking only at the columns ``cols`` (all if None)."""
        if call.kind == "max":
            feats = self._windows(call, z)
            if cols is not None:
                feats = feats[:, cols]
            return pool_lines(feats, piece, count.numel(), count, tol if cols is None else tol[cols], self.gen)
        feats = self._levels(call, z)
        if cols is not None:
            feats = feats[:, cols]
        return unit_lines(feats, piece, count.numel(), tol if cols is None else tol[cols], self.gen)

    def _rebatch(self, tile, nodes):
        for node in nodes:
            tile.env[node] = self.plan.rebatch(node, tile.env[node], tile.size())

    @staticmethod
    def _join(tile: Tile, done: list[Active], act: Active, node_slot: dict) -> list:
        """Write the set-aside pieces and the last active ones back into the tile; returns the
        slots' values."""
        parts = done + [act]
        if len(parts) == 1:
            vals = act.vals
            cat = lambda name: getattr(act, name)  # noqa: E731
        else:
            vals = [torch.cat([p.vals[k] for p in parts]) for k in range(len(act.vals))]
            cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
        tile.plane, tile.count, tile.uv, tile.h1, tile.h2 = (cat(n) for n in ("plane", "count", "uv", "h1", "h2"))
        for node, k in node_slot.items():
            tile.env[node] = vals[k]
        return vals

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
        """Fold each piece's state at its vertex mean (interior) into its pattern hashes;
        returns the states ``(P, units)`` and every vertex's piece."""
        tile = self.chain
        piece = piece_index(tile.count)
        state, states = self._state(call, z, tol, piece)
        units = state.shape[1]
        idx = torch.arange(units, device=state.device).view(1, -1) * states + state
        t1, t2 = self._table(units, states, state.device)
        tile.h1 = tile.h1 * _MIX1 + t1[idx].sum(1)
        tile.h2 = tile.h2 * _MIX2 + t2[idx].sum(1)
        return state, piece

    def _state(self, call, z, tol, piece):
        """Every piece's state at its vertex mean, and the number of states a unit has.

        A state within ``tol`` of a kink is read canonically (a unit that is ~0 on the whole
        piece, e.g. a ReLU output pooled with others: off; tied window candidates: the first),
        so that rounding noise does not split one pattern in two."""
        count = self.chain.count
        p = count.numel()
        n = count.to(torch.float64)
        if call.kind == "max":
            win = self._windows(call, z).double()
            mean = segment_reduce(torch.where(torch.isfinite(win), win, -1e300), piece, p, "sum") / n.view(-1, 1, 1)
            near = mean >= mean.amax(2, keepdim=True) - tol.view(1, -1, 1)
            return near.to(torch.uint8).argmax(2), win.shape[2]  # the first of the (near) maxima
        flat = z.reshape(z.shape[0], -1).double()
        mean = segment_reduce(flat, piece, p, "sum") / n.view(-1, 1)
        if call.kind == "relu":
            return (mean > tol).long(), 2
        u = flat.shape[1]
        lo = call.lo + (tol[:u] if math.isfinite(call.lo) else 0.0)
        hi = call.hi + (tol[-u:] if math.isfinite(call.hi) else 0.0)
        return (mean > lo).long() + (mean > hi).long(), 3
