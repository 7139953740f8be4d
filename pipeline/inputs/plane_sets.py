"""Data-driven planes in input space: the 2-D analogue of :mod:`pipeline.inputs.paths`.

A plane set is ``n_planes`` planes ``x(u, v) = x0 + u (x1 - x0) + v (x2 - x0)``, each through
one *base* training image, on which :func:`pipeline.engine.planes.discover_plane` finds every linear
region; the sweep's discovery stage stores them as Zarr shards (``pipeline/store/planes.py``)
next to the 1-D paths, so the analysis can compare 2-D with 1-D density on the same networks::

    from pipeline.inputs.data import DataConfig, load
    from pipeline.inputs.plane_sets import PlaneSetConfig, bundle_planes
    planes = bundle_planes(load(DataConfig(name="digits")), PlaneSetConfig(kind="translate", n_planes=8))
    res = discover_plane(model, planes.x0, planes.x1, planes.x2, domain=planes.config.domain)

Base images are chosen exactly as the bases of the 1-D paths (:func:`pipeline.inputs.paths.choose_bases`
with the same ``n``, ``split``, ``seed`` and ``class_balanced``), and a plane's id is its base
image's index in the split, as a circle path's: plane ``i`` and path ``i`` go through the same
image, so the two tables join on ``(network, image)``.

Kinds:

``"translate"`` (domain: the parallelogram)
    The plane of the image's translations: with ``a = T(r, 0) - x`` and ``b = T(0, r) - x``
    (``T(dx, dy)`` the sub-pixel translation of :func:`pipeline.inputs.images.translate`, ``r`` the
    radius), the square ``x + s a + t b`` for ``s, t`` in ``[-1, 1]``, i.e. ``(u, v) = ((s + 1) / 2,
    (t + 1) / 2)``: the first-order span of the shifts within ``r`` px, where the circle paths
    of radius ``r`` run. It holds the image at its centre, and the image shifted by ``r`` right
    at ``(s, t) = (1, 0)`` and down at ``(0, 1)`` exactly; elsewhere it is the linear
    extrapolation of these.
``"images"`` (domain: the triangle)
    The plane through the base image and two other training images of two other classes,
    chosen by a generator seeded by ``(seed, base index)`` (so a plane does not depend on how
    many planes are built), shrunk towards the base image by ``scale``. A full triangle on a
    CIFAR-sized VGG8 holds tens of millions of regions (``docs/benchmarks.md``): keep ``scale``
    small there.

Pure: no files and no module state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from pipeline.inputs.images import translate
from pipeline.inputs.paths import PathConfig, check_bases, check_split, choose_bases

__all__ = ["PLANE_KINDS", "PlaneSetConfig", "PlaneSet", "build_planes", "bundle_planes", "plane_set_id"]

PLANE_KINDS = {"translate": "parallelogram", "images": "triangle"}  # kind -> its domain


@dataclass(frozen=True)
class PlaneSetConfig:
    """Which planes to build.

    Parameters
    ----------
    kind : str
        ``"translate"`` or ``"images"`` (see the module docstring).
    n_planes : int
        Number of planes, one per base image.
    radius : float or None
        ``"translate"``: the largest shift in pixels; ``None`` is ``side / 8``, the 1-D circle
        paths' default radius. Ignored by ``"images"``.
    scale : float
        ``"images"``: the triangle shrunk towards the base image, in ``(0, 1]``. Ignored by
        ``"translate"``.
    split, seed, class_balanced
        Choose the base images as :class:`pipeline.inputs.paths.PathConfig` does: keep them equal to
        the 1-D path set's to compare the two on the same images.
    """

    kind: str = "translate"
    n_planes: int = 8
    radius: float | None = None
    scale: float = 1.0
    split: str = "train"
    seed: int = 0
    class_balanced: bool = True

    def __post_init__(self):
        check_bases(self, PLANE_KINDS, "plane", "n_planes")
        if not (math.isfinite(self.scale) and 0.0 < self.scale <= 1.0):
            raise ValueError(f"scale must be in (0, 1], got {self.scale}")

    @property
    def domain(self) -> str:
        """The (u, v) domain of the kind: ``"parallelogram"`` or ``"triangle"``."""
        return PLANE_KINDS[self.kind]


def plane_set_id(cfg) -> str:
    """The one id of a plane set (8 hex digits), as :func:`pipeline.inputs.paths.path_set_id` for
    paths: it names the plane store (``<checkpoint>-planes-<id>.zarr``) and is its ``path_set``
    attribute."""
    from pipeline.config import short_id

    return short_id(cfg, PlaneSetConfig, "plane_set_id")


@dataclass(frozen=True, eq=False)
class PlaneSet:
    """The corners of ``P`` planes.

    Attributes
    ----------
    x0, x1, x2 : torch.Tensor
        float64 ``(P, C, H, W)``: the domain's corners, ``x(u, v) = x0 + u (x1 - x0) + v (x2 - x0)``.
    plane_id : np.ndarray
        ``(P,)`` int64, sorted: the base image's index in the split (as a circle path's id).
    corner_index : np.ndarray
        ``(P, 3)`` int64: the images spanning each plane (base, then the other two for
        ``"images"``; the base three times for ``"translate"``).
    label : np.ndarray
        ``(P,)`` int64: the base image's label.
    config : PlaneSetConfig
        With ``radius`` resolved for ``"translate"``.
    """

    x0: torch.Tensor
    x1: torch.Tensor
    x2: torch.Tensor
    plane_id: np.ndarray
    corner_index: np.ndarray
    label: np.ndarray
    config: PlaneSetConfig

    @property
    def n_planes(self) -> int:
        return int(self.plane_id.size)


def _others(labels: np.ndarray, base: int, seed: int) -> tuple[int, int]:
    """Two images of two classes other than the base image's (other images if the split has
    fewer classes), drawn by a generator seeded by ``(seed, base)``."""
    rng = np.random.default_rng([seed, base])
    classes = [c for c in rng.permutation(np.unique(labels)) if c != labels[base]]
    picked = [int(rng.choice(np.flatnonzero(labels == c))) for c in classes[:2]]
    rest = np.setdiff1d(np.arange(labels.size), [base, *picked])
    if rest.size < 2 - len(picked):
        raise ValueError(f"a plane needs three images, but the split has only {labels.size}")
    picked += [int(i) for i in rng.choice(rest, size=2 - len(picked), replace=False)]
    return picked[0], picked[1]


def build_planes(images: torch.Tensor, labels: np.ndarray, cfg: PlaneSetConfig) -> PlaneSet:
    """The planes of ``cfg`` through the images of one split (normalised, as the network sees
    them; ``labels`` clean for the training split)."""
    labels = check_split(images, labels)
    base = choose_bases(labels, PathConfig(n_paths=cfg.n_planes, split=cfg.split, seed=cfg.seed,
                                           class_balanced=cfg.class_balanced))
    x = images[torch.from_numpy(base)].detach().to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("the chosen base images contain nan or inf values")
    if cfg.kind == "translate":
        side = min(images.shape[2:])
        radius = float(cfg.radius) if cfg.radius is not None else side / 8
        if radius >= side:
            raise ValueError(f"radius {radius} px is not below the image side {side}: use a smaller radius "
                             "(None: side / 8)")
        cfg = replace(cfg, radius=radius)
        a = translate(x, 0.0, radius) - x  # content moved right by r
        b = translate(x, radius, 0.0) - x  # and down by r
        x0, x1, x2 = x - a - b, x + a - b, x - a + b  # (u, v) in [0, 1]^2 is (s, t) = (2u - 1, 2v - 1)
        corners = np.repeat(base[:, None], 3, axis=1)
    else:
        corners = np.array([[b, *_others(labels, int(b), cfg.seed)] for b in base], dtype=np.int64).reshape(-1, 3)
        x1 = images[torch.from_numpy(corners[:, 1])].detach().to(torch.float64)
        x2 = images[torch.from_numpy(corners[:, 2])].detach().to(torch.float64)
        x0 = x
        if cfg.scale != 1.0:
            x1, x2 = x0 + cfg.scale * (x1 - x0), x0 + cfg.scale * (x2 - x0)
    for a in (base, corners):
        a.flags.writeable = False
    label = labels[base].astype(np.int64)
    label.flags.writeable = False
    return PlaneSet(x0.contiguous(), x1.contiguous(), x2.contiguous(), base, corners, label, cfg)


def bundle_planes(bundle, cfg: PlaneSetConfig) -> PlaneSet:
    """:func:`build_planes` on ``bundle.images(cfg.split)``, bases chosen by the clean labels of
    the training split (as :func:`pipeline.inputs.paths.bundle_paths`)."""
    labels = bundle.clean_labels if cfg.split == "train" else bundle.labels(cfg.split)
    return build_planes(bundle.images(cfg.split), labels, cfg)
