"""One pass that linearises a network along a line: ``f``, its derivative, and the next kink.

At a point ``x`` with direction ``d`` every op input ``z`` is affine in ``t`` while the
activation pattern stays frozen. A single pass gives ``z`` and ``zdot = dz/dt`` everywhere,
hence ``f``, ``fdot`` and the distance (in ``t``) to the first kink ahead.

Two ways to carry ``(z, zdot)`` through the network:

``"stacked"``
    one ordinary forward of the batch ``[x; x + d]``; every piecewise-linear op applies the
    first half's pattern (ReLU mask, max-pool argmax) to both halves, so the second half stays
    the affine extension and ``second - first`` is ``zdot``. Uses the plain forward kernels.
``"dual"``
    forward-mode AD (``torch.autograd.forward_ad`` dual tensors).
"""

from __future__ import annotations

import math

import torch
from torch.autograd import forward_ad as fwAD
from torch.overrides import TorchFunctionMode

from . import pwl

__all__ = ["LinearizeMode", "linearize", "bare_pass", "forward_blocked"]


class _Stacked:
    """``(z, zdot)`` carried as the batch ``[x; x + d]``: the second half is ``z + zdot``."""

    def __init__(self, batch: int):
        self.batch = batch

    def relu(self, call: pwl.PWLCall, track: bool):
        x, b = call.input, self.batch
        z, ahead = x[:b], x[b:]  # ahead = z + zdot: the frozen-pattern value one d further
        mask = z > 0
        zero = z == 0
        has_zero = bool(zero.any())
        if has_zero:  # on a kink: take the side the line moves into (zdot = ahead there)
            mask |= zero & (ahead > 0)
        tau = None
        if track:
            # z + tau zdot = 0  <=>  tau = 1 / (1 - r), r = ahead / z; crossings ahead have
            # r < 1 and the smallest r is the nearest one. No subtraction, no cancellation for
            # kinks within one segment length (r <= 0 there).
            r = torch.div(ahead, z)
            if has_zero:
                r.masked_fill_(zero, math.inf)
            tau = r.flatten(1).amin(1)
        m = _slope_mask(mask, call.negative_slope, x.dtype)
        out = x.view(2, b, *x.shape[1:])
        if call.inplace:
            out.mul_(m)
            return x, tau
        return (out * m).view(x.shape), tau

    def pool(self, call: pwl.PWLCall, track: bool):
        b = self.batch
        win, shape = pwl.pool_windows(call.input, call.pool)
        wz, wzdot = win[:b], win[b:] - win[:b]
        cur = pwl.lex_argmax(wz, wzdot, 2)
        tau = self.from_tau(pwl.maxpool_first_kink(wz, wzdot, cur)) if track else None
        out = win.gather(2, torch.cat([cur, cur])).view(2 * b, *shape[1:])
        return out, tau

    # Kinks are tracked as the per-row minimum of r = (z + zdot) / z, monotone in the distance
    # tau = 1 / (1 - r) for r < 1; converted once per pass.
    @staticmethod
    def to_tau(r):
        return torch.where(r < 1.0, 1.0 / (1.0 - r), math.inf)

    @staticmethod
    def from_tau(tau):
        return 1.0 - 1.0 / tau

    def output(self, y):
        b = self.batch
        y = y.reshape(2 * b, -1)
        return y[:b], y[b:] - y[:b]


class _Dual:
    """``(z, zdot)`` carried as forward-mode AD dual tensors."""

    @staticmethod
    def split(x):
        p, t = fwAD.unpack_dual(x)
        return p, (torch.zeros_like(p) if t is None else t)

    def relu(self, call: pwl.PWLCall, track: bool):
        z, zdot = self.split(call.input)
        mask = z > 0
        zero = z == 0
        has_zero = bool(zero.any())
        if has_zero:
            mask |= zero & (zdot > 0)
        tau = None
        if track:
            q = torch.div(zdot, z)  # tau = -1 / q for q < 0; the most negative q is nearest
            if has_zero:
                q.masked_fill_(zero, math.inf)
            tau = q.flatten(1).amin(1)
        m = _slope_mask(mask, call.negative_slope, z.dtype)
        return fwAD.make_dual(z * m, zdot * m), tau

    def pool(self, call, track: bool):
        z, zdot = self.split(call.input)
        wz, shape = pwl.pool_windows(z, call.pool)
        wzdot, _ = pwl.pool_windows(zdot, call.pool)
        wzdot = torch.nan_to_num(wzdot, nan=0.0, posinf=0.0, neginf=0.0)
        cur = pwl.lex_argmax(wz, wzdot, 2)
        tau = self.from_tau(pwl.maxpool_first_kink(wz, wzdot, cur)) if track else None
        return fwAD.make_dual(wz.gather(2, cur).view(shape), wzdot.gather(2, cur).view(shape)), tau

    # Kinks are tracked as the per-row minimum of q = zdot / z; tau = -1 / q for q < 0.
    @staticmethod
    def to_tau(q):
        return torch.where(q < 0.0, -1.0 / q, math.inf)

    @staticmethod
    def from_tau(tau):
        return -1.0 / tau

    def output(self, y):
        p, t = self.split(y)
        return p.reshape(p.shape[0], -1), t.reshape(t.shape[0], -1)


