"""The subdivision's vertices and the mode that inserts them (see :mod:`pipeline.engine.subdivide`).

A :class:`Chain` holds vertices ``(seg, t)`` of consecutive segments, in order, and the
per-vertex values of the graph's live nodes. :class:`SubdivideMode` runs each call of the
graph on a chain: an affine op as it is (:mod:`pipeline.engine.allowlist` checks it), a
piecewise-linear one after inserting a vertex at each of its kinks inside a piece
(:mod:`pipeline.engine.kinks` finds them; :func:`_insert` interpolates every live tensor
there), in place when nothing reads its input afterwards.
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from pipeline.engine import allowlist, kinks, pwl
from pipeline.engine.graph import Plan
from pipeline.engine.rowblock import call_blocked

__all__ = ["Chain", "SubdivideMode"]


class Chain:
    """Vertices ``(seg, t)`` in order, and the per-vertex values of live graph nodes."""

    def __init__(self, seg, t, env, pos):
        self.seg, self.t, self.env, self.pos = seg, t, env, pos

    def size(self) -> int:
        return self.t.numel()

    def split(self, plan: Plan, size: int) -> list["Chain"]:
        v = self.t.numel()
        out = []
        for s in range(0, v - 1, size - 1):
            e = min(s + size, v)
            env = {n: plan.rows(n, val, s, e) for n, val in self.env.items()}
            out.append(Chain(self.seg[s:e], self.t[s:e], env, self.pos))
            if e == v:
                break
        return out


def _insert(chain: Chain, plan: Plan, piece: torch.Tensor, tau: torch.Tensor, extra: dict, tol: float):
    """Insert vertices at fraction ``tau`` of pieces ``piece``; interpolate every live tensor.

    A kink closer than ``tol`` (in ``t``) to a vertex, or to the previous kink in its piece,
    is taken to be that vertex: a new vertex there would only add a region of rounding width.
    """
    order = torch.argsort(tau, stable=True)
    piece, tau = piece[order], tau[order]
    order = torch.argsort(piece, stable=True)
    piece, tau = piece[order], tau[order]
    width = chain.t[piece + 1] - chain.t[piece]
    keep = (tau * width > tol) & ((1.0 - tau) * width > tol)
    keep[1:] &= (piece[1:] != piece[:-1]) | ((tau[1:] - tau[:-1]) * width[1:] > tol)
    kept = keep.nonzero().squeeze(1)  # one wait for a GPU (two boolean-mask reads would be two)
    piece, tau = piece[kept], tau[kept]
    if piece.numel() == 0:
        return
    n_new, v = piece.numel(), chain.t.numel()
    new_pos = piece + 1 + torch.arange(n_new, device=piece.device)
    old_pos = torch.arange(v, device=piece.device) + torch.searchsorted(piece, torch.arange(v, device=piece.device))

    def grow(old, new):
        out = old.new_empty((v + n_new, *old.shape[1:]))
        out[old_pos] = old
        out[new_pos] = new
        return out

    t_a, t_b = chain.t[piece], chain.t[piece + 1]
    chain.t = grow(chain.t, t_a + tau * (t_b - t_a))
    chain.seg = grow(chain.seg, chain.seg[piece])
    done = {}

    def interp(val):
        key = id(val)
        if key not in done:
            w = tau.to(val.dtype).view(-1, *([1] * (val.ndim - 1)))
            a, b = val[piece], val[piece + 1]
            done[key] = grow(val, torch.lerp(a, b, w))
        return done[key]

    for node, val in chain.env.items():
        if not plan.batched[node]:
            continue
        if not isinstance(val, torch.Tensor) or val.shape[:1] != (v,):
            chain.env[node] = plan.rebatch(node, val, v + n_new)
            continue
        chain.env[node] = interp(val)
    for key, val in list(extra.items()):
        extra[key] = interp(val)


class SubdivideMode(TorchFunctionMode):
    def __init__(self, plan: Plan, tol: float, row_block: int, assumed=None,
                 example: torch.Tensor | None = None):
        super().__init__()
        self.plan = plan
        self.tol = tol
        self.row_block = row_block
        self.assumed = assumed
        if example is not None:  # one input row: how sizes read from the batch follow it (Plan.rebatch)
            plan.example = example
        self.taint = allowlist.Taint()  # per node: its batched arguments and what they make
        self.chain: Chain | None = None
        self.args_ids: set = set()
        self.index = -1  # position of the node being run
        self.may_overwrite = False  # the node is a bare ReLU whose input dies with it

    def at_node(self, plan: Plan, chain, i: int, node: fx.Node, args, kwargs):
        """Get ready to run node ``i`` of ``plan`` on ``chain`` (:func:`pipeline.engine.graph.run_graph`
        calls this before each call node): its batched arguments are tainted, and whether a
        bare ReLU may overwrite its input is decided."""
        self.chain = chain
        self.args_ids = {id(a) for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)}
        self.taint.clear()
        for a in node.all_input_nodes:
            if plan.batched[a]:
                self.taint.mark(chain.env[a])
        self.index = i
        src = plan.relu_input[node]
        self.may_overwrite = src is not None and plan.batched[src] and plan.last_use[src] == i

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        call = pwl.recognise(func, args, kwargs, self.taint.any((args, kwargs)))
        if call is None:
            return allowlist.run_checked(func, args, kwargs, self.taint, self.assumed, self._blocked)
        z = call.input
        chain = self.chain
        self._check_exposed(func, call)
        v = chain.t.numel()
        same = chain.seg[1:] == chain.seg[:-1]
        if call.kind == "relu":
            flat = z.reshape(v, -1)
            piece, tau = kinks.relu_crossings(flat, None, same)
        elif call.kind == "clamp":
            piece, tau = kinks.clamp_crossings(z.reshape(v, -1), call.lo, call.hi, same)
        else:
            win, _ = call.windows(z)
            piece, tau = kinks.maxpool_crossings(win[:-1], win[1:], same)
        if piece.numel():
            extra = {"z": z}
            _insert(chain, self.plan, piece, tau, extra, self.tol)
            z = extra["z"]
        out = self._apply(func, call, z, args, kwargs)
        self.taint.mark(out)
        return out

    def _blocked(self, func, args, kwargs):
        return call_blocked(func, args, kwargs, self.row_block)

    def _check_exposed(self, func, call):
        if any(id(t) not in self.args_ids for t in call.sources):
            raise ValueError(
                f"subdivide and the planes: {getattr(func, '__name__', func)} is applied inside a module "
                "that torch.fx keeps as a leaf, to a tensor the graph does not expose. Write that computation "
                "in a module of your own (torch.fx traces its forward op by op); for segments, method='walk' "
                "runs the model eagerly instead (the planes have no such method)."
            )

    def _apply(self, func, call, z, args, kwargs):
        """Run the piecewise-linear op on ``z`` (its kinks are vertices now), in place when
        nothing reads ``z`` afterwards."""
        if call.kind == "max" and call.sources[0] is not call.input:  # maximum(a, b): z stacks a and b
            win, shape = call.windows(z)
            arg = win.argmax(2, keepdim=True)
            return call.finish(win.gather(2, arg), arg, shape)
        if call.kind != "max" and not call.inplace and self.may_overwrite and self._unshared(z):
            # nothing reads z after this op: rectify it in place (no new tensor of the chain's size)
            if call.kind == "clamp":
                return z.clamp_(*(c if math.isfinite(c) else None for c in (call.lo, call.hi)))
            if pwl.is_plain_relu(call.negative_slope):
                return torch.relu_(z)
            return F.leaky_relu_(z, call.negative_slope)
        args = (z, *args[1:]) if args else args
        if not args:
            kwargs = dict(kwargs, input=z)
        return func(*args, **kwargs)

    def _unshared(self, z: torch.Tensor) -> bool:
        """``z`` owns its memory (not a view: the sub-chains of a split hold views of one
        tensor) and no value still needed after this node shares it."""
        if z._base is not None:
            return False
        ptr = z.untyped_storage().data_ptr()
        last_use, i = self.plan.last_use, self.index
        for node, val in self.chain.env.items():
            if (last_use[node] > i and isinstance(val, torch.Tensor)
                    and val.untyped_storage().data_ptr() == ptr):
                return False
        return True


