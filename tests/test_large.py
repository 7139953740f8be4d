"""The paper's VGG8 on a full-length 32x32 segment: thousands of regions, both methods agree."""

import numpy as np
import pytest
import torch

from pipeline.inputs.models import VGG8
from pipeline.engine.lines import discover
from tests.compare import assert_walk_matches_exact
from tests.nets import true_breakpoints

pytestmark = pytest.mark.slow


def test_vgg8_full_segment():
    torch.manual_seed(0)
    net = VGG8().eval()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 3, 32, 32, generator=g, dtype=torch.float64)
    x1 = torch.randn(1, 3, 32, 32, generator=g, dtype=torch.float64)
    walk = discover(net, x0, x1, method="walk")
    exact = discover(net, x0, x1, method="subdivide", max_vertices=1024)
    assert exact.density[0] > 5000  # the design's order of magnitude: ~10^4 per segment
    assert_walk_matches_exact(walk, exact)
    assert exact.continuity_gap[0] < 1e-9
    # independent oracle on a slice of the segment: sampled patterns, refined by bisection
    lo, hi = 0.40, 0.41
    xa, xb = x0[0] + lo * (x1[0] - x0[0]), x0[0] + hi * (x1[0] - x0[0])
    truth, _ = true_breakpoints(net.double(), xa, xb, n=2001)
    b = exact.breakpoints(0)
    inside = (b > lo) & (b < hi)
    truth = lo + truth * (hi - lo)
    j = np.clip(np.searchsorted(b, truth), 1, b.size - 1)
    assert np.minimum(np.abs(truth - b[j - 1]), np.abs(truth - b[j])).max() < 1e-9
    assert inside.sum() >= truth.size
