"""Every linear region a ReLU network crosses along line segments: the public entry point.

Example (a notebook, no cluster)::

    import torch
    from pipeline.engine.lines import discover
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    x0, x1 = torch.randn(4, 2), torch.randn(4, 2)
    res = discover(net, x0, x1)            # float64, method="subdivide" (the default)
    res.density, res.deviation, res.breakpoints(0)

Definitions (breakpoints, affine maps, certificate, density, absolute deviation, total
variation) are those of ``shared/DESIGN.md``; :class:`pipeline.engine.result.RegionResult` documents
the arrays returned.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch

# CERTIFY is imported from here by the discovery stage
from pipeline.engine.certificate import CERTIFY, CertificateError, CertificateWarning, check_option, enforce
from pipeline.engine.prepared import PreparedModel, as_prepared, preflight, prepare
from pipeline.engine.pwl import UnsupportedOpError
from pipeline.engine.result import RegionResult
from pipeline.engine.subdivide import subdivide
from pipeline.engine.walk import walk
from pipeline.engine.worksize import work_sizes

log = logging.getLogger("pipeline.engine.lines")

__all__ = ["discover", "discover_iter", "prepare", "PreparedModel", "RegionResult", "UnsupportedOpError", "METHODS",
           "CertificateError", "CertificateWarning"]

METHODS = ("walk", "subdivide")
DEFAULT_METHOD = "subdivide"  # the faster of the two, measured side by side: docs/benchmarks.md


def _as_tensor(x, name, rows: str = "S"):
    """``x`` as a detached CPU tensor; ``rows`` names its first dimension in the messages (S
    segments, P planes)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array of shape ({rows}, *input_shape), "
                        f"got {type(x).__name__}")
    if not (x.is_floating_point()):
        raise TypeError(f"{name} must hold floating-point values, got {x.dtype}")
    return x.detach().cpu()


def _check_inputs(x0, x1):
    x0, x1 = _as_tensor(x0, "x0"), _as_tensor(x1, "x1")
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape (S, *input_shape); got {tuple(x0.shape)} "
                         f"and {tuple(x1.shape)}")
    if x0.ndim < 2:
        raise ValueError(f"x0 and x1 must be batches of segment ends, shape (S, *input_shape); got "
                         f"{tuple(x0.shape)}. For one segment use x0[None], x1[None].")
    if x0.shape[0] == 0:
        raise ValueError("no segments given: x0 and x1 have S = 0 rows")
    for name, x in (("x0", x0), ("x1", x1)):
        bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
        if bad.any():
            rows = bad.nonzero().flatten()[:5].tolist()
            raise ValueError(f"{name} has non-finite values (nan or inf) in segment(s) {rows}")
    return x0, x1


def discover_iter(model, x0, x1, *, eps: float = 1e-6, dtype=torch.float64, batch_size: int | None = None,
                  device=None, keep_affine: bool = True, progress: bool = False, method: str = DEFAULT_METHOD,
                  chunk_segments: int = 256, jvp: str = "stacked", scheduling: str = "continuous",
                  max_vertices: int | None = None, row_block: int | None = None,
                  certify: str = "all", on_certificate: str = "raise", assume_affine=(),
                  memory_bytes: int | None = None) -> Iterator[RegionResult]:
    """Stream :func:`discover` in chunks of consecutive segments, so memory stays bounded.

    Each yielded :class:`RegionResult` covers segments ``segment_index[0] ..
    segment_index[-1]`` (consecutive, in input order). See :func:`discover` for the parameters;
    a chunk whose certificate fails raises :class:`CertificateError` before it is yielded
    (``on_certificate="warn"``: it is yielded after a :class:`CertificateWarning`).
    """
    check_option(on_certificate)
    prepared = None
    for chunk in _chunks(model, x0, x1, eps=eps, dtype=dtype, batch_size=batch_size, device=device,
                         keep_affine=keep_affine, progress=progress, method=method, chunk_segments=chunk_segments,
                         jvp=jvp, scheduling=scheduling, max_vertices=max_vertices, row_block=row_block,
                         certify=certify, assume_affine=assume_affine, memory_bytes=memory_bytes):
        if isinstance(chunk, PreparedModel):
            prepared = chunk
            continue
        enforce(chunk.continuity_gap, chunk.gap_tol, chunk.segment_index, "segment", prepared, on_certificate)
        yield chunk


