"""Heavy layers in blocks of rows: how many rows a convolution or dense layer takes per call.

On the CPU a row-wise layer slows down when its batch outgrows the cache, so the engine's
modes call it on blocks of rows (:func:`call_blocked`); on GPUs every row goes at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["default_row_block", "call_blocked", "is_conv", "LINEAR_BLOCK"]


def _names(module, *names):  # as pwl's: the functions of these names that this torch has
    return {getattr(module, n) for n in names if hasattr(module, n)}


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

