"""torchvision's model zoo as clients of the engine, at small inputs and on short segments.

Each architecture brings ops the paper's models do not have: resnet18 (BatchNorm, max-pool
with padding, in-place ReLU), vgg11_bn (five max-pools), alexnet (AdaptiveAvgPool2d((6, 6))
upsampling a 1x1 map, dropout), densenet121 (concatenation, functional in-place ReLU,
F.adaptive_avg_pool2d, torch.flatten), mobilenet_v2 (ReLU6, in place; dropout). Weights are
random (``weights=None``) and BatchNorm's statistics are calibrated on random inputs, with
random scales and shifts, so that BatchNorm is a non-trivial affine map and activations stay
of order one through the depth (mobilenet's scales are larger so that some ReLU6 inputs
exceed 6: both kinks are crossed). On each: walk and subdivide agree, and the maps reproduce
the network at random interior points of every region (float64). Each model takes 10-15 s
on one thread.
"""

import copy

import numpy as np
import pytest
import torch

from pipeline.engine.lines import discover
from tests.compare import EPS, assert_walk_matches_exact
from tests.nets import patterns

torchvision = pytest.importorskip("torchvision")

# name -> (input side, segment length in input space, BatchNorm scale or None)
ZOO = {
    "resnet18": (32, 0.3, 1.0),
    "vgg11_bn": (32, 0.01, 1.0),  # about 0.1 s per row in float64 (its 25088 -> 4096 layer)
    "alexnet": (64, 0.5, None),  # no BatchNorm; 64 is about the smallest input it accepts
    "densenet121": (32, 0.015, 1.0),
    "mobilenet_v2": (32, 0.006, 3.0),
}
SEGMENTS = 2


def calibrate_batchnorm(net, side, gain):
    """Random BatchNorm statistics, scales (``gain`` times U(0.5, 1.5)) and shifts, from a
    calibration batch of random ``side`` x ``side`` images; the net in eval mode. ``gain``
    None: left as it is."""
    if gain is not None:
        g = torch.Generator().manual_seed(1)
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over the calibration batch
                with torch.no_grad():
                    m.weight.uniform_(0.5 * gain, 1.5 * gain, generator=g)
                    m.bias.uniform_(-0.5, 0.5, generator=g)
        net.train()
        with torch.no_grad():
            net(torch.randn(8, 3, side, side, generator=g))
    return net.eval()


def _model(name):
    side, _, gain = ZOO[name]
    torch.manual_seed(0)
    return calibrate_batchnorm(getattr(torchvision.models, name)(weights=None, num_classes=10), side, gain)


def _segments(name):
    side, length, _ = ZOO[name]
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(SEGMENTS, 3, side, side, generator=g, dtype=torch.float64)
    d = torch.randn(SEGMENTS, 3, side, side, generator=g, dtype=torch.float64)
    d *= length / torch.linalg.vector_norm(d.flatten(1), dim=1).view(-1, 1, 1, 1)
    return x0, x0 + d


def _check_maps(net64, x0, x1, res, rng, label):
    """The maps against the network at one random interior point of every region."""
    for s in range(res.n_segments):
        r = res.regions(s)
        t = r["t_start"] + rng.uniform(0.05, 0.95, r["t_start"].size) * (r["t_end"] - r["t_start"])
        x = x0[s][None] + torch.from_numpy(t).view(-1, 1, 1, 1) * (x1[s] - x0[s])[None]
        with torch.no_grad():
            f = torch.cat([net64(x[i:i + 64]) for i in range(0, t.size, 64)]).numpy()
        pred = r["intercept"] + r["slope"] * t[:, None]
        err = np.abs(pred - f).max() / np.abs(f).max()
        assert err < 1e-9, (label, s, err)


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model(name):
    net = _model(name)
    x0, x1 = _segments(name)
    walk = discover(net, x0, x1, method="walk")
    sub = discover(net, x0, x1, method="subdivide")
    # modest region counts: the segments cross kinks, and the test stays fast
    assert 10 <= sub.density.min() and sub.density.max() <= 400, sub.density
    assert_walk_matches_exact(walk, sub, label=name)
    for s in range(SEGMENTS):
        if np.diff(sub.breakpoints(s)).min() > 2 * EPS:  # no sliver the walk may merge
            assert walk.density[s] == sub.density[s], (name, s)
            np.testing.assert_allclose(walk.breakpoints(s), sub.breakpoints(s), atol=1e-9, rtol=0)
    assert walk.continuity_gap.max() < 1e-9 * np.abs(walk.f0).max(), walk.continuity_gap
    assert sub.continuity_gap.max() < 1e-9 * np.abs(sub.f0).max(), sub.continuity_gap
    net64 = copy.deepcopy(net).double()
    rng = np.random.default_rng(0)
    _check_maps(net64, x0, x1, walk, rng, (name, "walk"))
    _check_maps(net64, x0, x1, sub, rng, (name, "subdivide"))
    if name == "mobilenet_v2":
        # the forward-AD backend on ReLU6 in place (2.5x slower than the stacked one here:
        # a quarter of the first segment)
        xq = x0[:1] + 0.25 * (x1[:1] - x0[:1])
        dual = discover(net, x0[:1], xq, method="walk", jvp="dual")
        exact = discover(net, x0[:1], xq, method="subdivide")
        assert dual.density[0] >= 10
        assert_walk_matches_exact(dual, exact, label="mobilenet_v2 dual")
        assert dual.continuity_gap.max() < 1e-9 * np.abs(dual.f0).max()
        _check_maps(net64, x0[:1], xq, dual, rng, (name, "walk-dual"))
        # both kinks of ReLU6 are crossed: some unit goes from inside (1) to above 6 (2)
        bp = sub.breakpoints(0)
        mid = 0.5 * (bp[1:] + bp[:-1])
        pat = patterns(net64, x0[0][None] + torch.from_numpy(mid).view(-1, 1, 1, 1) * (x1[0] - x0[0])[None])
        change = pat[1:] != pat[:-1]
        assert (change & (np.maximum(pat[1:], pat[:-1]) == 2)).any()
        assert (change & (np.minimum(pat[1:], pat[:-1]) == 0)).any()
