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
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch.fx.node import map_arg
from torch.overrides import TorchFunctionMode

from pipeline.engine import allowlist, pwl
from pipeline.engine.fastops import PairAvgPool2d
from pipeline.engine.certificate import certify_regions
from pipeline.engine.result import RegionResult, assemble
from pipeline.engine.worksize import shrink_on_oom

__all__ = ["subdivide", "trace", "Plan", "SplitRequest", "SubdivideMode", "run_graph"]


class Plan:
    """The traced graph with, per node, its last use and whether it depends on the input."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.nodes = list(gm.graph.nodes)
        index = {n: i for i, n in enumerate(self.nodes)}
        self.last_use = {n: max((index[u] for u in n.users), default=index[n]) for n in self.nodes}
        self.batched = {}
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if not placeholders:
            raise ValueError("the traced model has no input")
        self.input = placeholders[0]
        for n in self.nodes:
            if n.op == "placeholder":
                self.batched[n] = n is self.input
            elif n.op == "get_attr":
                self.batched[n] = False
            else:
                self.batched[n] = any(self.batched[a] for a in n.all_input_nodes)
        self.relu_input = {n: _bare_relu_input(self, n) for n in self.nodes}
        self.dead_after = {i: [] for i in range(len(self.nodes))}
        for n in self.nodes:
            self.dead_after[self.last_use[n]].append(n)
        self._batch_rules: dict = {}  # input shape -> {node: how its value follows the batch size}
        self.example = None  # one input row of the current run (set by the engines' modes)

    def rows(self, node: fx.Node, val, a: int, b: int):
        """Rows ``a:b`` of a node's value: a view of a batched tensor, a size read from the batch
        made for ``b - a`` rows, a constant as it is."""
        if not self.batched[node]:
            return val
        if isinstance(val, torch.Tensor):
            return val[a:b]
        return self.rebatch(node, val, b - a)

    def rebatch(self, node: fx.Node, val, v: int):
        """``val``, the value of a batched node that is not a tensor of the batch (a size read
        from the input, ``x.ndim``, an assertion's None), for a batch of ``v`` rows.

        Integers read from shapes are constants of the traced network, except the batch
        dimension's: which ones follow the batch (and how: ``k * batch``) is found once per
        input shape by running the graph on batches of 2 and 3 copies of :attr:`example` (the
        engines' modes set it to one row of their input)."""
        if self.example is None:
            raise ValueError(f"graph node '{node.name}' holds a batch-dependent {type(val).__name__}")
        key = tuple(self.example.shape[1:])
        if key not in self._batch_rules:
            self._batch_rules[key] = self._find_batch_rules(self.example)
        rule = self._batch_rules[key].get(node, _UNKNOWN)
        if rule is _UNKNOWN:
            raise ValueError(
                f"graph node '{node.name}' holds a value derived from the batch ({type(val).__name__}) "
                "that is still used after a piecewise-linear op, and its dependence on the batch size is "
                "not a multiple of it, so it cannot follow the new vertices. Read sizes with "
                "x.shape[0] / x.size(0) (or -1 in view / reshape) rather than computing with them.")
        return _apply_rule(rule, v)

    def _find_batch_rules(self, example: torch.Tensor) -> dict:
        batched, seen = self.batched, []

        class Record(fx.Interpreter):
            def run_node(self, n):
                val = super().run_node(n)
                if batched[n] and n.op != "output" and not isinstance(val, torch.Tensor):
                    self.sizes[n] = val
                return val

        for b in (2, 3):
            run = Record(self.gm)
            run.sizes = {}
            with torch.no_grad():
                run.run(example[:1].expand(b, *example.shape[1:]).contiguous())
            seen.append(run.sizes)
        return {node: _batch_rule(v2, seen[1].get(node)) for node, v2 in seen[0].items()}

    def attr(self, node: fx.Node):
        obj = self.gm
        for part in node.target.split("."):
            obj = getattr(obj, part)
        return obj

    def call(self, node: fx.Node, args, kwargs):
        """Run one ``call_function`` / ``call_method`` / ``call_module`` node."""
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return self.gm.get_submodule(node.target)(*args, **kwargs)


_UNKNOWN = object()


def _batch_rule(v2, v3):
    """How a value seen at batch sizes 2 and 3 follows the batch: a structure of ``("c", value)``
    (constant) and ``("b", k)`` (``k`` times the batch); ``_UNKNOWN`` otherwise."""
    if isinstance(v2, (tuple, list)) and type(v2) is type(v3) and len(v2) == len(v3):
        parts = [_batch_rule(a, b) for a, b in zip(v2, v3)]
        if any(p is _UNKNOWN for p in parts):
            return _UNKNOWN
        return ("seq", type(v2), parts)
    if isinstance(v2, torch.Tensor) or isinstance(v3, torch.Tensor):
        return _UNKNOWN
    if isinstance(v2, int) and not isinstance(v2, bool) and isinstance(v3, int) and v2 != v3:
        k = v3 - v2
        return ("b", k) if v2 == 2 * k else _UNKNOWN
    try:
        return ("c", v2) if v2 == v3 else _UNKNOWN
    except Exception:  # noqa: BLE001 - values without a plain equality
        return _UNKNOWN


def _apply_rule(rule, v: int):
    if rule[0] == "c":
        return rule[1]
    if rule[0] == "b":
        return rule[1] * v
    kind, parts = rule[1], [_apply_rule(p, v) for p in rule[2]]
    return torch.Size(parts) if kind is torch.Size else kind(parts)


class _Tracer(fx.Tracer):
    """fx's default tracer, with the engine's own fast layers kept as single (leaf) calls."""

    def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
        return isinstance(m, PairAvgPool2d) or super().is_leaf_module(m, qualname)


def trace(model) -> fx.GraphModule:
    try:
        return fx.GraphModule(model, _Tracer().trace(model), type(model).__name__)
    except Exception as err:  # fx raises many types; the cause is kept
        raise ValueError(
            f"method='subdivide' and the planes need a model that torch.fx can trace (no data-dependent "
            f"control flow); tracing {type(model).__name__} failed: {err}. For segments, method='walk' runs "
            "any model eagerly; the planes have no such method."
        ) from err


class _ConcreteProxy(fx.Proxy):
    """A proxy that knows its value on the example input: Python control flow on it (``if
    x.shape[-1] > 32``) takes the example's branch instead of failing."""

    def __bool__(self):
        return bool(self.tracer.values[self.node])

    def __index__(self):
        return int(self.tracer.values[self.node])

    def __len__(self):
        return len(self.tracer.values[self.node])


_MODULE_CALL, _MODULE_GETATTR = torch.nn.Module.__call__, torch.nn.Module.__getattr__


class _unpatched_modules:
    """While fx traces, ``Module.__call__`` and ``__getattr__`` are its own (they make proxies):
    the example's values are computed with the originals, put back for the moment."""

    def __enter__(self):
        self.saved = torch.nn.Module.__call__, torch.nn.Module.__getattr__
        torch.nn.Module.__call__, torch.nn.Module.__getattr__ = _MODULE_CALL, _MODULE_GETATTR

    def __exit__(self, *exc):
        torch.nn.Module.__call__, torch.nn.Module.__getattr__ = self.saved
        return False


class _ConcreteTracer(_Tracer):
    """:class:`_Tracer` that also runs every traced call on an example input."""

    def __init__(self, example: torch.Tensor):
        super().__init__()
        self.example = example
        self.values: dict = {}
        self._first = True

    def proxy(self, node):
        return _ConcreteProxy(node, self)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        value = lambda a: self.values[a.node] if isinstance(a, fx.Proxy) else a
        a = torch.fx.node.map_aggregate(args, value)
        kw = torch.fx.node.map_aggregate(kwargs, value)
        with torch.no_grad(), _unpatched_modules():
            if kind == "placeholder":
                v = self.example if self._first else (args[0] if args else None)
                self._first = False
            elif kind == "get_attr":
                v = self.root
                for part in target.split("."):
                    v = getattr(v, part)
            elif kind == "call_function":
                v = target(*a, **kw)
            elif kind == "call_method":
                v = getattr(a[0], target)(*a[1:], **kw)
            elif kind == "call_module":
                v = self.root.get_submodule(target)(*a, **kw)
            else:
                v = None
        self.values[proxy.node] = v
        return proxy


def trace_concrete(model, example: torch.Tensor, cause: Exception | None = None) -> fx.GraphModule:
    """Trace ``model`` with ``example`` run alongside (see :class:`_ConcreteProxy`): shapes branch
    as on the example. Sizes read from tensors stay graph nodes, so the batch size still follows
    the vertices; a ``len()`` of a tensor becomes a constant."""
    try:
        return fx.GraphModule(model, _ConcreteTracer(example).trace(model), type(model).__name__)
    except Exception as err:  # fx raises many types; the cause is kept
        raise ValueError(
            f"method='subdivide' and the planes need a model that torch.fx can trace; tracing "
            f"{type(model).__name__} failed ({cause or err}), and again with the example input's shapes "
            f"({err}). Usual causes: control flow on tensor values (if x.sum() > 0), a loop over a "
            "tensor, or Python reading values (x.item(), x.tolist()). Rewrite that part with tensor ops; "
            "for segments, method='walk' runs the model eagerly instead (the planes have no such method)."
        ) from err


class _Chain:
    """Vertices ``(seg, t)`` in order, and the per-vertex values of live graph nodes."""

    def __init__(self, seg, t, env, pos):
        self.seg, self.t, self.env, self.pos = seg, t, env, pos

    def size(self) -> int:
        return self.t.numel()

    def split(self, plan: Plan, size: int) -> list["_Chain"]:
        v = self.t.numel()
        out = []
        for s in range(0, v - 1, size - 1):
            e = min(s + size, v)
            env = {n: plan.rows(n, val, s, e) for n, val in self.env.items()}
            out.append(_Chain(self.seg[s:e], self.t[s:e], env, self.pos))
            if e == v:
                break
        return out


def _insert(chain: _Chain, plan: Plan, piece: torch.Tensor, tau: torch.Tensor, extra: dict, tol: float):
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
        self.chain: _Chain | None = None
        self.args_ids: set = set()
        self.index = -1  # position of the node being run
        self.may_overwrite = False  # the node is a bare ReLU whose input dies with it

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
            piece, tau = pwl.relu_crossings(flat, None, same)
        elif call.kind == "clamp":
            piece, tau = pwl.clamp_crossings(z.reshape(v, -1), call.lo, call.hi, same)
        else:
            win, _ = call.windows(z)
            piece, tau = pwl.maxpool_crossings(win[:-1], win[1:], same)
        if piece.numel():
            extra = {"z": z}
            _insert(chain, self.plan, piece, tau, extra, self.tol)
            z = extra["z"]
        out = self._apply(func, call, z, args, kwargs)
        self.taint.mark(out)
        return out

    def _blocked(self, func, args, kwargs):
        return pwl.call_blocked(func, args, kwargs, self.row_block)

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


_BARE_METHODS = ("relu", "clamp", "clip", "clamp_min", "clamp_max")
_BARE_MODULES = (torch.nn.ReLU, torch.nn.LeakyReLU, torch.nn.ReLU6, torch.nn.Hardtanh)


def _bare_relu_input(plan: Plan, node: fx.Node):
    """The input node of a node that only applies a ReLU / leaky ReLU / clamp (else None). The
    functions are the ones :func:`pwl.recognise` treats as a (not in-place) ReLU or clamp
    (whether the op is in place is read from the call itself, see ``SubdivideMode``)."""
    bare = ((node.op == "call_function"
             and (node.target in pwl._RELU or node.target in pwl._LEAKY or node.target in pwl._CLAMP))
            or (node.op == "call_method" and node.target in _BARE_METHODS)
            or (node.op == "call_module" and isinstance(plan.gm.get_submodule(node.target), _BARE_MODULES)))
    first = (node.args[0] if node.args else node.kwargs.get("input")) if bare else None
    return first if isinstance(first, fx.Node) else None


class SplitRequest(Exception):
    """Raised by a mode while it runs a node: the chain grew past its budget; split it and run
    the same node again on each part (the planes engine's cuts are stateless, see planes.py)."""


def run_graph(plan: Plan, mode: SubdivideMode, chain, max_vertices: int, emit):
    """Interpret the graph on ``chain`` depth-first; ``emit(chain, out)`` receives its output.

    ``chain`` is a :class:`_Chain` or anything with ``env``, ``pos``, ``size()`` and
    ``split(plan, max_vertices)`` (the planes engine's tiles)."""
    stack = [chain]
    while stack:
        ch = stack.pop()
        for i in range(ch.pos, len(plan.nodes)):
            node = plan.nodes[i]
            env = ch.env
            if node.op == "output":
                out = map_arg(node.args[0], lambda n: env[n])
                if not isinstance(out, torch.Tensor):
                    raise ValueError("subdivide: the model must return a single tensor")
                emit(ch, out.reshape(out.shape[0], -1))
                break
            if node.op == "placeholder":
                if node is not plan.input:
                    if node.args:
                        env[node] = node.args[0]
                        continue
                    raise ValueError(f"subdivide: the model takes a second input '{node.name}'")
                continue  # the input was placed in env by the caller
            if node.op == "get_attr":
                env[node] = plan.attr(node)
                continue
            args = map_arg(node.args, lambda n: env[n])
            kwargs = map_arg(node.kwargs, lambda n: env[n])
            mode.chain = ch
            mode.args_ids = {id(a) for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)}
            mode.taint.clear()
            for a in node.all_input_nodes:
                if plan.batched[a]:
                    mode.taint.mark(env[a])
            mode.index = i
            src = plan.relu_input[node]
            mode.may_overwrite = src is not None and plan.batched[src] and plan.last_use[src] == i
            v_before = ch.size()
            try:
                with mode:
                    val = plan.call(node, args, kwargs)
            except SplitRequest:
                ch.pos = i  # run this node again on each part
                stack.extend(reversed(ch.split(plan, max_vertices)))
                break
            env[node] = val
            for dead in plan.dead_after[i]:
                if dead is not node or not node.users:  # a value nothing reads (an assertion's None)
                    env.pop(dead, None)
            if ch.size() != v_before and ch.size() > max_vertices:
                ch.pos = i + 1
                stack.extend(reversed(ch.split(plan, max_vertices)))
                break


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
                    run_graph(plan, mode, _Chain(seg, t, {plan.input: x}, 0), vertices,
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
