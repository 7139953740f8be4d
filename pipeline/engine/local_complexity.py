"""Local complexity: how many neurons' boundaries cross a small neighbourhood of a point.

    from pipeline.engine.local_complexity import local_complexity
    res = local_complexity(net.eval(), x, radius=0.05, n_dirs=25, seed=0)
    res.lc            # (B,) neurons whose sign is not constant over each point's neighbourhood
    res.per_layer     # (B, L) the same, per piecewise-linear op of the pass; res.layers names them

The measure of Humayun, Balestriero & Baraniuk, "Deep Networks Always Grok and Here is Why"
(ICML 2024, arXiv:2402.15555), as their code computes it (github.com/AhmedImtiazPrio/grok-adversarial,
``samplers.py`` and ``local_complexity.py``; the paper points to it as bit.ly/grok-adversarial):

* the neighbourhood of ``x`` is the cross-polytope with the ``2 n_dirs`` vertices
  ``x + r u_k`` and ``x - r u_k``, ``u_1..u_n_dirs`` random orthonormal directions of the input
  space; one frame, drawn from ``seed``, serves every point of a call (as theirs: one seeded
  frame per call). The centre is not a vertex unless ``include_centre`` (their
  ``get_ortho_hull_around_samples``, the sampler of their training scripts, leaves it out;
  ``..._w_orig`` adds it);
* the vertices go through the network as ordinary inputs; a neuron counts when the sign of its
  pre-activation (``-1``, ``0`` or ``1``, torch.sign) is not the same at every vertex. For a
  first-layer neuron that is exactly "its hyperplane ``w.x + b = 0`` meets the convex hull of
  the vertices" (an affine function takes both signs, or a zero, on a polytope iff on its
  vertices), except for a hyperplane containing the whole hull (zero at every vertex: not
  counted, as theirs). Deeper, the boundary is bent and the vertex test is their estimate.

Which neurons. Every piecewise-linear op the engine intercepts is seen (``F.relu``,
``torch.relu``, ``nn.ReLU``, in place or not: one :class:`torch.overrides.TorchFunctionMode`
sees them alike), and

* ``"relu"`` (ReLU, LeakyReLU, PReLU, abs: one kink at 0 per unit): one neuron per unit, its
  pre-activation the op's input;
* ``"clamp"`` (hardtanh, ReLU6, clamp with constant bounds): one boundary per finite bound and
  unit, each counted on its own (the sign of ``z - lo`` and of ``z - hi``);
* ``"max"`` (max-pooling and other maxima): not counted. Humayun et al. count neurons (their
  hooks sit on the Linear / BatchNorm outputs that feed a ReLU); a pooling switch is a region
  boundary too, but it is not a neuron's hyperplane. The op still runs, so the layers after it
  see the right values.

Their MLP hooks also take the last Linear layer (the logits, which feed no ReLU); here only the
inputs of piecewise-linear ops count, so the logits do not. Counts here are for one radius;
their figures show several.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode

from pipeline.engine import allowlist, pwl
from pipeline.engine.prepared import as_prepared

__all__ = ["LocalComplexity", "local_complexity", "frame", "neighbourhood", "segment_points", "lc_along_segments"]


@dataclass(frozen=True)
class LocalComplexity:
    """Local complexity of a batch of points (see the module docstring).

    ``lc``: ``(B,)`` int64, the boundaries crossing each point's neighbourhood; ``per_layer``:
    ``(B, L)`` the same per counted op of the pass, named in ``layers`` (``"relu#0"``,
    ``"clamp#3"``: kind and position among the pass's piecewise-linear ops) with ``units``
    (boundaries per op). ``radius``, ``n_dirs``, ``seed``, ``include_centre`` as given.
    """

    lc: torch.Tensor
    per_layer: torch.Tensor
    layers: tuple
    units: tuple
    radius: float
    n_dirs: int
    seed: int
    include_centre: bool


def frame(dim: int, n_dirs: int, seed: int = 0) -> torch.Tensor:
    """``n_dirs`` random orthonormal directions of ``R^dim`` as the rows of a ``(n_dirs, dim)``
    float64 tensor: the Q of a seeded Gaussian matrix's QR, signs fixed so that the frame is
    uniformly distributed (Haar) and the same for the same seed on every machine (drawn on the CPU)."""
    if not 1 <= n_dirs <= dim:
        raise ValueError(f"n_dirs must be between 1 and the input dimension {dim}, got {n_dirs}")
    g = torch.Generator().manual_seed(int(seed))
    q, r = torch.linalg.qr(torch.randn(dim, n_dirs, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).T.contiguous()


def neighbourhood(x: torch.Tensor, radius: float, directions: torch.Tensor,
                  include_centre: bool = False) -> torch.Tensor:
    """The vertices ``x + r u_k``, then ``x - r u_k`` (then ``x`` with ``include_centre``) of
    each point: ``(B, V, *input_shape)`` for ``x`` ``(B, *input_shape)`` and ``directions``
    ``(n_dirs, D)``."""
    b, shape = x.shape[0], x.shape[1:]
    u = radius * directions.to(device=x.device, dtype=x.dtype)
    flat = x.reshape(b, 1, -1)
    parts = [flat + u, flat - u] + ([flat] if include_centre else [])
    return torch.cat(parts, dim=1).reshape(b, -1, *shape)


def _varies(z: torch.Tensor, b: int) -> torch.Tensor:
    """Per point, the units whose sign is not the same at all of the point's vertices, counted:
    ``z`` is ``(b * V, ...)`` with each point's vertices consecutive."""
    s = torch.sign(z.reshape(b, -1, z[0].numel()))
    return (s != s[:, :1]).any(dim=1).sum(dim=1)


class _SignMode(TorchFunctionMode):
    """Runs a pass as it is, counting per point the units of each piecewise-linear op whose
    pre-activation changes sign over the point's vertices. Other ops are checked as the
    region engine checks them (:func:`pipeline.engine.allowlist.run_checked`)."""

    def __init__(self, points: int, assumed=None):
        super().__init__()
        self.points, self.assumed = points, assumed
        self.taint = allowlist.Taint()
        self.counts: list = []  # (kind, units, (b,) counts); None counts for an op not counted
        self.position = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        call = pwl.recognise(func, args, kwargs, self.taint.any((args, kwargs)))
        if call is None:
            return allowlist.run_checked(func, args, kwargs, self.taint, self.assumed)
        z, b = call.input, self.points
        if call.kind == "relu":
            self.counts.append((f"relu#{self.position}", z[0].numel(), _varies(z, b)))
        elif call.kind == "clamp":
            bounds = call.clamp_bounds()
            n = sum(_varies(z - c, b) for c in bounds)
            self.counts.append((f"clamp#{self.position}", z[0].numel() * len(bounds), n))
        self.position += 1
        out = func(*args, **kwargs)  # after the count: an in-place op overwrites its input
        self.taint.mark(out)
        return out


def local_complexity(model, x: torch.Tensor, radius: float, n_dirs: int = 25, seed: int = 0, *,
                     directions: torch.Tensor | None = None, include_centre: bool = False,
                     dtype=torch.float64, device=None, row_block: int = 4096) -> LocalComplexity:
    """Local complexity of ``model`` at each point of ``x`` (Humayun et al. 2024; see the module
    docstring for the definition and its sources).

    Parameters
    ----------
    model : torch.nn.Module or PreparedModel
        In eval mode; any network the region engine handles (other ops are refused by name).
    x : tensor ``(B, *input_shape)``
        The points.
    radius : float
        The cross-polytope's radius ``r`` (distance of each vertex from its point; Euclidean, in
        the network's input units).
    n_dirs : int
        Orthonormal directions, ``2 n_dirs`` vertices (their ``hull_n = 50`` is ``n_dirs=25``).
    seed : int
        Draws the frame (:func:`frame`); ignored when ``directions`` are given.
    directions : tensor ``(n_dirs, D)``, optional
        The frame itself (orthonormal rows expected, not checked: any directions give the
        vertex test on ``x +- r u_k``).
    include_centre : bool
        Add ``x`` itself to the vertices.
    dtype, device
        As :func:`pipeline.engine.lines.discover` (float64 by default).
    row_block : int
        Vertices per forward pass, at least one point's (memory only; counts are unchanged).

    Returns
    -------
    LocalComplexity
    """
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    ready = as_prepared(model, dtype, device)
    x = x.to(device=ready.device, dtype=ready.dtype)
    if directions is None:
        directions = frame(x[0].numel(), n_dirs, seed)
    elif directions.ndim != 2 or directions.shape[1] != x[0].numel():
        raise ValueError(f"directions must be (n_dirs, {x[0].numel()}), got {tuple(directions.shape)}")
    n_vertices = 2 * directions.shape[0] + int(include_centre)
    per = max(1, row_block // n_vertices)
    blocks, names, units = [], None, None
    for i in range(0, x.shape[0], per):
        verts = neighbourhood(x[i:i + per], radius, directions, include_centre)
        b = verts.shape[0]
        mode = _SignMode(b, ready.assumed)
        flat = verts.reshape(b * n_vertices, *x.shape[1:])
        mode.taint.mark(flat)
        with torch.no_grad(), mode:
            ready.work(flat)
        if names is None:
            names, units = tuple(c[0] for c in mode.counts), tuple(c[1] for c in mode.counts)
        blocks.append(torch.stack([c[2] for c in mode.counts], 1) if mode.counts
                      else torch.zeros(b, 0, dtype=torch.long, device=x.device))
    per_layer = torch.cat(blocks).cpu() if blocks else torch.zeros(0, 0, dtype=torch.long)
    return LocalComplexity(per_layer.sum(1), per_layer, names or (), units or (), float(radius),
                           int(directions.shape[0]), int(seed), bool(include_centre))


def segment_points(x0: torch.Tensor, x1: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` equally spaced points of each segment, ``x0 + (i / n) (x1 - x0)`` for ``i = 0..n-1``:
    ``(S, n, *input_shape)``. The end is left out, so the ``M n`` points of a closed path of ``M``
    segments are equally spaced in the segments' parameter and none is taken twice."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    t = (torch.arange(n, dtype=x0.dtype, device=x0.device) / n).reshape(1, n, *([1] * (x0.ndim - 1)))
    return x0[:, None] + t * (x1 - x0)[:, None]


def lc_along_segments(model, x0: torch.Tensor, x1: torch.Tensor, n: int, radius: float, n_dirs: int = 25,
                      seed: int = 0, **options) -> torch.Tensor:
    """Local complexity at the :func:`segment_points` of each segment: ``(S, n)`` int64 (one
    frame for all of them). ``options``: as :func:`local_complexity`."""
    pts = segment_points(x0, x1, n)
    res = local_complexity(model, pts.reshape(-1, *x0.shape[1:]), radius, n_dirs, seed, **options)
    return res.lc.reshape(x0.shape[0], n)
