"""One pass that linearises a network along a line: ``f``, its derivative, and the next kink.

At a point ``x`` with direction ``d`` every op input ``z`` is affine in ``t`` while the
activation pattern stays frozen. A single pass gives ``z`` and ``zdot = dz/dt`` everywhere,
hence ``f``, ``fdot`` and the distance (in ``t``) to the first kink ahead.

Two ways to carry ``(z, zdot)`` through the network:

``"stacked"``
    one ordinary forward of the batch ``[x; x + d]``; every piecewise-linear op applies the
    first half's pattern (ReLU mask, clamp side, max-pool argmax) to both halves, so the second
    half stays the affine extension and ``second - first`` is ``zdot``. Uses the plain forward
    kernels. (A clamped unit outside its bounds gives the bound in both halves: ``zdot = 0``.)
``"dual"``
    forward-mode AD (``torch.autograd.forward_ad`` dual tensors).
"""

from __future__ import annotations

import math

import torch
from torch.autograd import forward_ad as fwAD
from torch.overrides import TorchFunctionMode

from pipeline.engine import allowlist, kinks, pwl

__all__ = ["LinearizeMode", "PatternHash", "linearize", "bare_pass", "forward_blocked"]


class _Stacked:
    """``(z, zdot)`` carried as the batch ``[x; x + d]``: the second half is ``z + zdot``."""

    def __init__(self, batch: int):
        self.batch = batch

    def relu(self, call: pwl.PWLCall, track: bool):
        x, b = call.input, self.batch
        z, ahead = x[:b], x[b:]  # ahead = z + zdot: the frozen-pattern value one d further
        m, pat, zero = _relu_pattern(z, ahead, call.negative_slope)  # on a kink, zdot = ahead
        tau = None
        if track:
            # z + tau zdot = 0  <=>  tau = 1 / (1 - r), r = ahead / z; crossings ahead have
            # r < 1 and the smallest r is the nearest one. No subtraction, no cancellation for
            # kinks within one segment length (r <= 0 there).
            r = torch.div(ahead, z).masked_fill_(zero, math.inf)
            tau = r.flatten(1).amin(1)
        out = x.view(2, b, *x.shape[1:])
        if call.inplace:
            out.mul_(m)
            return x, tau, pat
        return (out * m).view(x.shape), tau, pat

    def clamp(self, call: pwl.PWLCall, track: bool):
        x, b = call.input, self.batch
        z, ahead = x[:b], x[b:]
        below, above, pat = _clamp_pattern(z, ahead > z, call.lo, call.hi)
        tau = None
        if track:
            # a crossing of bound c is a ReLU kink of z - c: the same ratio as in relu()
            for c in call.clamp_bounds():
                zc = z - c
                r = torch.div(ahead - c, zc).masked_fill_(zc == 0, math.inf).flatten(1).amin(1)
                tau = r if tau is None else torch.minimum(tau, r)
        out = x.view(2, b, *x.shape[1:])
        if not call.inplace:
            out = out.clone()
        if below is not None:
            out.masked_fill_(below, call.lo)
        if above is not None:
            out.masked_fill_(above, call.hi)
        return (x if call.inplace else out.view(x.shape)), tau, pat

    def pool(self, call: pwl.PWLCall, track: bool):
        b = self.batch
        win, shape = call.windows(call.input)
        wz, wzdot = win[:b], win[b:] - win[:b]
        cur = kinks.lex_argmax(wz, wzdot, 2)
        tau = self.from_tau(kinks.maxpool_first_kink(wz, wzdot, cur)) if track else None
        both = torch.cat([cur, cur])
        return call.finish(win.gather(2, both), both, (2 * b, *shape[1:])), tau, cur

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
        m, pat, zero = _relu_pattern(z, zdot, call.negative_slope)
        tau = None
        if track:
            q = torch.div(zdot, z).masked_fill_(zero, math.inf)  # tau = -1 / q for q < 0: the most negative q
            tau = q.flatten(1).amin(1)
        if call.inplace:  # the network may read its input again: rectify it (primal and tangent)
            return self._inplace(call.input, z.mul_(m), zdot.mul_(m)), tau, pat
        return fwAD.make_dual(z * m, zdot * m), tau, pat

    @staticmethod
    def _inplace(x, z, zdot):
        """``x`` after an in-place op wrote ``z`` and ``zdot`` into its primal and tangent views
        (a tensor without tangent gets ``zdot`` as a new one)."""
        if fwAD.unpack_dual(x).tangent is None:
            return fwAD.make_dual(z, zdot)
        return x

    def clamp(self, call: pwl.PWLCall, track: bool):
        z, zdot = self.split(call.input)
        below, above, pat = _clamp_pattern(z, zdot > 0, call.lo, call.hi)
        tau = None
        if track:
            for c in call.clamp_bounds():
                zc = z - c
                q = torch.div(zdot, zc).masked_fill_(zc == 0, math.inf).flatten(1).amin(1)
                tau = q if tau is None else torch.minimum(tau, q)
        bounds = (None if below is None else call.lo, None if above is None else call.hi)
        if call.inplace:
            return self._inplace(call.input, z.clamp_(*bounds), zdot.mul_(pat == 1)), tau, pat
        return fwAD.make_dual(z.clamp(*bounds), zdot * (pat == 1)), tau, pat

    def pool(self, call, track: bool):
        z, zdot = self.split(call.input)
        wz, shape = call.windows(z)
        wzdot, _ = call.windows(zdot)
        wzdot = torch.nan_to_num(wzdot, nan=0.0, posinf=0.0, neginf=0.0)
        cur = kinks.lex_argmax(wz, wzdot, 2)
        tau = self.from_tau(kinks.maxpool_first_kink(wz, wzdot, cur)) if track else None
        return call.finish(fwAD.make_dual(wz.gather(2, cur), wzdot.gather(2, cur)), cur, shape), tau, cur

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


