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

The rest of this module is the small amount of geometry those ops need: the activation
pattern "just ahead" of a point, the distance to the first kink ahead along a line, and
every kink inside a piece between two vertices.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["PWLCall", "PoolSpec", "UnsupportedOpError", "recognise", "call_blocked", "default_row_block"]


class UnsupportedOpError(ValueError):
    """The network uses an op the region engine cannot treat as piecewise linear.

    A ``ValueError``, not a ``TypeError``: torch turns a ``TypeError`` raised inside a binary
    operator (``z > 0``) into ``NotImplemented``, which would lose the message."""


@dataclass(frozen=True)
class PoolSpec:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    one_d: bool  # max_pool1d, handled as a 2-D pool over a height-1 image
    ceil: bool = False  # ceil_mode: a last, partial window on the right / bottom


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


# Row-wise ops whose CPU kernels slow down when the batch outgrows the cache (float64
# convolutions take an im2col path: 0.33 ms/row at 64 rows, 1.26 ms/row at 1024 on VGG8).
_ROW_BLOCKED = _names(F, "conv1d", "conv2d", "conv3d", "linear") | _names(torch, "conv1d", "conv2d", "conv3d") | _names(
    torch._C._nn, "linear"
)


def default_row_block(device, dtype, method: str = "walk") -> int:
    """Rows per call of a heavy layer: small blocks on CPU (cache), none on GPUs.

    ``subdivide`` in float64 uses 16: its layers and its midpoint certificate run on
    thousands of rows, and on VGG8 (one thread) blocks of 16 rows ran the whole method
    1.1-1.2x faster than blocks of 64 (docs/benchmarks.md). The walk keeps 64 (its passes
    hold 2 rows per segment in flight, so blocks rarely split at the batch sizes used).
    """
    if torch.device(device).type != "cpu":
        return 0
    if dtype == torch.float64:
        return 16 if method == "subdivide" else 64
    return 256


# A dense layer has no im2col buffer: its product only gets more efficient with more rows
# (float64 1024 x 1024, one thread: 29 GFLOP/s at 16 rows, 53 at 256; float32 48 and 122).
_LINEAR = _names(F, "linear") | _names(torch._C._nn, "linear")
LINEAR_BLOCK = 256


_CONV = _names(F, "conv1d", "conv2d", "conv3d") | _names(torch, "conv1d", "conv2d", "conv3d")


def is_conv(func) -> bool:
    """Whether ``func`` is a convolution: row-wise (row ``i`` of the output depends on row ``i``
    of the input alone) and costly per row."""
    try:
        return func in _CONV
    except TypeError:  # unhashable
        return False


def call_blocked(func, args, kwargs, block: int):
    """``func(*args, **kwargs)``, in blocks of ``block`` rows if it is a heavy row-wise layer
    (at least ``LINEAR_BLOCK`` rows for a dense layer)."""
    x = args[0] if args else None
    if block and isinstance(x, torch.Tensor) and x.ndim > 1 and x.shape[0] > block:
        try:
            heavy = func in _ROW_BLOCKED
            if heavy and func in _LINEAR:
                block = max(block, LINEAR_BLOCK)
                heavy = x.shape[0] > block
        except TypeError:
            heavy = False
        if heavy:
            rest = args[1:]
            return torch.cat([func(x[i:i + block], *rest, **kwargs) for i in range(0, x.shape[0], block)])
    return func(*args, **kwargs)


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


