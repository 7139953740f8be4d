"""Data-driven trajectories in input space: the paths along which linear regions are counted.

Gamba et al. (AISTATS 2022, App. E/F), after Novak et al. (2018), probe a network along paths
that stay close to the data rather than along random lines. Each path is a chain of *anchors*
(images) joined by straight segments, which :func:`pipeline.engine.lines.discover` takes as
``x0, x1``::

    from pipeline.inputs.data import DataConfig, load
    from pipeline.inputs.paths import PathConfig, bundle_paths
    from pipeline.engine.lines import discover
    paths = bundle_paths(load(DataConfig(name="digits")), PathConfig(kind="circle", n_paths=16))
    res = discover(model, paths.x0, paths.x1)     # res.density[s] belongs to paths.path_id[s]

Kinds (``M = PathConfig.anchors``):

``"circle"`` (closed)
    A base image translated (sub-pixel, bilinear) by ``(dx, dy) = (r cos θ_j, r sin θ_j)``,
    ``θ_j = 2πj/M``, ``j = 0..M-1``; anchor ``j`` is joined to ``j+1`` and the last back to the
    first. The base image itself is not an anchor: anchor 0 is already shifted by ``r`` to the
    right, as the paper's anchors are the points on the circle.
``"shift"`` (open)
    Weak augmentation: the base image shifted right by whole pixels, ``k - M//2`` px for
    ``k = 0..M`` (``M + 1`` anchors, ``M`` segments, the base image in the middle, not closed).
    With ``M = 8`` on 32x32 images this spans exactly the ±4 px of the training augmentation.
``"noise"`` (closed)
    A control without data: ``M`` independent images of uniform noise with the training split's
    per-pixel mean and std, joined in a loop like ``"circle"``.

Every path depends on the data and the config only, never on a model: networks compared with
the same ``PathConfig`` and data see the same segments, in the same order, with the same ids.

Pure: no files and no module state; all randomness comes from generators seeded by the config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from pipeline.inputs.images import circle_path, pixel_stats, shifted

__all__ = ["KINDS", "PathConfig", "PathSet", "choose_bases",
           "build_paths", "bundle_paths", "path_set_id", "check_split", "check_bases"]

KINDS = ("circle", "shift", "noise")
CLOSED = ("circle", "noise")  # "shift" is the only open kind
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class PathConfig:
    """Which paths to build.

    Parameters
    ----------
    kind : str
        ``"circle"``, ``"shift"`` or ``"noise"`` (see the module docstring).
    n_paths : int
        Number of paths: of base images for ``"circle"`` and ``"shift"``.
    anchors : int
        ``M``, at least 2: anchors of a closed path and segments of every path (the paper: 8).
        A closed path with ``M = 2`` runs along one segment and back.
    radius : float or None
        Translation radius in pixels for ``"circle"`` (ignored by the other kinds). ``None``
        scales the paper's 4 px on 32x32 images to the image side, ``side / 8``: 1 px on the
        8x8 digits. :func:`build_paths` records the resolved value in ``PathSet.config``.
    split : str
        ``"train"``, ``"val"`` or ``"test"``: where the base images come from. Only
        :func:`bundle_paths` reads it; :func:`build_paths` is handed that split's images.
    seed : int
        Chooses the base images (and seeds the noise). Keep it fixed across the networks
        compared so that they are probed on the same paths.
    class_balanced : bool
        Choose base images round-robin over the classes, so each class gets ``n_paths // K``
        or one more (see :func:`choose_bases`); otherwise uniformly at random.
    """

    kind: str = "circle"
    n_paths: int = 64
    anchors: int = 8  # the paper's M
    radius: float | None = None  # None: side / 8, the paper's 4 px on 32x32
    split: str = "train"
    seed: int = 0
    class_balanced: bool = True  # otherwise a small n_paths can miss classes entirely

    def __post_init__(self):
        check_bases(self, KINDS, "path", "n_paths")
        if self.anchors < 2:
            raise ValueError(f"anchors must be >= 2 (a path needs two anchors to have a segment), "
                             f"got {self.anchors}")


def check_bases(cfg, kinds, what: str, count: str) -> None:
    """The checks a path set's and a plane set's configs share (:class:`PathConfig`,
    :class:`pipeline.inputs.plane_sets.PlaneSetConfig`): their base images are chosen alike.

    Parameters
    ----------
    cfg
        Reads ``kind``, ``split``, ``radius``, ``seed`` and the field named ``count``.
    kinds
        The kinds known to ``cfg``'s class.
    what : str
        ``"path"`` or ``"plane"``, in the message of an unknown kind.
    count : str
        The field holding how many paths or planes (``n_paths``, ``n_planes``).
    """
    if cfg.kind not in kinds:
        raise ValueError(f"unknown {what} kind {cfg.kind!r}; known kinds: {', '.join(kinds)}")
    if cfg.split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {cfg.split!r}")
    n = getattr(cfg, count)
    if n < 1:
        raise ValueError(f"{count} must be >= 1, got {n}")
    if cfg.radius is not None and not (math.isfinite(cfg.radius) and cfg.radius > 0):
        raise ValueError(f"radius must be a positive number of pixels or None (side / 8), got {cfg.radius}")
    if cfg.seed < 0:
        raise ValueError(f"seed must be >= 0, got {cfg.seed}")


def path_set_id(cfg) -> str:
    """The one id of a path set (8 hex digits): the hash of its :class:`PathConfig` as written
    in the discovery config (a mapping is read as one). It names the store file
    (``<checkpoint>-<id>.zarr``), is saved in the store as ``path_set`` and is the analysis'
    ``path_set`` label, so a table row names the store it came from."""
    from pipeline.config import short_id

    return short_id(cfg, PathConfig, "path_set_id")


@dataclass(frozen=True, eq=False)
class PathSet:
    """Segments of ``n_paths`` paths, ``M`` consecutive segments per path, path after path.

    Attributes
    ----------
    x0, x1 : torch.Tensor
        float64 ``(S, C, H, W)`` segment starts and ends, ``S = n_paths * M``; within a path
        ``x1[s] == x0[s + 1]``, and for closed paths the last ``x1`` is the path's first ``x0``.
    path_id : np.ndarray
        ``(S,)`` int64: the path of each segment. For ``"circle"`` and ``"shift"`` the index of
        the base image within its split, so that paths line up across networks and runs; for
        ``"noise"`` the path number ``0..n_paths-1`` (which, with the seed, fixes its images).
    segment_index : np.ndarray
        ``(S,)`` int64: position of the segment within its path, ``0..M-1``.
    base_index : np.ndarray
        ``(n_paths,)`` int64, sorted: index of each base image in the split; -1 for ``"noise"``.
    label : np.ndarray
        ``(n_paths,)`` int64: the base image's label (as passed to :func:`build_paths`); -1 for
        ``"noise"``.
    config : PathConfig
        The config used, with ``radius`` resolved for ``"circle"``.
    """

    x0: torch.Tensor
    x1: torch.Tensor
    path_id: np.ndarray
    segment_index: np.ndarray
    base_index: np.ndarray
    label: np.ndarray
    config: PathConfig

    @property
    def closed(self) -> bool:
        return self.config.kind in CLOSED

    @property
    def n_paths(self) -> int:
        return len(self.base_index)

    def anchors(self) -> torch.Tensor:
        """The anchors of every path: ``(n_paths, M, C, H, W)`` for closed paths,
        ``(n_paths, M + 1, C, H, W)`` for open ones (the last anchor is the last segment's end)."""
        m = self.config.anchors
        starts = self.x0.reshape(self.n_paths, m, *self.x0.shape[1:])
        if self.closed:
            return starts
        ends = self.x1.reshape(self.n_paths, m, *self.x1.shape[1:])
        return torch.cat([starts, ends[:, -1:]], dim=1)


def choose_bases(labels: np.ndarray, cfg: PathConfig) -> np.ndarray:
    """Indices of the ``cfg.n_paths`` base images, chosen by ``cfg.seed``.

    With ``cfg.class_balanced``, images are taken round-robin over the classes present in
    ``labels``: one of each class (classes in a seeded random order) before a second of any,
    and so on. Each class thus gets ``n_paths // K`` images, ``n_paths % K`` seeded classes one
    more, and a class that runs out of images leaves its turns to the others. Without it, a
    seeded uniform sample. Either way a smaller ``n_paths`` with the same seed chooses a subset.

    Parameters
    ----------
    labels : np.ndarray
        ``(N,)`` integer labels of the split. Only their number matters without class balance.
        Pass clean labels: with corrupted ones the choice would change with the label noise.
    cfg : PathConfig
        Reads ``n_paths``, ``seed`` and ``class_balanced``.

    Returns
    -------
    np.ndarray
        ``(n_paths,)`` int64, sorted, distinct.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (labels.size == 0 or np.issubdtype(labels.dtype, np.integer)):
        raise TypeError(f"labels must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}")
    n = labels.size
    if cfg.n_paths > n:
        raise ValueError(f"n_paths={cfg.n_paths} base images asked for, but the split has only {n} images; "
                         f"lower n_paths")
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(n)  # drawn first either way, so the seed means the same in both modes
    if not cfg.class_balanced:
        return np.sort(perm[:cfg.n_paths]).astype(np.int64)
    _, cls = np.unique(labels[perm], return_inverse=True)
    class_turn = rng.permutation(cls.max() + 1)  # order of the classes within each round
    # Rank of each image among those of its class, in the order of perm.
    by_class = np.argsort(cls, kind="stable")
    first = np.searchsorted(cls[by_class], cls[by_class], side="left")
    rank = np.empty(n, dtype=np.int64)
    rank[by_class] = np.arange(n) - first
    order = np.lexsort((class_turn[cls], rank))  # by round, then by class turn
    return np.sort(perm[order[:cfg.n_paths]]).astype(np.int64)


def check_split(images, labels) -> np.ndarray:
    """``labels`` as an array, after checking ``images`` is a float ``(N, C, H, W)`` tensor and
    ``labels`` has shape ``(N,)``: the split :func:`build_paths` and
    :func:`pipeline.inputs.plane_sets.build_planes` are handed."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.ndim != 4:
        raise TypeError(f"images must be a floating-point torch.Tensor (N, C, H, W), got "
                        f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}")
    labels = np.asarray(labels)
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},) to match the images, got {labels.shape}")
    return labels


