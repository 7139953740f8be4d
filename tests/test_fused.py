"""A ReLU and the Linear layer after it as one subdivision step (pipeline/fused.py): the same
regions and maps as running the layer on every vertex."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline import fused
from pipeline.regions import discover
from pipeline.subdivide import Plan, by_piece, trace
from tests.conftest import segments


@pytest.mark.parametrize("negative_slope", [0.0, 0.2])
@pytest.mark.parametrize("chunk", [1, 3, 128])
def test_correction_equals_the_dense_difference(negative_slope, chunk):
    g = torch.Generator().manual_seed(0)
    units, out = 40, 6
    w = torch.randn(out, units, generator=g, dtype=torch.float64)
    # one piece with many crossings (two random vertices), then pieces with one or a few
    ramp = torch.linspace(-1, 1, units, dtype=torch.float64)
    z = torch.cat([torch.randn(2, units, generator=g, dtype=torch.float64), torch.stack([ramp + s for s in (0.0, 0.03, 0.5)])])
    same = torch.ones(z.shape[0] - 1, dtype=torch.bool)
    piece, unit, a, b, tau = fused.crossings(z, same)
    assert (piece == 0).sum() > 5 and (piece == 2).sum() == 1
    act = lambda v: F.leaky_relu(v, negative_slope)  # noqa: E731
    y = torch.zeros(piece.numel(), out, dtype=torch.float64)
    fused.add_correction(y, torch.arange(piece.numel()), piece, unit, a, b, tau, w.t().contiguous(), negative_slope,
                         chunk=chunk)
    for k in range(piece.numel()):
        p, t = int(piece[k]), float(tau[k])
        zt = z[p] + t * (z[p + 1] - z[p])
        dense = w @ (act(zt) - ((1 - t) * act(z[p]) + t * act(z[p + 1])))
        np.testing.assert_allclose(y[k].numpy(), dense.numpy(), rtol=1e-10, atol=1e-12)


def _mlp(kind, hidden=64, depth=3, fuse=True):
    torch.manual_seed(3)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(6 if i == 0 else hidden, hidden) for i in range(depth)])
            self.out = nn.Linear(hidden, 4)
            self.leaky = nn.LeakyReLU(0.1)
            self.ident = nn.Identity()

        def forward(self, x):
            for layer in self.layers:
                h = layer(x)
                x = {"module": self.leaky, "functional": F.relu, "method": lambda v: v.relu()}[kind](h)
                if not fuse:
                    x = self.ident(x)  # not directly followed by a Linear: not fused
            return self.out(x)

    return Net().eval()


@pytest.mark.parametrize("kind", ["module", "functional", "method"])
def test_fused_equals_unfused(kind):
    a, b = _mlp(kind), _mlp(kind, fuse=False)
    assert len(Plan(trace(a)).relu_linear) == 3 and not Plan(trace(b)).relu_linear
    x0, x1 = segments((6,), 6, seed=11, scale=4.0)
    ra, rb = discover(a, x0, x1), discover(b, x0, x1)
    np.testing.assert_array_equal(ra.density, rb.density)
    assert ra.density.min() > 30
    np.testing.assert_allclose(ra.t_start, rb.t_start, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ra.intercept + ra.slope * 0.5 * (ra.t_start + ra.t_end)[:, None],
                               rb.intercept + rb.slope * 0.5 * (rb.t_start + rb.t_end)[:, None], rtol=1e-9, atol=1e-12)
    assert ra.continuity_gap.max() < 1e-12
    walk = discover(a, x0, x1, method="walk")
    assert np.abs(walk.density - ra.density).max() <= 1  # the walk merges slivers thinner than eps


def test_fused_with_small_chains():
    """Chains split at every few vertices: the fused step sees many short chains."""
    a = _mlp("module")
    x0, x1 = segments((6,), 3, seed=12, scale=4.0)
    ref = discover(a, x0, x1)
    small = discover(a, x0, x1, max_vertices=8, batch_size=1)
    np.testing.assert_array_equal(ref.density, small.density)
    np.testing.assert_allclose(ref.t_start, small.t_start, rtol=0, atol=1e-12)
