"""The certificate: the network at region midpoints, independently of how the regions were
found (subdivide's and, since issue 19, the walk's), and its verdict: ``gap_tol``,
:class:`CertificateError` (see ``GAP_RTOL`` below).

Each region's map (the chord between its vertices' outputs) is compared with the network
evaluated at the region's midpoint; the largest disagreement per segment is the certificate
``continuity_gap``. A missed kink bends its region's chord by about the slope change times
the region's width, a misread op bends many regions.

``certify="all"`` (default) checks every region. In float64 that costs one more float64
forward per region, about as much as the subdivision, so the check is screened:

1. every midpoint is evaluated by a float32 copy of the network;
2. 16 random regions per segment are evaluated in float64 with a plain forward of the whole
   network. Their float64 error is the certificate; their float32-against-float64 difference
   measures the float32 forward's own rounding on this segment;
3. a region passes the screen when its float32 error is at most ``SCREEN_SAFETY`` times that
   rounding (floored at half a float32 ulp of the segment's largest output); every other
   region (and any non-finite one) is evaluated in float64 and enters the certificate.

``certificate_tol`` reports the screen's tolerance per segment: a kink missed anywhere except
within about ``certificate_tol / |slope change|`` (in ``t``) of a vertex is caught.

Where the values live at the network's first piecewise-linear op are no more than the
input's, the float32 screen starts there. Up to that op the network is affine along the
segment (the subdivision relies on the same fact, and inserts no vertex before it), so those
values are interpolated between the segment's two ends, computed once in float64: on an MLP
whose first layer is the largest (3072 -> 1024) that is most of the screen's cost. The float64
sample runs the whole network from the input, so an op before the first kink that is not
affine (which bends every region) is still caught.
``certify="strict"`` evaluates every midpoint with a whole float64 forward. The walk, whose
model torch.fx may not trace, screens with a whole float32 forward (``traced=False``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from pipeline.engine import pwl
from pipeline.engine.graph import STOP, run_nodes
from pipeline.engine.linearize import forward_blocked
from pipeline.engine.rowblock import default_row_block

__all__ = ["certify_regions", "screen", "sampled", "CERTIFY", "CERTIFY_SAMPLES", "SCREEN_SAFETY", "CertificateError",
           "CertificateWarning", "ON_CERTIFICATE", "GAP_RTOL", "WALK_SLIVER", "gap_tolerance", "enforce"]

CERTIFY = ("all", "strict", "sample")  # what certify= may be (discover*; discover_plane* also None: none)
CERTIFY_SAMPLES = 16  # regions per segment evaluated in float64 by "all" and by "sample"
# On VGG8 the largest screened float32 error was 1.6-1.8 times the rounding measured on the
# 16 sampled regions of its segment (docs/benchmarks.md); 8 leaves a margin of about 4.
SCREEN_SAFETY = 8.0


# ---------------------------------------------------------------- pass or fail

ON_CERTIFICATE = ("raise", "warn")  # what a failing certificate does (discover*, discover_plane*)

# The certificate passes when continuity_gap <= gap_tol = GAP_RTOL[dtype] x scale (+ the walk's
# sliver term), ``scale`` the outputs' size on the segment / plane: the largest |f| at its ends,
# corners and vertices, or the largest total variation of a logit (sum over regions of
# |slope| x width; for planes of (|grad_u| + |grad_v|) x area / domain area), whichever is
# larger (total variation, not the largest |slope|: a sliver's chord slope in float32 is
# rounding divided by its width).
# Measured (gap / scale of correct results, the largest over each set; docs/benchmarks.md "The
# certificate's tolerance"): tests/nets.py zoo, 8 segments each, both methods: float64
# 1.2e-15, float32 6.9e-7; the project's VGG8 (8, 16) and ResNet18 k=4 on 8x8 inputs:
# 1.0e-6 (walk, float64: its slivers, below) else 8.5e-16, float32 2.3e-6; torchvision's
# resnet18, alexnet, densenet121, mobilenet_v2, vgg11_bn (tests/test_zoo.py segments): float64
# 3.5e-13 (mobilenet_v2), float32 2.8e-4 (mobilenet_v2; densenet121 1.9e-5); planes (zoo, VGG8,
# ResNet18 k=4, certify all and strict): float64 1.5e-15, float32 3.8e-6. Float32 errors grow
# with depth and BatchNorm gain, so its tolerance keeps a margin of 35 over mobilenet_v2;
# float64's keeps 3e5, and what it lets through is below 1e-7 of the outputs, invisible in
# the measures. A kink missed by a region of width w bends its map by about
# |slope change| x w / 4: on the planted tests 50 (float32) to 1e7 (float64) times gap_tol.
GAP_RTOL = {torch.float64: 1e-7, torch.float32: 1e-2}
# The walk merges a region thinner than eps into the one it lands in, with the latter's map:
# at the merged sliver's start that map is off by up to eps x |slope change| (the sliver's
# slope against the landing region's, neither larger than about the largest |slope| on the
# segment, so the change is at most twice that). WALK_SLIVER = 4 leaves a factor 2; measured,
# the walk's largest float64 gap was 0.52 x eps x max|slope| (ResNet18 k=4, eps = 1e-6).
WALK_SLIVER = 4.0


class CertificateError(RuntimeError):
    """A result's certificate failed: the region maps disagree with the network by more than
    ``gap_tol`` somewhere (see :func:`enforce`). ``index``, ``gap`` and ``tol`` hold the failing
    segments' (or planes') positions in the caller's input, their gaps and tolerances."""

    def __init__(self, message: str, index=(), gap=(), tol=()):
        super().__init__(message)
        self.index, self.gap, self.tol = np.asarray(index), np.asarray(gap), np.asarray(tol)


