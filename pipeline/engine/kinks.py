"""Where the piecewise-linear ops bend: the small amount of geometry they need.

A max op (max-pooling, adaptive max-pooling, a max over dimensions) is read as *windows*,
``(N, C, k, L)``, of which each output is the largest (:func:`pool_windows`,
:func:`adaptive_windows`, :func:`reduce_windows`; :mod:`pipeline.engine.pwl` recognises the
ops). On those and on the ReLU / clamp inputs:

* the walk (:mod:`pipeline.engine.linearize`) needs the activation pattern "just ahead" of a
  point and the distance to the first kink ahead along a line (:func:`lex_argmax`,
  :func:`maxpool_first_kink`);
* the subdivision (:mod:`pipeline.engine.subdivide_mode`) needs every kink inside a piece
  between two vertices (:func:`relu_crossings`, :func:`clamp_crossings`,
  :func:`maxpool_crossings`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["PoolSpec", "pool_windows", "adaptive_windows", "reduce_windows", "lex_argmax", "maxpool_first_kink",
           "relu_crossings", "clamp_crossings", "maxpool_crossings"]


@dataclass(frozen=True)
class PoolSpec:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    one_d: bool  # max_pool1d, handled as a 2-D pool over a height-1 image
    ceil: bool = False  # ceil_mode: a last, partial window on the right / bottom



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


# --------------------------------------------------------------------------- kinks


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
