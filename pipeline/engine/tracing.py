"""Tracing a model into a ``torch.fx`` graph for :class:`pipeline.engine.graph.Plan`.

:func:`trace` is fx's symbolic trace, with the engine's own fast layers kept as single calls.
Where it fails (Python branching on a shape, ``len()`` of a tensor), :func:`trace_concrete`
traces again with an example input run alongside, so such code takes the example's branch.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from pipeline.engine.fastops import PairAvgPool2d

__all__ = ["trace", "trace_concrete"]


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
