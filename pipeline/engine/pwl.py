"""The piecewise-linear ops the engine understands, recognised at the function level.

Every call the network makes passes through a ``TorchFunctionMode`` (see
``pipeline.engine.linearize`` and ``pipeline.engine.subdivide``); :func:`recognise` sorts each call into

* a piecewise-linear op the engine treats exactly, returned as a :class:`PWLCall`, in three
  kinds:

  - ``"relu"``: ``z`` above 0, ``s z`` below, one kink per unit: ReLU in all its spellings,
    LeakyReLU, PReLU (a learned slope per channel), ``rrelu`` in eval (the mean slope) and
    ``abs`` (slope -1);
  - ``"clamp"``: clamping between constant bounds (``hardtanh``, ``relu6``, ``clamp`` /
    ``clip`` / ``clamp_min`` / ``clamp_max``, their in-place variants, ``nn.Hardtanh``,
    ``nn.ReLU6``: two kinks, where the input crosses either bound);
  - ``"max"``: the largest of a window of values, one kink wherever the argmax changes:
    max-pooling in 1-D and 2-D (``ceil_mode`` included), adaptive max-pooling, ``amax`` /
    ``amin`` and ``max`` / ``min`` over dimensions (values and indices), ``maximum`` /
    ``minimum`` / ``fmax`` / ``fmin`` of two tensors (a minimum is the max of the negated
    values);
* an op that is not piecewise linear, or piecewise linear in a way the engine does not
  follow (GELU, sigmoid, hardswish, ``sign``, ``clamp`` with tensor bounds, BatchNorm or
  dropout in training mode...), which raises :class:`UnsupportedOpError` naming it;
* everything else, returned as ``None``: :mod:`pipeline.engine.allowlist` then decides whether it
  is affine, a constant or refused.

A piecewise-linear op applied to constants alone (``torch.abs(self.scale)``) is a constant:
:func:`recognise` is told which tensors carry the input and returns ``None`` for the others.

The geometry of those ops (their windows and kinks) is :mod:`pipeline.engine.kinks`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.engine.kinks import PoolSpec, adaptive_windows, pool_windows, reduce_windows
# planes.py calls these as pwl.call_blocked, pwl.default_row_block and pwl.is_conv
from pipeline.engine.rowblock import call_blocked, default_row_block, is_conv  # noqa: F401

__all__ = ["PWLCall", "PoolSpec", "UnsupportedOpError", "recognise", "call_blocked", "default_row_block"]


class UnsupportedOpError(ValueError):
    """The network uses an op the region engine cannot treat as piecewise linear.

    A ``ValueError``, not a ``TypeError``: torch turns a ``TypeError`` raised inside a binary
    operator (``z > 0``) into ``NotImplemented``, which would lose the message."""


@dataclass(frozen=True)
class PWLCall:
    """One call of a piecewise-linear op: what it is and the tensor it acts on.

    ``"max"``: ``input`` is the tensor the windows are read from (for ``maximum(a, b)`` the two
    operands stacked: ``sources`` holds the tensors the network passed), ``windows(input)``
    gives them as ``(N, C, k, L)`` (``-inf`` for padding) with the output's shape, and
    ``finish(values, argmax)`` makes the op's result from the max of each window (``argmax``:
    ``(N, C, 1, L)`` positions in the windows)."""

    kind: str  # "relu" (negative_slope 0 included), "clamp" or "max"
    input: torch.Tensor
    negative_slope: "float | torch.Tensor" = 0.0  # a tensor broadcastable to input (PReLU)
    inplace: bool = False
    # "clamp": the output is min(max(z, lo), hi); -inf / inf for a missing bound, lo <= hi
    lo: float = -math.inf
    hi: float = math.inf
    windows: "Callable | None" = None
    finish: "Callable | None" = None
    sources: tuple = ()

    def clamp_bounds(self):
        """The finite bounds of a clamp, as a list of floats (one or two)."""
        return [c for c in (self.lo, self.hi) if math.isfinite(c)]


def _names(module, *names):
    return {getattr(module, n) for n in names if hasattr(module, n)}


_RELU = _names(F, "relu") | _names(torch, "relu") | {torch.Tensor.relu}
_RELU_INPLACE = _names(F, "relu_") | _names(torch, "relu_") | {torch.Tensor.relu_}
_LEAKY = _names(F, "leaky_relu") | _names(torch._C._nn, "leaky_relu")
_LEAKY_INPLACE = _names(F, "leaky_relu_") | _names(torch._C._nn, "leaky_relu_")
# clamping between constant bounds: function -> (position of the lower bound, its keyword, its
# default; the same for the upper bound; always in place). Position None: the function has
# no such argument, the default applies.
_CLAMP_SPECS: dict = {}


def _clamp_spec(fns, lo, hi, inplace):
    for fn in fns:
        _CLAMP_SPECS[fn] = (lo, hi, inplace)


_clamp_spec(_names(torch, "clamp", "clip") | {torch.Tensor.clamp, torch.Tensor.clip},
            (1, "min", None), (2, "max", None), False)
_clamp_spec(_names(torch, "clamp_", "clip_") | {torch.Tensor.clamp_, torch.Tensor.clip_},
            (1, "min", None), (2, "max", None), True)
_clamp_spec(_names(torch, "clamp_min") | {torch.Tensor.clamp_min}, (1, "min", None), (None, None, None), False)
_clamp_spec(_names(torch, "clamp_min_") | {torch.Tensor.clamp_min_}, (1, "min", None), (None, None, None), True)
_clamp_spec(_names(torch, "clamp_max") | {torch.Tensor.clamp_max}, (None, None, None), (1, "max", None), False)
_clamp_spec(_names(torch, "clamp_max_") | {torch.Tensor.clamp_max_}, (None, None, None), (1, "max", None), True)
_clamp_spec(_names(F, "hardtanh") | _names(torch._C._nn, "hardtanh"),
            (1, "min_val", -1.0), (2, "max_val", 1.0), False)  # F.hardtanh's inplace: position 3
_clamp_spec(_names(F, "hardtanh_") | _names(torch._C._nn, "hardtanh_"),
            (1, "min_val", -1.0), (2, "max_val", 1.0), True)
_clamp_spec(_names(F, "relu6") | _names(torch._C._nn, "relu6"), (None, None, 0.0), (None, None, 6.0), False)
_clamp_spec(_names(torch._C._nn, "relu6_"), (None, None, 0.0), (None, None, 6.0), True)
_CLAMP_INPLACE_ARG = {F.hardtanh: 3, F.relu6: 1}  # Python functionals with an `inplace` argument
_CLAMP = frozenset(fn for fn, spec in _CLAMP_SPECS.items() if not spec[2])  # the not-in-place ones
_MAXPOOL2D = _names(F, "max_pool2d", "max_pool2d_with_indices", "_max_pool2d") | _names(
    torch, "max_pool2d"
)
_MAXPOOL1D = _names(F, "max_pool1d", "max_pool1d_with_indices", "_max_pool1d") | _names(
    torch, "max_pool1d"
)
_ADAPTIVE_MAX2D = _names(F, "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices", "_adaptive_max_pool2d") | _names(
    torch._C._nn, "adaptive_max_pool2d")
_ADAPTIVE_MAX1D = _names(F, "adaptive_max_pool1d", "adaptive_max_pool1d_with_indices", "_adaptive_max_pool1d") | _names(
    torch, "adaptive_max_pool1d")
_ABS = _names(torch, "abs", "absolute") | {torch.Tensor.abs, torch.Tensor.absolute}
_ABS_INPLACE = _names(torch, "abs_") | {torch.Tensor.abs_, torch.Tensor.absolute_}
_PRELU = _names(F, "prelu") | _names(torch, "prelu") | _names(torch._C._nn, "prelu") | {torch.Tensor.prelu}
_RRELU = _names(F, "rrelu", "rrelu_") | _names(torch, "rrelu", "rrelu_") | _names(torch._C._nn, "rrelu_with_noise")
# reductions to the max / min over dimensions: function -> (max or min, whether it returns indices)
_REDUCE = {**{fn: ("max", False) for fn in _names(torch, "amax") | {torch.Tensor.amax}},
           **{fn: ("min", False) for fn in _names(torch, "amin") | {torch.Tensor.amin}},
           **{fn: ("max", True) for fn in _names(torch, "max") | {torch.Tensor.max}},
           **{fn: ("min", True) for fn in _names(torch, "min") | {torch.Tensor.min}}}
_BINARY = {**{fn: "max" for fn in _names(torch, "maximum", "fmax") | {torch.Tensor.maximum, torch.Tensor.fmax}},
           **{fn: "min" for fn in _names(torch, "minimum", "fmin") | {torch.Tensor.minimum, torch.Tensor.fmin}}}

# Ops that are not piecewise linear, or are piecewise linear in a way the engine does not
# follow. Calling them is an error: a silently wrong region count is worse than none.
_NOT_PWL_NAMES = (
    "sigmoid tanh gelu silu elu selu celu softplus mish hardswish hardsigmoid logsigmoid "
    "softsign tanhshrink softmax log_softmax softmin exp exp2 expm1 log log2 log10 log1p sqrt "
    "rsqrt sin cos tan erf erfc reciprocal square pow layer_norm group_norm instance_norm "
    "local_response_norm normalize rms_norm glu"
).split()
_PWL_UNSUPPORTED_NAMES = (
    "threshold hardshrink softshrink sort topk sign sgn floor ceil round trunc frac fmod remainder "
    "adaptive_max_pool3d max_pool3d fractional_max_pool2d cummax cummin kthvalue median nanmedian "
    "fractional_max_pool3d lp_pool1d lp_pool2d max_unpool2d aminmax argmax argmin"
).split()


def _collect(names):
    found = {}
    for owner in (F, torch, torch.Tensor, torch._C._nn):
        for name in names:
            for spelling in (name, name + "_"):
                fn = getattr(owner, spelling, None)
                if fn is not None and callable(fn):
                    try:
                        found[fn] = spelling
                    except TypeError:  # unhashable
                        pass
    return found


_NOT_PWL = _collect(_NOT_PWL_NAMES)
_PWL_UNSUPPORTED = _collect(_PWL_UNSUPPORTED_NAMES)
_TRAINING_ARG = {  # functions that behave differently in training mode: position of `training`
    F.batch_norm: 5,
    F.dropout: 2,
    F.dropout1d: 2,
    F.dropout2d: 2,
    F.dropout3d: 2,
    F.alpha_dropout: 2,
    F.feature_alpha_dropout: 2,
}
_TRAINING_DEFAULT = {F.batch_norm: False}


def _arg(args, kwargs, index, name, default):
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _pair(v, n=2):
    if isinstance(v, (list, tuple)):
        if len(v) == 1:
            return tuple(int(v[0]) for _ in range(n))
        return tuple(int(e) for e in v)
    return tuple(int(v) for _ in range(n))


def _pool_call(func, args, kwargs, one_d: bool) -> PWLCall:
    x = args[0] if args else kwargs["input"]
    kernel = _arg(args, kwargs, 1, "kernel_size", None)
    stride = _arg(args, kwargs, 2, "stride", None)
    padding = _arg(args, kwargs, 3, "padding", 0)
    dilation = _arg(args, kwargs, 4, "dilation", 1)
    ceil_mode = _arg(args, kwargs, 5, "ceil_mode", False)
    return_indices = _arg(args, kwargs, 6, "return_indices", False)
    name = getattr(func, "__name__", str(func))
    if return_indices or "with_indices" in name:
        raise UnsupportedOpError(
            f"{name} with return_indices=True is not supported by the region engine: "
            "use max-pooling without indices (MaxUnpool is not piecewise-linear-aware)."
        )
    n = 1 if one_d else 2
    kernel = _pair(kernel, n)
    stride = kernel if stride is None or stride == [] or stride == () else _pair(stride, n)
    padding, dilation = _pair(padding, n), _pair(dilation, n)
    if one_d:
        kernel, stride, padding, dilation = ((1,) + kernel, (1,) + stride, (0,) + padding, (1,) + dilation)
    spec = PoolSpec(kernel, stride, padding, dilation, one_d, bool(ceil_mode))
    return _max_call(x, lambda t: pool_windows(t, spec))


def _max_call(x, windows, negate=False, indices=None, sources=None) -> PWLCall:
    """A ``"max"`` call: ``negate`` for a minimum (windows of ``-x``), ``indices`` the namedtuple
    type of an op that returns ``(values, indices)``."""

    def negated_windows(t):
        win, shape = windows(t)
        return win.neg(), shape

    def finish(values, arg, shape):
        values = values.view(shape)
        if negate:
            values = values.neg()
        return values if indices is None else indices((values, arg.reshape(shape)))

    return PWLCall("max", x, windows=negated_windows if negate else windows, finish=finish, sources=sources or (x,))


def _reduce_call(func, args, kwargs):
    which, has_indices = _REDUCE[func]
    name = getattr(func, "__name__", str(func))
    x = args[0] if args else kwargs.get("input", kwargs.get("self"))
    dim = _arg(args, kwargs, 1, "dim", None)
    if isinstance(dim, torch.Tensor):  # torch.max(a, b): the elementwise maximum
        return _binary_call(which, x, dim)
    if dim is None or (isinstance(dim, (tuple, list)) and not dim):  # every element
        raise UnsupportedOpError(
            f"the network calls {name} over every element of a value derived from the input, the "
            "batch dimension included: the region engine treats each row of the batch as one point; "
            "reduce over the other dimensions (e.g. x.flatten(1).amax(1)).")
    dims = tuple(sorted({d % x.ndim for d in ((dim,) if isinstance(dim, int) else dim)}))
    if 0 in dims:
        raise UnsupportedOpError(
            f"the network calls {name} over dimension 0, the batch: the region engine treats each row of the "
            "batch as one point, so a reduction across rows is not a function of one input.")
    keepdim = bool(_arg(args, kwargs, 2, "keepdim", False))
    kind = None
    if has_indices:
        kind = torch.return_types.max if which == "max" else torch.return_types.min
    return _max_call(x, lambda t: reduce_windows(t, dims, keepdim), negate=which == "min", indices=kind)


def _binary_call(which, a, b):
    z = torch.stack(torch.broadcast_tensors(a, b), 1)  # (N, 2, *rest)
    return _max_call(z, lambda t: (t.reshape(t.shape[0], 1, 2, -1), (t.shape[0], *t.shape[2:])),
                     negate=which == "min", sources=(a, b))


def _prelu_call(func, args, kwargs):
    x = args[0] if args else kwargs["input"]
    weight = _arg(args, kwargs, 1, "weight", None)
    if weight.numel() == 1:
        slope = float(weight.reshape(()))
    else:
        if x.ndim < 2 or x.shape[1] != weight.numel():
            raise UnsupportedOpError(f"prelu: {weight.numel()} slopes for an input of shape {tuple(x.shape)}")
        slope = weight.reshape(1, -1, *([1] * (x.ndim - 2))).to(x.dtype)
    return PWLCall("relu", x, slope, False)


def _rrelu_call(func, args, kwargs):
    x = args[0] if args else kwargs["input"]
    lower = float(_arg(args, kwargs, 1, "lower", 1.0 / 8))
    upper = float(_arg(args, kwargs, 2, "upper", 1.0 / 3))
    training = _arg(args, kwargs, 3, "training", False)
    name = getattr(func, "__name__", "rrelu")
    if training or name == "rrelu_with_noise":
        raise UnsupportedOpError(
            f"the network calls {name} in training mode: its slopes are random there, not a fixed "
            "piecewise-linear map. Call model.eval() (in eval rrelu is a leaky ReLU of slope (lower + upper) / 2).")
    inplace = name.endswith("_") or bool(_arg(args, kwargs, 4, "inplace", False))
    return PWLCall("relu", x, (lower + upper) / 2, inplace)


def _clamp_call(func, args, kwargs) -> PWLCall | None:
    lo_spec, hi_spec, inplace = _CLAMP_SPECS[func]
    name = getattr(func, "__name__", str(func))
    x = args[0] if args else kwargs.get("input", kwargs.get("self"))
    bounds = []
    for (index, key, default), missing in ((lo_spec, -math.inf), (hi_spec, math.inf)):
        v = default if index is None else _arg(args, kwargs, index, key, default)
        if isinstance(v, torch.Tensor):
            raise UnsupportedOpError(
                f"the network calls {name} with a tensor bound ({key}=Tensor of shape "
                f"{tuple(v.shape)}): the region engine treats clamping as piecewise linear only "
                "between constant numbers (its kinks are where the input crosses a fixed bound). "
                "Pass Python floats, or express the op through ReLU."
            )
        bounds.append(missing if v is None else float(v))
    lo, hi = bounds
    if lo == -math.inf and hi == math.inf:
        return None  # clamp(x) with no bound: torch raises its own error, or it is the identity
    if kwargs.get("out") is not None:
        raise UnsupportedOpError(f"{name} with out= is not supported by the region engine; "
                                 "use the returned tensor.")
    if math.isnan(lo) or math.isnan(hi):
        raise UnsupportedOpError(f"the network calls {name} with a nan bound")
    if func in _CLAMP_INPLACE_ARG:
        inplace = bool(_arg(args, kwargs, _CLAMP_INPLACE_ARG[func], "inplace", False))
    lo = min(lo, hi)  # torch.clamp with min > max gives max everywhere
    if lo == 0.0 and hi == math.inf:  # clamp(min=0) is a ReLU
        return PWLCall("relu", x, 0.0, inplace)
    return PWLCall("clamp", x, inplace=inplace, lo=lo, hi=hi)


SUPPORTED = ("ReLU, LeakyReLU, PReLU, rrelu (eval), abs, hardtanh / relu6 / clamp with constant bounds, "
             "max-pooling (1-D, 2-D, adaptive), max / min / amax / amin over dimensions, maximum / minimum")


def is_plain_relu(negative_slope) -> bool:
    """A ReLU's slope below the kink is exactly 0 (not a PReLU's tensor, not LeakyReLU's)."""
    return not isinstance(negative_slope, torch.Tensor) and negative_slope == 0.0