def _relu_pattern(z, zdot, negative_slope: float):
    """A ReLU's frozen pattern at ``z``: ``z > 0``, and on a kink (``z == 0``) the side the
    line moves into (``zdot > 0``; any tensor with ``zdot``'s sign there). Returns the factor
    the ReLU applies, the pattern to hash, and the kinks (``z == 0``).
    For a plain ReLU the 0/1 factor is made straight in ``z``'s dtype (one kernel) and serves
    as the pattern too."""
    plain = pwl.is_plain_relu(negative_slope)
    if plain:
        mask = torch.gt(z, 0, out=torch.empty_like(z))
    else:
        mask = z > 0
    # no `if zero.any():` here: on a GPU that read would wait for the device once per op and
    # step; a kink exactly on a vertex is rare, and two elementwise passes cost less
    zero = z == 0
    mask.masked_fill_(zero & (zdot > 0), 1)
    if plain:
        return mask, mask, zero
    # a PReLU's slopes are a tensor broadcast over the units
    return mask.to(z.dtype).mul_(1.0 - negative_slope).add_(negative_slope), mask, zero


def _clamp_pattern(z, rising, lo: float, hi: float):
    """A clamp's frozen pattern at ``z``: below ``lo`` (0), inside (1) or above ``hi`` (2); on a
    kink (``z`` equal to a bound) the side the line moves into (``rising``: ``zdot > 0``), as
    :func:`_relu_pattern` does. Returns the masks ``below`` and ``above`` (None for an infinite
    bound) and the int64 pattern to hash."""
    below = above = None
    pat = torch.ones(z.shape, dtype=torch.long, device=z.device)
    if math.isfinite(lo):
        below = (z < lo) | ((z == lo) & ~rising)
        pat.masked_fill_(below, 0)
    if math.isfinite(hi):
        above = (z > hi) | ((z == hi) & rising)
        pat.masked_fill_(above, 2)
    return below, above, pat


