"""Datasets: CIFAR through torchvision on small fake files in CIFAR's on-disk format, digits,
validation split, normalisation, label noise and augmentation."""

import hashlib
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader
from torchvision.datasets import CIFAR10, CIFAR100

from pipeline.inputs.data import (DATASETS, DataConfig, DatasetNotFoundError, corrupt_labels, load,
                           shift_and_flip)

N_PER_BATCH, N_TEST = 12, 20  # fake CIFAR-10: 5 x 12 = 60 training images, 20 test images
N_TRAIN_100 = 50


# --- fake CIFAR on disk -------------------------------------------------------------------

def _dump(path, obj):
    # The real files are Python 2 pickles whose str keys torchvision reads back as str
    # (pickle.load(..., encoding="latin1"), then entry["data"]): so str keys here, not bytes.
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def _trust_written_files(monkeypatch, cls, folder):
    """Point torchvision's md5 table for ``cls`` at the files as written now, so its real
    integrity check (``_check_integrity`` for the batches, ``_load_meta`` for the meta file)
    runs, and passes, on them; any later change to a file then fails it, as on real data."""
    monkeypatch.setattr(cls, "train_list", [[name, _md5(folder / name)] for name, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[name, _md5(folder / name)] for name, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / cls.meta["filename"])})


def _images(rng, n):
    return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


