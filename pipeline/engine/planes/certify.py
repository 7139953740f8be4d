"""The planes' certificate step: the network at every region's centroid against the region's
map, screened in float32 as in 1-D (:mod:`pipeline.engine.certificate`)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from pipeline.engine import pwl
from pipeline.engine import certificate
from pipeline.engine.certificate import sampled, screen
from pipeline.engine.linearize import forward_blocked

__all__ = ["CERTIFY", "CERTIFY_ROWS", "certify_centroids"]

CERTIFY = (*certificate.CERTIFY, None)  # the segments' choices, and None: no certificate (see discover_plane)
CERTIFY_ROWS = 2048  # centroids per forward of the certificate


class _Points(NamedTuple):
    """Every region's centroid ``x0[p] + u d1[p] + v d2[p]`` on its plane ``p``, in float64
    (rounded once to the forward's precision)."""

    x0: torch.Tensor
    d1: torch.Tensor
    d2: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    plane: torch.Tensor

    def rows(self, sl: np.ndarray, device, dtype) -> torch.Tensor:
        p = self.plane[sl]
        return (self.x0[p] + self.u[sl] * self.d1[p] + self.v[sl] * self.d2[p]).to(device=device, dtype=dtype)


def _against(model, dtype, points: _Points, which: np.ndarray, pred: np.ndarray, device, rows: int):
    """The network (``model`` in ``dtype``) at the centroids ``which``: its largest disagreement
    with the maps' ``pred`` per region (inf where it is not finite), and its outputs."""
    ys = np.zeros((which.size, pred.shape[1]))
    with torch.no_grad():
        for r0 in range(0, which.size, CERTIFY_ROWS):
            sl = which[r0:r0 + CERTIFY_ROWS]
            xs = points.rows(sl, device, dtype)
            ys[r0:r0 + sl.size] = forward_blocked(model, xs, rows).double().reshape(sl.size, -1).cpu().numpy()
    with np.errstate(invalid="ignore"):
        err = np.abs(ys - pred[which]).max(axis=1, initial=0.0)
    err[~np.isfinite(ys).all(axis=1)] = np.inf
    return err, ys


def certify_centroids(prepared, certify, chunk, rplane, cen, pred, scale, row_block):
    """The network at every region's centroid against the region's map (see
    :mod:`pipeline.engine.certificate`): ``"all"`` screens with a float32 copy of the network and
    evaluates in float64 a sample of each plane's regions and every region the screen cannot
    vouch for, ``"strict"`` evaluates every centroid in the working precision, ``"sample"``
    only the sample.

    ``chunk`` holds the planes (``x0``, ``d1``, ``d2``, ``plane_index``); per region ``rplane``
    its plane (position in the chunk), ``cen (R, 2)`` its centroid and ``pred (R, K)`` its map
    there; ``scale()`` is each plane's largest ``|f|`` (computed for the screen only).
    Returns per region the working-precision disagreement (0 where not
    evaluated) and per plane the screen's tolerance (0 where every region was evaluated)."""
    dtype, n_planes = prepared.dtype, chunk.plane_index.size
    bcast = (-1,) + (1,) * (chunk.x0.ndim - 1)
    points = _Points(chunk.x0.double(), chunk.d1.double(), chunk.d2.double(),
                     torch.from_numpy(cen[:, 0]).view(bcast), torch.from_numpy(cen[:, 1]).view(bcast),
                     torch.from_numpy(rplane))
    exact = lambda which: _against(prepared.work, dtype, points, which, pred, prepared.device,  # noqa: E731
                                   max(row_block, 256))
    every = np.arange(rplane.size)
    if certify == "strict" or (certify == "all" and dtype == torch.float32):  # float32: the screen is the check
        return exact(every)[0], np.zeros(n_planes)
    if certify == "sample":
        err = np.zeros(rplane.size)
        which = np.flatnonzero(sampled(rplane))
        err[which] = exact(which)[0]
        return err, np.zeros(n_planes)
    err32, y32 = _against(prepared.screen, torch.float32, points, every, pred, prepared.device,
                          pwl.default_row_block(prepared.device, torch.float32))
    _, tol, err = screen(rplane, n_planes, err32, y32, scale(), exact)
    return err, tol