def recognise(func, args, kwargs, carried: bool = True) -> PWLCall | None:
    """Classify one call seen by a ``TorchFunctionMode``.

    Returns a :class:`PWLCall` for a supported piecewise-linear op, ``None`` for any other op
    (:mod:`pipeline.engine.allowlist` decides about those), and raises :class:`UnsupportedOpError`
    for ops known not to be piecewise linear or not followed by the engine. ``carried``: whether
    some argument is derived from the network's input (:meth:`pipeline.engine.allowlist.Taint.any`); a
    call on constants alone is a constant (``None``), whatever the op.
    """
    kwargs = kwargs or {}
    if not carried:
        return None
    try:
        if func in _RELU:
            x = args[0] if args else kwargs["input"]
            inplace = bool(_arg(args, kwargs, 1, "inplace", False)) if func is F.relu else False
            return PWLCall("relu", x, 0.0, inplace)
        if func in _RELU_INPLACE:
            return PWLCall("relu", args[0] if args else kwargs["input"], 0.0, True)
        if func in _LEAKY or func in _LEAKY_INPLACE:
            x = args[0] if args else kwargs["input"]
            slope = float(_arg(args, kwargs, 1, "negative_slope", 0.01))
            inplace = func in _LEAKY_INPLACE or bool(_arg(args, kwargs, 2, "inplace", False))
            return PWLCall("relu", x, slope, inplace)
        if func in _CLAMP_SPECS:
            return _clamp_call(func, args, kwargs)
        if func in _MAXPOOL2D:
            return _pool_call(func, args, kwargs, one_d=False)
        if func in _MAXPOOL1D:
            return _pool_call(func, args, kwargs, one_d=True)
        if func in _ADAPTIVE_MAX2D or func in _ADAPTIVE_MAX1D:
            x = args[0] if args else kwargs["input"]
            out = _arg(args, kwargs, 1, "output_size", None)
            if _arg(args, kwargs, 2, "return_indices", False) or "with_indices" in getattr(func, "__name__", ""):
                raise UnsupportedOpError("adaptive max-pooling with return_indices=True is not supported by "
                                         "the region engine; use it without indices.")
            one_d = func in _ADAPTIVE_MAX1D
            return _max_call(x, lambda t: adaptive_windows(t, out, one_d))
        if func in _ABS or func in _ABS_INPLACE:
            return PWLCall("relu", args[0] if args else kwargs["input"], -1.0, func in _ABS_INPLACE)
        if func in _PRELU:
            return _prelu_call(func, args, kwargs)
        if func in _RRELU:
            return _rrelu_call(func, args, kwargs)
        if func in _REDUCE:
            return _reduce_call(func, args, kwargs)
        if func in _BINARY:
            a = args[0] if args else kwargs["input"]
            b = _arg(args, kwargs, 1, "other", None)
            if kwargs.get("out") is not None:
                raise UnsupportedOpError(f"{func.__name__} with out= is not supported by the region engine")
            return _binary_call(_BINARY[func], a, b)
        if func in _TRAINING_ARG:
            training = _arg(args, kwargs, _TRAINING_ARG[func], "training", _TRAINING_DEFAULT.get(func, True))
            if training:
                raise UnsupportedOpError(
                    f"{func.__name__} is called with training=True: in training mode it is not "
                    "a fixed affine map of the input. Call model.eval() (and pass training=False "
                    "to functional calls) before discovering regions."
                )
            return None
        if func in _NOT_PWL:
            raise UnsupportedOpError(
                f"the network calls {_NOT_PWL[func]} on a value derived from the input, and "
                f"{_NOT_PWL[func]} is not piecewise linear: its linear regions are not defined. The "
                f"engine supports {SUPPORTED} between affine layers."
            )
        if func in _PWL_UNSUPPORTED:
            raise UnsupportedOpError(
                f"the network calls {_PWL_UNSUPPORTED[func]} on a value derived from the input, which the "
                f"region engine does not follow (its kinks or jumps would be missed). Supported: {SUPPORTED}; "
                "express the op through them or open an issue."
            )
    except TypeError as err:  # unhashable func objects cannot be any of the above
        if isinstance(err, UnsupportedOpError):
            raise
        return None
    return None
