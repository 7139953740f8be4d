"""The engine's faster layer equivalents: same values as the library layers, swapped only
where they apply, and only into the engine's private copy."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.engine.fastops import PairAvgPool2d, with_fast_layers
from pipeline.engine.lines import discover
from pipeline.engine.subdivide import trace


@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (2, 5, 9, 7), (4, 6, 6), (1, 1, 3, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pair_average_matches_avg_pool2d(shape, dtype):
    x = torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(0))
    want = F.avg_pool2d(x, 2)
    got = PairAvgPool2d()(x)
    assert got.shape == want.shape
    tol = 4 * torch.finfo(dtype).eps * x.abs().max().item()
    assert torch.allclose(got, want, rtol=0, atol=tol)


def _net():
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2, stride=2)),
        nn.AvgPool2d(3, stride=1, padding=1),  # not a 2x2 average: kept
        nn.AvgPool2d(2, ceil_mode=True),  # ceil_mode: kept
        nn.Flatten(), nn.Linear(3, 2),
    ).eval()


def test_only_plain_two_by_two_averages_are_swapped_and_values_agree():
    net = _net()
    fast = with_fast_layers(copy.deepcopy(net), "cpu")
    kinds = [type(m).__name__ for m in fast.modules()]
    assert kinds.count("PairAvgPool2d") == 2 and kinds.count("AvgPool2d") == 2
    x = torch.randn(5, 1, 8, 8)
    assert torch.allclose(fast(x), net(x), atol=1e-6)
    assert all(type(m) is not PairAvgPool2d for m in net.modules())  # the source is untouched


def test_nothing_is_swapped_off_the_cpu():
    net = _net()
    assert with_fast_layers(net, device="meta") is net
    assert all(type(m) is not PairAvgPool2d for m in net.modules())


def test_the_fast_layer_stays_one_call_in_the_traced_graph():
    gm = trace(with_fast_layers(_net(), "cpu"))
    called = [gm.get_submodule(n.target) for n in gm.graph.nodes if n.op == "call_module"]
    assert sum(isinstance(m, PairAvgPool2d) for m in called) == 2


@pytest.mark.parametrize("method", ["walk", "subdivide"])
def test_discover_finds_the_same_regions_through_the_fast_layer(method):
    """The engine runs the swapped copy; the same network with the library's functional
    pooling (never swapped) must give the same breakpoints and maps."""

    class Functional(nn.Module):
        def __init__(self, src):
            super().__init__()
            self.c1, self.c2, self.fc = src[0], src[3][0], src[7]

        def forward(self, x):
            x = F.avg_pool2d(F.relu(self.c1(x)), 2)
            x = F.avg_pool2d(F.relu(self.c2(x)), 2)
            x = F.avg_pool2d(x, 3, stride=1, padding=1)
            return self.fc(F.avg_pool2d(x, 2, ceil_mode=True).flatten(1))

    torch.manual_seed(1)
    net = _net().double()
    ref = Functional(net).eval()
    g = torch.Generator().manual_seed(2)
    x0, x1 = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64), torch.randn(3, 1, 8, 8, generator=g,
                                                                                   dtype=torch.float64)
    a = discover(net, x0, x1, method=method)
    b = discover(ref, x0, x1, method=method)
    np.testing.assert_array_equal(a.region_offset, b.region_offset)
    np.testing.assert_allclose(a.t_start, b.t_start, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.slope, b.slope, rtol=1e-9, atol=1e-12)
    assert a.continuity_gap.max() < 1e-9