@pytest.fixture
def cifar10(tmp_path, monkeypatch):
    """Fake CIFAR-10 in ``tmp_path``; returns the raw arrays (N, 3, 32, 32) uint8 and labels."""
    rng = np.random.default_rng(10)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    x_train, y_train = _images(rng, 5 * N_PER_BATCH), rng.integers(0, 10, 5 * N_PER_BATCH)
    for b in range(5):
        sl = slice(b * N_PER_BATCH, (b + 1) * N_PER_BATCH)
        _dump(folder / f"data_batch_{b + 1}", {
            "batch_label": f"training batch {b + 1} of 5", "labels": y_train[sl].tolist(),
            "data": x_train[sl].reshape(-1, 3072), "filenames": [f"img{i}.png" for i in range(N_PER_BATCH)]})
    x_test, y_test = _images(rng, N_TEST), rng.integers(0, 10, N_TEST)
    _dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": y_test.tolist(),
                                  "data": x_test.reshape(-1, 3072), "filenames": ["t.png"] * N_TEST})
    _dump(folder / "batches.meta", {"num_cases_per_batch": N_PER_BATCH, "num_vis": 3072,
                                    "label_names": [f"class{i}" for i in range(10)]})
    _trust_written_files(monkeypatch, CIFAR10, folder)
    return dict(root=tmp_path, folder=folder, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


@pytest.fixture
def cifar100(tmp_path, monkeypatch):
    rng = np.random.default_rng(100)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    data = {}
    for name, n in (("train", N_TRAIN_100), ("test", N_TEST)):
        x, fine = _images(rng, n), rng.integers(0, 100, n)
        _dump(folder / name, {"filenames": ["a.png"] * n, "batch_label": name, "fine_labels": fine.tolist(),
                              "coarse_labels": (fine // 5).tolist(), "data": x.reshape(-1, 3072)})
        data[name] = (x, fine)
    _dump(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                            "coarse_label_names": [f"c{i}" for i in range(20)]})
    _trust_written_files(monkeypatch, CIFAR100, folder)
    return dict(root=tmp_path, x_train=data["train"][0], y_train=data["train"][1],
                x_test=data["test"][0], y_test=data["test"][1])


def _raw(bundle, split):
    """Undo the normalisation: back to the 0..255 pixel values."""
    x = bundle.images(split).double()
    mean = torch.tensor(bundle.mean, dtype=torch.float64).view(-1, 1, 1)
    std = torch.tensor(bundle.std, dtype=torch.float64).view(-1, 1, 1)
    return ((x * std + mean) * 255).round().to(torch.uint8).numpy()


# --- CIFAR --------------------------------------------------------------------------------

def test_cifar10_from_disk(cifar10):
    b = load(DataConfig(name="cifar10", root=str(cifar10["root"]), val_fraction=0.1))
    n = 5 * N_PER_BATCH
    assert (b.num_classes, b.input_shape) == (10, (3, 32, 32))
    assert (len(b.train), len(b.train_eval), len(b.val), len(b.test)) == (n - 6, n - 6, 6, N_TEST)

    # the validation split is a disjoint partition of the training set, in file order
    assert np.intersect1d(b.train_indices, b.val_indices).size == 0
    assert np.array_equal(np.union1d(b.train_indices, b.val_indices), np.arange(n))

    x, y = cifar10["x_train"], cifar10["y_train"]
    assert np.array_equal(_raw(b, "train"), x[b.train_indices])
    assert np.array_equal(_raw(b, "val"), x[b.val_indices])
    assert np.array_equal(_raw(b, "test"), cifar10["x_test"])
    assert np.array_equal(b.labels("train"), y[b.train_indices])
    assert np.array_equal(b.labels("val"), y[b.val_indices])
    assert np.array_equal(b.labels("test"), cifar10["y_test"])

    # statistics of the training split only, per channel, population std
    split = x[b.train_indices].astype(np.float64) / 255
    np.testing.assert_allclose(b.mean, split.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(b.std, split.std(axis=(0, 2, 3)), rtol=1e-12)
    assert not np.allclose(b.mean, x.astype(np.float64).mean(axis=(0, 2, 3)) / 255, rtol=1e-9)

    xi, yi = b.train[3]
    assert xi.dtype == torch.float32 and xi.shape == (3, 32, 32) and yi.dtype == torch.int64
    torch.testing.assert_close(xi, b.images("train")[3])


def test_cifar10_split_is_fixed(cifar10):
    cfg = DataConfig(name="cifar10", root=str(cifar10["root"]), val_fraction=0.25, split_seed=3)
    a, b = load(cfg), load(cfg)
    assert np.array_equal(a.val_indices, b.val_indices) and len(a.val_indices) == 15
    assert torch.equal(a.images("val"), b.images("val"))
    # the training seed is not in DataConfig; the split only moves with split_seed
    other = load(DataConfig(name="cifar10", root=str(cifar10["root"]), val_fraction=0.25, split_seed=4))
    assert not np.array_equal(a.val_indices, other.val_indices)


def test_cifar100_from_disk(cifar100):
    b = load(DataConfig(name="cifar100", root=cifar100["root"], val_fraction=0.2))
    assert (b.num_classes, b.input_shape) == (100, (3, 32, 32))
    assert (len(b.train), len(b.val), len(b.test)) == (40, 10, N_TEST)
    assert np.array_equal(b.labels("train"), cifar100["y_train"][b.train_indices])  # fine labels
    assert np.array_equal(b.labels("test"), cifar100["y_test"])
    assert np.array_equal(_raw(b, "val"), cifar100["x_train"][b.val_indices])


def test_missing_cifar_names_the_path(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as err:
        load(DataConfig(name="cifar100", root=str(root)))
    msg = str(err.value)
    assert str(root / "cifar-100-python") in msg and "download: true" in msg and "cifar-100-python" in msg
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, RuntimeError)
    assert not root.exists()


def test_truncated_cifar_is_reported_and_kept(cifar10):
    folder = cifar10["folder"]
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    damaged = folder / "data_batch_3"
    damaged.write_bytes(before["data_batch_3"][:1000])
    with pytest.raises(DatasetNotFoundError) as err:
        load(DataConfig(name="cifar10", root=str(cifar10["root"])))
    assert str(folder) in str(err.value) and "corrupted" in str(err.value)
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert after.keys() == before.keys() and after["data_batch_3"] == before["data_batch_3"][:1000]
    assert all(after[k] == before[k] for k in before if k != "data_batch_3")


def test_unpicklable_cifar_is_reported(cifar10, monkeypatch):
    # garbage whose md5 is the expected one: the checksum passes and unpickling fails
    (cifar10["folder"] / "test_batch").write_bytes(b"not a pickle at all")
    _trust_written_files(monkeypatch, CIFAR10, cifar10["folder"])
    with pytest.raises(DatasetNotFoundError, match="test set"):
        load(DataConfig(name="cifar10", root=str(cifar10["root"])))


# --- configuration ------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(name="mnist"), "known datasets: cifar10, cifar100, digits"),
    (dict(val_fraction=1.0), "val_fraction"),
    (dict(val_fraction=-0.1), "val_fraction"),
    (dict(label_noise=1.5), "label_noise"),
    (dict(label_noise=-0.01), "label_noise"),
    (dict(label_noise=float("nan")), "label_noise"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(**kwargs)


def test_bad_split_name():
    with pytest.raises(ValueError, match="train, val, test"):
        load(DataConfig()).images("validation")


# --- digits -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    return load(DataConfig())


def test_digits(digits):
    from sklearn.datasets import load_digits

    b = digits
    assert (b.num_classes, b.input_shape) == (10, (1, 8, 8))
    assert (len(b.train), len(b.val), len(b.test)) == (1294, 144, 359)  # 1797: 20 % test, 10 % val
    assert b.images("train").shape == (1294, 1, 8, 8) and b.images("train").dtype == torch.float32
    assert set(np.unique(b.labels("train"))) == set(range(10))

    # normalised with the training split's own statistics: mean 0, std 1 there only
    x = b.images("train").double()
    assert abs(x.mean().item()) < 1e-6 and abs(x.std(unbiased=False).item() - 1) < 1e-6
    assert abs(b.images("test").double().mean().item()) > 1e-3

    # the three splits are exactly load_digits(), partitioned
    d = load_digits()
    mean, std = torch.tensor(b.mean, dtype=torch.float64), torch.tensor(b.std, dtype=torch.float64)
    rows = [((b.images(s).double() * std + mean) * 16).round().reshape(-1, 64).numpy() for s in ("train", "val", "test")]
    got = np.concatenate([np.column_stack([r, b.labels(s)]) for r, s in zip(rows, ("train", "val", "test"))])
    want = np.column_stack([d.data, d.target])
    assert len(got) == 1797
    assert np.array_equal(got[np.lexsort(got.T)], want[np.lexsort(want.T)])


def test_digits_deterministic(digits):
    again = load(DataConfig())
    for s in ("train", "val", "test"):
        assert torch.equal(digits.images(s), again.images(s))
        assert np.array_equal(digits.labels(s), again.labels(s))
    # the test split is fixed (its normalisation is not: the training split changed)
    other = load(DataConfig(split_seed=1))
    assert torch.equal(other.test.pixels, digits.test.pixels)
    assert np.array_equal(other.labels("test"), digits.labels("test"))
    assert not np.array_equal(other.val_indices, digits.val_indices)


# --- label noise --------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.2, 0.4, 0.6, 0.8, 1.0])
def test_label_noise_in_bundle(digits, p):
    b = load(DataConfig(label_noise=p, noise_seed=7))
    n = len(b.train)
    noisy, clean = b.labels("train"), b.clean_labels
    assert len(b.noisy_indices) == round(p * n)
    assert np.array_equal(b.noisy_indices, np.unique(b.noisy_indices))  # sorted, no repeats
    assert np.array_equal(clean, digits.labels("train"))
    assert np.all(noisy[b.noisy_indices] != clean[b.noisy_indices])
    kept = np.setdiff1d(np.arange(n), b.noisy_indices)
    assert np.array_equal(noisy[kept], clean[kept])
    # train and train_eval carry the noisy labels; val and test stay clean
    assert np.array_equal(b.train.targets.numpy(), noisy) and np.array_equal(b.train_eval.targets.numpy(), noisy)
    assert np.array_equal(b.labels("val"), digits.labels("val"))
    assert np.array_equal(b.labels("test"), digits.labels("test"))
    assert not b.noisy_indices.flags.writeable


def test_label_noise_seeds():
    labels = np.arange(1000) % 10
    a, ia = corrupt_labels(labels, 0.3, 10, seed=1)
    b, ib = corrupt_labels(labels, 0.3, 10, seed=1)
    c, ic = corrupt_labels(labels, 0.3, 10, seed=2)
    assert np.array_equal(a, b) and np.array_equal(ia, ib)
    assert not np.array_equal(ia, ic) and not np.array_equal(a, c)
    # nested noise levels for one seed
    d, idd = corrupt_labels(labels, 0.6, 10, seed=1)
    assert np.isin(ia, idd).all() and np.array_equal(d[ia], a[ia])
    # new labels cover all the other classes
    assert len(np.unique((a[ia] - labels[ia]) % 10)) == 9


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 300), p=st.floats(0, 1), k=st.integers(2, 30), seed=st.integers(0, 2**32 - 1),
       data=st.data())
def test_corrupt_labels_property(n, p, k, seed, data):
    labels = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)), dtype=np.int64)
    original = labels.copy()
    new, idx = corrupt_labels(labels, p, k, seed)
    assert np.array_equal(labels, original)  # input untouched
    assert new.dtype == np.int64 and new.shape == (n,) and idx.dtype == np.int64
    assert len(idx) == round(p * n) and np.array_equal(idx, np.unique(idx))
    assert np.all((new >= 0) & (new < k))
    assert np.all(new[idx] != labels[idx])
    mask = np.ones(n, dtype=bool)
    mask[idx] = False
    assert np.array_equal(new[mask], labels[mask])
    again, idx2 = corrupt_labels(labels, p, k, seed)
    assert np.array_equal(again, new) and np.array_equal(idx2, idx)


