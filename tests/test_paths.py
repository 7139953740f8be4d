"""Data-driven paths: exact translations, closed loops that close on themselves, seeded and
class-balanced base images, open shift paths, noise statistics, and real digits."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.inputs.data import DataConfig, load
from pipeline.inputs.images import circle_path, pixel_stats, translate
from pipeline.inputs.paths import PathConfig, build_paths, bundle_paths, choose_bases


def _images(n=5, shape=(2, 9, 11), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=g, dtype=torch.float64)


def _labels(n, k=3):
    return np.arange(n) % k


def _grid_sample_translate(x, dy, dx):
    """Independent bilinear translation: grid_sample with border clamping (= replicate padding)."""
    _, _, h, w = x.shape
    gy = 2 * (torch.arange(h, dtype=torch.float64) - dy) / (h - 1) - 1
    gx = 2 * (torch.arange(w, dtype=torch.float64) - dx) / (w - 1) - 1
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1)[None].expand(x.shape[0], -1, -1, -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


# --- translate ----------------------------------------------------------------------------

@pytest.mark.parametrize("dy,dx", [(0, 0), (2, -1), (-3, 4), (1, 0), (0, -5), (12, 0)])
def test_integer_shift_is_roll_on_the_interior_and_only_input_pixels(dy, dx):
    x = _images()
    y = translate(x, dy, dx)
    assert y.dtype == torch.float64 and y.shape == x.shape
    rows = slice(max(dy, 0), x.shape[2] + min(dy, 0))  # where roll does not wrap
    cols = slice(max(dx, 0), x.shape[3] + min(dx, 0))
    rolled = torch.roll(x, (dy, dx), dims=(-2, -1))
    assert torch.equal(y[..., rows, cols], rolled[..., rows, cols])
    for i in range(x.shape[0]):  # no padding value in the frame: every pixel is an input pixel
        for c in range(x.shape[1]):
            assert torch.isin(y[i, c], x[i, c]).all()


def test_per_image_shifts_and_single_image():
    x = _images(3)
    dy, dx = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, 3.0, -0.25])
    y = translate(x, dy, dx)
    for i in range(3):
        assert torch.equal(y[i], translate(x[i], dy[i].item(), dx[i].item()))
    assert translate(x[0].float(), 0.0, 0.0).dtype == torch.float64
    assert torch.equal(translate(x[0], 0, 0), x[0])


def test_subpixel_shift_of_a_ramp_is_exact_in_the_interior():
    # bilinear interpolation reproduces affine functions: a ramp translated is the shifted ramp
    h, w, dy, dx = 10, 12, 0.3, -1.7
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    coef = [(0.7, -1.3, 0.2), (-2.0, 0.5, 3.0)]
    ramp = torch.stack([a * yy + b * xx + c for a, b, c in coef])[None]
    want = torch.stack([a * (yy - dy) + b * (xx - dx) + c for a, b, c in coef])[None]
    got = translate(ramp, dy, dx)
    inside = ((yy - dy >= 0) & (yy - dy <= h - 1) & (xx - dx >= 0) & (xx - dx <= w - 1))
    assert inside.sum() > 50
    assert torch.allclose(got[..., inside], want[..., inside], rtol=0, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(st.floats(-6, 6), st.floats(-6, 6))
def test_translate_matches_an_independent_bilinear_everywhere(dy, dx):
    x = _images(2, (2, 7, 8), seed=1)
    y = translate(x, dy, dx)
    assert torch.allclose(y, _grid_sample_translate(x, dy, dx), rtol=0, atol=1e-12)
    # convex combinations: never outside the input's range
    assert y.min() >= x.min() - 1e-12 and y.max() <= x.max() + 1e-12


def test_translate_rejects_bad_input():
    with pytest.raises(TypeError, match="floating-point"):
        translate(torch.zeros(1, 1, 4, 4, dtype=torch.long), 1, 1)
    with pytest.raises(ValueError, match="one shift per image"):
        translate(_images(3), torch.zeros(2), 0.0)
    with pytest.raises(ValueError, match="finite"):
        translate(_images(1), math.nan, 0.0)


# --- closed circle paths ------------------------------------------------------------------

def test_circle_paths_close_on_themselves_and_anchors_are_translations():
    images = _images(6).float()  # float32 like bundle.images; not normalised again
    cfg = PathConfig(kind="circle", n_paths=4, anchors=5, radius=1.5, class_balanced=False)
    ps = build_paths(images, _labels(6), cfg)
    m, p = 5, 4
    assert ps.closed and ps.x0.dtype == ps.x1.dtype == torch.float64
    assert ps.x0.shape == ps.x1.shape == (p * m, 2, 9, 11)
    assert np.array_equal(ps.segment_index, np.tile(np.arange(m), p))
    assert np.array_equal(ps.path_id, np.repeat(ps.base_index, m))
    assert len(set(ps.base_index)) == p  # distinct images: joining two paths would be visible
    for q in range(p):
        s = q * m
        for j in range(m - 1):
            assert torch.equal(ps.x1[s + j], ps.x0[s + j + 1])
        # the last anchor joins the first of the SAME path (not of path q + 1)
        assert torch.equal(ps.x1[s + m - 1], ps.x0[s])
        base = images[ps.base_index[q]]
        for k in range(m):
            t = 2 * math.pi * k / m
            assert torch.equal(ps.x0[s + k], translate(base, 1.5 * math.sin(t), 1.5 * math.cos(t)))
    anchors = ps.anchors()
    assert anchors.shape == (p, m, 2, 9, 11)
    assert torch.equal(anchors, circle_path(images[ps.base_index.tolist()], m, 1.5))
    assert torch.equal(anchors[1], circle_path(images[ps.base_index[1]], m, 1.5))


def test_rolling_over_the_batch_would_be_caught():
    # the published pitfall: roll anchors over all paths at once joins path l to path l + 1
    ps = build_paths(_images(6), _labels(6), PathConfig(n_paths=3, anchors=4, class_balanced=False))
    flat = ps.anchors().flatten(0, 1)
    wrong_x1 = torch.roll(flat, -1, dims=0)
    assert not torch.equal(wrong_x1, ps.x1)
    assert not torch.equal(wrong_x1[3], ps.x0[0])  # path 0's last segment would end on path 1


def test_radius_resolves_to_an_eighth_of_the_side():
    cfg = PathConfig(n_paths=2)
    assert build_paths(_images(3, (1, 16, 16)), _labels(3), cfg).config.radius == 2.0
    assert build_paths(_images(3, (3, 32, 32)), _labels(3), cfg).config.radius == 4.0
    assert cfg.radius is None  # the caller's config is not changed
    assert build_paths(_images(3), _labels(3), replace(cfg, radius=0.5)).config.radius == 0.5


# --- base images --------------------------------------------------------------------------

def test_paths_are_deterministic_by_seed_and_model_free():
    images, labels = _images(20, (1, 6, 6)), _labels(20, 4)
    cfg = PathConfig(n_paths=6, anchors=3)
    a, b = build_paths(images, labels, cfg), build_paths(images, labels, cfg)
    # no model goes in: every network compared on cfg gets these very segments
    assert torch.equal(a.x0, b.x0) and torch.equal(a.x1, b.x1)
    assert np.array_equal(a.path_id, b.path_id) and np.array_equal(a.label, b.label)
    c = build_paths(images, labels, replace(cfg, seed=1))
    assert not np.array_equal(a.base_index, c.base_index)
    assert np.array_equal(a.label, labels[a.base_index])
    assert not a.path_id.flags.writeable


@pytest.mark.parametrize("balanced", [True, False])
def test_bases_are_sorted_distinct_and_nested(balanced):
    labels = np.random.default_rng(0).integers(0, 10, 500)
    cfg = PathConfig(n_paths=37, seed=3, class_balanced=balanced)
    big = choose_bases(labels, cfg)
    assert big.dtype == np.int64 and len(big) == 37
    assert np.array_equal(big, np.unique(big))
    assert np.array_equal(big, choose_bases(labels, cfg))
    small = choose_bases(labels, replace(cfg, n_paths=12))
    assert set(small) <= set(big)


def test_class_balance_round_robin():
    labels = np.repeat(np.arange(10), 30)
    counts = np.bincount(labels[choose_bases(labels, PathConfig(n_paths=23))], minlength=10)
    assert sorted(counts) == [2] * 7 + [3] * 3
    # a class short of images gives its turns to the others
    labels = np.concatenate([np.zeros(1, int), np.ones(50, int), np.full(50, 2)])
    counts = np.bincount(labels[choose_bases(labels, PathConfig(n_paths=9))], minlength=3)
    assert counts[0] == 1 and sorted(counts[1:]) == [4, 4]
    # unbalanced sampling of an imbalanced split follows the split
    labels = np.concatenate([np.zeros(900, int), np.ones(100, int)])
    counts = np.bincount(labels[choose_bases(labels, PathConfig(n_paths=100, class_balanced=False))])
    assert counts[0] > 70


# --- shift and noise paths ----------------------------------------------------------------

def test_shift_paths_are_open_integer_shifts():
    images = _images(4)
    ps = build_paths(images, _labels(4), PathConfig(kind="shift", n_paths=2, anchors=4))
    m = 4
    assert not ps.closed and ps.x0.shape == (2 * m, 2, 9, 11)
    anchors = ps.anchors()
    assert anchors.shape == (2, m + 1, 2, 9, 11)
    for q in range(2):
        s = q * m
        for j in range(m - 1):
            assert torch.equal(ps.x1[s + j], ps.x0[s + j + 1])
        assert not torch.equal(ps.x1[s + m - 1], ps.x0[s])  # open: the end is not joined back
        base = images[ps.base_index[q]]
        assert torch.equal(anchors[q, m // 2], base)  # the base image in the middle
        for k in range(m + 1):
            assert torch.equal(anchors[q, k], translate(base, 0, k - m // 2))


def test_noise_paths_have_the_statistics_and_are_reproducible():
    shape = (2, 3, 4)
    mean = torch.linspace(-1, 1, 24, dtype=torch.float64).view(shape)
    std = torch.linspace(0.5, 2, 24, dtype=torch.float64).view(shape)
    cfg = PathConfig(kind="noise", n_paths=300, anchors=8)
    images = torch.zeros(5, *shape)  # only the shape is used
    ps = build_paths(images, _labels(5), cfg, mean, std)
    assert ps.closed and ps.x0.shape == (2400, *shape)
    assert np.array_equal(ps.path_id, np.repeat(np.arange(300), 8))
    assert (ps.base_index == -1).all() and (ps.label == -1).all()
    a = ps.anchors()
    assert torch.equal(ps.x1[7], ps.x0[0]) and torch.equal(ps.x1[15], ps.x0[8])
    samples = a.flatten(0, 1)
    assert torch.allclose(samples.mean(0), mean, atol=0.1 * std.max().item())
    assert torch.allclose(samples.std(0), std, rtol=0.05)
    half = math.sqrt(3) * std
    assert (samples >= mean - half).all() and (samples <= mean + half).all()
    again = build_paths(images, _labels(5), replace(cfg, n_paths=3), mean, std)
    assert torch.equal(again.x0, ps.x0[:24])  # path p depends on (seed, p) only
    other = build_paths(images, _labels(5), replace(cfg, n_paths=3, seed=1), mean, std)
    assert not torch.equal(other.x0, again.x0)


def test_pixel_stats():
    x = _images(50, (2, 3, 3)).float()
    mean, std = pixel_stats(x, chunk=7)
    assert mean.dtype == torch.float64 and mean.shape == (2, 3, 3)
    assert torch.allclose(mean, x.double().mean(0)) and torch.allclose(std, x.double().std(0, unbiased=False))


# --- errors -------------------------------------------------------------------------------

def test_errors_say_what_to_do():
    images, labels = _images(4), _labels(4)
    with pytest.raises(ValueError, match="unknown path kind"):
        PathConfig(kind="spiral")
    with pytest.raises(ValueError, match="anchors must be >= 2"):
        PathConfig(anchors=1)
    with pytest.raises(ValueError, match="radius must be a positive"):
        PathConfig(radius=0.0)
    with pytest.raises(ValueError, match="split must be"):
        PathConfig(split="validation")
    with pytest.raises(ValueError, match="only 4 images; lower n_paths"):
        build_paths(images, labels, PathConfig(n_paths=5))
    with pytest.raises(ValueError, match="not below the image side"):
        build_paths(images, labels, PathConfig(n_paths=2, radius=9.0))
    with pytest.raises(ValueError, match="fewer anchors"):
        build_paths(images, labels, PathConfig(kind="shift", n_paths=2, anchors=18))
    with pytest.raises(ValueError, match="pixel_stats"):
        build_paths(images, labels, PathConfig(kind="noise", n_paths=2))
    with pytest.raises(ValueError, match="broadcast"):
        build_paths(images, labels, PathConfig(kind="noise", n_paths=2), torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="labels must have shape"):
        build_paths(images, labels[:3], PathConfig(n_paths=2))


# --- real digits --------------------------------------------------------------------------

def test_default_circle_paths_on_digits():
    bundle = load(DataConfig(name="digits"))
    ps = bundle_paths(bundle, PathConfig())
    assert ps.x0.shape == ps.x1.shape == (64 * 8, 1, 8, 8)
    assert ps.config.radius == 1.0
    assert torch.isfinite(ps.x0).all() and torch.isfinite(ps.x1).all()
    assert np.array_equal(ps.label, bundle.clean_labels[ps.base_index])
    assert sorted(np.bincount(ps.label, minlength=10)) == [6] * 6 + [7] * 4
    # same paths for a network trained on noisy labels: bases chosen by the clean labels
    noisy = bundle_paths(load(DataConfig(name="digits", label_noise=0.5)), PathConfig())
    assert torch.equal(noisy.x0, ps.x0) and np.array_equal(noisy.path_id, ps.path_id)
    # noise paths on digits: the training split's per-pixel statistics
    nz = bundle_paths(bundle, PathConfig(kind="noise", n_paths=4))
    assert nz.x0.shape == (32, 1, 8, 8) and torch.isfinite(nz.x0).all()
