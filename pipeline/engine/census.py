"""Count the operations that would make the host wait for a GPU, on any device.

On CUDA the host queues kernels and runs ahead of them until it needs a value the device has
not computed yet: then it waits for the whole queue to drain, tens of microseconds at least,
and the device idles while the host prepares the next launch. The engine's speed on a GPU
depends on how often that happens, and the waits can be counted on the CPU, where they cost
nothing: ::

    with HostSyncCensus() as census:
        discover(model, x0, x1)
    census.total, census.by_op     # 412, {"nonzero": 96, "item": 120, ...}

Three kinds are counted (``census.by_kind``):

``scalar``  a Python number read from a tensor: ``item()``, ``bool(t)`` (``if t.any():``),
            ``int(t)``, ``float(t)``;
``shape``   an op whose output size depends on values: ``nonzero``, boolean-mask indexing
            ``x[mask]``, ``masked_select``, ``repeat_interleave`` with tensor repeats and no
            ``output_size``, ``unique``;
``to_host`` a copy to host memory: ``numpy()``, ``tolist()``, ``cpu()``.

Copies from the host to the device (``torch.from_numpy(a).to(device)``) are not counted:
they wait for the copy, not for the device's queue. On the CPU every tensor is host memory,
so ``to_host`` counts the calls that *would* copy if the tensor were on a GPU; a census of
code that calls ``numpy()`` on host data it made itself over-counts, never under-counts.
The count is taken at torch's Python function level (a ``TorchFunctionMode`` under the
engine's own modes), so it costs little; calls made with torch functions disabled
(``torch._C.DisableTorchFunction``) are not seen: the engine makes none.
"""

from __future__ import annotations

import sys
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode

_SCALAR = {"item", "__bool__", "__int__", "__float__", "__index__", "__complex__"}
_SHAPE = {"nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "_unique", "_unique2"}
_TO_HOST = {"numpy", "tolist", "cpu"}


def _has_mask(index) -> bool:
    items = index if isinstance(index, (tuple, list)) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in items)


def classify(func, args, kwargs) -> tuple[str, str] | None:
    """``(kind, op)`` when the call would make the host wait for a GPU, else None."""
    name = getattr(func, "__name__", "")
    if name in _SCALAR:
        return "scalar", "item" if name == "item" else name.strip("_")
    if name in _SHAPE:
        return "shape", name.strip("_")
    if name in _TO_HOST:
        return ("to_host", name) if args and isinstance(args[0], torch.Tensor) else None
    if name in ("__getitem__", "__setitem__") and len(args) > 1 and _has_mask(args[1]):
        return "shape", "mask index"
    if name == "where" and len(args) + len(kwargs) == 1:
        return "shape", "where(cond)"
    if name == "repeat_interleave" and kwargs.get("output_size") is None and len(args) > 1 \
            and isinstance(args[1], torch.Tensor) and args[1].numel() > 1:
        return "shape", "repeat_interleave"
    return None


class _Counting(TorchFunctionMode):
    def __init__(self, census: "HostSyncCensus"):
        super().__init__()
        self.census = census

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        hit = classify(func, args, kwargs)
        if hit is not None:
            self.census._add(*hit, sys._getframe(1) if self.census.where else None)
        return func(*args, **kwargs)


class HostSyncCensus:
    """A context manager that counts would-be host waits (see the module's doc)."""

    def __init__(self, where: bool = False):
        self.by_op: Counter = Counter()
        self.by_kind: Counter = Counter()
        self.where = where  # also count by the engine's line that asked (``by_line``)
        self.by_line: Counter = Counter()
        self._mode = None

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())

    def _add(self, kind: str, op: str, frame=None):
        self.by_kind[kind] += 1
        self.by_op[op] += 1
        while frame is not None and ("torch" in frame.f_code.co_filename.split("/")[-3:-1]
                                     or frame.f_code.co_filename == __file__):
            frame = frame.f_back  # up to the caller outside torch
        if frame is not None:
            self.by_line[f"{frame.f_code.co_filename.split('/')[-1]}:{frame.f_lineno} {op}"] += 1

    def __enter__(self):
        self._mode = _Counting(self)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        self._mode = None
        return False

    def as_dict(self) -> dict:
        return {"total": self.total, "by_kind": dict(self.by_kind), "by_op": dict(self.by_op)}