class CertificateWarning(UserWarning):
    """The same as :class:`CertificateError`, issued instead with ``on_certificate="warn"``."""


def gap_tolerance(dtype, scale, sliver=0.0) -> np.ndarray:
    """``gap_tol``: ``GAP_RTOL[dtype] * scale + sliver`` (see the constants above), per
    segment or plane; ``sliver`` is the walk's ``WALK_SLIVER * eps * max|slope|``."""
    return GAP_RTOL[dtype] * np.asarray(scale, dtype=np.float64) + sliver


def check_option(on_certificate):
    if on_certificate not in ON_CERTIFICATE:
        raise ValueError(f"on_certificate must be one of {ON_CERTIFICATE}, got {on_certificate!r}")


def enforce(gap, tol, index, what: str, prepared, on_certificate: str, context: str = ""):
    """Raise :class:`CertificateError` (``on_certificate="raise"``) or warn
    (:class:`CertificateWarning`, ``"warn"``) when any ``gap > tol`` or a gap is not finite.

    ``index`` names the segments / planes in the caller's numbering; ``what`` is "segment" or
    "plane"; ``prepared`` the :class:`pipeline.engine.prepared.PreparedModel` (its
    ``assumed_affine_report()``, where it has one, names ops the user declared affine)."""
    gap, tol = np.asarray(gap, dtype=np.float64), np.asarray(tol, dtype=np.float64)
    bad = ~(gap <= tol)
    if not bad.any():
        return
    idx = np.flatnonzero(bad)
    names = [f"{what} {index[i]}" for i in idx]
    msg = failure_message(names, gap[idx], tol[idx], gap.size, what + "s", prepared)
    if on_certificate == "warn":
        import warnings

        warnings.warn(msg, CertificateWarning, stacklevel=3)
    else:
        raise CertificateError(msg, np.asarray(index)[idx], gap[idx], tol[idx])


