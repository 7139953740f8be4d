"""Kink measures and sampled counts (pipeline/engine/kink_measures.py): a hand-computed network,
equal kinks, shards combined against the whole path and a per-path loop, sampled counts against
activation patterns, and the store's per-path table with and without affine maps."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.engine.kink_measures import (KINK_COLUMNS, SAMPLE_POINTS, breakpoint_measures, combine_kink_partials,
                                           kink_partials, sampled_density, slope_jumps)
from pipeline.engine.lines import discover, discover_iter
from pipeline.store.identity import StoreConfig, open_or_create
from pipeline.store.lines import PATH_TABLE_COLUMNS, ShardWriter, open_store
from tests.nets import MLP, patterns

NAN_WITHOUT_MAPS = [c for c in KINK_COLUMNS if not c.startswith("sampled_density_")]


def _hinge_net(bias, w_out):
    """``x -> w_out @ relu(x - bias)`` on R^1: kinks at ``x = bias``."""
    w_out = torch.as_tensor(w_out, dtype=torch.float64)
    net = nn.Sequential(nn.Linear(1, len(bias)), nn.ReLU(), nn.Linear(len(bias), w_out.shape[0])).double().eval()
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias[:] = -torch.as_tensor(bias, dtype=torch.float64)
        net[2].weight[:] = w_out
        net[2].bias.zero_()
    return net


# kinks at x = 0.5, 1, 1.5; along x = 0 -> 2 (|d| = 2) they sit at t = 0.25, 0.5, 0.75 and the
# slopes in t are 2 * dy/dx: (0, 0), (2, 4), (8, 2), (8, 2.25)
HAND = _hinge_net([0.5, 1.0, 1.5], [[1.0, 3.0, 0.0], [2.0, -1.0, 0.125]])
HAND_SLOPES = np.array([[0, 0], [2, 4], [8, 2], [8, 2.25]], dtype=float)


def _line(net, a, b):
    """The segments ``a[s] -> b[s]`` on R^1."""
    return discover(net, torch.tensor(a, dtype=torch.float64)[:, None], torch.tensor(b, dtype=torch.float64)[:, None])


def test_hand_computed_network():
    # a closed path: out along x = 0 -> 2 and back (the way back has the same kinks, reversed)
    r = _line(HAND, [0.0, 2.0], [2.0, 0.0])
    np.testing.assert_allclose(r.t_start, [0, 0.25, 0.5, 0.75] * 2, atol=1e-15)
    np.testing.assert_allclose(r.slope[:4], HAND_SLOPES, atol=1e-13)

    delta, seg = slope_jumps(r.slope, r.region_offset, r.length)
    np.testing.assert_array_equal(seg, [0, 0, 0, 1, 1, 1])  # 3 breakpoints per segment, none at the anchors
    np.testing.assert_allclose(delta[:3], [[1, 2], [3, -1], [0, 0.125]], atol=1e-13)  # slope change / |d|
    bp = breakpoint_measures(r.slope, r.region_offset, r.length)
    jumps = [math.sqrt(5), math.sqrt(10), 0.125]
    cos = [0.0,  # from a zero slope: 0 by convention
           (2 * 8 + 4 * 2) / math.hypot(2, 4) / math.hypot(8, 2),
           (8 * 8 + 2 * 2.25) / math.hypot(8, 2) / math.hypot(8, 2.25)]
    rel = [1.0, math.sqrt(40) / (math.hypot(2, 4) + math.hypot(8, 2)), 0.25 / (math.hypot(8, 2) + math.hypot(8, 2.25))]
    np.testing.assert_allclose(bp["jump"], jumps + jumps[::-1], rtol=1e-12)
    np.testing.assert_allclose(bp["cos"], cos + cos[::-1], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(bp["rel_jump"], rel + rel[::-1], rtol=1e-12)

    out = combine_kink_partials([kink_partials([5, 5], r.length, r.region_offset, r.t_start, r.slope)])
    total = 2 * sum(jumps)
    shares = np.array(jumps * 2) / total
    assert out["path_id"].tolist() == [5]
    assert out["jump_total"][0] == pytest.approx(total, rel=1e-12)
    assert out["jump_per_length"][0] == pytest.approx(total / 4, rel=1e-12)
    assert out["effective_density"][0] == pytest.approx(2 + math.exp(-(shares * np.log(shares)).sum()), rel=1e-12)
    # sorted jumps: √10, √10, √5, √5, 1/8, 1/8: three carry 76% of the total, four 98%
    assert out["n_kinks_90"][0] == 4
    assert out["cos_median"][0] == pytest.approx(cos[1], rel=1e-12)  # 0, 0, c1, c1, c2, c2
    assert out["rel_jump_median"][0] == pytest.approx(rel[1], rel=1e-12)  # r2, r2, r1, r1, 1, 1
    assert out["rel_jump_p90"][0] == pytest.approx(1.0)
    # the four regions are wider than 1/7: every sampled count finds them all
    assert [out[f"sampled_density_{n}"][0] for n in SAMPLE_POINTS] == [8] * 4

    # one dominant kink: kinks at 0.5 (size 1) and 1.5 (size 1/100) -> 90% needs one of them
    r = _line(_hinge_net([0.5, 1.5], [[1.0, 0.01]]), [0.0], [2.0])
    out = combine_kink_partials([kink_partials([0], r.length, r.region_offset, r.t_start, r.slope)])
    p = np.array([1.0, 0.01]) / 1.01
    assert out["n_kinks_90"][0] == 1 and out["jump_total"][0] == pytest.approx(1.01, rel=1e-12)
    assert out["effective_density"][0] == pytest.approx(1 + math.exp(-(p * np.log(p)).sum()), rel=1e-12)
    assert out["effective_density"][0] < 2.1  # against a density of 3
    assert out["cos_median"][0] == pytest.approx(0.5) and out["rel_jump_median"][0] == pytest.approx(
        (1.0 + 0.01 / 2.01) / 2)  # breakpoints: cos 0 and 1, rel 1 and 0.01/2.01


def test_equal_kinks_give_the_density_exactly():
    # f = Σ relu(x - c) with equal output weights: every jump is (1, 1), and the path has 12 of them
    net = _hinge_net([0.1, 0.3, 0.45, 0.6, 0.85, 0.9], [[1.0] * 6, [1.0] * 6])
    r = _line(net, [0.0, 1.0], [1.0, 0.0])
    out = combine_kink_partials([kink_partials([0, 0], r.length, r.region_offset, r.t_start, r.slope)])
    assert r.density.sum() == 14
    assert out["effective_density"][0] == 14  # exactly: the shares are normalised by the largest jump
    assert out["n_kinks_90"][0] == 11  # 10 of 12 equal jumps carry 83%, 11 carry 92%
    # no breakpoint at all, or every jump zero: the exp(H) term is 0
    flat = _line(_hinge_net([5.0], [[1.0]]), [0.0], [1.0])
    out = combine_kink_partials([kink_partials([0], flat.length, flat.region_offset, flat.t_start, flat.slope)])
    assert out["effective_density"][0] == 1 and out["jump_total"][0] == 0 and out["n_kinks_90"][0] == 0
    assert np.isnan(out["cos_median"][0]) and np.isnan(out["rel_jump_p90"][0])
    same = kink_partials([0], [1.0], np.array([0, 3]), np.array([0, 0.2, 0.7]), np.ones((3, 2)))
    out = combine_kink_partials([same])
    assert out["effective_density"][0] == 1 and out["n_kinks_90"][0] == 0
    assert out["cos_median"][0] == 1 and out["rel_jump_median"][0] == 0
    zeros = breakpoint_measures(np.zeros((2, 2)), np.array([0, 2]), np.array([1.0]))
    assert zeros["cos"][0] == 1 and zeros["rel_jump"][0] == 0 and zeros["jump"][0] == 0  # both slopes 0


def test_sampled_point_on_a_breakpoint_counts_for_the_region_starting_there():
    # N = 3 samples t = 0, 0.5, 1
    assert sampled_density(np.array([0, 0.5, 0.6]), np.array([0, 3]), (3,))[0, 0] == 3  # 0.5 -> region 1
    assert sampled_density(np.array([0, 0.4, 0.5]), np.array([0, 3]), (3,))[0, 0] == 2  # 0.5 -> region 2, not 1
    # t = 1 belongs to the last region; a segment's counts stay in it; the ends alone: N = 2
    off = np.array([0, 4, 5, 7])
    t = np.array([0, 0.25, 0.5, 0.75, 0, 0, 0.999])
    np.testing.assert_array_equal(sampled_density(t, off, (2, 5)), [[2, 4], [1, 1], [2, 2]])
    with pytest.raises(ValueError, match="at least 2"):
        sampled_density(t, off, (1,))


def _random_regions(rng, n_seg, n_paths):
    """Segments with 1..6 regions each, random slopes, some zero and some repeated rows."""
    counts = rng.integers(1, 7, n_seg)
    off = np.concatenate([[0], np.cumsum(counts)])
    t = np.concatenate([np.concatenate([[0.0], np.sort(rng.random(c - 1))]) for c in counts])
    k = int(rng.integers(1, 4))
    slope = rng.normal(size=(off[-1], k)) * rng.choice([1e-3, 1.0, 1e3], size=(off[-1], 1))
    slope[rng.random(off[-1]) < 0.15] = 0.0
    repeat = np.flatnonzero(rng.random(off[-1] - 1) < 0.15)
    slope[repeat + 1] = slope[repeat]
    return rng.integers(0, n_paths, n_seg) * 7, rng.uniform(0.1, 3.0, n_seg), off, t, slope


def _part(pid, length, off, t, slope, segs, affine=True):
    """kink_partials of the segments ``segs`` only."""
    rows = np.concatenate([np.arange(off[s], off[s + 1]) for s in segs]) if len(segs) else np.zeros(0, int)
    sub_off = np.concatenate([[0], np.cumsum(np.diff(off)[segs])])
    return kink_partials(pid[segs], length[segs], sub_off, t[rows], slope[rows] if affine else None)


def _reference(pid, length, off, slope, path):
    """The path's measures by a plain loop over its segments and breakpoints."""
    jumps, rels, coss, n_seg, total_len = [], [], [], 0, 0.0
    for s in np.flatnonzero(pid == path):
        n_seg, total_len = n_seg + 1, total_len + length[s]
        for i in range(off[s], off[s + 1] - 1):
            b0, b1 = slope[i], slope[i + 1]
            n0, n1, dn = np.linalg.norm(b0), np.linalg.norm(b1), np.linalg.norm(b1 - b0)
            jumps.append(dn / length[s])
            rels.append(dn / (n0 + n1) if n0 + n1 > 0 else 0.0)
            coss.append(1.0 if n0 == n1 == 0 else (0.0 if n0 == 0 or n1 == 0 else b0 @ b1 / (n0 * n1)))
    jumps = np.array(jumps)
    total = jumps.sum()
    perplexity, kinks = 0.0, 0
    if total > 0:
        p = jumps[jumps > 0] / total
        perplexity = math.exp(-(p * np.log(p)).sum())
        kinks = next(k for k in range(1, jumps.size + 1) if np.sort(jumps)[::-1][:k].sum() >= 0.9 * total)
    stat = (lambda f, v: f(v) if len(v) else np.nan)
    return {"cos_median": stat(np.median, coss), "rel_jump_median": stat(np.median, rels),
            "rel_jump_p90": stat(lambda v: np.quantile(v, 0.9), rels), "jump_total": total,
            "jump_per_length": total / total_len, "effective_density": n_seg + perplexity, "n_kinks_90": kinks}