def build_paths(images: torch.Tensor, labels: np.ndarray, cfg: PathConfig,
                pixel_mean: torch.Tensor | None = None, pixel_std: torch.Tensor | None = None) -> PathSet:
    """Segments of ``cfg.n_paths`` paths through the images of one split.

    Parameters
    ----------
    images : torch.Tensor
        ``(N, C, H, W)`` images of the split, already normalised as the network sees them
        (``bundle.images(split)``); they are not normalised again. For ``"noise"`` only their
        shape is used.
    labels : np.ndarray
        ``(N,)`` their labels: choose the base images when class-balanced and are recorded.
        Use clean labels for the training split (``bundle.clean_labels``).
    cfg : PathConfig
    pixel_mean, pixel_std : torch.Tensor, optional
        Required for ``"noise"``: per-pixel mean and std of the normalised training images,
        broadcastable to ``(C, H, W)`` (:func:`pixel_stats`). Each anchor is uniform on
        ``[mean - √3 std, mean + √3 std]`` independently per pixel (that uniform has this mean
        and std), drawn from a generator seeded by ``(cfg.seed, path)``.

    Returns
    -------
    PathSet
    """
    labels = check_split(images, labels)
    shape = tuple(images.shape[1:])
    side = min(shape[1:])
    m = cfg.anchors

    if cfg.kind == "noise":
        anchors = _noise_anchors(shape, cfg, pixel_mean, pixel_std)
        path_ids = np.arange(cfg.n_paths, dtype=np.int64)
        base = label = np.full(cfg.n_paths, -1, dtype=np.int64)
    else:
        base = choose_bases(labels, cfg)
        x = images[torch.from_numpy(base)].detach().to(torch.float64)
        if not torch.isfinite(x).all():
            raise ValueError("the chosen base images contain nan or inf values")
        if cfg.kind == "circle":
            radius = float(cfg.radius) if cfg.radius is not None else side / 8
            if radius >= side:
                raise ValueError(f"radius {radius} px is not below the image side {side}: every anchor would "
                                 f"be (almost) only replicated border. Use a smaller radius (None: side / 8).")
            cfg = replace(cfg, radius=radius)
            anchors = circle_path(x, m, radius)
        else:
            offsets = torch.arange(m + 1, dtype=torch.float64) - m // 2
            if m - m // 2 >= side:
                raise ValueError(f"anchors={m} shifts the image by up to {m - m // 2} px, not below its side "
                                 f"{side}: use fewer anchors for 'shift' paths")
            anchors = shifted(x, torch.zeros_like(offsets), offsets)
        path_ids = base
        label = labels[base].astype(np.int64)

    if cfg.kind in CLOSED:
        # Roll within each path (dim 1): rolling the flattened batch would join the last anchor
        # of path l to the first of path l + 1.
        x0, x1 = anchors, torch.roll(anchors, -1, dims=1)
    else:
        x0, x1 = anchors[:, :-1], anchors[:, 1:]
    return PathSet(
        x0=x0.flatten(0, 1).contiguous(), x1=x1.flatten(0, 1).contiguous(),
        path_id=_frozen(np.repeat(path_ids, m)), segment_index=_frozen(np.tile(np.arange(m, dtype=np.int64), cfg.n_paths)),
        base_index=_frozen(base.copy()), label=_frozen(label.copy()), config=cfg,
    )