def failure_message(names, gap, tol, n_total: int, of: str, prepared, where: str = "") -> str:
    """The text of a failing certificate: ``names`` of the failing rows (the first five are
    shown) with their ``gap`` and ``tol``, out of ``n_total`` ``of``; ``where`` says where
    (a store, a shard); what it means and what to do; the ops the user declared affine."""
    shown = ", ".join(f"{n} (gap {g:.3g} > tolerance {t:.3g})" for n, g, t in zip(names[:5], gap, tol))
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    report = getattr(prepared, "assumed_affine_report", lambda: "")()
    msg = (f"certificate failed on {len(names)} of {n_total} {of}{where}: {shown}{more}. The region maps "
           "disagree with the network there, so those regions and measures are wrong: the engine treated some op "
           "as affine that is not (an op it cannot see, e.g. one computed under torch._C.DisableTorchFunction or "
           "in a C++ extension), or missed a kink. Check the model's forward for such ops (for segments, also "
           "compare method='walk', which does not trace the model, with method='subdivide'); "
           "on_certificate='warn' keeps the result for exploration "
           "(the failing rows have certified == False).")
    return f"{msg} {report}" if report else msg


def sampled(rseg: np.ndarray) -> np.ndarray:
    """CERTIFY_SAMPLES regions per segment chosen at random (seeded, so a rerun checks the
    same ones); all of them where a segment has fewer."""
    key = np.random.default_rng(0).random(rseg.size)
    order = np.lexsort((key, rseg))
    first = np.r_[0, np.flatnonzero(rseg[order][1:] != rseg[order][:-1]) + 1]
    rank = np.arange(rseg.size) - np.repeat(first, np.diff(np.r_[first, rseg.size]))
    keep = np.zeros(rseg.size, dtype=bool)
    keep[order[rank < CERTIFY_SAMPLES]] = True
    return keep


class _Kink(Exception):
    """Raised at the first piecewise-linear op of a pass (see :func:`_to_first_kink`)."""


