"""The planes' result, :class:`PlaneResult` (CSR over planes, regions and vertices), and the
domains a plane is cut over (:data:`DOMAINS`, the one place their corners and areas are stated)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from pipeline.engine.result import concat_results

__all__ = ["DOMAINS", "Domain", "PlaneResult", "domain_area"]


class Domain(NamedTuple):
    corners: tuple  # ((u, v), ...) counter-clockwise
    area: float  # in (u, v) units


DOMAINS = {
    "triangle": Domain(((0.0, 0.0), (1.0, 0.0), (0.0, 1.0)), 0.5),
    "parallelogram": Domain(((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)), 1.0),
}


def domain_area(domain: str) -> float:
    """The area of ``domain`` in ``(u, v)`` units (1/2 for the triangle, 1 for the parallelogram)."""
    return DOMAINS[domain].area


@dataclass(frozen=True)
class PlaneResult:
    """Linear regions on ``P`` planes, as numpy arrays (CSR over regions and over vertices).

    Per plane: ``plane_index (P,)`` (position in the caller's input), ``n_regions (P,)``,
    ``plane_offset (P+1,)``, ``input_area (P,)`` ``|d1 ^ d2|`` (the input-space area of the
    unit square in ``(u, v)``), ``density (P,)`` regions per unit ``(u, v)`` area,
    ``density_input (P,)`` per unit input-space area, ``f_corners (P, C, K)`` the network at
    ``x0, x1, x2`` (and ``x1 + x2 - x0`` for the parallelogram: ``C`` = 3 or 4), ``deviation (P, K)``
    the 2-D absolute deviation (``∫ |f - g|`` over the domain in ``(u, v)`` units, ``g`` the affine map through
    ``f(x0), f(x1), f(x2)``), ``continuity_gap (P,)`` the largest ``region_gap``,
    ``certificate_tol (P,)`` the float32 screen's tolerance (every region whose centroid was not
    evaluated in the working precision agrees with the network there to within it; 0 where all
    were), ``gap_tol (P,)`` the certificate's pass/fail tolerance
    (:func:`pipeline.engine.certificate.gap_tolerance`) and ``certified (P,)`` ``continuity_gap <= gap_tol``,
    ``hull_gap (P,)`` the largest ``|hull area - area|`` of a merged region (a wrong merge
    shows here), ``n_pieces (P,)`` pieces before the merge, ``dropped_pieces (P,)`` and
    ``dropped_area (P,)`` the slivers below ``min_area``, ``gram (P, 3)`` the plane's Gram matrix
    ``d1.d1, d1.d2, d2.d2`` (``d1 = x1 - x0``, ``d2 = x2 - x0``: input lengths and angles in the
    plane; None, or NaN rows, where not recorded).
    Per region: ``area (R,)`` in ``(u, v)`` units, ``centroid (R, 2)``, ``vertex_offset
    (R+1,)`` into ``uv (V, 2)`` (each polygon convex, counter-clockwise), ``region_gap (R,)`` (the
    fit's residual at the vertices, and where the centroid was evaluated in the working precision
    the disagreement there)
    and, unless ``keep_affine=False``, ``intercept (R, K)`` and ``grad (R, 2, K)`` with
    ``f(x(u, v)) = intercept + u grad[:, 0] + v grad[:, 1]`` on the region.
    """

    plane_index: np.ndarray
    n_regions: np.ndarray
    plane_offset: np.ndarray
    input_area: np.ndarray
    density: np.ndarray
    density_input: np.ndarray
    f_corners: np.ndarray
    deviation: np.ndarray
    continuity_gap: np.ndarray
    certificate_tol: np.ndarray
    hull_gap: np.ndarray
    n_pieces: np.ndarray
    dropped_pieces: np.ndarray
    dropped_area: np.ndarray
    area: np.ndarray
    centroid: np.ndarray
    vertex_offset: np.ndarray
    uv: np.ndarray
    region_gap: np.ndarray
    intercept: np.ndarray | None
    grad: np.ndarray | None
    domain: str = "triangle"
    gap_tol: np.ndarray | None = None
    gram: np.ndarray | None = None

    @property
    def certified(self) -> np.ndarray | None:
        """``(P,)`` bool: the certificate passed, ``continuity_gap <= gap_tol`` (None without ``gap_tol``)."""
        return None if self.gap_tol is None else self.continuity_gap <= self.gap_tol

    @property
    def domain_area(self) -> float:
        return domain_area(self.domain)

    @property
    def n_planes(self) -> int:
        return int(self.n_regions.size)

    @property
    def total_regions(self) -> int:
        return int(self.area.size)

    def polygon(self, r: int) -> np.ndarray:
        """The ``(n, 2)`` CCW vertices of region ``r`` (a global region row)."""
        return self.uv[self.vertex_offset[r]:self.vertex_offset[r + 1]]

    def region_slice(self, i: int) -> slice:
        """The region rows of plane ``i`` (position in this result)."""
        return slice(int(self.plane_offset[i]), int(self.plane_offset[i + 1]))

    def locate(self, i: int, uv) -> np.ndarray:
        """For points ``uv (N, 2)`` of plane ``i``, the (global) region row holding each, and
        -1 where none does (outside the domain). Points on a shared edge get one of them."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        out = np.full(uv.shape[0], -1, dtype=np.int64)
        best = np.full(uv.shape[0], -np.inf)
        for r in range(*self.region_slice(i).indices(self.total_regions)):
            p = self.polygon(r)
            q = np.roll(p, -1, axis=0)
            e = q - p
            # signed distance inside every edge (>= 0 inside a CCW polygon)
            cross = (e[None, :, 0] * (uv[:, None, 1] - p[None, :, 1])
                     - e[None, :, 1] * (uv[:, None, 0] - p[None, :, 0]))
            d = (cross / np.linalg.norm(e, axis=1)[None]).min(1)
            take = d > best
            best[take], out[take] = d[take], r
        out[best < -1e-12] = -1
        return out

    def evaluate(self, i: int, uv) -> np.ndarray:
        """The stored affine maps of plane ``i`` at points ``uv (N, 2)``: ``(N, K)``."""
        if self.intercept is None:
            raise ValueError("this result was computed with keep_affine=False: no affine maps kept")
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        r = self.locate(i, uv)
        if (r < 0).any():
            raise ValueError("some points lie outside the domain")
        return self.intercept[r] + uv[:, :1] * self.grad[r, 0] + uv[:, 1:] * self.grad[r, 1]

    @staticmethod
    def concat(parts: list["PlaneResult"]) -> "PlaneResult":
        """Join the results of consecutive chunks of planes."""
        return concat_results(PlaneResult, parts, offsets={"plane_offset": "area", "vertex_offset": "uv"},
                              shared=("domain",))
