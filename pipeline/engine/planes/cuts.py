"""One round of cuts at a piecewise-linear op: which pieces need a cut and along which line
(:func:`unit_lines` for ReLU / clamp, :func:`pool_lines` for max-pool windows), and the cut
itself (:func:`clip`, Sutherland-Hodgman, vectorised over pieces)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from pipeline.engine.planes.tiles import offsets, segment_reduce, shoelace

__all__ = ["Active", "Clipped", "Lines", "clip", "pool_lines", "unit_lines"]


class Active(NamedTuple):
    """Pieces during the cut rounds of one op: per piece ``plane``, ``count`` (vertices), the
    pattern hashes ``h1``, ``h2``; per vertex ``uv`` and ``vals`` (one tensor per distinct
    batched graph value, rows in piece order)."""

    plane: torch.Tensor
    count: torch.Tensor
    uv: torch.Tensor
    h1: torch.Tensor
    h2: torch.Tensor
    vals: list

    def take(self, pieces: torch.Tensor, rows: torch.Tensor) -> "Active":
        """The pieces ``pieces`` whose vertex rows are ``rows``."""
        return Active(self.plane[pieces], self.count[pieces], self.uv[rows], self.h1[pieces], self.h2[pieces],
                      [v[rows] for v in self.vals])


class Lines(NamedTuple):
    """The cuts of one round: ``need (Pa,)`` which pieces are cut, ``s (V,)`` the line's value
    at each vertex, ``tol (Pa,)`` its tolerance, ``live`` the columns (units or windows) that
    change state on some piece."""

    need: torch.Tensor
    s: torch.Tensor
    tol: torch.Tensor
    live: torch.Tensor


def unit_lines(lev, piece, pa, tol, gen) -> Lines:
    """ReLU / clamp: which pieces need a cut, one offending unit's values at each vertex,
    its tolerance, and the columns of ``lev`` offending on some piece."""
    lev = lev.double()
    mx, mn = segment_reduce(lev, piece, pa, "amax"), segment_reduce(lev, piece, pa, "amin")
    needu = (mx > tol) & (mn < -tol)
    need = needu.any(1)
    # the offending unit of highest priority, priorities drawn at random every round
    prio = torch.randperm(needu.shape[1], generator=gen, dtype=torch.int32, device="cpu").to(needu.device) + 1
    unit = torch.where(needu, prio, 0).argmax(1)  # (Pa,)
    s = lev.gather(1, unit[piece].view(-1, 1)).flatten()
    return Lines(need, s, tol[unit], needu.any(0).nonzero().flatten())


def pool_lines(win, piece, pa, cnt, tol, gen) -> Lines:
    """Max-pool: pieces on which no candidate of some window is the max everywhere, and for
    each a line ``z_a - z_b`` (argmaxes at two of its vertices) that strictly separates them;
    with its tolerance, and the windows (columns of ``win``) in that case on some piece."""
    win = win.double()
    finite = torch.isfinite(win)
    top, arg = win.amax(2), win.argmax(2)  # (V, W)
    gap = torch.where(finite, top.unsqueeze(2) - win, math.inf)  # (V, W, kk) >= 0
    worst = segment_reduce(gap, piece, pa, "amax")  # (Pa, W, kk)
    bad = worst.amin(2) > tol  # (Pa, W)
    live = bad.any(0).nonzero().flatten()
    bad_p, bad_w = bad.nonzero(as_tuple=True)
    dev = win.device
    need = torch.zeros(pa, dtype=torch.bool, device=dev)
    stol = torch.zeros(pa, dtype=torch.float64, device=dev)
    none = Lines(need, torch.zeros(win.shape[0], dtype=torch.float64, device=dev), stol, live)
    if bad_p.numel() == 0:
        return none
    pairs = _separating_pairs(gap, arg, cnt, bad_p, bad_w, tol)
    if pairs is None:
        return none
    bad_p, bad_w, a, b = pairs
    pick = _one_per_piece(bad_p, pa, gen)
    pp, ww, aa, bb = bad_p[pick], bad_w[pick], a[pick], b[pick]
    need[pp] = True
    stol[pp] = tol[ww]
    # the chosen line's value z_a - z_b at every vertex of its piece (0 on pieces not cut)
    wpiece = torch.full((pa,), 0, dtype=torch.long, device=dev)
    apiece, bpiece = wpiece.clone(), wpiece.clone()
    wpiece[pp], apiece[pp], bpiece[pp] = ww, aa, bb
    v = torch.arange(win.shape[0], device=dev)
    wv = wpiece[piece]
    s = win[v, wv, apiece[piece]] - win[v, wv, bpiece[piece]]
    s = torch.where(need[piece], s, 0.0)
    return Lines(need, s, stol, live)


def _separating_pairs(gap, arg, cnt, bad_p, bad_w, tol):
    """For each (piece, window) in ``bad_p, bad_w``, the argmaxes ``a, b`` at two of the piece's
    vertices whose line ``z_a - z_b`` strictly separates them; the pairs with none dropped
    (None if that leaves none)."""
    # candidate pairs: vertex i's argmax a, vertex j's argmax b; z_a - z_b is gap_b(i) >= 0
    # at i and -gap_a(j) <= 0 at j: a strict cut iff both exceed tol
    dev = gap.device
    off = offsets(cnt)
    m = int(cnt.max())
    col = torch.arange(m, device=dev)
    rows = off[bad_p].view(-1, 1) + torch.minimum(col.view(1, -1), cnt[bad_p].view(-1, 1) - 1)  # (nb, M)
    a_idx = arg[rows, bad_w.view(-1, 1)]  # (nb, M)
    g = gap[rows, bad_w.view(-1, 1)]  # (nb, M, kk)
    g2 = torch.gather(g, 2, a_idx.unsqueeze(1).expand(-1, m, -1))  # g2[n, i, j] = gap_{a(j)}(i)
    score = torch.minimum(g2, g2.transpose(1, 2))
    best, flat = score.flatten(1).max(1)
    real = best > tol[bad_w]
    if not bool(real.any()):
        return None
    bad_p, bad_w, flat = bad_p[real], bad_w[real], flat[real]
    i, j = flat // m, flat % m
    # the line z_a - z_b with a, b the argmaxes at vertices i, j: > tol at i, < -tol at j
    a, b = a_idx[real].gather(1, i.view(-1, 1)).flatten(), a_idx[real].gather(1, j.view(-1, 1)).flatten()
    return bad_p, bad_w, a, b


def _one_per_piece(bad_p, pa, gen):
    """Positions into ``bad_p`` (sorted by piece): one window per piece, at random."""
    dev = bad_p.device
    key = torch.rand(bad_p.numel(), generator=gen, dtype=torch.float64, device="cpu").to(dev)  # the CPU's draws
    best_key = torch.full((pa,), -1.0, dtype=torch.float64, device=dev).scatter_reduce_(0, bad_p, key, "amax")
    pick = (key == best_key[bad_p]).nonzero().flatten()
    return pick[torch.cat([torch.ones(1, dtype=torch.bool, device=dev), bad_p[pick][1:] != bad_p[pick][:-1]])] \
        if pick.numel() else pick


class Clipped(NamedTuple):
    """What :func:`clip` returns: the uncut pieces (None if none), the halves of the cut ones,
    and the slivers dropped (per sliver its plane and area, numpy; None if none)."""

    kept: Active | None
    active: Active
    dropped: tuple | None


def clip(act: Active, piece, lines: Lines, min_area: float) -> Clipped:
    """Cut every piece with ``lines.need`` by the line ``s = 0`` (Sutherland-Hodgman): the
    uncut pieces are done with this op; the active set is the ``s >= 0`` halves, then the
    ``s <= 0`` halves, in piece order, without slivers below ``min_area``."""
    need, s, cnt = lines.need, lines.s, act.count
    off = offsets(cnt)
    nxt = torch.arange(int(cnt.sum()), device=cnt.device) + 1
    nxt[off[1:] - 1] = off[:-1]
    t = lines.tol[piece]
    side = (s > t).long() - (s < -t).long()
    rows_need = need[piece]
    cross = (side * side[nxt]) < 0
    w = torch.where(cross, s / torch.where(cross, s - s[nxt], 1.0), 0.0)
    kept = None
    if not bool(need.all()):
        kept = act.take((~need).nonzero().flatten(), (~rows_need).nonzero().flatten())
    a, b, w, count, parent = _halves(piece, cnt, need.nonzero().flatten(), rows_need.nonzero().flatten(), side,
                                     cross, nxt, w)
    uv_new = torch.lerp(act.uv[a], act.uv[b], w.view(-1, 1))
    area, _, _ = shoelace(uv_new, count)
    ok = area >= min_area
    dropped = None
    if not bool(ok.all()):
        gone = (~ok).nonzero().flatten()
        dropped = act.plane[parent[gone]].cpu().numpy(), area[gone].clamp_min(0).cpu().numpy()
        vok = torch.repeat_interleave(ok, count)
        a, b, w, uv_new = a[vok], b[vok], w[vok], uv_new[vok]
        count, parent = count[ok], parent[ok]
    halves = Active(act.plane[parent], count, uv_new, act.h1[parent], act.h2[parent], _interpolate(act.vals, a, b, w))
    return Clipped(kept, halves, dropped)


def _halves(piece, cnt, cut_pieces, cut_rows, side, cross, nxt, w):
    """The vertex streams of the cut pieces' halves (``s >= 0`` halves first): each new vertex
    is ``lerp(v[a], v[b], w)``; with the halves' vertex counts and parent pieces."""
    streams_a, streams_b, streams_w, counts = [], [], [], []
    for sign in (1, -1):
        on_side = (side[cut_rows] * sign) >= 0
        cr = cross[cut_rows]
        sel = torch.stack([on_side, cr], 1).flatten().nonzero().squeeze(1)  # one wait, three gathers
        streams_a.append(torch.stack([cut_rows, cut_rows], 1).flatten()[sel])
        streams_b.append(torch.stack([cut_rows, nxt[cut_rows]], 1).flatten()[sel])
        streams_w.append(torch.stack([torch.zeros_like(w[cut_rows]), w[cut_rows]], 1).flatten()[sel])
        counts.append(torch.bincount(piece[streams_a[-1]], minlength=cnt.numel())[cut_pieces])
    a, b, w = torch.cat(streams_a), torch.cat(streams_b), torch.cat(streams_w)
    return a, b, w, torch.cat(counts), torch.cat([cut_pieces, cut_pieces])


def _interpolate(vals, a, b, w):
    """Every value at the new vertices: most rows are kept vertices (w = 0: lerp would return
    ``v[a]`` exactly), so only the moved ones are interpolated."""
    moved = (b != a).nonzero().flatten()
    am, bm, wm = a[moved], b[moved], w[moved]
    out = []
    for v in vals:
        new = v[a]
        new[moved] = torch.lerp(v[am], v[bm], wm.to(v.dtype).view(-1, *([1] * (v.ndim - 1))))
        out.append(new)
    return out
