"""The paper's algorithm: walk each segment region by region, many segments at once.

Each step linearises the network at one point inside the current region of every segment in
flight (one pass, see :mod:`pipeline.engine.linearize`), records the region's affine map and its
exit, and moves just past the exit (``eps`` in ``t``). Batching is **continuous**: when a
segment reaches ``t = 1`` its slot is refilled from the queue at once, so the batch never waits
for its longest segment. Region rows go to a preallocated buffer; no Python loop runs over
segments per step.

Regions thinner than ``eps`` that start at a breakpoint are merged into the region the walk
lands in: the step from a breakpoint ``t_b`` evaluates at ``t_b + eps`` and the region recorded
is ``[t_b, exit]`` with the map found there. The continuity certificate grows by about
``eps`` times the slope change across such a sliver, so it stays visible (``gap_tol`` allows
it: :mod:`pipeline.engine.certificate`). The last region stops at ``t = 1``; a remainder thinner than
``eps`` is probed at its midpoint. Every region's map is also checked against the network at
its midpoint, as subdivide's: a kink the linearisation cannot see leaves a map that agrees with
``f`` at the region's ends (the chord) and nowhere else.

A step that lands short of the kink it aimed at is not a new region. An exit is computed
from a point deep inside the region, and in float32 it is only known to a few ``1e-6`` in
``t`` on short segments (rounding of ``x0 + t d`` and of every layer, divided by the unit's
rate ``|zdot|``); when it comes out early by more than ``eps``, the next step still sees the
old pattern and aims at the same kink again. Each step therefore also hashes its whole
activation pattern (every ReLU mask, clamp side and max-pool argmax, see
:class:`pipeline.engine.linearize.LinearizeMode`): a step whose pattern equals the previous step's
continues that region (rows marked ``same``, merged when a chunk is emitted: one region from
the first row's start to the last row's end, with the first row's map). This is the
definition of a region (a maximal interval with one pattern), so it changes nothing where
the arithmetic resolves the kinks: in float64 the counts are unchanged; in float32 on VGG8
they went from 5,843 to about the float64 count (docs/benchmarks.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from pipeline.engine.certificate import certify_regions
from pipeline.engine.linearize import PatternHash, forward_blocked, linearize
from pipeline.engine.result import RegionResult, assemble
from pipeline.engine.worksize import shrink_on_oom

__all__ = ["walk"]

_STEPS_PER_FLUSH = 256


class _RegionBuffer:
    """Region rows ``[seg, t_start, t_end, same, intercept(K), slope(K)]`` streamed to host
    memory; ``same`` = 1 marks a row that continues the previous row's region (a step that
    did not get past the kink it aimed at, see the module docstring)."""

    C = 4  # columns before the affine map

    def __init__(self, rows: int, k: int, device):
        self.k = k
        self.buf = torch.empty((rows, self.C + 2 * k), dtype=torch.float64, device=device)
        self.pos = 0
        self.blocks: list[np.ndarray] = []

    def add(self, seg, t0, t1, same, a, b):
        n = seg.shape[0]
        if self.pos + n > self.buf.shape[0]:
            self.flush()
            if n > self.buf.shape[0]:
                self.buf = torch.empty((n, self.buf.shape[1]), dtype=torch.float64, device=self.buf.device)
        rows = self.buf[self.pos:self.pos + n]
        rows[:, 0] = seg
        rows[:, 1] = t0
        rows[:, 2] = t1
        rows[:, 3] = same
        rows[:, self.C:self.C + self.k] = a
        rows[:, self.C + self.k:] = b
        self.pos += n

    def flush(self):
        if self.pos:
            self.blocks.append(self.buf[:self.pos].cpu().numpy().copy())
            self.pos = 0

    def take(self, lo: int, hi: int) -> np.ndarray:
        """Remove and return the rows of segments ``lo <= seg < hi``, sorted by segment then t."""
        self.flush()
        rows = np.concatenate(self.blocks) if self.blocks else np.zeros((0, self.buf.shape[1]))
        seg = rows[:, 0]
        sel = (seg >= lo) & (seg < hi)
        taken, kept = rows[sel], rows[~sel]
        self.blocks = [kept] if kept.size else []
        order = np.lexsort((taken[:, 1], taken[:, 0]))
        return taken[order]


def _endpoint_values(model, x, batch, dtype, device, row_block):
    out = []
    for i in range(0, x.shape[0], batch):
        y = forward_blocked(model, x[i:i + batch].to(device=device, dtype=dtype), row_block)
        out.append(y.reshape(y.shape[0], -1).double().cpu())
    return torch.cat(out).numpy()


class _Slots:
    """The segments in flight: which segment, where the walk is, where its region started."""

    def __init__(self, n: int, x0, d_all, dtype, device):
        self.x0_all, self.d_all, self.dtype, self.device = x0, d_all, dtype, device
        self.seg = torch.full((n,), -1, dtype=torch.long, device=device)
        self.t_cur = torch.zeros(n, dtype=torch.float64, device=device)
        self.t_start = torch.zeros(n, dtype=torch.float64, device=device)
        self.pattern = torch.zeros(n, dtype=torch.long, device=device)  # hash of the last step's pattern
        self.started = torch.zeros(n, dtype=torch.bool, device=device)  # a step was taken in this slot
        self.x0 = torch.empty((n, *x0.shape[1:]), dtype=dtype, device=device)
        self.d = torch.empty_like(self.x0)

    def load(self, idx: torch.Tensor, first: int, last: int) -> int:
        """Put segments ``first, first+1, ... < last`` into slots ``idx``; returns how many."""
        n = min(idx.numel(), last - first)
        if n:
            new = torch.arange(first, first + n, device=self.x0_all.device)
            dst = idx[:n]
            self.seg[dst] = new.to(self.device)
            self.x0[dst] = self.x0_all[new].to(device=self.device, dtype=self.dtype)
            self.d[dst] = self.d_all[new].to(device=self.device, dtype=self.dtype)
            self.t_cur[dst] = 0.0
            self.t_start[dst] = 0.0
            self.started[dst] = False
        return n

    def keep(self, mask: torch.Tensor):
        for name in ("seg", "t_cur", "t_start", "pattern", "started", "x0", "d"):
            setattr(self, name, getattr(self, name)[mask])


def walk(prepared, x0: torch.Tensor, x1: torch.Tensor, *, eps: float, batch_size: int, keep_affine: bool,
         chunk_segments: int, jvp: str = "stacked", scheduling: str = "continuous", row_block: int = 0,
         certify: str = "all", certify_rows: int, progress=None) -> Iterator[RegionResult]:
    """Yield :class:`RegionResult` chunks of consecutive segments (see ``discover_iter``);
    ``prepared`` is a :class:`pipeline.engine.prepared.PreparedModel`. On out-of-memory a pass is
    redone in groups of half as many rows."""
    model, dtype, device = prepared.work, prepared.dtype, prepared.device
    n_seg = x0.shape[0]
    d_all = x1 - x0
    length = torch.linalg.vector_norm(d_all.double().reshape(n_seg, -1), dim=1).numpy()
    bcast = (-1,) + (1,) * (x0.ndim - 1)
    width = min(batch_size, n_seg)
    buffer = None
    stacked = None
    finished = np.zeros(n_seg, dtype=bool)
    queued = 0  # segments [0, queued) have been loaded into a slot
    emitted = 0  # segments [0, emitted) have been yielded
    ready = 0  # segments [0, ready) are finished
    slots = None
    hasher = PatternHash()  # its weights are drawn once per walk

    while True:
        if slots is None or slots.seg.numel() == 0:  # start, or static batching between batches
            n = min(width, n_seg - queued)
            slots = _Slots(n, x0, d_all, dtype, device)
            queued += slots.load(torch.arange(n, device=device), queued, n_seg)
        x = torch.addcmul(slots.x0, slots.t_cur.view(bcast).to(dtype), slots.d)
        if stacked is None or stacked.shape[0] != 2 * x.shape[0]:
            stacked = torch.empty((2 * x.shape[0], *x.shape[1:]), dtype=dtype, device=device)
        whole = row_block or 2 * x.shape[0]
        (f, fdot, tau, pattern), rows = shrink_on_oom(
            "walk: a linearising pass", whole,
            lambda rb: linearize(model, x, slots.d, jvp=jvp, out=stacked, row_block=rb, pattern=hasher,
                                 assumed=prepared.assumed), floor=2)
        if rows < whole:  # out of memory: smaller groups from now on
            row_block = rows
        if buffer is None:
            buffer = _RegionBuffer(_STEPS_PER_FLUSH * width, f.shape[1], device)
        t_cur = slots.t_cur
        exit_t = t_cur + tau
        # a row with nan or inf ends its segment (exit at inf) and is reported below with the
        # other finished segments: no `if bad.any():`, which would wait for a GPU every step
        bad = torch.isnan(exit_t) | ~torch.isfinite(fdot).all(1) | ~torch.isfinite(f).all(1)
        exit_t = exit_t.masked_fill(bad, math.inf)
        fdot64 = fdot.double()
        # the same activation pattern as the last step: the step did not get past the kink it
        # aimed at (rounding), so this row continues the last one's region
        same = (pattern == slots.pattern) & slots.started
        buffer.add(slots.seg, slots.t_start, torch.clamp(exit_t, max=1.0), same,
                   f.double() - t_cur[:, None] * fdot64, fdot64)
        done = exit_t >= 1.0
        slots.t_start = exit_t
        slots.pattern = pattern
        slots.started.fill_(True)
        # step just past the exit; a remainder thinner than eps is probed at its middle
        slots.t_cur = torch.minimum(exit_t + eps, (exit_t + 1.0) * 0.5)
        done_idx = done.nonzero().flatten()
        if done_idx.numel() == 0:
            continue
        segs, bad_done = torch.stack([slots.seg[done_idx], bad[done_idx].long()]).cpu().numpy()
        if bad_done.any():  # host memory: no wait
            raise FloatingPointError(f"the network produced nan or inf inside segment(s) "
                                     f"{segs[bad_done.astype(bool)].tolist()[:5]}: check the weights and the input "
                                     "scale (overflow?)")
        finished[segs] = True
        if progress is not None:
            progress.update(done_idx.numel())
        keep = ~done
        loaded = 0
        if scheduling == "continuous":  # refill the finished slots at once
            loaded = slots.load(done_idx, queued, n_seg)
            queued += loaded
            keep[done_idx[:loaded]] = True
        if loaded < done_idx.numel():  # slots left empty
            slots.keep(keep)
        while ready < n_seg and finished[ready]:
            ready += 1
        while ready - emitted >= chunk_segments or emitted < ready == n_seg:
            hi = min(ready, emitted + chunk_segments)
            yield _emit(prepared, buffer, x0, x1, d_all, emitted, hi, length, width, keep_affine, row_block, certify,
                        eps, certify_rows)
            emitted = hi
        if ready == n_seg:
            return


def _emit(prepared, buffer, x0, x1, d_all, lo, hi, length, batch, keep_affine, row_block, certify, eps,
          certify_rows) -> RegionResult:
    model, dtype, device = prepared.work, prepared.dtype, prepared.device
    rows = buffer.take(lo, hi)
    k, c = buffer.k, buffer.C
    # a row marked "same" continues the region of the row before it (same segment, same
    # pattern): one region, from the first row's start to the last row's end, with the
    # first row's map (evaluated well inside the region; the later rows' points sit within
    # rounding of the kink)
    head = rows[:, 3] == 0
    head[np.r_[True, rows[1:, 0] != rows[:-1, 0]]] = True
    start = np.flatnonzero(head)
    end = np.r_[start[1:], rows.shape[0]] - 1
    t_end = rows[end, 2].copy()
    rows = rows[start]
    f0 = _endpoint_values(model, x0[lo:hi], batch, dtype, device, row_block)
    f1 = _endpoint_values(model, x1[lo:hi], batch, dtype, device, row_block)
    seg = rows[:, 0].astype(np.int64) - lo
    t_start, intercept, slope = rows[:, 1].copy(), rows[:, c:c + k].copy(), rows[:, c + k:].copy()
    # the network at each region's midpoint against its map, as subdivide's certificate: the
    # agreement at breakpoints and ends alone misses a kink the linearisation cannot see (a
    # region whose map is the chord of a bent function agrees at both its ends)
    (gap, screen_tol), _ = shrink_on_oom(
        "walk: the certificate", certify_rows,
        lambda rows: certify_regions(prepared, certify, x0, d_all, lo, hi, seg + lo, 0.5 * (t_start + t_end),
                                     intercept, slope, f0, f1, intercept + slope * t_start[:, None], rows,
                                     row_block, traced=False))
    return assemble(np.arange(lo, hi), seg, t_start, t_end, intercept, slope, f0, f1, length[lo:hi], keep_affine,
                    extra_gap=gap, certificate_tol=screen_tol, dtype=dtype, sliver_eps=eps)
