"""Tiles of convex pieces (CSR vertex lists) and the per-piece reductions on them (torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pipeline.engine.subdivide import Plan

__all__ = ["Tile", "offsets", "piece_index", "segment_reduce", "shoelace"]


def offsets(count: torch.Tensor) -> torch.Tensor:
    """CSR offsets ``(n + 1,)`` of pieces with ``count`` vertices each."""
    off = torch.zeros(count.numel() + 1, dtype=torch.long, device=count.device)
    torch.cumsum(count, 0, out=off[1:])
    return off


def piece_index(count: torch.Tensor) -> torch.Tensor:
    """For every vertex row, the piece it belongs to."""
    return torch.repeat_interleave(torch.arange(count.numel(), device=count.device), count)


@dataclass(eq=False)  # a tile is a unit of work, compared by identity
class Tile:
    """Pieces (plane, vertex count, two pattern hashes) and, per vertex, ``(u, v)`` and the
    values of every live graph node (``env``, rows in piece order); ``pos`` is the graph node
    the tile runs next (see :func:`pipeline.engine.subdivide.run_graph`)."""

    plane: torch.Tensor
    count: torch.Tensor
    uv: torch.Tensor
    env: dict
    pos: int
    h1: torch.Tensor
    h2: torch.Tensor

    def size(self) -> int:
        return self.uv.shape[0]

    def split(self, plan: Plan, size: int) -> list["Tile"]:
        """Contiguous groups of pieces of about ``size / 2`` vertices (views of this tile)."""
        target = max(1, size // 2)
        off = offsets(self.count).cpu()
        group = off[:-1] // target
        starts = torch.cat([torch.zeros(1, dtype=torch.long, device="cpu"),  # host offsets: one wait per split
                            (group[1:] != group[:-1]).nonzero().flatten() + 1,
                            torch.tensor([self.count.numel()], device="cpu")]).tolist()
        out = []
        for p0, p1 in zip(starts[:-1], starts[1:]):
            a, b = int(off[p0]), int(off[p1])
            env = {n: plan.rows(n, val, a, b) for n, val in self.env.items()}
            out.append(Tile(plane=self.plane[p0:p1], count=self.count[p0:p1], uv=self.uv[a:b], env=env,
                            pos=self.pos, h1=self.h1[p0:p1], h2=self.h2[p0:p1]))
        return out


def segment_reduce(values: torch.Tensor, piece: torch.Tensor, n: int, how: str) -> torch.Tensor:
    """Per-piece reduction ("amax", "amin", "sum") of vertex rows ``values (V, ...)``."""
    shape = (n, *values.shape[1:])
    if how == "sum":
        return values.new_zeros(shape).index_add_(0, piece, values)
    fill = -math.inf if how == "amax" else math.inf
    idx = piece.view(-1, *([1] * (values.ndim - 1))).expand_as(values)
    return values.new_full(shape, fill).scatter_reduce_(0, idx, values, how)


def shoelace(uv: torch.Tensor, count: torch.Tensor):
    """Signed area of every polygon (CSR ``count``) and the row index of each vertex's successor."""
    off = offsets(count)
    piece = piece_index(count)
    nxt = torch.arange(uv.shape[0], device=uv.device) + 1
    nxt[off[1:] - 1] = off[:-1]
    uv = uv - uv[off[:-1]][piece]  # relative to each polygon's first vertex: no cancellation
    cross = uv[:, 0] * uv[nxt, 1] - uv[nxt, 0] * uv[:, 1]
    return 0.5 * segment_reduce(cross, piece, count.numel(), "sum"), piece, nxt
