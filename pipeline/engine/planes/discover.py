"""The planes' entry points, :func:`discover_plane` and :func:`discover_plane_iter`, and the
driver under them: the options checked, the planes cut in chunks (each a tile through
:class:`PlaneMode` on the traced graph), each chunk assembled and certified."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import numpy as np
import torch

from pipeline.engine.certificate import check_option, enforce
from pipeline.engine.linearize import forward_blocked
from pipeline.engine.planes.assemble import Chunk, Pieces, assemble_chunk
from pipeline.engine.planes.certify import CERTIFY
from pipeline.engine.planes.mode import PlaneMode
from pipeline.engine.planes.result import DOMAINS, PlaneResult
from pipeline.engine.planes.tiles import Tile
from pipeline.engine.prepared import as_prepared, preflight
from pipeline.engine.subdivide import run_graph
from pipeline.engine.worksize import shrink_on_oom, work_sizes

__all__ = ["MIN_AREA", "default_rel_tol", "discover_plane", "discover_plane_iter"]

MIN_AREA = 1e-14  # default: pieces below this fraction of the domain's area are dropped (and counted)


def _as_batch(x, name):
    from pipeline.engine.lines import _as_tensor

    return _as_tensor(x, name, rows="P")


def _check_planes(x0, x1, x2):
    xs = [_as_batch(x, n) for x, n in ((x0, "x0"), (x1, "x1"), (x2, "x2"))]
    if not (xs[0].shape == xs[1].shape == xs[2].shape):
        raise ValueError(f"x0, x1 and x2 must have the same shape (P, *input_shape); got "
                         f"{[tuple(x.shape) for x in xs]}")
    if xs[0].ndim < 2:
        raise ValueError(f"x0, x1 and x2 must be batches of plane corners, shape (P, *input_shape); got "
                         f"{tuple(xs[0].shape)}. For one plane use x0[None], x1[None], x2[None].")
    if xs[0].shape[0] == 0:
        raise ValueError("no planes given: x0, x1 and x2 have P = 0 rows")
    for name, x in zip(("x0", "x1", "x2"), xs):
        bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
        if bad.any():
            raise ValueError(f"{name} has non-finite values (nan or inf) in plane(s) "
                             f"{bad.nonzero().flatten()[:5].tolist()}")
    aa, ab, bb = gram_rows(xs[1] - xs[0], xs[2] - xs[0]).unbind(1)
    flat_planes = (aa * bb - ab ** 2 <= 1e-12 * aa * bb).nonzero().flatten()  # sin^2 of the corner angle
    if flat_planes.numel():
        raise ValueError(f"plane(s) {flat_planes[:5].tolist()} have no area: x1 - x0 and x2 - x0 are zero or "
                         "parallel (a repeated image?), so the 'plane' is a segment and a density per unit area "
                         "would be infinite. Give three distinct images not on one line; for a segment, use "
                         "pipeline.discover")
    return xs


def gram_rows(d1: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
    """Each plane's Gram matrix of its sides ``d1, d2`` (``(P, *input_shape)``) as a ``(P, 3)``
    float64 row ``d1.d1, d1.d2, d2.d2``: lengths, angles and area in input space."""
    a, b = d1.double().reshape(d1.shape[0], -1), d2.double().reshape(d2.shape[0], -1)
    return torch.stack([(a * a).sum(1), (a * b).sum(1), (b * b).sum(1)], 1)


def default_rel_tol(dtype) -> float:
    """The default ``rel_tol`` in ``dtype``: 64 machine epsilons."""
    return 64 * torch.finfo(dtype).eps


def discover_plane(model, x0, x1, x2, *, dtype=torch.float64, device=None, domain: str = "triangle",
                   keep_affine: bool = True, progress: bool = False, on_certificate: str = "raise",
                   **options) -> PlaneResult:
    """Every linear region of ``model`` on the planes ``x0[p] + u (x1[p] - x0[p]) + v (x2[p] - x0[p])``.

    Parameters
    ----------
    model : torch.nn.Module or PreparedModel
        As for :func:`pipeline.engine.lines.discover` (``method="subdivide"``: a torch.fx-traceable
        network of affine layers, ReLU / LeakyReLU, clamps between constant bounds and
        max-pooling), in eval mode.
    x0, x1, x2 : Tensor or ndarray, shape ``(P, *input_shape)``
        The corners of each plane's domain.
    dtype, device
        Working precision (float64 default) and device (default: the model's; a GPU gives the
        CPU's regions: the random choices are drawn on the CPU and moved).
    domain : {"triangle", "parallelogram"}
        ``u, v >= 0, u + v <= 1`` (area 1/2), or the unit square in ``(u, v)``.
    keep_affine : bool
        Keep each region's ``intercept (R, K)`` and ``grad (R, 2, K)``.
    progress : bool
        A tqdm bar over planes.
    **options
        ``chunk_planes`` (planes per chunk, 8), ``max_vertices`` (vertices per tile before it
        is split; default from the largest activation, about 64 MB per live float64 tensor),
        ``rel_tol`` (a vertex lies on a line when ``|s| <= rel_tol x`` the unit's largest
        ``|z|`` on the tile; 64 eps), ``min_area`` (pieces smaller than this fraction of the
        domain are dropped and counted; 1e-14), ``certify`` (the network at each region's
        centroid against its map: ``"all"``, the default, screens every centroid with a float32
        copy of the network and evaluates in float64 16 regions per plane and every region the
        screen cannot vouch for; ``"strict"`` evaluates every centroid in float64; ``"sample"``
        only the 16; ``None`` none; True and False mean "all" and None), ``row_block``,
        ``seed`` (the choice of cut order).
    on_certificate : {"raise", "warn"}
        What a failing certificate does: a plane fails when its ``continuity_gap`` exceeds its
        ``gap_tol`` (:func:`pipeline.engine.certificate.gap_tolerance`: 1e-7 of the outputs' scale in
        float64, 1e-2 in float32). "raise" (default): :class:`CertificateError` naming the
        planes, gaps and tolerances; "warn": a :class:`CertificateWarning` with the same text,
        and the result with ``certified`` False on the failing planes.

    Raises
    ------
    UnsupportedOpError
        As in 1-D: the network uses an op that is not piecewise linear or not followed.
    CertificateError
        Some plane's certificate failed (``on_certificate="raise"``): an op read as affine
        that is not, or a missed kink.
    ValueError, TypeError
        Bad shapes or options, a model in training mode or not traceable.
    """
    check_option(on_certificate)
    chunks = _plane_chunks(model, x0, x1, x2, dtype=dtype, device=device, domain=domain, keep_affine=keep_affine,
                           progress=progress, **options)
    prepared = next(chunks)
    res = PlaneResult.concat(list(chunks))
    enforce(res.continuity_gap, res.gap_tol, res.plane_index, "plane", prepared, on_certificate)
    return res


def discover_plane_iter(model, x0, x1, x2, *, dtype=torch.float64, device=None, domain: str = "triangle",
                        keep_affine: bool = True, progress: bool = False, chunk_planes: int = 8,
                        max_vertices: int | None = None, rel_tol: float | None = None, min_area: float = MIN_AREA,
                        certify: str | None = "all", row_block: int | None = None,
                        seed: int = 0, on_certificate: str = "raise", assume_affine=(),
                        memory_bytes: int | None = None) -> Iterator[PlaneResult]:
    """Stream :func:`discover_plane` over chunks of ``chunk_planes`` consecutive planes; a chunk
    whose certificate fails raises :class:`CertificateError` before it is yielded (see
    ``on_certificate`` in :func:`discover_plane`)."""
    check_option(on_certificate)
    chunks = _plane_chunks(model, x0, x1, x2, dtype=dtype, device=device, domain=domain, keep_affine=keep_affine,
                           progress=progress, chunk_planes=chunk_planes, max_vertices=max_vertices, rel_tol=rel_tol,
                           min_area=min_area, certify=certify, row_block=row_block, seed=seed,
                           assume_affine=assume_affine, memory_bytes=memory_bytes)
    prepared = next(chunks)
    for chunk in chunks:
        enforce(chunk.continuity_gap, chunk.gap_tol, chunk.plane_index, "plane", prepared, on_certificate)
        yield chunk


def _check_options(certify, domain, dtype, chunk_planes, max_vertices, min_area):
    """Refuse bad options by name; returns ``certify`` with True and False read as "all" and None."""
    if isinstance(certify, bool):
        certify = "all" if certify else None
    if certify not in CERTIFY:
        raise ValueError(f"certify must be one of {CERTIFY}, got {certify!r}")
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {tuple(DOMAINS)}, got {domain!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float64 (default) or torch.float32, got {dtype}")
    if chunk_planes < 1 or (max_vertices is not None and max_vertices < 16):
        raise ValueError("chunk_planes must be >= 1 and max_vertices >= 16")
    if not (0.0 <= min_area < 1e-3):
        raise ValueError(f"min_area is a fraction of the domain's area, in [0, 1e-3); got {min_area}")
    return certify


def _plane_chunks(model, x0, x1, x2, *, dtype=torch.float64, device=None, domain: str = "triangle",
                  keep_affine: bool = True, progress: bool = False, chunk_planes: int = 8,
                  max_vertices: int | None = None, rel_tol: float | None = None, min_area: float = MIN_AREA,
                  certify: str | None = "all", row_block: int | None = None, seed: int = 0, assume_affine=(),
                  memory_bytes: int | None = None):
    """:func:`discover_plane_iter` without the certificate's verdict: yields the
    :class:`pipeline.engine.prepared.PreparedModel` first, then the chunks."""
    certify = _check_options(certify, domain, dtype, chunk_planes, max_vertices, min_area)
    prepared = as_prepared(model, dtype, device, assume_affine)
    x0, x1, x2 = (x.to(dtype) for x in _check_planes(x0, x1, x2))
    preflight(prepared, x0[:1], x1[:1])  # every op found, affine or refused by name, before any work
    example = x0[:1].to(device=prepared.device)
    plan = prepared.plan_for(example)
    sizes = work_sizes(prepared, x0[:1], "planes", max_vertices=max_vertices, row_block=row_block,
                       memory_bytes=memory_bytes)
    max_vertices = sizes.max_vertices
    yield prepared
    run = _ChunkRunner(prepared, plan, example, x0, x1, x2, domain=domain, keep_affine=keep_affine, certify=certify,
                       row_block=sizes.row_block, rel_tol=default_rel_tol(dtype) if rel_tol is None else rel_tol,
                       min_area=min_area, seed=seed)
    n_planes = x0.shape[0]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_planes, unit="plane", desc="plane regions")
    try:
        for lo in range(0, n_planes, chunk_planes):
            hi = min(n_planes, lo + chunk_planes)
            result, max_vertices = shrink_on_oom("planes: a chunk of planes", max_vertices, partial(run, lo, hi),
                                                 floor=16)
            yield result
            if bar is not None:
                bar.update(hi - lo)
    finally:
        if bar is not None:
            bar.close()


class _ChunkRunner:
    """What every chunk of one call shares; ``runner(lo, hi, max_vertices)`` finds the regions
    of planes ``lo:hi`` and leaves nothing behind when it fails (:func:`shrink_on_oom` redoes it)."""

    def __init__(self, prepared, plan, example, x0, x1, x2, *, domain, keep_affine, certify, row_block, rel_tol,
                 min_area, seed):
        self.prepared, self.plan, self.example, self.x0 = prepared, plan, example, x0
        self.domain, self.keep_affine, self.certify = domain, keep_affine, certify
        self.row_block, self.rel_tol, self.min_area, self.seed = row_block, rel_tol, min_area, seed
        self.d1, self.d2 = x1 - x0, x2 - x0
        gram = gram_rows(self.d1, self.d2)
        aa, ab, bb = gram.unbind(1)
        self.gram = gram.numpy()
        self.input_area = (aa * bb - ab ** 2).clamp_min(0).sqrt().numpy()
        self.corners = torch.tensor(DOMAINS[domain].corners, dtype=torch.float64, device=prepared.device)

    def _corner_inputs(self, lo: int, hi: int) -> torch.Tensor:
        """The network's inputs at every corner of planes ``lo:hi`` (corners of a plane together)."""
        c, n, dev, dtype = self.corners.shape[0], hi - lo, self.prepared.device, self.prepared.dtype
        u = self.corners[:, 0].repeat(n)
        v = self.corners[:, 1].repeat(n)
        rep = lambda t: t[lo:hi].to(dev).repeat_interleave(c, 0)  # noqa: E731
        bcast = (-1,) + (1,) * (self.x0.ndim - 1)
        return rep(self.x0) + u.to(dtype).view(bcast) * rep(self.d1) + v.to(dtype).view(bcast) * rep(self.d2)

    def __call__(self, lo: int, hi: int, max_vertices: int) -> PlaneResult:
        c, n, dev = self.corners.shape[0], hi - lo, self.prepared.device
        x = self._corner_inputs(lo, hi)
        tile = Tile(plane=torch.arange(n, device=dev), count=torch.full((n,), c, dtype=torch.long, device=dev),
                    uv=self.corners.repeat(n, 1), env={self.plan.input: x}, pos=0,
                    h1=torch.zeros(n, dtype=torch.long, device=dev), h2=torch.zeros(n, dtype=torch.long, device=dev))
        mode = PlaneMode(self.plan, row_block=self.row_block, max_vertices=max_vertices, rel_tol=self.rel_tol,
                         min_area=self.min_area * DOMAINS[self.domain].area, n_planes=n, seed=self.seed,
                         assumed=self.prepared.assumed, example=self.example)
        parts = []

        def emit(t, out):  # kept on the device until the chunk is done: one copy to the host
            parts.append((t.plane.clone(), t.count.clone(), t.uv.clone(), out.double(), t.h1.clone(), t.h2.clone()))

        with torch.no_grad():
            # the corners x0, x1, x2 (and x1 + x2 - x0 for the parallelogram)
            f_corners = forward_blocked(self.prepared.work, x, self.row_block).double().reshape(n, c, -1)
            if c == 4:
                f_corners = f_corners[:, [0, 1, 3, 2]]
            run_graph(self.plan, mode, tile, max_vertices, emit)
        cat = lambda k: torch.cat([p[k] for p in parts]).cpu().numpy()  # noqa: E731
        chunk = Chunk(plane_index=np.arange(lo, hi), x0=self.x0[lo:hi], d1=self.d1[lo:hi], d2=self.d2[lo:hi],
                      input_area=self.input_area[lo:hi], f_corners=f_corners.cpu().numpy(),
                      gram=self.gram[lo:hi])
        pieces = Pieces(plane=cat(0), count=cat(1), uv=cat(2), f=cat(3), h1=cat(4), h2=cat(5),
                        dropped_pieces=mode.dropped_pieces.copy(), dropped_area=mode.dropped_area.copy())
        return assemble_chunk(self.prepared, chunk, pieces, domain=self.domain, keep_affine=self.keep_affine,
                              certify=self.certify, row_block=self.row_block)
