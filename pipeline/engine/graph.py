"""The traced graph and the one runner of it.

:class:`Plan` is a ``torch.fx`` graph with what every runner needs to know about its nodes:
where each value is last read, and whether it depends on the input (is *batched*).
:func:`run_nodes` interprets the graph on a dictionary of live values, dropping each value
after its last read; it is the only interpreter of a traced graph in the engine. What differs
between its users is one hook, ``call`` (how a node that calls something runs, and whether to
stop before it), and ``stop_after`` (whether to stop after a node):

* :func:`run_graph`, the subdivision's and the planes' driver, runs each call under their
  ``TorchFunctionMode`` on a chain (tile) of vertices, and stops to split it when the chain
  grew past its budget (after the node) or the mode asked for a split (before it);
* the certificate (:mod:`pipeline.engine.certificate`) runs from the input up to the first
  piecewise-linear op, and later from there to the output, in plain torch.
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch.fx.node import map_arg

from pipeline.engine import pwl

__all__ = ["Plan", "run_nodes", "STOP", "SplitRequest", "run_graph"]


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


STOP = object()  # what a runner's hook returns (see run_nodes) instead of a value: stop here


def run_nodes(plan: Plan, env: dict, start: int = 0, *, call=None, stop_after=None, keep_unread: bool = False,
              who: str = ""):
    """Run ``plan``'s nodes from index ``start`` on ``env`` (node -> value; the caller places
    the input, and the values live at ``start`` when resuming). Each value is dropped after
    its last read.

    ``call(i, node, args, kwargs)`` runs a ``call_*`` node (default :meth:`Plan.call`) and may
    return :data:`STOP` to stop before node ``i``; ``stop_after(i)``, asked once node ``i``'s
    value is stored, stops after it when true. ``keep_unread``: keep the value of a node that
    nothing reads (an assertion's None) instead of dropping it at once. ``who`` begins the
    error messages.

    Returns ``(i, out)``: ``i`` the index of the next node to run, ``out`` the model's output
    when ``i`` is the output node, else :data:`STOP`.
    """
    for i in range(start, len(plan.nodes)):
        node = plan.nodes[i]
        if node.op == "output":
            return i, map_arg(node.args[0], lambda n: env[n])
        if node.op == "placeholder":
            if node is not plan.input:
                if not node.args:
                    raise ValueError(f"{who}the model takes a second input '{node.name}'")
                env[node] = node.args[0]
            continue  # the input was placed in env by the caller
        if node.op == "get_attr":
            env[node] = plan.attr(node)
            continue
        args = map_arg(node.args, lambda n: env[n])
        kwargs = map_arg(node.kwargs, lambda n: env[n])
        val = plan.call(node, args, kwargs) if call is None else call(i, node, args, kwargs)
        if val is STOP:
            return i, STOP
        env[node] = val
        for dead in plan.dead_after[i]:
            if dead is not node or not keep_unread:  # a node in its own dead_after is one nothing reads
                env.pop(dead, None)
        if stop_after is not None and stop_after(i):
            return i + 1, STOP
    raise ValueError(f"{who}the traced graph has no output")


class SplitRequest(Exception):
    """Raised by a mode while it runs a node: the chain grew past its budget; split it and run
    the same node again on each part (the planes engine's cuts are stateless, see planes.py)."""


def run_graph(plan: Plan, mode, chain, max_vertices: int, emit):
    """Interpret the graph on ``chain`` depth-first under ``mode`` (a
    :class:`pipeline.engine.subdivide_mode.SubdivideMode`); ``emit(chain, out)`` receives each
    finished chain's output. A chain that grows past ``max_vertices`` is split after the node
    that grew it; one whose mode raises :class:`SplitRequest` is split before that node, which
    then runs again on each part. The parts continue left to right, so outputs come in order.

    ``chain`` is a :class:`pipeline.engine.subdivide_mode.Chain` or anything with ``env``,
    ``pos``, ``size()`` and ``split(plan, max_vertices)`` (the planes engine's tiles)."""
    stack = [chain]
    while stack:
        ch = stack.pop()
        size = ch.size()  # before the node being run

        def call(i, node, args, kwargs):
            nonlocal size
            mode.at_node(plan, ch, i, node, args, kwargs)
            size = ch.size()
            try:
                with mode:
                    return plan.call(node, args, kwargs)
            except SplitRequest:
                return STOP

        def grew(i):
            return ch.size() != size and ch.size() > max_vertices

        i, out = run_nodes(plan, ch.env, ch.pos, call=call, stop_after=grew, who="subdivide: ")
        if out is STOP:  # split; each part goes on from node i
            ch.pos = i
            stack.extend(reversed(ch.split(plan, max_vertices)))
            continue
        if not isinstance(out, torch.Tensor):
            raise ValueError("subdivide: the model must return a single tensor")
        emit(ch, out.reshape(out.shape[0], -1))