@pytest.mark.parametrize("seed", range(12))
def test_shards_combine_to_the_whole_path(seed):
    rng = np.random.default_rng(seed)
    pid, length, off, t, slope = arrays = _random_regions(rng, int(rng.integers(1, 25)), int(rng.integers(1, 5)))
    segs = np.arange(pid.size)
    whole = combine_kink_partials([_part(*arrays, segs)])
    # any split of the segments into disjoint sets (a path spans shards), in any order: bit for bit
    # (but the path's length, a sum of the parts' sums, as in the path table)
    labels = rng.integers(0, int(rng.integers(1, 5)), pid.size)
    parts = [_part(*arrays, segs[labels == g]) for g in rng.permutation(labels.max() + 1)]
    split = combine_kink_partials(parts)
    assert list(split) == ["path_id", *KINK_COLUMNS]
    for name in split:
        if name == "jump_per_length":
            np.testing.assert_allclose(split[name], whole[name], rtol=1e-14)
        else:
            np.testing.assert_array_equal(split[name], whole[name], err_msg=name)
    for i, path in enumerate(whole["path_id"]):
        ref = _reference(pid, length, off, slope, path)
        for name, value in ref.items():
            np.testing.assert_allclose(whole[name][i], value, rtol=1e-10, atol=1e-300, err_msg=name)
        n = np.sum(np.diff(off)[pid == path])
        assert n - (pid == path).sum() >= whole["n_kinks_90"][i]
        assert (pid == path).sum() <= whole["effective_density"][i] <= n + 1e-9
    # one shard without affine maps: its paths lose every kink measure, keep their sampled counts
    if pid.size > 1:
        dropped = combine_kink_partials([_part(*arrays, segs[:1], affine=False), _part(*arrays, segs[1:])])
        hit = whole["path_id"] == pid[0]
        for name in NAN_WITHOUT_MAPS:
            assert np.isnan(dropped[name][hit]).all() and not np.isnan(dropped[name][~hit]).any()
        for n in SAMPLE_POINTS:
            np.testing.assert_array_equal(dropped[f"sampled_density_{n}"], whole[f"sampled_density_{n}"])


