"""The piecewise-linear ops beyond ReLU / clamp / max-pool: abs, PReLU, rrelu (eval), maximum /
minimum, amax / amin, max / min over a dimension, adaptive max-pooling, max-pooling with
ceil_mode. Each: an analytic case (where the kinks are known in closed form), a dense-sampling
oracle (the maps reproduce the network at random interior points, and the walk and subdivision
agree), and the 2-D engine against the 1-D one (plane maps reproduce the network; a line across
the plane crosses the 1-D breakpoints)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.engine.planes import discover_plane
from pipeline.engine.lines import discover
from tests.compare import assert_walk_matches_exact
from tests.test_planes import _line_breakpoints, _triangle_points, _x


class Unit(nn.Module):
    """One affine unit z = w.x + b, then the op, then a fixed output layer."""

    def __init__(self, op, n_in=3, width=6, k=2, conv=False):
        super().__init__()
        self.conv = conv
        self.a = nn.Conv2d(1, width, 3, padding=1) if conv else nn.Linear(n_in, width)
        self.op = op
        self.b = nn.LazyLinear(k)

    def forward(self, x):
        z = self.op(self.a(x))
        return self.b(z.flatten(1))


def _ops():
    torch.manual_seed(0)
    return {
        "abs": (lambda z: torch.abs(z), False),
        "abs_method": (lambda z: z.abs() + 0.1 * z, False),
        "prelu_channels": (nn.PReLU(6, init=0.3), False),
        "prelu_one": (nn.PReLU(init=-0.5), False),
        "rrelu_eval": (nn.RReLU(0.1, 0.3), False),
        "maximum": (lambda z: torch.maximum(z, 0.5 - z.flip(1)), False),
        "minimum": (lambda z: torch.minimum(z, -0.3 * z), False),
        "torch_max_binary": (lambda z: torch.max(z, z.roll(1, 1)), False),
        "fmax_constant": (lambda z: torch.fmax(z, torch.full((6,), 0.2, dtype=z.dtype)), False),
        "amax": (lambda z: z.view(-1, 2, 3).amax(2), False),
        "amin_keepdim": (lambda z: z.view(-1, 2, 3).amin(-1, keepdim=True) + z.view(-1, 2, 3), False),
        "max_dim_values": (lambda z: z.view(-1, 3, 2).max(dim=1).values, False),
        "min_dim": (lambda z: torch.min(z.view(-1, 3, 2), 1)[0], False),
        "adaptive_max2d": (nn.AdaptiveMaxPool2d((2, 3)), True),
        "adaptive_max2d_f": (lambda z: F.adaptive_max_pool2d(z, 1), True),
        "adaptive_max1d": (lambda z: F.adaptive_max_pool1d(z.flatten(2), 5), True),
        "maxpool_ceil": (nn.MaxPool2d(2, stride=2, ceil_mode=True), True),
        "maxpool_ceil_3": (lambda z: F.max_pool2d(z, 3, 2, 1, ceil_mode=True), True),
        "maxpool1d_ceil": (lambda z: F.max_pool1d(z.flatten(2), 4, 3, ceil_mode=True), True),
        "global_amax": (lambda z: z.amax(dim=(2, 3)), True),
    }


CASES = sorted(_ops())


def _net(name):
    op, conv = _ops()[name]
    torch.manual_seed(1)
    net = Unit(op, conv=conv)
    x = torch.randn(2, 1, 5, 5) if conv else torch.randn(2, 3)
    net(x)  # materialise the lazy layer
    return net.double().eval(), ((1, 5, 5) if conv else (3,))


def _segments(shape, n, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, *shape, generator=g, dtype=torch.float64) * 2,
            torch.randn(n, *shape, generator=g, dtype=torch.float64) * 2)


@pytest.mark.parametrize("name", CASES)
def test_methods_agree_and_maps_reproduce_the_network(name):
    net, shape = _net(name)
    x0, x1 = _segments(shape, 3, seed=2)
    exact = discover(net, x0, x1, method="subdivide")
    walk = discover(net, x0, x1, method="walk")
    assert exact.density.sum() > 3, name  # the op has kinks on these segments
    assert_walk_matches_exact(walk, exact, label=name)
    for res in (exact, walk):
        # dense-sampling oracle: at random points of every region the network equals the map
        rng = np.random.default_rng(0)
        for s in range(3):
            sl = slice(res.region_offset[s], res.region_offset[s + 1])
            t0, t1 = res.t_start[sl], res.t_end[sl]
            t = t0 + rng.uniform(0.1, 0.9, size=t0.size) * (t1 - t0)
            x = x0[s][None] + torch.from_numpy(t).view(-1, *([1] * len(shape))) * (x1[s] - x0[s])[None]
            with torch.no_grad():
                y = net(x).numpy()
            pred = res.intercept[sl] + res.slope[sl] * t[:, None]
            scale = np.abs(y).max() + np.abs(res.slope[sl]).max()
            np.testing.assert_allclose(pred, y, rtol=0, atol=1e-9 * scale, err_msg=name)
    # a dense grid sees no kink the engine missed: between consecutive breakpoints f is affine
    for s in range(3):
        ts = np.linspace(0, 1, 2001)
        x = x0[s][None] + torch.from_numpy(ts).view(-1, *([1] * len(shape))) * (x1[s] - x0[s])[None]
        with torch.no_grad():
            y = net(x).numpy()
        pred = exact.evaluate(s, ts)
        np.testing.assert_allclose(pred, y, rtol=0, atol=1e-9 * (np.abs(y).max() + 1), err_msg=name)


@pytest.mark.parametrize("name", ["abs", "prelu_channels", "maximum", "min_dim", "adaptive_max2d",
                                  "maxpool_ceil", "global_amax"])
def test_planes_agree_with_lines(name):
    net, shape = _net(name)
    g = torch.Generator().manual_seed(4)
    xs = tuple(3 * torch.randn(1, *shape, generator=g, dtype=torch.float64) for _ in range(3))
    res = discover_plane(net, *xs)
    assert res.density[0] > 2
    rng = np.random.default_rng(1)
    uv = _triangle_points(64, rng, margin=0.01)
    with torch.no_grad():
        y = net(_x(xs, uv)).numpy()
    np.testing.assert_allclose(res.evaluate(0, uv), y, rtol=0, atol=1e-9 * np.abs(y).max(), err_msg=name)
    for _ in range(2):
        a, b = _triangle_points(2, rng, margin=0.02)
        ours = _line_breakpoints(res, a, b)
        ends = _x(xs, np.stack([a, b]))
        ref = discover(net, ends[:1], ends[1:]).breakpoints(0)
        assert (np.abs(ours[:, None] - ref[None]).min(1) <= 1e-7).all(), name


# --------------------------------------------------------------------------- analytic cases


class Lines(nn.Module):
    """Three affine functions of the input, then ``op`` over them (to one output)."""

    def __init__(self, op, w, b):
        super().__init__()
        self.lin = nn.Linear(w.shape[1], w.shape[0]).double()
        with torch.no_grad():
            self.lin.weight.copy_(w)
            self.lin.bias.copy_(b)
        self.op = op

    def forward(self, x):
        return self.op(self.lin(x))


class _PReLUSum(nn.Module):
    def __init__(self):
        super().__init__()
        self.prelu = nn.PReLU(3).double()
        with torch.no_grad():
            self.prelu.weight.copy_(torch.tensor([0.5, -0.25, 2.0]))

    def forward(self, z):
        return self.prelu(z.view(-1, 3, 1)).flatten(1).sum(1, keepdim=True)


def _kinks_of_envelope(a, c, lower=False):
    """Kinks in (0, 1) of max_i (a_i + c_i t) (or min), found by brute force on the pairwise
    crossings: the envelope changes its argmax there."""
    if lower:
        a, c = -a, -c
    ts = []
    for i in range(a.size):
        for j in range(i + 1, a.size):
            if c[i] != c[j]:
                t = (a[j] - a[i]) / (c[i] - c[j])
                if 0 < t < 1:
                    vals = a + c * t
                    if np.isclose(vals.max(), vals[i]) and np.isclose(vals.max(), vals[j]):
                        ts.append(t)
    return np.sort(ts)


@pytest.mark.parametrize("method", ["subdivide", "walk"])
@pytest.mark.parametrize("which", ["abs", "prelu", "amax", "amin", "maximum", "max_dim"])
def test_analytic_kinks(which, method):
    g = torch.Generator().manual_seed(7)
    w, b = torch.randn(3, 2, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    x0, x1 = torch.tensor([[-2.0, -1.5]], dtype=torch.float64), torch.tensor([[2.0, 1.0]], dtype=torch.float64)
    a = (x0 @ w.T + b).numpy()[0]  # z(t) = a + c t
    c = ((x1 - x0) @ w.T).numpy()[0]
    if which == "abs":
        op, kinks = (lambda z: torch.abs(z).sum(1, keepdim=True)), np.sort(-a / c)
    elif which == "prelu":
        op, kinks = _PReLUSum(), np.sort(-a / c)
    elif which == "amax":
        op, kinks = (lambda z: z.amax(1, keepdim=True)), _kinks_of_envelope(a, c)
    elif which == "amin":
        op, kinks = (lambda z: z.amin(1, keepdim=True)), _kinks_of_envelope(a, c, lower=True)
    elif which == "maximum":
        op, kinks = (lambda z: torch.maximum(z[:, :1], z[:, 1:2])), _kinks_of_envelope(a[:2], c[:2])
    else:
        op, kinks = (lambda z: z.max(dim=1, keepdim=True)[0]), _kinks_of_envelope(a, c)
    kinks = kinks[(kinks > 0) & (kinks < 1)]
    res = discover(Lines(op, w, b).eval(), x0, x1, method=method)
    got = res.breakpoints(0)[1:-1]
    assert got.size == kinks.size, (which, got, kinks)
    np.testing.assert_allclose(got, kinks, atol=2e-6 if method == "walk" else 1e-12)


def test_max_dim_returns_torch_values_and_indices():
    """``max(dim)`` gives a (values, indices) pair as torch does; the values are followed."""
    net = Unit(lambda z: z.view(-1, 3, 2).max(dim=1).values.abs(), n_in=3)
    net(torch.randn(1, 3))
    net = net.double().eval()
    x0, x1 = _segments((3,), 2, seed=5)
    a, b = discover(net, x0, x1, method="walk"), discover(net, x0, x1)
    assert_walk_matches_exact(a, b)


def test_prelu_slope_per_channel_is_used():
    """Two channels with different slopes: the maps below the kink carry each channel's slope."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.prelu = nn.PReLU(2).double()
            with torch.no_grad():
                self.prelu.weight.copy_(torch.tensor([0.25, -2.0]))

        def forward(self, x):
            return self.prelu(x.view(-1, 2, 1)).flatten(1)

    x0 = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
    x1 = torch.tensor([[1.0, 3.0]], dtype=torch.float64)
    for method in ("subdivide", "walk"):
        res = discover(Net().eval(), x0, x1, method=method)
        np.testing.assert_allclose(res.breakpoints(0), [0, 0.25, 0.5, 1], atol=2e-6)
        np.testing.assert_allclose(res.slope[0], [0.25 * 2, -2.0 * 4])  # both below their kink
        np.testing.assert_allclose(res.slope[-1], [2, 4])
