"""A ReLU followed by a Linear layer, as one step of the subdivision.

Vertices born at a ReLU lie inside a piece ``[a, b]`` of the chain, at fraction ``tau``. On
that piece the ReLU's input ``z`` is affine, so the ReLU's output at the new vertex differs
from the interpolation of its outputs at the piece's ends only in the units that change sign
inside the piece (the ones whose crossings made the new vertices). For such a unit, with
values ``z_a``, ``z_b`` of opposite signs at the ends and root ``r``,

    relu(z(tau)) - [(1 - tau) relu(z_a) + tau relu(z_b)] = -tau |z_b|        (tau < r)
                                                          = -(1 - tau) |z_a|  (tau >= r)

(a leaky ReLU scales this by ``1 - negative_slope``). The Linear layer that follows is affine,
so its output at the new vertex is the interpolation of its outputs at the piece's ends plus
``W[:, u]`` times that difference, summed over the piece's crossing units: with the crossings
of a piece sorted by root, a prefix sum over ``|z_a| W[:, u]`` and a suffix sum over
``|z_b| W[:, u]``. A new vertex then costs ``O(crossings in its piece x out_features)``
instead of a full ``in_features x out_features`` product: on the MLP 3072-1024x3-10 nearly
every vertex is born at a ReLU followed by a 1024 x 1024 layer.

The engine still runs the layer on the vertices the chain had before the ReLU; the
certificate (:mod:`pipeline.certificate`) evaluates the network independently at every
region, so an error here cannot pass unseen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F

from . import pwl

__all__ = ["ReluLinear", "find_relu_linear", "add_correction"]


@dataclass
class ReluLinear:
    """Node ``index`` applies a ReLU (``negative_slope``) to node ``source``; its only user,
    node ``index + 1``, is the Linear ``layer`` applied to it."""

    index: int
    source: fx.Node
    negative_slope: float
    layer: torch.nn.Linear
    weight_t: torch.Tensor | None = None  # (in, out), contiguous: rows gathered per unit

    def transposed_weight(self) -> torch.Tensor:
        if self.weight_t is None or self.weight_t.dtype != self.layer.weight.dtype:
            self.weight_t = self.layer.weight.detach().t().contiguous()
        return self.weight_t


def _relu_slope(gm: fx.GraphModule, node: fx.Node):
    """The negative slope of a node that only applies a ReLU / leaky ReLU to its first
    argument, else None."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if type(m) is torch.nn.ReLU:
            return 0.0
        if type(m) is torch.nn.LeakyReLU:
            return float(m.negative_slope)
        return None
    if node.op == "call_function" and node.target in (torch.relu, F.relu) and not node.kwargs.get("inplace", False):
        return 0.0 if len(node.args) == 1 else None
    if node.op == "call_method" and node.target == "relu" and len(node.args) == 1:
        return 0.0
    return None


def find_relu_linear(gm: fx.GraphModule, nodes: list, batched: dict) -> dict:
    """``{index: ReluLinear}`` for every ReLU node whose only user is the next node, a plain
    ``nn.Linear`` module applied to it."""
    out = {}
    for i, node in enumerate(nodes[:-1]):
        slope = _relu_slope(gm, node)
        nxt = nodes[i + 1]
        if slope is None or not node.args or not isinstance(node.args[0], fx.Node) or not batched[node.args[0]]:
            continue
        if list(node.users) != [nxt] or nxt.op != "call_module" or nxt.args != (node,) or nxt.kwargs:
            continue
        layer = gm.get_submodule(nxt.target)
        if type(layer) is not torch.nn.Linear:
            continue
        out[i] = ReluLinear(i, node.args[0], slope, layer)
    return out


def add_correction(y, vertex, piece, unit, za, zb, tau, weight_t, negative_slope: float, chunk: int = 128):
    """Add to rows ``vertex`` of the Linear layer's output ``y`` (interpolated there between
    each piece's ends) the correction of the module docstring.

    The crossings come sorted by piece, then root: ``za``, ``zb`` their units' values at the
    piece's ends, ``tau`` their roots, ``vertex`` the row of ``y`` each one became (-1 for a
    kink merged into a neighbouring vertex: it still counts in its piece's sums). Pieces are
    taken ``chunk`` crossings at a time so the ``(crossings, out_features)`` work stays in cache.
    """
    n = piece.numel()
    if n == 0:
        return
    first = torch.ones(n, dtype=torch.bool, device=piece.device)
    first[1:] = piece[1:] != piece[:-1]
    starts = first.nonzero().flatten().tolist() + [n]
    bounds, lo = [0], 0
    for e in starts[1:]:  # whole pieces, up to about `chunk` crossings at a time
        if e - bounds[-1] > chunk and lo > bounds[-1]:
            bounds.append(lo)
        lo = e
    bounds.append(n)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        sl = slice(lo, hi)
        keep = vertex[sl] >= 0
        if bool(keep.any()):
            corr = _correction(piece[sl], unit[sl], za[sl], zb[sl], tau[sl], weight_t, negative_slope)
            y.index_add_(0, vertex[sl][keep], corr[keep])


def _correction(piece, unit, za, zb, tau, weight_t, negative_slope: float) -> torch.Tensor:
    """``(n, out_features)``: the correction at every crossing of whole pieces (sorted)."""
    dt = weight_t.dtype
    w = weight_t[unit]  # (n, out)
    t = tau.to(dt)[:, None]
    n = piece.numel()
    first = torch.ones(n, dtype=torch.bool, device=piece.device)
    first[1:] = piece[1:] != piece[:-1]
    if bool(first.all()):  # one crossing per piece: no sums
        return w.mul_((-(1.0 - negative_slope)) * (1.0 - t) * za.abs().to(dt)[:, None])
    idx = torch.arange(n, device=piece.device)
    start = torch.cummax(torch.where(first, idx, 0), 0).values  # first crossing of each one's piece
    is_last = torch.roll(first, -1)
    is_last[-1] = True
    last = torch.flip(torch.cummin(torch.flip(torch.where(is_last, idx, n), [0]), 0).values, [0])
    zero = torch.zeros((1, w.shape[1]), dtype=dt, device=w.device)
    ca = torch.cat([zero, torch.cumsum(za.abs().to(dt)[:, None] * w, 0)])
    cb = torch.cat([zero, torch.cumsum(zb.abs().to(dt)[:, None] * w, 0)])
    before = ca[idx + 1] - ca[start]  # the piece's crossings with root <= this one's (inclusive)
    after = cb[last + 1] - cb[idx + 1]  # ... with root after this one's
    return (-(1.0 - negative_slope)) * ((1.0 - t) * before + t * after)


def relu(z: torch.Tensor, negative_slope: float) -> torch.Tensor:
    return torch.relu(z) if negative_slope == 0.0 else F.leaky_relu(z, negative_slope)


def crossings(z: torch.Tensor, same: torch.Tensor):
    """The ReLU kinks inside the chain's pieces with their units and end values, sorted by
    piece, then root."""
    from .subdivide import by_piece

    piece, unit, za, zb, tau = pwl.relu_crossings(z.reshape(z.shape[0], -1), None, same, units=True)
    order = by_piece(piece, tau)
    return piece[order], unit[order], za[order], zb[order], tau[order]