class LinearizeMode(TorchFunctionMode):
    """Intercepts the piecewise-linear ops of one pass and freezes their pattern.

    :meth:`tau` gives, per row of the batch, the distance to the first kink ahead when
    ``track`` is true. With ``pattern``, :meth:`pattern` gives a 64-bit hash of each row's
    activation pattern (every ReLU mask, clamp side and max-pool argmax of the pass): equal
    patterns give equal hashes; different ones collide with probability about ``2**-40`` on
    VGG8-sized layers (see :class:`PatternHash`; pass one to reuse its weights across passes).
    """

    def __init__(self, backend, track: bool = True, pattern: "bool | PatternHash" = False,
                 assumed=None):
        super().__init__()
        self.backend = backend
        self.taint = allowlist.Taint()  # the values of this pass derived from the input (mark the input)
        self.assumed = assumed
        self.track = track
        self.ratio = None  # per-row minimum kink ratio, in the backend's scale
        self.hasher = (pattern if isinstance(pattern, PatternHash) else PatternHash()) if pattern else None
        self.hashes = [] if pattern else None  # per op, per row: exact integer sums (float64)
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        call = pwl.recognise(func, args, kwargs, self.taint.any((args, kwargs)))
        if call is None:
            return allowlist.run_checked(func, args, kwargs, self.taint, self.assumed)
        step = {"relu": self.backend.relu, "clamp": self.backend.clamp, "max": self.backend.pool}[call.kind]
        out, tau, pat = step(call, self.track)
        self.taint.mark(out)
        if tau is not None:
            self.ratio = tau if self.ratio is None else torch.minimum(self.ratio, tau)
        if self.hashes is not None:
            self.hashes.append(self.hasher(pat, self.calls))
        self.calls += 1
        return out

    def tau(self, batch: int, device):
        """Distance in ``t`` to the nearest kink ahead, per row (float64, ``inf`` if none)."""
        if self.ratio is None:
            return torch.full((batch,), math.inf, dtype=torch.float64, device=device)
        return self.backend.to_tau(self.ratio.double())

    def pattern(self, batch: int, device):
        """Hash of the activation pattern per row (int64; 0 for a network without kinks)."""
        if not self.hashes:
            return torch.zeros(batch, dtype=torch.long, device=device)
        # each op's sum is an integer below 2**53: 512 of them add up exactly in int64
        h = torch.stack(self.hashes).long()
        out = h[:512].sum(0)
        for i in range(512, h.shape[0], 512):  # very deep networks: add modulo a prime
            out = (out.remainder_(_HASH_MOD) + h[i:i + 512].sum(0))
        return out


_HASH_MOD = 2**61 - 1  # a prime: pattern hashes of passes with more than 512 ops are reduced modulo it


class PatternHash:
    """``sum_u w_u pat_u`` over each row's units (ReLU: mask, clamp: 0 / 1 / 2 for below /
    inside / above, max-pool: argmax index in the window) with fixed pseudo-random integer
    weights per op and unit, as one float64 matrix-vector product. The weights are small
    enough (``U * max(pat) * w < 2**53``) that every partial sum is an exactly representable
    integer: the result is exact, whatever the summation order of the kernel. Two patterns
    that differ in this op collide with probability about ``2**-(53 - log2(U max(pat)))``
    (``2**-40`` for 6,144 ReLU units; a clamp's states 0 / 1 / 2 are hashed with max-pool's
    bound of 255, which costs 8 bits: ``2**-32`` for 6,144 clamped units).

    The weights are drawn from seeded generators, so every instance hashes alike; an instance
    keeps the weights it has drawn, so one instance per walk draws them once.
    """

    def __init__(self):
        self.weights: dict = {}

    def __call__(self, pat: torch.Tensor, call: int) -> torch.Tensor:
        flat = pat.flatten(1)  # 0/1 float or bool (ReLU), int64 side (clamp) or argmax index (max-pool)
        n = flat.shape[1]
        key = (call, n, flat.dtype, flat.device)
        w = self.weights.get(key)
        if w is None:
            # windows of more than 256 elements would make the sums inexact: still a hash, but
            # without the exactness argument above
            top = 255 if flat.dtype == torch.long else 1
            bits = max(53 - (n * top).bit_length(), 1)
            g = torch.Generator().manual_seed(1_000_003 * (call + 1) + n)
            w = torch.randint(0, 2**bits, (n,), generator=g, dtype=torch.long, device="cpu").to(device=flat.device,
                                                                                   dtype=torch.float64)
            self.weights[key] = w
        return torch.mv(flat.to(torch.float64), w)