class _StopAtKink(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        try:
            kink = pwl.recognise(func, args, kwargs) is not None
        except pwl.UnsupportedOpError:  # refused on the input by the preflight; a constant here
            kink = True
        if kink:
            raise _Kink
        return func(*args, **kwargs)


def _to_first_kink(plan, env: dict) -> int:
    """Run ``plan`` on ``env`` up to its first piecewise-linear op; returns the index of the node
    that would run it (the output node's where there is none; ``env`` then holds what is live
    there)."""

    def call(i, node, args, kwargs):
        if not plan.batched[node]:  # constants (parameters) are not kinks
            return plan.call(node, args, kwargs)
        try:
            with _StopAtKink():
                return plan.call(node, args, kwargs)
        except _Kink:
            return STOP

    # keep_unread: a value nothing reads (an assertion's None) stays live, as it always did here:
    # a batched one makes _AffinePrefix fall back to the whole forward
    start, _ = run_nodes(plan, env, 0, call=call, keep_unread=True)
    return start


class _AffinePrefix:
    """The values live at the network's first piecewise-linear op, at both ends of each
    segment (float64), to be interpolated at any point of the segment."""

    def __init__(self, plan, x_ends: torch.Tensor, n_seg: int):
        self.n = n_seg
        env = {plan.input: x_ends}
        with torch.no_grad():
            # without any piecewise-linear op this stops at the output node, its inputs live
            self.start = _to_first_kink(plan, env)
        self.live = {}
        self.fixed = {}
        self.ok = True
        for node, val in env.items():
            if plan.batched.get(node, False):
                if isinstance(val, torch.Tensor) and val.shape[:1] == (2 * n_seg,):
                    self.live[plan.nodes.index(node)] = val
                else:  # a batch-dependent non-tensor (a size): cannot interpolate
                    self.ok = False
            else:
                self.fixed[plan.nodes.index(node)] = val

    def live_numel(self) -> int:
        """Values per point live at the first piecewise-linear op."""
        return sum(v[0].numel() for v in self.live.values())

    def env(self, plan, seg: torch.Tensor, t: torch.Tensor, dtype) -> dict:
        """The live values at points ``t`` of segments ``seg`` (positions in this chunk)."""
        # constants computed before the first kink (a weight made from parameters) in this dtype
        out = {plan.nodes[i]: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
               for i, v in self.fixed.items()}
        for i, v in self.live.items():
            w = t.to(v.dtype).view(-1, *([1] * (v.ndim - 1)))
            out[plan.nodes[i]] = torch.lerp(v[seg], v[seg + self.n], w).to(dtype)
        return out


class _Midpoints:
    """The network at region midpoints against the regions' maps: per region, the largest
    disagreement over the outputs, and the outputs (float64 numpy)."""

    def __init__(self, x0, d, rseg, mid, intercept, slope, device, rows_per_pass):
        self.x0, self.d, self.rseg, self.mid = x0, d, rseg, mid
        self.intercept, self.slope = intercept, slope
        self.device, self.rows = device, rows_per_pass

    def _finish(self, sl, y, err, ys, i):
        y = y.reshape(y.shape[0], -1).double().cpu().numpy()
        ys[i:i + sl.size] = y
        with np.errstate(invalid="ignore"):
            e = np.abs(y - (self.intercept[sl] + self.slope[sl] * self.mid[sl, None])).max(axis=1, initial=0.0)
        e[~np.isfinite(y).all(axis=1)] = np.inf
        err[i:i + sl.size] = e

    def forward(self, model, dtype, which: np.ndarray, row_block: int):
        """A plain forward of ``model`` from the input (the point in float64, rounded once)."""
        err, ys = np.zeros(which.size), np.zeros((which.size, self.intercept.shape[1]))
        bcast = (-1,) + (1,) * (self.x0.ndim - 1)
        for i in range(0, which.size, self.rows):
            sl = which[i:i + self.rows]
            s = torch.from_numpy(self.rseg[sl])
            m = torch.from_numpy(self.mid[sl]).to(device=self.device).view(bcast)
            x = torch.addcmul(self.x0[s].to(device=self.device, dtype=torch.float64), m,
                              self.d[s].to(device=self.device, dtype=torch.float64)).to(dtype)
            self._finish(sl, forward_blocked(model, x, row_block), err, ys, i)
        return err, ys

    def resumed(self, plan, prefix: _AffinePrefix, dtype, which: np.ndarray, row_block: int, lo: int):
        """The network from its first piecewise-linear op on, the live values there
        interpolated from the segment's ends; ``row_block`` rows per pass."""
        err, ys = np.zeros(which.size), np.zeros((which.size, self.intercept.shape[1]))
        step = min(row_block, self.rows) if row_block else self.rows  # bounded memory on GPUs too
        with torch.no_grad():
            for i in range(0, which.size, step):
                sl = which[i:i + step]
                s = torch.from_numpy(self.rseg[sl] - lo).to(self.device)
                m = torch.from_numpy(self.mid[sl]).to(self.device)
                _, y = run_nodes(plan, prefix.env(plan, s, m, dtype), prefix.start, keep_unread=True)
                self._finish(sl, y, err, ys, i)
        return err, ys


def certify_regions(prepared, certify, x0, d_all, lo, hi, rseg, mid, intercept, slope, f0, f1, fv_inner,
                    rows_per_pass, row_block, traced: bool = True):
    """The certificate of segments ``lo..hi`` (see the module docstring). With ``traced=False``
    (the walk, whose model torch.fx may not trace) the float32 screen is a plain forward of
    the whole network from the input.

    Returns ``(gap, tol)``, both ``(hi - lo,)``: the largest disagreement found in the working
    precision, and the float32 screen's tolerance (0 where every region was evaluated in the
    working precision)."""
    model, dtype, device = prepared.work, prepared.dtype, prepared.device
    n = hi - lo
    gap, tol = np.zeros(n), np.zeros(n)
    at = _Midpoints(x0, d_all, rseg, mid, intercept, slope, device, rows_per_pass)
    sample = sampled(rseg)
    if certify == "sample" or certify == "strict":
        idx = np.flatnonzero(sample) if certify == "sample" else np.arange(rseg.size)
        err, _ = at.forward(model, dtype, idx, row_block)
        np.maximum.at(gap, rseg[idx] - lo, err)
        return gap, tol
    # "all": every region through the cheap path (a float32 copy in float64, the model itself in float32)
    every = np.arange(rseg.size)
    rows32 = default_row_block(device, torch.float32)
    prefix = None
    if traced:
        x_ends = torch.cat([x0[lo:hi], x0[lo:hi] + d_all[lo:hi]]).to(device=device, dtype=dtype)
        prefix = _AffinePrefix(prepared.plan_for(x_ends), x_ends, n)  # in the working precision
    # interpolating the live values costs about what building the input row does: it pays
    # when they are no larger than the input (the MLP: 1,024 against 3,072 values and a 3072 x
    # 1024 layer skipped; VGG8's first conv output is twice its input)
    if prefix is not None and prefix.ok and prefix.live_numel() <= x0[0].numel() and prepared.traceable:
        err32, y32 = at.resumed(prepared.screen_plan, prefix, torch.float32, every, rows32, lo)
    else:
        err32, y32 = at.forward(prepared.screen, torch.float32, every, rows32)
    if dtype == torch.float32:  # float32 mode: the screen is the check
        np.maximum.at(gap, rseg - lo, err32)
        return gap, tol
    scale = np.maximum(np.abs(f0).max(axis=1, initial=0.0), np.abs(f1).max(axis=1, initial=0.0))
    np.maximum.at(scale, rseg - lo, np.abs(fv_inner).max(axis=1, initial=0.0))
    gap, tol, _ = screen(rseg - lo, n, err32, y32, scale,
                         lambda idx: at.forward(model, dtype, idx, row_block), sample)
    return gap, tol


def screen(group: np.ndarray, n: int, err32: np.ndarray, y32: np.ndarray, scale: np.ndarray, exact,
           sample: np.ndarray | None = None):
    """The float32 screen's verdict (steps 2 and 3 of the module docstring), for any grouping of
    regions (segments, planes).

    ``group (R,)`` each region's group in ``0..n-1``; ``err32 (R,)`` and ``y32 (R, K)`` the float32
    forward's disagreement with the region's map and its outputs; ``scale (n,)`` the group's
    largest ``|f|``; ``exact(idx)`` evaluates regions ``idx`` in the working precision and returns
    their ``(err, y)``; ``sample`` the regions evaluated in any case (default :func:`sampled`).

    Returns ``(gap, tol, err)``: per group the largest working-precision disagreement and the
    screen's tolerance (0 where every region was evaluated exactly); per region the
    working-precision disagreement where it was evaluated, 0 where the screen vouched for it."""
    gap, err = np.zeros(n), np.zeros(group.size)
    if sample is None:
        sample = sampled(group)
    check = sample | ~np.isfinite(err32)
    idx = np.flatnonzero(check)
    err64, y64 = exact(idx)
    err[idx] = err64
    np.maximum.at(gap, group[idx], err64)
    rounding = np.zeros(n)  # the float32 forward's own error, measured on the sample
    with np.errstate(invalid="ignore"):
        diff = np.abs(y32[idx] - y64).max(axis=1, initial=0.0)
    np.maximum.at(rounding, group[idx], np.where(np.isfinite(diff), diff, 0.0))
    tol = SCREEN_SAFETY * np.maximum(rounding, np.finfo(np.float32).eps / 2 * scale)
    doubt = ~check & ~(err32 <= tol[group])  # every region the screen cannot vouch for
    if doubt.any():
        idx = np.flatnonzero(doubt)
        err[idx], _ = exact(idx)
        np.maximum.at(gap, group[idx], err[idx])
    counted = np.bincount(group[check | doubt], minlength=n)
    tol[counted == np.bincount(group, minlength=n)] = 0.0  # groups checked wholly in the working precision
    return gap, tol, err
