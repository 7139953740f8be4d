"""Where the raw images come from: scikit-learn's digits (embedded) and CIFAR through torchvision.

Each source returns ``((x_train, y_train), (x_test, y_test))`` as uint8 ``(N, C, H, W)`` pixels
and int64 labels; :func:`pipeline.inputs.data.load` splits, normalises and wraps them. A CIFAR
that is missing or damaged is a :class:`DatasetNotFoundError` saying where it was looked for and
how to get it; nothing is ever deleted.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

__all__ = ["DatasetNotFoundError", "digits_arrays", "cifar_arrays", "DIGITS_TEST_FRACTION", "DIGITS_SPLIT_SEED"]

# digits has no official test split: a fixed one, independent of DataConfig, so every run (and
# every validation seed) is evaluated on the same 20 % of the 1,797 images.
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


# torchvision class and display name of each CIFAR (its folder is the class's base_folder).
_CIFAR = {"cifar10": ("CIFAR10", "CIFAR-10"), "cifar100": ("CIFAR100", "CIFAR-100")}

# What torchvision's CIFAR constructor raises on missing, truncated or garbled files: its own
# "not found or corrupted" RuntimeError, OSError from open/download, and whatever unpickling a
# damaged file throws.
_UNREADABLE = (RuntimeError, OSError, EOFError, pickle.UnpicklingError, ValueError, KeyError,
               IndexError, TypeError, AttributeError, ImportError)


class DatasetNotFoundError(FileNotFoundError, RuntimeError):
    """The dataset files are missing, incomplete or corrupted; the message says where and how to
    get them. Nothing is ever deleted."""


def digits_arrays():
    """scikit-learn's digits as uint8 ``(N, 1, 8, 8)`` (values 0..16) and int64 labels, split
    into a fixed training part and a fixed 20 % test part."""
    from sklearn.datasets import load_digits  # only digits needs scikit-learn

    d = load_digits()
    x = d.images.astype(np.uint8)[:, None]  # the values are integers 0..16
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(y))
    n_test = round(DIGITS_TEST_FRACTION * len(y))
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return (x[train], y[train]), (x[test], y[test])


def cifar_arrays(name: str, root, download: bool, num_classes: int):
    """CIFAR-10/100 (``name``) through torchvision, as uint8 ``(N, 3, 32, 32)`` and int64 labels."""
    import torchvision.datasets  # imported here: loading digits should not pay for torchvision

    cls_name, pretty = _CIFAR[name]
    cls = getattr(torchvision.datasets, cls_name)
    root = Path(os.path.expanduser(root)).resolve()  # absolute, so the message names it in full
    folder = root / cls.base_folder
    out = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=download)
            x = np.asarray(ds.data).transpose(0, 3, 1, 2)  # torchvision holds HWC
            y = np.asarray(ds.targets, dtype=np.int64)
            if x.dtype != np.uint8 or x.shape[1:] != (3, 32, 32) or len(y) != len(x) or not len(y):
                raise ValueError(f"unexpected contents: images {x.dtype} {x.shape}, {len(y)} labels")
            if y.min() < 0 or y.max() >= num_classes:
                raise ValueError(f"labels {y.min()}..{y.max()} outside [0, {num_classes})")
        except _UNREADABLE as e:
            raise DatasetNotFoundError(_not_found_message(pretty, cls, root, folder, train, download, e)) from e
        out.append((x, y))
    return out


def _not_found_message(pretty, cls, root: Path, folder: Path, train: bool, download: bool, err) -> str:
    split = "training" if train else "test"
    if download:
        what = f"{pretty} ({split} set) could not be downloaded to {folder} or is unreadable there"
    elif folder.is_dir():
        what = (f"{pretty} ({split} set) in {folder} is incomplete or corrupted "
                f"(checksum or unpickling failed; nothing was deleted)")
    else:
        what = f"{pretty} not found: looked for {folder}"
    return (f"{what} [{type(err).__name__}: {err}]. To get it, set `download: true` in the data "
            f"config and run once on a machine with internet, or copy the extracted "
            f"`{cls.base_folder}` directory (from {cls.url}) into {root}.")