def linearize(model, x: torch.Tensor, d: torch.Tensor, *, jvp: str = "stacked", track: bool = True,
              out: torch.Tensor | None = None, row_block: int = 0, pattern: "bool | PatternHash" = False,
              assumed=None, check_output: bool = False):
    """Linearise ``model`` at points ``x`` along directions ``d`` (both ``(B, *input_shape)``),
    in groups of ``row_block // 2`` rows (one pass per group; 0: one pass for all).

    Returns ``(f, fdot, tau)``: outputs ``(B, K)``, their derivatives along ``d``, and the
    distance in ``t`` to the first kink ahead (``inf`` if none). The pattern used at a point
    on a kink is the one just ahead (``z > 0``, or ``z == 0`` and ``zdot > 0``).
    With ``pattern`` (true, or a :class:`PatternHash` to reuse), a fourth array ``(B,)``
    int64 hashes each row's activation pattern (see :class:`LinearizeMode`): the walk uses it to recognise a step that did not get past
    the kink it aimed at (rounding, see :mod:`pipeline.engine.walk`).
    ``out`` optionally provides a ``(2B, *input_shape)`` buffer for the stacked input.
    ``assumed``: functions the user declared affine (see :mod:`pipeline.engine.allowlist`).
    ``check_output``: raise if the output does not carry the input as the engine sees it (an op
    ran with torch's function dispatch disabled, so the engine never saw it).
    """
    b = x.shape[0]
    rows = max(1, row_block // 2) if row_block else b
    if b <= rows:
        res = _linearize(model, x, d, jvp, track, out, pattern, assumed, check_output)
    else:
        parts = [_linearize(model, x[i:i + rows], d[i:i + rows], jvp, track,
                            None if out is None else out[2 * i:2 * i + 2 * min(rows, b - i)], pattern, assumed)
                 for i in range(0, b, rows)]
        res = tuple(torch.cat(p) for p in zip(*parts))
    return res if pattern else res[:3]


def _linearize(model, x, d, jvp, track, out, pattern=False, assumed=None, check_output=False):
    b = x.shape[0]
    if jvp == "stacked":
        stacked = out if out is not None else torch.empty((2 * b, *x.shape[1:]), dtype=x.dtype, device=x.device)
        stacked[:b].copy_(x)
        torch.add(x, d, out=stacked[b:])
        mode = LinearizeMode(_Stacked(b), track, pattern, assumed)
        mode.taint.mark(stacked)
        with torch.no_grad(), mode:
            y = model(stacked)
        if check_output:
            _check_output(mode, y)
        f, fdot = mode.backend.output(y)
        return f, fdot, mode.tau(b, x.device), mode.pattern(b, x.device)
    if jvp == "dual":
        mode = LinearizeMode(_Dual(), track, pattern, assumed)
        with torch.no_grad(), fwAD.dual_level():
            # copies: an in-place op on the network's input writes through the dual's views
            dual = fwAD.make_dual(x.clone(), d.clone())
            mode.taint.mark(dual)
            with mode:
                y = model(dual)
            if check_output:
                _check_output(mode, y)
            f, fdot = mode.backend.output(y)
        return f, fdot, mode.tau(b, x.device), mode.pattern(b, x.device)
    raise ValueError(f"jvp must be 'stacked' or 'dual', got {jvp!r}")


def _check_output(mode: LinearizeMode, y) -> None:
    if not mode.taint.any(y):
        raise pwl.UnsupportedOpError(
            "the network's output does not depend on its input as the region engine sees it: some op "
            "between them ran where the engine cannot follow it (with torch function dispatch disabled, "
            "in a custom autograd or C++ extension, or on data taken out of torch), so every region "
            "would be wrong. Write that part with torch ops the engine sees.")


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