def test_sampled_counts_are_the_patterns_seen_and_reach_the_exact_count():
    torch.manual_seed(3)
    net = MLP(n_in=4, width=12, depth=2, k=3).double().eval()
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(6, 4, generator=g, dtype=torch.float64) * 3, torch.randn(6, 4, generator=g,
                                                                                   dtype=torch.float64) * 3
    r = discover(net, x0, x1)
    counts = sampled_density(r.t_start, r.region_offset, SAMPLE_POINTS)
    assert (counts <= r.density[:, None]).all() and (counts[:, 0] < r.density).any()  # 8 points miss regions
    # distinct activation patterns at the same points (an independent forward pass)
    for j, n in enumerate(SAMPLE_POINTS[:2]):
        ts = torch.arange(n, dtype=torch.float64) / (n - 1)
        for s in range(6):
            pats = patterns(net, x0[s] + ts[:, None] * (x1[s] - x0[s]))
            assert counts[s, j] == len(np.unique(pats, axis=0)), (s, n)
    # once the spacing is below the thinnest region, every region is hit
    width = (r.t_end - r.t_start).min()
    fine = sampled_density(r.t_start, r.region_offset, (int(2 / width) + 2,))
    np.testing.assert_array_equal(fine[:, 0], r.density)


ATTRS = {"checkpoint_sha256": "abc", "model": {"name": "hinge"}, "dataset": "none", "split": "train",
         "paths": {"kind": "circle", "n_paths": 2}, "eps": 1e-6, "dtype": "float64", "n_shards": 2,
         "keep_affine": True, "affine_dtype": "float64"}


