"""Which ops the engine knows to be affine in the network's input: an allowlist, not a blocklist.

The engine follows a network op by op (a ``TorchFunctionMode``, see :mod:`pipeline.engine.linearize`
and :mod:`pipeline.engine.subdivide`). Each value a call returns is either derived from the input
or a constant (made from parameters, buffers and numbers alone). :class:`Taint` keeps track
of which is which, and :func:`check` decides, for a call that is not one of the
piecewise-linear ops of :mod:`pipeline.engine.pwl`:

* every argument a constant: the call is a constant, whatever the op (a weight computed from
  parameters, a mask made from a buffer);
* an op known to be affine in the arguments that carry the input (its rule below): the
  result carries the input;
* an op that only reads metadata (``shape``, ``size()``, ``dtype``...): the result is a
  constant of the traced network;
* anything else that touches a value derived from the input is refused by name, with
  :class:`pipeline.engine.pwl.UnsupportedOpError`, before any work is done: comparisons, ``where``
  on an input-derived condition, masks, ``sign``, rounding, integer casts, products of two
  input-derived values, reading values into Python, and every op not on the list.

Rules, for the tensors among an op's arguments that carry the input:

``LINEAR``
    any of them (``add``, ``cat``, reshapes, slicing with constant indices, pooling by
    averages, ``pad``, ``interpolate``, sums and means...);
``PRODUCT``
    at most one (``mul``, ``matmul``, ``einsum``, ``conv2d``, ``linear``...): a product
    of two input-derived values is not affine;
``FIRST``
    the first argument only (``div`` by a constant, ``batch_norm`` with its statistics, indexing
    and ``gather`` with constant indices, ``masked_fill`` with a constant mask);
``NOT_FIRST``
    all but the first (``where(cond, a, b)`` with a constant ``cond``).

Where a user knows better, ``assume_affine`` (a tuple of functions, see
:func:`pipeline.engine.lines.discover`) declares ops affine; the certificate still checks the result.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from pipeline.engine.fastops import pair_avg_pool2d
from pipeline.engine.pwl import UnsupportedOpError

__all__ = ["Taint", "Assumed", "check", "run_checked", "op_name", "LINEAR", "PRODUCT", "FIRST", "NOT_FIRST", "META",
           "CONST"]

LINEAR, PRODUCT, FIRST, NOT_FIRST, META, CONST, READ = "linear", "product", "first", "not_first", "meta", "const", "read"

_OWNERS = (torch, torch.Tensor, F, torch._C._nn, torch.functional, torch._C._VariableFunctions)

_RULES_BY_NAME = {
    LINEAR: """add __add__ __radd__ __iadd__ sub __sub__ __rsub__ __isub__ rsub subtract neg negative
        __neg__ positive __pos__ cat concat concatenate stack hstack vstack dstack column_stack
        view view_as reshape reshape_as flatten unflatten ravel permute transpose swapaxes swapdims t
        movedim moveaxis squeeze unsqueeze expand expand_as broadcast_to broadcast_tensors repeat tile
        contiguous clone detach chunk split split_with_sizes tensor_split unbind narrow select hsplit
        vsplit dsplit flip fliplr flipud roll rot90 diagonal diag_embed tril triu sum mean nansum
        cumsum trace diff pad constant_pad_nd reflection_pad1d reflection_pad2d replication_pad1d
        replication_pad2d zero_pad2d interpolate upsample upsample_nearest upsample_bilinear
        upsample_nearest1d upsample_nearest2d upsample_bilinear2d avg_pool1d avg_pool2d avg_pool3d
        adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d pixel_shuffle pixel_unshuffle
        channel_shuffle native_channel_shuffle unfold fold to type type_as double float half bfloat16
        cpu cuda dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout
        feature_dropout identity copy_ zero_ fill_ as_strided slice_scatter select_scatter
        __setitem__ unsafe_chunk unsafe_split""",
    PRODUCT: """mul __mul__ __rmul__ __imul__ multiply matmul __matmul__ __rmatmul__ mm bmm mv dot vdot
        inner outer ger einsum tensordot kron addmm addmv addbmm baddbmm addcmul linear bilinear
        conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d conv_tbc""",
    FIRST: """div __truediv__ __itruediv__ __div__ __idiv__ divide true_divide batch_norm __getitem__
        index_select gather take_along_dim masked_fill masked_scatter index_fill""",
    NOT_FIRST: "where",
    META: """size dim ndimension numel nelement is_floating_point is_complex is_contiguous stride
        storage_offset element_size data_ptr get_device __len__ __repr__ __format__ is_same_size
        untyped_storage is_signed is_inference has_names dim_order requires_grad_""",
    CONST: """new_zeros new_ones new_empty new_full new_tensor zeros_like ones_like empty_like full_like
        rand_like randn_like""",
    READ: "item tolist numpy __bool__ __int__ __float__ __index__ __nonzero__ __array__ __long__ __complex__",
}
# properties, seen as ``Tensor.<name>.__get__``
_ATTR_RULES = {**{n: LINEAR for n in ("T", "mT", "data", "real")},
               **{n: META for n in ("shape", "ndim", "dtype", "device", "layout", "requires_grad", "is_cuda",
                                    "is_cpu", "is_sparse", "is_quantized", "is_meta", "is_leaf", "names",
                                    "itemsize", "nbytes", "_version", "_base", "grad", "grad_fn", "output_nr",
                                    "is_mkldnn", "is_nested", "is_mps", "is_xpu")}}
_COMPARISONS = set("gt lt ge le eq ne greater less greater_equal less_equal not_equal isclose equal "
                   "logical_and logical_or logical_xor logical_not isnan isinf isfinite signbit".split())
# the in-place spellings write into their first argument
_INPLACE_EXTRA = {"__setitem__", "copy_", "zero_", "fill_"}
# conversions to a floating dtype only (an integer cast of an input-derived value is refused)
_CASTS = {"to", "type", "type_as", "double", "float", "half", "bfloat16"}


def _rules() -> dict:
    out = {}
    for rule, names in _RULES_BY_NAME.items():
        for name in names.split():
            for owner in _OWNERS:
                for spelling in (name, name + "_") if not name.startswith("_") and not name.endswith("_") else (name,):
                    fn = getattr(owner, spelling, None)
                    if fn is None or not callable(fn):
                        continue
                    try:
                        out.setdefault(fn, (rule, spelling))
                    except TypeError:  # unhashable
                        pass
    return out


_RULES = _rules()
_RULES[pair_avg_pool2d] = (LINEAR, "avg_pool2d")  # the engine's own fast layer


def op_name(func) -> str:
    """A readable name for a function the mode sees (``Tensor.shape`` for a property read)."""
    if getattr(func, "__name__", None) == "__get__" and hasattr(func, "__self__"):
        return f"Tensor.{getattr(func.__self__, '__name__', '?')}"
    name = getattr(func, "__name__", None) or repr(func)
    owner = getattr(func, "__qualname__", name)
    if "TensorBase" in owner or owner.startswith("Tensor."):
        return f"Tensor.{name}"
    module = getattr(func, "__module__", None) or ""
    if module.startswith("torch.nn.functional"):
        return f"F.{name}"
    return f"torch.{name}" if module.startswith("torch") or not module else f"{module}.{name}"


def rule_of(func):
    """``(rule, name)`` for a known function, else None."""
    if getattr(func, "__name__", None) == "__get__" and hasattr(func, "__self__"):
        attr = getattr(func.__self__, "__name__", "")
        rule = _ATTR_RULES.get(attr)
        return (rule, f"Tensor.{attr}") if rule else None
    try:
        return _RULES.get(func)
    except TypeError:
        return None


def _tensors(obj, out):
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _tensors(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _tensors(o, out)
    return out


class Taint:
    """The tensors of one pass that carry the input, by identity (weak references: a
    tracked tensor is freed as usual)."""

    def __init__(self):
        self._refs: dict[int, weakref.ref] = {}

    def mark(self, obj) -> None:
        for t in _tensors(obj, []):
            self._refs[id(t)] = weakref.ref(t)

    def has(self, t) -> bool:
        ref = self._refs.get(id(t))
        return ref is not None and ref() is t

    def any(self, obj) -> bool:
        return any(self.has(t) for t in _tensors(obj, []))

    def clear(self) -> None:
        self._refs.clear()


class Assumed:
    """The functions a user declared affine (``assume_affine``), and those of them the network
    was seen to call on input-derived values, in order (named by a failing certificate)."""

    def __init__(self, funcs=()):
        self.funcs = tuple(funcs)
        for f in self.funcs:
            if not callable(f):
                raise TypeError(f"assume_affine takes functions (e.g. torch.where), got {f!r}")
        self.seen: list[str] = []

    def __bool__(self) -> bool:
        return bool(self.funcs)

    def covers(self, func) -> bool:
        try:
            hit = func in self.funcs
        except TypeError:
            hit = False
        if hit:
            name = op_name(func)
            if name not in self.seen:
                self.seen.append(name)
        return hit

    def report(self) -> str:
        if not self.seen:
            return ""
        return (f"the first op on the path the engine treated as affine without knowing it: {self.seen[0]} "
                f"(declared with assume_affine{'; also ' + ', '.join(self.seen[1:]) if len(self.seen) > 1 else ''})")


def check(func, args, kwargs, taint: Taint, assumed: "Assumed | None" = None) -> bool:
    """Whether the result of ``func(*args, **kwargs)`` carries the input (see the module
    docstring); raises :class:`UnsupportedOpError` for a call the engine cannot treat as
    affine. Call it for ops that are not piecewise-linear ops of the engine."""
    tensors = _tensors(args, []) + _tensors(kwargs, [])
    carried = [taint.has(t) for t in tensors]
    if not any(carried):
        return False
    if assumed and assumed.covers(func):
        return True
    found = rule_of(func)
    name = found[1] if found else op_name(func)
    for t, c in zip(tensors, carried):
        if c and not (t.is_floating_point() or t.is_complex()):
            if found and found[0] == META:
                return False
            raise UnsupportedOpError(
                f"the network calls {name} on a {t.dtype} tensor derived from the input (a mask, an index "
                "or an integer cast of the input's values): such values change only at thresholds the "
                "region engine does not see, so its regions would be wrong. Express the op through "
                "ReLU, max or clamp (e.g. torch.where(z > 0, z, 0) is torch.relu(z)).")
    if found is None and name.rsplit(".", 1)[-1].strip("_") in _COMPARISONS:
        raise UnsupportedOpError(
            f"the network calls {name}, a comparison, on a value derived from the input: its result is a "
            "mask that jumps where the input crosses a threshold, which the region engine cannot see as a "
            "kink, so anything computed from it (where, masked_fill, a product with the mask, a branch) would "
            "give wrong regions. Write the op with relu, max or clamp: torch.where(z > 0, z, 0) is "
            "torch.relu(z), torch.where(a > b, a, b) is torch.maximum(a, b).")
    if found is None:
        raise UnsupportedOpError(
            f"the network calls {name} on a value derived from the input, and the region engine does not "
            "know it to be affine or piecewise linear, so it refuses rather than risk a wrong region "
            "count. Supported: affine ops (linear, conv, batch_norm in eval, pooling by averages, "
            "reshapes, cat, add, scaling by constants, pad, interpolate, mean, sum, matmul and einsum "
            "with a constant operand, slicing with constant indices) and the piecewise-linear ops "
            "(relu, leaky_relu, prelu, rrelu in eval, hardtanh / relu6 / clamp with constant bounds, "
            "abs, max-pooling, adaptive max-pooling, max / min / amax / amin over dimensions, "
            "maximum / minimum). If you know this op is affine here, pass assume_affine=(fn,) to "
            "discover / prepare; the certificate still checks the result.")
    rule, name = found
    if name == "__setitem__" and len(args) > 1 and taint.any(args[1]):
        raise UnsupportedOpError("the network assigns with an index or mask derived from the input "
                                 "(x[mask] = ...): not affine in the input. Use constant indices.")
    if rule == READ:
        raise UnsupportedOpError(
            f"the network calls {name} on a value derived from the input: it reads the input's values "
            "into Python (data-dependent control flow, or numbers used as constants), which the region "
            "engine cannot follow. Keep the computation in tensors.")
    if rule in (META, CONST):
        return False
    if rule == PRODUCT and sum(carried) > 1:
        raise UnsupportedOpError(
            f"the network calls {name} with two operands derived from the input: their product is not "
            "affine (nor piecewise linear) in the input. The region engine supports products with a "
            "constant operand (weights, buffers, numbers).")
    if rule in (FIRST, NOT_FIRST):
        first = args[0] if args else next(iter(kwargs.values()), None)
        first_carries = isinstance(first, torch.Tensor) and taint.has(first)
        others = sum(carried) - int(first_carries)
        if (rule == FIRST and others) or (rule == NOT_FIRST and first_carries):
            what = "its condition" if rule == NOT_FIRST else "an index, mask, divisor or statistic"
            raise UnsupportedOpError(
                f"the network calls {name} with {what} derived from the input: the result is not affine "
                "in the input (it changes at thresholds the region engine does not see). Only constant "
                "indices, masks, divisors and conditions are supported; for a ReLU written as "
                "torch.where(z > 0, z, 0) use torch.relu(z).")
        if name in ("div", "__truediv__", "divide", "true_divide", "div_", "__itruediv__") and \
                kwargs.get("rounding_mode") is not None:
            raise UnsupportedOpError(f"the network calls {name} with rounding_mode="
                                     f"{kwargs['rounding_mode']!r} on the input: rounding is not piecewise linear")
    return True


def check_result(func, out) -> None:
    """Refuse a conversion of an input-derived value to an integer or boolean dtype."""
    found = rule_of(func)
    if found and found[1].rstrip("_") in _CASTS:
        bad = [t for t in _tensors(out, []) if not (t.is_floating_point() or t.is_complex())]
        if bad:
            raise UnsupportedOpError(
                f"the network casts a value derived from the input to {bad[0].dtype} ({found[1]}): an "
                "integer or boolean cast changes at thresholds the region engine does not see.")


def writes_first(func) -> bool:
    """Whether ``func`` writes into its first argument (in-place ops, ``__setitem__``)."""
    found = rule_of(func)
    if not found:
        return False
    name = found[1]
    return name in _INPLACE_EXTRA or (name.endswith("_") and not name.startswith("__")) or name.startswith("__i")


def run_checked(func, args, kwargs, taint: Taint, assumed: "Assumed | None" = None, runner=None):
    """Run a call that is not a piecewise-linear op (``runner(func, args, kwargs)``, default a
    plain call): checked by :func:`check`, its result marked as carrying the input where it
    does (an in-place op's first argument too)."""
    carried = check(func, args, kwargs, taint, assumed)
    out = func(*args, **kwargs) if runner is None else runner(func, args, kwargs)
    if carried:
        check_result(func, out)
        taint.mark(out)
        if args and writes_first(func):
            taint.mark(args[0])
    return out
