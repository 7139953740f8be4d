"""The walk in float32 finds the regions float64 finds (issue 2: it used to over-count).

In float32 a kink's position along a short segment is only known to a few 1e-6 in ``t``
(rounding of ``x0 + t d`` and of every layer). The exit computed from a point deep inside a
region can therefore land short of the kink by more than ``eps``; the next step then still
sees the old pattern, aims at the same kink again, and used to record a sliver with the same
map as the region before it (VGG8: 5,843 regions in float32 against 3,940 in float64).
The walk now recognises such a step (the kink it aims at is the one the last step aimed at)
and merges the two rows into one region.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.inputs.models import VGG8
from pipeline.engine.lines import discover


def _short_segment():
    """A smooth random image and 1/32 of the way to its 1-pixel translation: the regime in
    which float32 cannot place kinks better than about 1e-6 in t (benchmark workload)."""
    g = torch.Generator().manual_seed(1)
    img = F.avg_pool2d(torch.randn(1, 3, 32, 32, generator=g, dtype=torch.float64), 5, 1, 2)
    img = (img - img.mean()) / img.std()
    return img, img + (torch.roll(img, 1, dims=-1) - img) / 32


@pytest.mark.parametrize("pool,jvp", [("avg", "stacked"), ("avg", "dual"), ("max", "stacked")])
def test_float32_walk_counts_like_float64(pool, jvp):
    torch.manual_seed(0)
    net = VGG8(pool=pool).eval()
    x0, x1 = _short_segment()
    r64 = discover(net, x0, x1, method="walk", jvp=jvp)
    r32 = discover(net, x0, x1, method="walk", jvp=jvp, dtype=torch.float32)
    n64, n32 = int(r64.density[0]), int(r32.density[0])
    assert n64 > 100  # a real workload, not a trivial one
    # before the fix: 206 against 141 (avg, stacked), 65 of them narrower than 1e-5
    assert abs(n32 - n64) <= max(2, n64 // 100), (n32, n64)
    thin = int(((r32.t_end - r32.t_start) < 1e-5).sum())
    assert thin <= 2, thin
    # the breakpoints agree up to float32's resolution in t: a kink's error is float32's error in
    # z over |dz/dt|, so a shallow crossing moves more (1.1e-4 measured on an AMD EPYC, where
    # other kernels round differently; below 1e-4 on the Intel machines before)
    b64, b32 = r64.breakpoints(0), r32.breakpoints(0)
    if b64.size == b32.size:
        assert np.abs(b64 - b32).max() < 5e-4
    np.testing.assert_allclose(r32.deviation, r64.deviation, rtol=1e-3, atol=1e-6)


class _Envelope(nn.Module):
    """max(0.3, x, 2x - 0.4) on x in [0, 1] via max_pool1d: one window whose max changes twice
    (0.3 -> x at 0.3, x -> 2x - 0.4 at 0.4), two consecutive exits at the same window that
    must stay distinct regions."""

    def __init__(self, dtype=torch.float64):
        super().__init__()
        self.lin = nn.Linear(1, 3, dtype=dtype)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[0.0], [1.0], [2.0]]))
            self.lin.bias.copy_(torch.tensor([0.3, 0.0, -0.4]))

    def forward(self, x):
        return F.max_pool1d(self.lin(x)[:, None, :], 3).flatten(1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_consecutive_exits_of_one_window_are_not_merged(dtype):
    x0, x1 = torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)
    res = discover(_Envelope().eval(), x0, x1, method="walk", dtype=dtype)
    np.testing.assert_allclose(res.breakpoints(0), [0.0, 0.3, 0.4, 1.0], atol=1e-6)
    np.testing.assert_allclose(res.slope[:, 0], [0.0, 1.0, 2.0], atol=1e-5)


def test_pattern_hashes_agree_across_hashers_and_weights_are_drawn_once():
    """The walk keeps one PatternHash per call (no module-level memo): two hashers give the
    same hash, a second pass draws no new weights, and a pattern changed in one unit changes
    the hash."""
    from pipeline.engine.linearize import PatternHash, linearize

    torch.manual_seed(0)
    net = VGG8().eval().double()
    x0, x1 = _short_segment()
    d = x1 - x0
    a, b = PatternHash(), PatternHash()
    ha = linearize(net, x0, d, pattern=a)[3]
    drawn = len(a.weights)
    assert drawn == 7  # one weight vector per ReLU of VGG8 (six conv, one fc)
    assert torch.equal(linearize(net, x0, d, pattern=a)[3], ha) and len(a.weights) == drawn
    assert torch.equal(linearize(net, x0, d, pattern=b)[3], ha)
    mask = torch.zeros(2, 6144, dtype=torch.float64)
    flipped = mask.clone()
    flipped[1, 1234] = 1.0
    assert a(mask, 0)[0] != a(flipped, 0)[1]