def test_corrupt_labels_errors():
    with pytest.raises(ValueError, match="no other class"):
        corrupt_labels(np.zeros(5, dtype=int), 0.5, 1, 0)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        corrupt_labels(np.array([0, 3]), 0.5, 3, 0)
    with pytest.raises(ValueError, match="fraction"):
        corrupt_labels(np.array([0, 1]), 1.2, 3, 0)
    assert np.array_equal(corrupt_labels(np.zeros(4, dtype=int), 0.0, 1, 0)[0], np.zeros(4))


# --- augmentation -------------------------------------------------------------------------

def _roll_shift(img, dy, dx):
    """Reference: ``torch.roll``, then zero what wrapped around."""
    out = torch.roll(img, (dy, dx), dims=(-2, -1))
    if dy > 0:
        out[..., :dy, :] = 0
    elif dy < 0:
        out[..., dy:, :] = 0
    if dx > 0:
        out[..., :, :dx] = 0
    elif dx < 0:
        out[..., :, dx:] = 0
    return out


def test_shift_and_flip_matches_roll():
    img = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).view(2, 3, 5, 6) + 1
    for dy, dx, flip in [(0, 0, False), (2, -1, False), (-3, 4, True), (1, 1, True), (0, -6, False)]:
        out = shift_and_flip(img, torch.tensor([dy, 0]), torch.tensor([dx, 0]), torch.tensor([flip, False]))
        want = _roll_shift(img[0], dy, dx)
        assert torch.equal(out[0], want.flip(-1) if flip else want)
        assert torch.equal(out[1], img[1])


