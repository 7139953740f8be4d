"""Faster equivalents of affine layers, swapped into the engine's private copy of a network.

PyTorch's CPU ``avg_pool2d`` is a generic windowed loop: on the paper's VGG8 it costs about
four times what the same 2x2 average costs as two strided additions (0.19 against 0.05 ms
for 16 rows of 6x32x32 in float64, one thread), and the network runs it at three layers, in
every pass of both methods and in the certificate. :func:`with_fast_layers` replaces each
``nn.AvgPool2d(2)`` module of a model (kernel 2, stride 2, no padding, no ``ceil_mode``, no
divisor override) by :class:`PairAvgPool2d`, which computes the same average (to rounding:
the four terms are summed in a different order; an odd last row or column is dropped, as
``avg_pool2d`` drops it). Only on the CPU: on GPUs the library kernel is fast.

Only modules are swapped: a functional ``F.avg_pool2d`` call inside ``forward`` is left as
written. The caller's model is never modified; this runs on the engine's copy.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PairAvgPool2d", "pair_avg_pool2d", "with_fast_layers"]


def pair_avg_pool2d(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 2)`` as two strided additions. A torch function mode sees it as one
    call (an affine op on :mod:`pipeline.engine.allowlist`): at one segment in flight, dispatching its
    seven small ops through a mode would cost more than the library pooling it replaces."""
    if torch.overrides.has_torch_function_unary(x):
        return torch.overrides.handle_torch_function(pair_avg_pool2d, (x,), x)
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    rows = x[..., 0:h:2, :w] + x[..., 1:h:2, :w]
    return (rows[..., 0::2] + rows[..., 1::2]) * 0.25


class PairAvgPool2d(nn.Module):
    """``nn.AvgPool2d(2)`` as two strided additions on the CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pair_avg_pool2d(x)


def _is_pair_average(m: nn.Module) -> bool:
    def two(v):
        return v == 2 if isinstance(v, int) else isinstance(v, (tuple, list)) and tuple(v) == (2, 2)

    return (type(m) is nn.AvgPool2d and two(m.kernel_size) and two(m.stride if m.stride is not None else 2)
            and m.padding in (0, (0, 0)) and not m.ceil_mode and m.divisor_override is None)


def with_fast_layers(model: nn.Module, device) -> nn.Module:
    """Swap, in place, every ``nn.AvgPool2d(2)`` of ``model`` for :class:`PairAvgPool2d` when
    the model runs on the CPU (``device``); returns ``model``. Meant for a private copy."""
    if torch.device(device).type != "cpu":
        return model
    for name, child in list(model.named_children()):
        if _is_pair_average(child):
            setattr(model, name, PairAvgPool2d())
        else:
            with_fast_layers(child, device)
    return model