def _adaptive_index(n: int, o: int) -> torch.Tensor:
    """``(o, k)`` the input positions of each adaptive window (``n`` marks padding)."""
    spans = [((i * n) // o, -(-((i + 1) * n) // o)) for i in range(o)]
    k = max(e - s for s, e in spans)
    return torch.tensor([[s + j if s + j < e else n for j in range(k)] for s, e in spans])


def adaptive_windows(x: torch.Tensor, out, one_d: bool):
    """Windows ``(N, C, k, L)`` of an adaptive max-pool (``-inf`` padding up to the largest
    window), and the output shape."""
    if one_d:
        x = x.unsqueeze(-2)
        out = (1, out[0] if isinstance(out, (list, tuple)) else out)
    n, c, h, w = x.shape
    if not isinstance(out, (list, tuple)):
        out = (out, out)
    elif len(out) == 1:
        out = (out[0], out[0])
    oh, ow = (h if out[0] is None else int(out[0])), (w if out[1] is None else int(out[1]))
    xp = F.pad(x, (0, 1, 0, 1), value=-math.inf)
    ih, iw = _adaptive_index(h, oh).to(x.device), _adaptive_index(w, ow).to(x.device)
    win = xp[:, :, ih[:, :, None, None], iw[None, None, :, :]]  # (N, C, oh, kh, ow, kw)
    win = win.permute(0, 1, 3, 5, 2, 4).reshape(n, c, ih.shape[1] * iw.shape[1], oh * ow)
    return win, ((n, c, ow) if one_d else (n, c, oh, ow))


def reduce_windows(x: torch.Tensor, dims: tuple, keepdim: bool):
    """Windows ``(N, 1, k, G)`` of a max over dimensions ``dims`` (none of them the batch's)."""
    keep = [d for d in range(x.ndim) if d not in dims]
    k = math.prod(x.shape[d] for d in dims)
    win = x.permute(keep + sorted(dims)).reshape(x.shape[0], -1, k).transpose(1, 2).unsqueeze(1)
    shape = tuple(1 if d in dims else x.shape[d] for d in range(x.ndim)) if keepdim else tuple(
        x.shape[d] for d in keep)
    return win, shape


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


# --------------------------------------------------------------------------- geometry


def _out_size(hw, spec: PoolSpec, ceil: bool):
    out = []
    for n, k, s, p, d in zip(hw, spec.kernel, spec.stride, spec.padding, spec.dilation):
        span = n + 2 * p - d * (k - 1) - 1
        o = (-(-span // s) if ceil else span // s) + 1
        if ceil and (o - 1) * s >= n + p:
            o -= 1
        out.append(o)
    return tuple(out)


def pool_windows(x: torch.Tensor, spec: PoolSpec):
    """Windows of a max-pool as ``(N, C, k*k, L)``, padding as ``-inf``; and the output shape."""
    if spec.one_d:
        x = x.unsqueeze(-2)
    n, c, h, w = x.shape
    oh, ow = _out_size((h, w), spec, ceil=spec.ceil)
    ph, pw = spec.padding
    # ceil_mode: a last, partial window reaches past the padded input: pad it with -inf too
    eh, ew = (max(0, (o - 1) * s + d * (k - 1) + 1 - (m + 2 * p)) for o, s, d, k, m, p in
              zip((oh, ow), spec.stride, spec.dilation, spec.kernel, (h, w), spec.padding))
    if ph or pw or eh or ew:
        x = F.pad(x, (pw, pw + ew, ph, ph + eh), value=-math.inf)
    win = F.unfold(x, spec.kernel, dilation=spec.dilation, stride=spec.stride)
    win = win.view(n, c, spec.kernel[0] * spec.kernel[1], oh * ow)
    shape = (n, c, ow) if spec.one_d else (n, c, oh, ow)
    return win, shape


def lex_argmax(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """Index of the largest ``(a, b)`` pair in lexicographic order along ``dim``."""
    top = a.amax(dim, keepdim=True)
    key = torch.where(a == top, b, -math.inf)
    return key.argmax(dim, keepdim=True)


def maxpool_first_kink(wz, wzdot, cur):
    """Per row, the first ``tau > 0`` at which another window element overtakes the max."""
    zc = wz.gather(2, cur)
    zdc = wzdot.gather(2, cur)
    tau = (zc - wz).div_(wzdot - zdc)
    tau.masked_fill_(~((wzdot > zdc) & torch.isfinite(wz) & (tau > 0)), math.inf)
    return tau.flatten(1).amin(1)


def relu_crossings(za: torch.Tensor, zb: torch.Tensor | None, same: torch.Tensor):
    """Every sign change of a unit between consecutive vertices.

    ``za``, ``zb``: ``(P, U)`` values at the two ends of each piece; or ``za`` the ``(P + 1, U)``
    values at the vertices of a chain and ``zb=None`` (pieces join consecutive rows: the signs
    are then computed once per vertex, not twice). ``same``: ``(P,)`` whether the piece joins
    two vertices of one segment. Returns ``(piece, tau)`` with ``tau`` in ``(0, 1)``, float64.
    """
    # strict sign changes. One pass over (P, U) finds the candidates (positive on one side
    # only); zeros, nan and pieces joining two segments are then dropped from the (few)
    # candidates. Two waits for a GPU per op (the two nonzero): one mask of strict changes
    # over the whole chain would wait once, but costs subdivide 2-5% on the CPU
    # (docs/benchmarks.md, host waits).
    if zb is None:
        pos = za > 0
        p, u = (pos[:-1] != pos[1:]).nonzero(as_tuple=True)
        a, b = za[p, u], za[p + 1, u]
    else:
        p, u = ((za > 0) != (zb > 0)).nonzero(as_tuple=True)
        a, b = za[p, u], zb[p, u]
    ok = (((a < 0) | (a > 0)) & ((b < 0) | (b > 0)) & same[p]).nonzero().squeeze(1)
    p, a, b = p[ok], a[ok].double(), b[ok].double()
    return p, a / (a - b)


def clamp_crossings(za: torch.Tensor, lo: float, hi: float, same: torch.Tensor):
    """Every crossing of either bound of a clamp between consecutive vertices of a chain:
    :func:`relu_crossings` of ``za - lo`` and of ``za - hi`` (``za``: ``(P + 1, U)`` values at
    the vertices; infinite bounds are skipped). Returns ``(piece, tau)``."""
    pieces, taus = [], []
    for c in (lo, hi):
        if math.isfinite(c):
            p, tau = relu_crossings(za - c, None, same)
            pieces.append(p)
            taus.append(tau)
    if len(pieces) == 1:
        return pieces[0], taus[0]
    return torch.cat(pieces), torch.cat(taus)


def maxpool_crossings(wa: torch.Tensor, wb: torch.Tensor, same: torch.Tensor):
    """Every change of argmax inside a pooling window between consecutive vertices.

    ``wa``, ``wb``: windows ``(P, C, k*k, L)`` at the two ends of each piece. On a piece every
    window element is affine, so the max is the upper envelope of k*k lines over ``tau in
    [0, 1]``; walk the envelope from ``tau = 0`` and report each kink.
    """
    wa = wa.double()
    slope = wb.double() - wa
    valid = torch.isfinite(wa)
    slope = torch.where(valid, slope, -math.inf)
    cur = lex_argmax(wa, slope, 2)
    at = torch.zeros_like(cur, dtype=torch.float64)
    alive = same.view(-1, 1, 1, 1).expand_as(cur).clone()
    pieces, taus = [], []
    for _ in range(wa.shape[2] - 1):
        if not alive.any():
            break
        ac, sc = wa.gather(2, cur), slope.gather(2, cur)
        den = slope - sc
        tau = (ac - wa) / den
        ok = (den > 0) & valid
        tau = torch.where(ok, torch.maximum(tau, at), math.inf)
        nxt_tau = tau.amin(2, keepdim=True)
        # among elements reaching the max first, the steepest one stays on top
        nxt = torch.where(tau == nxt_tau, slope, -math.inf).argmax(2, keepdim=True)
        alive &= nxt_tau < 1
        hit = alive & (nxt_tau > 0)
        idx = hit.nonzero(as_tuple=True)
        pieces.append(idx[0])
        taus.append(nxt_tau[idx])
        cur = torch.where(alive, nxt, cur)
        at = torch.where(alive, nxt_tau, at)
    if not pieces:
        empty = torch.zeros(0, dtype=torch.long, device=wa.device)
        return empty, empty.double()
    return torch.cat(pieces), torch.cat(taus)