def _identify(bundle, index, draws):
    """For ``draws`` augmented copies of one training image, the (dy, dx, flip) each one is,
    found among all candidates of the reference; asserts every copy is exactly one of them."""
    ds = bundle.train
    s = ds.shift
    raw = ds.pixels[index].double()
    cands = [(dy, dx, f) for dy in range(-s, s + 1) for dx in range(-s, s + 1) for f in (False, True)]
    refs = torch.stack([_roll_shift(raw, dy, dx).flip(-1) if f else _roll_shift(raw, dy, dx)
                        for dy, dx, f in cands]).flatten(1)
    mean = torch.tensor(bundle.mean, dtype=torch.float64).view(-1, 1, 1)
    std = torch.tensor(bundle.std, dtype=torch.float64).view(-1, 1, 1)
    got = torch.stack([x for x, _ in ds.__getitems__([index] * draws)]).double()
    got = ((got * std + mean) * ds.pixel_max).flatten(1)
    two = torch.cdist(got, refs).topk(2, dim=1, largest=False)
    assert two.values[:, 0].max() < 1e-3, "an augmented image is not a zero-padded shift (+ flip)"
    assert two.values[:, 1].min() > 0.5, "the image cannot tell two candidates apart"
    return [cands[i] for i in two.indices[:, 0].tolist()]


def test_cifar_augmentation(cifar10):
    b = load(DataConfig(name="cifar10", root=str(cifar10["root"]), augment=True))
    assert (b.train.shift, b.train.flip) == (4, True) and not b.train_eval.augment
    torch.manual_seed(0)
    found = _identify(b, 5, 400)
    dys, dxs, flips = zip(*found)
    assert set(dys) == set(dxs) == set(range(-4, 5)) and set(flips) == {False, True}

    # two draws differ; the same seed gives the same draws; train_eval never changes
    torch.manual_seed(1)
    first = torch.stack([b.train[i][0] for i in range(8)])
    second = torch.stack([b.train[i][0] for i in range(8)])
    torch.manual_seed(1)
    assert torch.equal(torch.stack([b.train[i][0] for i in range(8)]), first)
    assert not torch.equal(first, second)
    plain = b.images("train")
    for _ in range(3):
        assert torch.equal(torch.stack([b.train_eval[i][0] for i in range(8)]), plain[:8])
        assert torch.equal(torch.stack([x for x, _ in b.train_eval.__getitems__(range(8))]), plain[:8])
    assert np.array_equal(b.labels("train"), b.train.targets.numpy())

    # a DataLoader goes through __getitems__ and yields normal batches
    x, y = next(iter(DataLoader(b.train, batch_size=16, shuffle=True,
                                generator=torch.Generator().manual_seed(0))))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_augmentation_generator(cifar10):
    b = load(DataConfig(name="cifar10", root=str(cifar10["root"]), augment=True))
    b.train.generator = torch.Generator().manual_seed(5)
    a = b.train[0][0]
    b.train.generator = torch.Generator().manual_seed(5)
    torch.manual_seed(123)  # the global RNG does not matter when a generator is set
    assert torch.equal(b.train[0][0], a)


def test_digits_augmentation_no_flip():
    b = load(DataConfig(augment=True))
    assert (b.train.shift, b.train.flip) == (DATASETS["digits"].augment_shift, False) == (1, False)
    img = b.train.pixels[0]
    assert not torch.equal(img, img.flip(-1))  # a mirrored copy would be told apart
    torch.manual_seed(0)
    found = _identify(b, 0, 200)
    assert {f for _, _, f in found} == {False}
    assert {dy for dy, _, _ in found} == {dx for _, dx, _ in found} == {-1, 0, 1}


def test_no_augmentation_by_default(cifar10):
    b = load(DataConfig(name="cifar10", root=str(cifar10["root"])))
    assert not b.train.augment
    assert torch.equal(b.train[2][0], b.images("train")[2])
