"""The engine's result: per-segment measures and per-region breakpoints and affine maps."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from pipeline.engine import measures
from pipeline.engine.certificate import WALK_SLIVER, gap_tolerance

__all__ = ["RegionResult", "assemble", "concat_results"]


@dataclass(frozen=True)
class RegionResult:
    """Linear regions along ``S`` segments, as numpy arrays (CSR over regions).

    Per segment: ``segment_index (S,)`` (position of the segment in the caller's input),
    ``density (S,)`` regions crossed, ``region_offset (S+1,)``, ``f0, f1 (S, K)`` network
    values at the ends, ``deviation (S, K)`` absolute deviation, ``total_variation (S, K)``,
    ``continuity_gap (S,)`` the certificate, ``length (S,)`` ``‖x1 - x0‖``,
    ``certificate_tol (S,)``: 0 where every region was checked in the working precision; with
    subdivide's float32 screen (``certify="all"`` in float64) the tolerance within which the
    regions it alone checked agree with the network (``continuity_gap`` covers the rest).
    ``gap_tol (S,)`` the certificate's pass/fail tolerance (:func:`pipeline.engine.certificate.gap_tolerance`:
    relative to the outputs' scale and the working dtype, plus the walk's merged slivers) and
    ``certified (S,)`` ``continuity_gap <= gap_tol`` (``discover`` raises unless every segment is).
    Per region: ``t_start, t_end (R,)`` and, unless ``keep_affine=False``, ``intercept,
    slope (R, K)`` with ``f(x0 + t d) = intercept + slope * t`` on the region.
    """

    segment_index: np.ndarray
    density: np.ndarray
    region_offset: np.ndarray
    f0: np.ndarray
    f1: np.ndarray
    deviation: np.ndarray
    total_variation: np.ndarray
    continuity_gap: np.ndarray
    length: np.ndarray
    t_start: np.ndarray
    t_end: np.ndarray
    intercept: np.ndarray | None
    slope: np.ndarray | None
    certificate_tol: np.ndarray | None = None
    gap_tol: np.ndarray | None = None

    @property
    def certified(self) -> np.ndarray | None:
        """``(S,)`` bool: the certificate passed, ``continuity_gap <= gap_tol`` (None without ``gap_tol``)."""
        return None if self.gap_tol is None else self.continuity_gap <= self.gap_tol

    @property
    def n_segments(self) -> int:
        return int(self.density.size)

    @property
    def n_regions(self) -> int:
        return int(self.t_start.size)

    def breakpoints(self, i: int) -> np.ndarray:
        """``0 = t_0 < ... < t_R = 1`` of segment ``i`` (position in this result)."""
        lo, hi = self.region_offset[i], self.region_offset[i + 1]
        return np.append(self.t_start[lo:hi], self.t_end[hi - 1])

    def regions(self, i: int) -> dict:
        """The region rows of segment ``i`` as a dict of arrays."""
        lo, hi = self.region_offset[i], self.region_offset[i + 1]
        out = {"t_start": self.t_start[lo:hi], "t_end": self.t_end[lo:hi]}
        if self.intercept is not None:
            out["intercept"] = self.intercept[lo:hi]
            out["slope"] = self.slope[lo:hi]
        return out

    def evaluate(self, i: int, t) -> np.ndarray:
        """The stored affine maps of segment ``i`` evaluated at ``t`` (``(T,) -> (T, K)``)."""
        if self.intercept is None:
            raise ValueError("this result was computed with keep_affine=False: no affine maps kept")
        t = np.asarray(t, dtype=np.float64)
        lo, hi = self.region_offset[i], self.region_offset[i + 1]
        j = np.clip(np.searchsorted(self.t_end[lo:hi], t, side="left"), 0, hi - lo - 1) + lo
        return self.intercept[j] + self.slope[j] * t[:, None]

    @staticmethod
    def concat(parts: list["RegionResult"]) -> "RegionResult":
        """Join results of consecutive chunks (as yielded by ``discover_iter``)."""
        return concat_results(RegionResult, parts, offsets={"region_offset": "t_start"})


def concat_results(cls, parts: list, offsets: dict[str, str], shared: tuple[str, ...] = ()):
    """Join the results (dataclasses of CSR arrays) of consecutive chunks, field by field.

    Per-item and per-row arrays are concatenated; each CSR offset field named in ``offsets``
    (``offsets[name]`` is the field whose rows it indexes) is shifted by the rows of the parts
    before it; the fields in ``shared`` hold one value for the whole result (taken from the
    first part; parts that disagree are refused); a field that is None stays None. The lines
    and the planes differ only in what they pass here.
    """
    if not parts:
        raise ValueError("nothing to concatenate")
    if len(parts) == 1:
        return parts[0]
    for name in shared:
        vals = {getattr(p, name) for p in parts}
        if len(vals) > 1:
            raise ValueError(f"cannot concatenate results with different {name}: {sorted(vals)}")
    kw = {}
    for f in fields(cls):
        vals = [getattr(p, f.name) for p in parts]
        if f.name in offsets:
            rows = np.cumsum([0] + [len(getattr(p, offsets[f.name])) for p in parts[:-1]])
            kw[f.name] = np.concatenate([vals[0][:1]] + [v[1:] + s for v, s in zip(vals, rows)])
        elif f.name in shared:
            kw[f.name] = vals[0]
        elif vals[0] is None:
            kw[f.name] = None
        else:
            kw[f.name] = np.concatenate(vals)
    return cls(**kw)


def assemble(segment_index, seg_of_region, t_start, t_end, intercept, slope, f0, f1, length,
             keep_affine: bool, extra_gap=None, certificate_tol=None, dtype=None, sliver_eps: float = 0.0) -> RegionResult:
    """Build a :class:`RegionResult` from region rows sorted by segment then ``t``.

    ``seg_of_region`` holds positions ``0..S-1`` into ``segment_index``; ``extra_gap`` (S,)
    is a further certificate to fold into ``continuity_gap`` (subdivide's midpoint check);
    ``certificate_tol`` (S,) the float32 screen's tolerance where it vouched for regions;
    ``dtype`` the working precision and ``sliver_eps`` the walk's ``eps`` set ``gap_tol``
    (:func:`pipeline.engine.certificate.gap_tolerance`; none without ``dtype``).
    """
    s = len(segment_index)
    flat = (np.asarray(length) == 0)[seg_of_region]  # x1 == x0: f is constant along the segment
    if flat.any():  # its slope is exactly zero, not the rounding of f(x0 + 0) - f(x0) in a batched pass
        slope = slope.copy()
        slope[flat] = 0.0
    counts = np.bincount(seg_of_region, minlength=s)
    offset = np.zeros(s + 1, dtype=np.int64)
    np.cumsum(counts, out=offset[1:])
    args = (t_start, t_end, intercept, slope, offset)
    gap = measures.continuity_gap(*args, f0, f1)
    tv = measures.total_variation(t_start, t_end, slope, offset)
    gap_tol = None
    if dtype is not None:
        scale = np.maximum(np.abs(f0).max(axis=1, initial=0.0), np.abs(f1).max(axis=1, initial=0.0))
        if t_start.size:  # the maps at every breakpoint
            ends = np.maximum(np.abs(intercept + slope * t_start[:, None]).max(axis=1, initial=0.0),
                              np.abs(intercept + slope * t_end[:, None]).max(axis=1, initial=0.0))
            np.maximum.at(scale, seg_of_region, ends)
        scale = np.maximum(scale, tv.max(axis=1, initial=0.0))
        sliver = 0.0
        if sliver_eps:
            steep = np.zeros(s)
            np.maximum.at(steep, seg_of_region, np.abs(slope).max(axis=1, initial=0.0))
            sliver = WALK_SLIVER * sliver_eps * steep
        gap_tol = gap_tolerance(dtype, scale, sliver)
    return RegionResult(
        segment_index=np.asarray(segment_index, dtype=np.int64),
        density=counts.astype(np.int64),
        region_offset=offset,
        f0=f0,
        f1=f1,
        deviation=measures.absolute_deviation(*args, f0, f1, length),
        total_variation=tv,
        continuity_gap=gap if extra_gap is None else np.maximum(gap, extra_gap),
        certificate_tol=np.zeros(s) if certificate_tol is None else np.asarray(certificate_tol, dtype=np.float64),
        gap_tol=gap_tol,
        length=np.asarray(length, dtype=np.float64),
        t_start=t_start,
        t_end=t_end,
        intercept=intercept if keep_affine else None,
        slope=slope if keep_affine else None,
    )
