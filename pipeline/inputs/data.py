"""Datasets for training ReLU networks: scikit-learn digits (embedded), CIFAR-10 and CIFAR-100.

``load(DataConfig(name="cifar10", root="data"))`` returns a :class:`DataBundle`: train, train_eval,
val and test datasets held in memory as uint8 tensors, scaled to [0, 1] and normalised per channel
with statistics of the training split only (after the validation split is cut off). Training
labels can be corrupted at random (Zhang et al. 2017), and the bundle records which ones.

Pure: no cluster code and no module state. Augmentation draws from a generator given to the
dataset (the training loop gives one seeded per epoch), or torch's global RNG without one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from pipeline.config import local_field
from pipeline.inputs.sources import DatasetNotFoundError, cifar_arrays, digits_arrays

__all__ = [
    "DataConfig",
    "DataBundle",
    "DatasetSpec",
    "DATASETS",
    "DatasetNotFoundError",
    "ImageDataset",
    "load",
    "corrupt_labels",
    "shift_and_flip",
]

@dataclass(frozen=True)
class DatasetSpec:
    """What is fixed about a dataset: classes, image shape, pixel scale and augmentation.

    ``augment_shift`` is the largest random translation in pixels (zero padding) and
    ``augment_flip`` whether random horizontal flips are used when ``DataConfig.augment``.
    """

    num_classes: int
    input_shape: tuple[int, int, int]
    pixel_max: int  # raw value of full intensity: images are divided by it to lie in [0, 1]
    augment_shift: int
    augment_flip: bool


DATASETS = {
    # Digits are 8x8: a 4 px shift would move most of the digit out of the frame, so 1 px
    # (1/8 of the side, like 4/32 for CIFAR). No flips: a mirrored 2, 3, 7 or 9 is not that digit.
    "digits": DatasetSpec(10, (1, 8, 8), 16, augment_shift=1, augment_flip=False),
    "cifar10": DatasetSpec(10, (3, 32, 32), 255, augment_shift=4, augment_flip=True),
    "cifar100": DatasetSpec(100, (3, 32, 32), 255, augment_shift=4, augment_flip=True),
}

@dataclass(frozen=True)
class DataConfig:
    """Which dataset to load and how to split, corrupt and augment it.

    Parameters
    ----------
    name : str
        One of ``DATASETS``: ``"digits"`` (scikit-learn's 8x8 digits, shipped with it),
        ``"cifar10"``, ``"cifar100"``.
    root : str or path
        Directory holding ``cifar-10-batches-py`` / ``cifar-100-python`` (unused for digits).
    download : bool
        Let torchvision download CIFAR into ``root`` if it is missing (needs internet).
    val_fraction : float
        Fraction in [0, 1) of the training set held out for validation.
    split_seed : int
        Seeds the validation split. Separate from the training seed so the split is the same
        for every training run.
    label_noise : float
        Fraction p in [0, 1] of training-split labels replaced by a wrong one
        (:func:`corrupt_labels`). Validation and test labels stay clean.
    noise_seed : int
        Seeds which labels are corrupted and their new labels.
    augment : bool
        Random shifts and flips of training images, as given by ``DATASETS[name]``.

    ``root`` and ``download`` say where the files are and how to get them, not what they are:
    they are saved with a run but left out of its identity (:func:`pipeline.config.config_hash`),
    so moving CIFAR to another disk renames no run.
    """

    name: str = "digits"
    root: str = local_field("data")  # where the files are: not part of a run's identity
    download: bool = local_field(False)  # whether they may be fetched: likewise
    val_fraction: float = 0.1
    split_seed: int = 0
    label_noise: float = 0.0
    noise_seed: int = 0
    augment: bool = False

    def __post_init__(self):
        if self.name not in DATASETS:
            raise ValueError(f"unknown dataset {self.name!r}; known datasets: {', '.join(sorted(DATASETS))}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1) (a fraction of the training set), "
                             f"got {self.val_fraction}")
        if not 0.0 <= self.label_noise <= 1.0:
            raise ValueError(f"label_noise must be a fraction in [0, 1], got {self.label_noise}")
        for name in ("split_seed", "noise_seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


class ImageDataset(Dataset):
    """Images and labels held in memory; items are ``(x, y)``, ``x`` float32 ``(C, H, W)``
    normalised, ``y`` an int64 scalar tensor.

    Pixels are kept as uint8 (CIFAR's training set is 150 MB this way, 600 MB as float32) and
    scaled and normalised per item. With ``shift > 0`` or ``flip``, each item is translated by
    a random integer ``(dy, dx)``, ``|dy|, |dx| <= shift``, with zero (black) padding, as
    ``RandomCrop(size, padding=shift)``, then mirrored left-right with probability 1/2. The
    padding is applied to raw pixels, before normalisation, as in the usual torchvision pipeline.

    The random draws come from ``generator``, or torch's global RNG when it is ``None``:
    ``torch.manual_seed`` makes an epoch reproducible, and a ``DataLoader`` with workers seeds
    each worker's global RNG from its own generator. (A generator set here is copied into every
    worker, which would then draw the same augmentations: leave it ``None`` with workers.)

    ``__getitems__`` augments a whole batch in a few tensor ops; ``DataLoader`` uses it.
    """

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor, pixel_max: float,
                 mean, std, shift: int = 0, flip: bool = False,
                 generator: torch.Generator | None = None):
        if pixels.dtype != torch.uint8 or pixels.ndim != 4:
            raise TypeError(f"pixels must be a uint8 tensor (N, C, H, W), got {pixels.dtype} {tuple(pixels.shape)}")
        if labels.shape != (pixels.shape[0],):
            raise ValueError(f"labels must have shape ({pixels.shape[0]},) to match the images, "
                             f"got {tuple(labels.shape)}")
        if shift < 0:
            raise ValueError(f"shift must be >= 0 pixels, got {shift}")
        self.pixels = pixels
        self.targets = labels.to(torch.int64)
        self.pixel_max = float(pixel_max)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.shift = int(shift)
        self.flip = bool(flip)
        self.generator = generator

    @property
    def augment(self) -> bool:
        return self.shift > 0 or self.flip

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def __getitem__(self, index):
        x, y = self._batch(torch.as_tensor([index], dtype=torch.long))
        return x[0], y[0]

    def __getitems__(self, indices):
        x, y = self._batch(torch.as_tensor(indices, dtype=torch.long))
        return list(zip(x.unbind(0), y.unbind(0)))

    def images(self) -> torch.Tensor:
        """All images, normalised and never augmented, as one float32 ``(N, C, H, W)`` tensor."""
        return self._normalise(self.pixels)

    def _normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        # In place on the one float copy: images() of CIFAR's training set is 550 MB already.
        return pixels.float().div_(self.pixel_max).sub_(self.mean).div_(self.std)

    def _batch(self, indices: torch.Tensor):
        raw = self.pixels[indices]
        if self.augment:
            n = raw.shape[0]
            dy, dx = torch.randint(-self.shift, self.shift + 1, (2, n), generator=self.generator)
            flip = torch.rand(n, generator=self.generator) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
            raw = shift_and_flip(raw, dy, dx, flip)
        return self._normalise(raw), self.targets[indices]


def shift_and_flip(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Translate each image by whole pixels with zero fill, then mirror it left-right where asked.

    Parameters
    ----------
    images : torch.Tensor
        ``(N, C, H, W)``, any dtype.
    dy, dx : torch.Tensor
        ``(N,)`` integer shifts: output pixel ``(r, c)`` is input pixel ``(r - dy, c - dx)``,
        zero where that falls outside the image.
    flip : torch.Tensor
        ``(N,)`` bool; flipped images are mirrored after the shift.

    Returns
    -------
    torch.Tensor
        ``(N, C, H, W)``, same dtype.
    """
    n, _, h, w = images.shape
    s = int(max(dy.abs().max(), dx.abs().max())) if n else 0
    padded = F.pad(images, (s, s, s, s))
    rows = s - dy[:, None] + torch.arange(h)
    cols = s - dx[:, None] + torch.arange(w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    # The slice between the advanced indices puts the broadcast (N, H, W) dims first.
    out = padded[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True, eq=False)
class DataBundle:
    """The splits of one dataset and what was done to them.

    Attributes
    ----------
    train : ImageDataset
        Training split with (possibly noisy) labels; augmented iff ``DataConfig.augment``.
    train_eval : ImageDataset
        The same images and labels, never augmented: for training metrics.
    val, test : ImageDataset
        Clean labels, never augmented.
    num_classes : int
    input_shape : tuple of int
        ``(C, H, W)``.
    mean, std : tuple of float
        Per channel, of the training split's pixels scaled to [0, 1] (population std).
    noisy_indices : np.ndarray
        Sorted indices into the training split whose label was replaced.
    clean_labels : np.ndarray
        Training-split labels before corruption.
    train_indices, val_indices : np.ndarray
        Sorted indices of the training and validation splits into the set they were cut from:
        CIFAR's official 50,000 training images in file order; for digits, the fixed 80 %
        non-test part of ``load_digits()``, in its order.
    """

    train: ImageDataset
    train_eval: ImageDataset
    val: ImageDataset
    test: ImageDataset
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    noisy_indices: np.ndarray
    clean_labels: np.ndarray
    train_indices: np.ndarray
    val_indices: np.ndarray

    def _split(self, split: str) -> ImageDataset:
        sets = {"train": self.train_eval, "val": self.val, "test": self.test}
        if split not in sets:
            raise ValueError(f"split must be one of {', '.join(sets)}, got {split!r}")
        return sets[split]

    def images(self, split: str) -> torch.Tensor:
        """All normalised images of ``"train"``, ``"val"`` or ``"test"``, never augmented, as
        one float32 ``(N, C, H, W)`` tensor."""
        return self._split(split).images()

    def labels(self, split: str) -> np.ndarray:
        """Labels of ``"train"`` (noisy, as trained on), ``"val"`` or ``"test"``, int64 ``(N,)``."""
        return self._split(split).targets.numpy().copy()


def corrupt_labels(labels: np.ndarray, fraction: float, num_classes: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Replace a random fraction of labels by wrong ones (label noise of Zhang et al. 2017).

    Exactly ``round(fraction * n)`` labels, chosen without replacement, get a new label drawn
    uniformly from the *other* ``num_classes - 1`` classes. Zhang et al. draw from all classes,
    so about 1/K of their "corrupted" labels stay correct; here every corrupted label is wrong,
    and ``fraction=1.0`` means no training label is correct.

    With the same seed, noise levels are nested: the labels corrupted at a smaller fraction are
    also corrupted, with the same new labels, at a larger one.

    Parameters
    ----------
    labels : np.ndarray
        ``(n,)`` integers in ``[0, num_classes)``; not modified.
    fraction : float
        In [0, 1].
    num_classes : int
        At least 2 when any label is to be corrupted.
    seed : int
        Makes the result deterministic.

    Returns
    -------
    new_labels : np.ndarray
        ``(n,)`` int64.
    corrupted_indices : np.ndarray
        Sorted int64 indices of the replaced labels.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (labels.size == 0 or np.issubdtype(labels.dtype, np.integer)):
        raise TypeError(f"labels must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), found {labels.min()}..{labels.max()}")
    n = labels.size
    k = round(fraction * n)
    new = labels.astype(np.int64)  # a copy
    if k == 0:
        return new, np.zeros(0, dtype=np.int64)
    if num_classes < 2:
        raise ValueError(f"cannot corrupt labels with num_classes={num_classes}: there is no other class")
    rng = np.random.default_rng(seed)
    # A permutation and offsets for all n (not just k) keep noise levels nested for one seed.
    order = rng.permutation(n)
    offsets = rng.integers(1, num_classes, size=n)  # 1..K-1: never back to the same class
    idx = np.sort(order[:k]).astype(np.int64)
    new[idx] = (new[idx] + offsets[idx]) % num_classes
    return new, idx


def load(cfg: DataConfig) -> DataBundle:
    """Load, split, normalise and (optionally) corrupt and augment a dataset.

    The validation split is a fixed random subset (seeded by ``cfg.split_seed``) of the
    training set; normalisation statistics come from the rest, and only the rest gets label
    noise.

    Raises
    ------
    DatasetNotFoundError
        CIFAR files missing from ``cfg.root`` (and ``download`` off), corrupted, or the
        download failed.
    """
    spec = DATASETS[cfg.name]  # DataConfig has checked the name
    if cfg.name == "digits":
        (x_full, y_full), (x_test, y_test) = digits_arrays()
    else:
        (x_full, y_full), (x_test, y_test) = cifar_arrays(cfg.name, cfg.root, cfg.download, spec.num_classes)

    n = len(y_full)
    n_val = round(cfg.val_fraction * n)
    if n_val >= n:
        raise ValueError(f"val_fraction={cfg.val_fraction} leaves no training images out of {n}")
    perm = np.random.default_rng(cfg.split_seed).permutation(n)
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])

    x_train = x_full[train_idx]
    clean = y_full[train_idx]
    noisy, noisy_idx = corrupt_labels(clean, cfg.label_noise, spec.num_classes, cfg.noise_seed)
    mean, std = _channel_stats(x_train, spec.pixel_max)

    def dataset(x, y):
        return ImageDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y),
                            spec.pixel_max, mean, std)

    train_eval = dataset(x_train, noisy)
    # Same tensors (no copy of the images), only the augmentation differs.
    train = ImageDataset(train_eval.pixels, train_eval.targets, spec.pixel_max, mean, std,
                         shift=spec.augment_shift if cfg.augment else 0,
                         flip=spec.augment_flip and cfg.augment)
    return DataBundle(
        train=train, train_eval=train_eval,
        val=dataset(x_full[val_idx], y_full[val_idx]), test=dataset(x_test, y_test),
        num_classes=spec.num_classes, input_shape=spec.input_shape, mean=mean, std=std,
        noisy_indices=_frozen(noisy_idx), clean_labels=_frozen(clean),
        train_indices=_frozen(train_idx.astype(np.int64)), val_indices=_frozen(val_idx.astype(np.int64)),
    )


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False  # the bundle is a record of what was done: keep it from being edited
    return a


def _channel_stats(pixels: np.ndarray, pixel_max: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of uint8 ``(N, C, H, W)`` pixels divided by ``pixel_max``.

    From a histogram of the 256 possible values: exact in float64 without a float copy of
    the images.
    """
    values = np.arange(256, dtype=np.float64)
    means, stds = [], []
    for c in range(pixels.shape[1]):
        hist = np.bincount(pixels[:, c].ravel(), minlength=256).astype(np.float64)
        m = hist @ values / hist.sum()
        s = np.sqrt(hist @ (values - m) ** 2 / hist.sum())
        if s == 0:
            raise ValueError(f"channel {c} of the training split is constant ({m}); cannot normalise it")
        means.append(float(m / pixel_max))
        stds.append(float(s / pixel_max))
    return tuple(means), tuple(stds)