def bundle_paths(bundle, cfg: PathConfig) -> PathSet:
    """:func:`build_paths` on ``bundle.images(cfg.split)``, done right.

    Base images are chosen by the *clean* labels of the training split, so networks trained
    with different label noise get the same paths; noise statistics come from the normalised
    training images.
    """
    labels = bundle.clean_labels if cfg.split == "train" else bundle.labels(cfg.split)
    stats = pixel_stats(bundle.images("train")) if cfg.kind == "noise" else (None, None)
    return build_paths(bundle.images(cfg.split), labels, cfg, *stats)


def _noise_anchors(shape, cfg: PathConfig, mean, std) -> torch.Tensor:
    """``(n_paths, M, *shape)`` uniform noise with the given per-pixel mean and std."""
    if mean is None or std is None:
        raise ValueError("'noise' paths need the training split's per-pixel statistics: pass "
                         "pixel_mean, pixel_std = pixel_stats(bundle.images('train')) to build_paths "
                         "(or use bundle_paths)")
    try:
        mean = torch.as_tensor(mean, dtype=torch.float64).broadcast_to(shape)
        std = torch.as_tensor(std, dtype=torch.float64).broadcast_to(shape)
    except RuntimeError as e:
        raise ValueError(f"pixel_mean and pixel_std must broadcast to the image shape {shape}: {e}") from e
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all()) or (std < 0).any():
        raise ValueError("pixel_mean must be finite and pixel_std finite and >= 0")
    half_width = math.sqrt(3) * std  # uniform on [a, b] has std (b - a) / √12
    paths = []
    for p in range(cfg.n_paths):
        # One generator per path: path p's images do not depend on how many paths are built.
        u = np.random.default_rng([cfg.seed, p]).random((cfg.anchors, *shape))
        paths.append(mean + half_width * (2 * torch.from_numpy(u) - 1))
    return torch.stack(paths)


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False  # a record of which paths were built: keep it from being edited
    return a