def _hand_store(root, keep_affine):
    """Path 5 (out and back along x = 0 -> 2 through HAND's kinks) spans both shards; path 9 is
    one segment x = 0.75 -> 1.25 (one kink) in shard 1."""
    store = open_or_create(root, {**ATTRS, "keep_affine": keep_affine})
    shards = [(([0.0], [2.0]), [5], [0]), (([2.0, 0.75], [0.0, 1.25]), [5, 9], [1, 0])]
    for i, ((a, b), pid, sidx) in enumerate(shards):
        w = ShardWriter(store, i, pid, sidx, k=2, cfg=StoreConfig(keep_affine=keep_affine))
        x0, x1 = (torch.tensor(v, dtype=torch.float64)[:, None] for v in (a, b))
        for res in discover_iter(HAND, x0, x1, keep_affine=keep_affine):
            w.write(res)
        w.commit()
    return store


def test_store_paths_table(tmp_path):
    paths = open_store(_hand_store(tmp_path / "a.zarr", True)).paths()
    assert list(paths.columns) == list(PATH_TABLE_COLUMNS) and paths.path_id.tolist() == [5, 9]
    r = _line(HAND, [0.0, 2.0], [2.0, 0.0])
    whole = combine_kink_partials([kink_partials([5, 5], r.length, r.region_offset, r.t_start, r.slope)])
    for name in KINK_COLUMNS:
        assert paths[name][0] == pytest.approx(whole[name][0], rel=1e-12), name
    # path 9: slopes in t 0.5 * (2, 4) / 2 and 0.5 * (8, 2) / 2 around its one kink, |d| = 0.5
    assert paths.jump_total[1] == pytest.approx(math.sqrt(40) / 2, rel=1e-12)
    assert paths.jump_per_length[1] == pytest.approx(math.sqrt(40), rel=1e-12)
    assert paths.effective_density[1] == 2 and paths.n_kinks_90[1] == 1
    assert paths.rel_jump_p90[1] == pytest.approx(math.sqrt(40) / (math.hypot(2, 4) + math.hypot(8, 2)))
    assert paths.sampled_density_8[1] == 2 and paths.density[1] == 2
    bare = open_store(_hand_store(tmp_path / "b.zarr", False)).paths()
    assert list(bare.columns) == list(PATH_TABLE_COLUMNS)
    assert bare[NAN_WITHOUT_MAPS].isna().all().all()
    keep = [c for c in PATH_TABLE_COLUMNS if c not in NAN_WITHOUT_MAPS and c != "continuity_gap"]
    assert bare[keep].equals(paths[keep])  # counting, deviation and the sampled counts are kept