def _chunks(model, x0, x1, *, eps: float = 1e-6, dtype=torch.float64, batch_size: int | None = None, device=None,
            keep_affine: bool = True, progress: bool = False, method: str = DEFAULT_METHOD, chunk_segments: int = 256,
            jvp: str = "stacked", scheduling: str = "continuous", max_vertices: int | None = None,
            row_block: int | None = None, certify: str = "all", assume_affine=(), memory_bytes: int | None = None):
    """:func:`discover_iter` without the certificate's verdict: yields the
    :class:`PreparedModel` first, then the chunks."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float64 (default, as the paper) or torch.float32, got {dtype}")
    if not (0.0 < eps < 1.0):
        raise ValueError(f"eps is a step in t (segment units) and must be in (0, 1); got {eps}")
    if ((batch_size is not None and batch_size < 1) or chunk_segments < 1
            or (max_vertices is not None and max_vertices < 4)):
        raise ValueError("batch_size and chunk_segments must be >= 1, max_vertices >= 4 "
                         "(or None: sized for the device)")
    if certify not in CERTIFY:
        raise ValueError(f"certify must be one of {CERTIFY}, got {certify!r}")
    if jvp not in ("stacked", "dual"):
        raise ValueError(f"jvp must be 'stacked' or 'dual', got {jvp!r}")
    if scheduling not in ("continuous", "static"):
        raise ValueError(f"scheduling must be 'continuous' or 'static', got {scheduling!r}")
    prepared = as_prepared(model, dtype, device, assume_affine)
    x0, x1 = _check_inputs(x0, x1)
    yield prepared
    # the segment direction is x1 - x0 in the working precision, so x0 + 1 * d == x1 there
    x0, x1 = x0.to(dtype), x1.to(dtype)
    device = prepared.device
    preflight(prepared, x0[:1], x1[:1])  # every op found, affine or refused by name, before any work
    sizes = work_sizes(prepared, x0[:1], method, batch_size=batch_size, max_vertices=max_vertices, row_block=row_block,
                       memory_bytes=memory_bytes)
    log.debug("work sizes: %s", sizes)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=x0.shape[0], unit="seg", desc=f"regions ({method})")
    try:
        if method == "walk":
            chunks = walk(prepared, x0, x1, eps=eps, batch_size=sizes.batch_size, keep_affine=keep_affine,
                          chunk_segments=chunk_segments, jvp=jvp, scheduling=scheduling, row_block=sizes.row_block,
                          certify=certify, progress=bar, certify_rows=sizes.certify_rows)
        else:
            chunks = subdivide(prepared, x0, x1, batch_size=sizes.batch_size, keep_affine=keep_affine,
                               chunk_segments=chunk_segments, max_vertices=sizes.max_vertices,
                               row_block=sizes.row_block, certify=certify, progress=bar,
                               certify_rows=sizes.certify_rows)
        regions = 0
        for chunk in chunks:
            regions += chunk.n_regions
            if bar is not None:
                bar.set_postfix(regions=regions, refresh=False)
            yield chunk
    finally:
        if bar is not None:
            bar.close()


def discover(model, x0, x1, *, eps: float = 1e-6, dtype=torch.float64, batch_size: int | None = None, device=None,
             keep_affine: bool = True, progress: bool = False, method: str = DEFAULT_METHOD,
             on_certificate: str = "raise", **options) -> RegionResult:
    """Find every linear region of ``model`` along the segments ``x0[s] -> x1[s]``.

    Parameters
    ----------
    model : torch.nn.Module or PreparedModel
        In eval mode; affine layers (Linear, Conv, AvgPool, BatchNorm in eval, residual adds,
        concatenation, reshapes...) and ReLU / LeakyReLU / max-pooling / clamping between
        constant bounds (hardtanh, relu6, clamp, clip). It is copied, never modified. Pass
        ``prepare(model)`` instead to pay for the copies and the tracing once over many calls.
    x0, x1 : Tensor or ndarray, shape ``(S, *input_shape)``
        Segment ends.
    eps : float
        Walk step past each breakpoint, in ``t`` units (``method="walk"``): regions thinner than
        ``eps`` are merged into a neighbour. ``subdivide`` is exact and ignores it.
    dtype : torch.float64 or torch.float32
        Working precision of the network (breakpoints and measures are always float64).
    batch_size : int, optional
        Segments in flight at once. None (default): sized for the device
        (:func:`pipeline.engine.worksize.work_sizes`: 64 on the CPU; on a GPU from its free memory and
        the network's bytes per row).
    device : torch.device or str, optional
        Defaults to the device of the model's parameters.
    keep_affine : bool
        Keep the per-region ``intercept`` and ``slope`` (``(R, K)`` each).
    progress : bool
        Show a tqdm bar over segments.
    method : {"walk", "subdivide"}
        ``walk`` steps region by region (the paper); ``subdivide`` splits the segment layer by
        layer, exactly. Same result.
    **options
        ``chunk_segments``, ``jvp`` ("stacked" or "dual"), ``scheduling`` ("continuous" or
        "static", walk only), ``max_vertices`` (subdivide's chunk bound, default None: sized for
        the device like ``batch_size``, 256 on the CPU: peak memory is
        about max_vertices x the largest activation x 8 bytes per live tensor; on VGG8 and
        ResNet18 256 ran 7-10% faster than 1024, likely because a chain of 1024 6x32x32
        maps is 50 MB, above glibc's 32 MB ceiling for reusing freed blocks, so each one is
        page-faulted in fresh), ``row_block`` (rows
        per call of conv/linear layers; default on CPU in float64 16 for subdivide and 64 for
        walk, 256 in float32, all on GPU: CPU kernels slow down when the batch outgrows the
        cache), ``certify`` (both methods: the network at region midpoints against the maps.
        "all", the default, checks every region: in float64 it screens every midpoint in
        float32 and evaluates in float64 16 regions per segment and every region whose screen
        is inconclusive, reporting the screen's tolerance as ``certificate_tol``; "strict"
        evaluates every midpoint in the working precision, about twice the cost; "sample"
        only the 16 per segment), ``assume_affine`` (a tuple of functions, e.g.
        ``(torch.where,)``, that the engine should treat as affine where it would refuse them:
        the escape hatch for an op you know to be affine on your network; the certificate
        still checks every region, and names the op if it fails), ``memory_bytes`` (the memory
        the work sizes are computed from, instead of half the GPU's free memory or the CPU's
        tuned constants; an out-of-memory error is caught and the work redone at half the size
        either way, see :mod:`pipeline.engine.worksize`).
    on_certificate : {"raise", "warn"}
        What a failing certificate does. Every segment's ``continuity_gap`` (the largest
        disagreement between its maps and the network, see ``certify``) is compared with its
        ``gap_tol`` (:func:`pipeline.engine.certificate.gap_tolerance`: 1e-7 of the outputs' scale in
        float64, 1e-2 in float32, plus ``4 eps`` times the largest slope for the walk's merged
        slivers). "raise" (default): :class:`CertificateError` naming the segments, gaps and
        tolerances. "warn": a :class:`CertificateWarning` with the same text, and the result
        is returned with ``certified`` False on the failing segments.

    Returns
    -------
    RegionResult
        Numpy arrays per segment and per region (see :class:`pipeline.engine.result.RegionResult`).

    Raises
    ------
    UnsupportedOpError
        Before any work: the network applies to its input an op that is not piecewise linear
        (GELU, sigmoid, hardswish...), that the engine does not follow (``sign``, ``clamp`` with
        tensor bounds...), or that it does not know to be affine (comparisons, ``where`` on an
        input-derived condition, masks, integer casts, any op not on the allowlist of
        :mod:`pipeline.engine.allowlist`). The message names the op.
    CertificateError
        Some segment's certificate failed (``on_certificate="raise"``): the network has an op
        the engine read as affine that is not, or a kink was missed.
    ValueError, TypeError
        Model in training mode, mismatched or non-finite inputs, bad options.
    """
    check_option(on_certificate)
    parts = list(_chunks(model, x0, x1, eps=eps, dtype=dtype, batch_size=batch_size, device=device,
                         keep_affine=keep_affine, progress=progress, method=method, **options))
    res = RegionResult.concat(parts[1:])
    # one verdict over the whole result (discover_iter gives one per chunk)
    enforce(res.continuity_gap, res.gap_tol, res.segment_index, "segment", parts[0], on_certificate)
    return res
