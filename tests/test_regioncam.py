"""An independent oracle for MLP lines: regioncam (Rust, float32, exact 1-D subdivision)."""

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.engine.lines import discover

regioncam = pytest.importorskip("regioncam")


def regioncam_breakpoints(net: nn.Sequential, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Interior breakpoints in t of the segment a -> b. ``through_points`` spans the middle 75%
    of the segment between its points (checked below by the end outputs), so the points are
    spread by 1/0.75 about the midpoint."""
    m, h = (a + b) / 2, (b - a) / 2 / 0.75
    cam = regioncam.Regioncam1D.through_points(np.stack([m - h, m + h]).astype(np.float32))
    cam.add(regioncam.nn.convert(net.float()))
    s = np.sort(np.asarray(cam.inputs, dtype=np.float64))
    out = np.asarray(cam.outputs, dtype=np.float64)
    ref = net.float()(torch.from_numpy(np.stack([a, b]).astype(np.float32))).detach().numpy()
    np.testing.assert_allclose(out[[np.argmin(cam.inputs), np.argmax(cam.inputs)]], ref, rtol=1e-4, atol=1e-4)
    t = (s - s[0]) / (s[-1] - s[0])
    return t[1:-1]


@pytest.mark.parametrize("seed,width,depth", [(0, 64, 2), (1, 128, 3), (2, 256, 2)])
def test_breakpoints_match_regioncam(seed, width, depth):
    torch.manual_seed(seed)
    layers, c = [], 8
    for _ in range(depth):
        layers += [nn.Linear(c, width), nn.ReLU()]
        c = width
    net = nn.Sequential(*layers, nn.Linear(c, 5)).eval()
    g = np.random.default_rng(seed)
    a, b = g.normal(size=8) * 3, g.normal(size=8) * 3
    ref = regioncam_breakpoints(net, a, b)
    for method in ("subdivide", "walk"):
        res = discover(net, a[None], b[None], method=method)
        ours = res.breakpoints(0)[1:-1]
        assert res.continuity_gap[0] < 1e-9
        assert ours.size > 20
        # float32 against float64: every breakpoint of one has a partner in the other
        # (regions thinner than float32's resolution may merge there)
        assert abs(ours.size - ref.size) <= max(1, ref.size // 200), (ours.size, ref.size)
        near = np.abs(ours[:, None] - ref[None, :]).min(1)
        assert np.mean(near < 1e-4) > 0.99 and np.median(near) < 1e-6, method