def _slope_mask(mask, negative_slope: float, dtype):
    if negative_slope == 0.0:
        return mask
    return mask.to(dtype).mul_(1.0 - negative_slope).add_(negative_slope)


class LinearizeMode(TorchFunctionMode):
    """Intercepts the piecewise-linear ops of one pass and freezes their pattern.

    :meth:`tau` gives, per row of the batch, the distance to the first kink ahead when
    ``track`` is true.
    """

    def __init__(self, backend, track: bool = True):
        super().__init__()
        self.backend = backend
        self.track = track
        self.ratio = None  # per-row minimum kink ratio, in the backend's scale

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        call = pwl.recognise(func, args, kwargs)
        if call is None:
            return func(*args, **kwargs)
        step = self.backend.relu if call.kind == "relu" else self.backend.pool
        out, tau = step(call, self.track)
        if tau is not None:
            self.ratio = tau if self.ratio is None else torch.minimum(self.ratio, tau)
        return out

    def tau(self, batch: int, device):
        """Distance in ``t`` to the nearest kink ahead, per row (float64, ``inf`` if none)."""
        if self.ratio is None:
            return torch.full((batch,), math.inf, dtype=torch.float64, device=device)
        return self.backend.to_tau(self.ratio.double())


def linearize(model, x: torch.Tensor, d: torch.Tensor, *, jvp: str = "stacked", track: bool = True,
              out: torch.Tensor | None = None, row_block: int = 0):
    """Linearise ``model`` at points ``x`` along directions ``d`` (both ``(B, *input_shape)``),
    in groups of ``row_block // 2`` rows (one pass per group; 0: one pass for all).

    Returns ``(f, fdot, tau)``: outputs ``(B, K)``, their derivatives along ``d``, and the
    distance in ``t`` to the first kink ahead (``inf`` if none). The pattern used at a point
    on a kink is the one just ahead (``z > 0``, or ``z == 0`` and ``zdot > 0``).
    ``out`` optionally provides a ``(2B, *input_shape)`` buffer for the stacked input.
    """
    b = x.shape[0]
    rows = max(1, row_block // 2) if row_block else b
    if b <= rows:
        return _linearize(model, x, d, jvp, track, out)
    parts = [_linearize(model, x[i:i + rows], d[i:i + rows], jvp, track,
                        None if out is None else out[2 * i:2 * i + 2 * min(rows, b - i)])
             for i in range(0, b, rows)]
    return tuple(torch.cat(p) for p in zip(*parts))


def _linearize(model, x, d, jvp, track, out):
    b = x.shape[0]
    if jvp == "stacked":
        stacked = out if out is not None else torch.empty((2 * b, *x.shape[1:]), dtype=x.dtype, device=x.device)
        stacked[:b].copy_(x)
        torch.add(x, d, out=stacked[b:])
        mode = LinearizeMode(_Stacked(b), track)
        with torch.no_grad(), mode:
            y = model(stacked)
        f, fdot = mode.backend.output(y)
        return f, fdot, mode.tau(b, x.device)
    if jvp == "dual":
        mode = LinearizeMode(_Dual(), track)
        with torch.no_grad(), fwAD.dual_level():
            with mode:
                y = model(fwAD.make_dual(x, d))
            f, fdot = mode.backend.output(y)
        return f, fdot, mode.tau(b, x.device)
    raise ValueError(f"jvp must be 'stacked' or 'dual', got {jvp!r}")


def forward_blocked(model, x: torch.Tensor, row_block: int = 0):
    """A plain forward (no grad) over blocks of ``row_block`` input rows (0: all at once)."""
    with torch.no_grad():
        if not row_block or x.shape[0] <= row_block:
            return model(x)
        return torch.cat([model(x[i:i + row_block]) for i in range(0, x.shape[0], row_block)])


def bare_pass(model, x: torch.Tensor, d: torch.Tensor, *, jvp: str = "stacked", row_block: int = 0):
    """The pass the engine cannot do without, with no interception of piecewise-linear ops:
    the efficiency baseline (in the same groups of ``row_block // 2`` segments as the walk)."""
    rows = max(1, row_block // 2) if row_block else x.shape[0]
    out = None
    with torch.no_grad():
        for i in range(0, x.shape[0], rows):
            xi, di = x[i:i + rows], d[i:i + rows]
            if jvp == "stacked":
                out = model(torch.cat([xi, xi + di]))
            else:
                with fwAD.dual_level():
                    out = fwAD.unpack_dual(model(fwAD.make_dual(xi, di)))
    return out
