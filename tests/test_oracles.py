"""The engine against independent oracles: closed form, dense sampling, the network itself."""

import numpy as np
import pytest
import torch

from pipeline.engine.lines import discover
from tests.conftest import segments
from tests.compare import EPS, assert_walk_matches_exact, nearest
from tests.nets import MLP, patterns, true_breakpoints

METHODS = ["walk", "subdivide"]


@pytest.mark.parametrize("method", METHODS)
def test_one_hidden_layer_closed_form(method):
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(5, 40), torch.nn.ReLU(), torch.nn.Linear(40, 3)).eval().double()
    x0, x1 = segments((5,), 6, seed=1)
    res = discover(net, x0, x1, method=method)
    w, b = net[0].weight.detach(), net[0].bias.detach()
    for s in range(6):
        z0 = (w @ x0[s] + b).numpy()
        dz = (w @ (x1[s] - x0[s])).numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            tk = -z0 / dz
        tk = np.sort(tk[(tk > 0) & (tk < 1)])
        expected = np.concatenate([[0.0], tk, [1.0]])
        got = res.breakpoints(s)
        assert got.shape == expected.shape, (s, got.size, expected.size)
        np.testing.assert_allclose(got, expected, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_dense_sampling_oracle(nets, method):
    for name, net, shape in nets:
        x0, x1 = segments(shape, 3, seed=2)
        res = discover(net, x0, x1, method=method)
        for s in range(3):
            truth, h = true_breakpoints(net.double(), x0[s], x1[s])
            got = res.breakpoints(s)
            # every pattern change seen by sampling is a breakpoint of the engine (within 2 eps)
            assert nearest(truth, got) <= 2 * EPS, (name, method, s)
            # every engine breakpoint is a real change of pattern: just before and after differ
            inner = got[1:-1]
            d = x1[s] - x0[s]
            before = patterns(net, x0[s][None] + torch.from_numpy(inner - 4 * EPS).view(-1, *([1] * len(shape))) * d)
            after = patterns(net, x0[s][None] + torch.from_numpy(inner + 4 * EPS).view(-1, *([1] * len(shape))) * d)
            wide = np.diff(got)[:-1] > 8 * EPS  # neighbours far enough apart for the probes
            wide &= np.diff(got)[1:] > 8 * EPS
            assert (before[wide] != after[wide]).any(1).all(), (name, method, s)


@pytest.mark.parametrize("method", METHODS)
def test_affine_maps_reproduce_network(nets, method):
    rng = np.random.default_rng(0)
    for name, net, shape in nets:
        x0, x1 = segments(shape, 4, seed=3)
        res = discover(net, x0, x1, method=method)
        exact = discover(net, x0, x1, method="subdivide")
        for s in range(4):
            # the walk merges regions thinner than eps (the certificate then shows ~slope * width)
            if np.diff(exact.breakpoints(s)).min() > 2 * EPS:
                assert res.continuity_gap[s] < 1e-9, (name, method, s)
            else:
                assert res.continuity_gap[s] < 4 * EPS * np.abs(exact.slope).max(), (name, method, s)
            r = res.regions(s)
            u = rng.uniform(0.05, 0.95, size=r["t_start"].size)
            t = r["t_start"] + u * (r["t_end"] - r["t_start"])
            x = x0[s][None] + torch.from_numpy(t).view(-1, *([1] * len(shape))) * (x1[s] - x0[s])
            with torch.no_grad():
                f = net.double()(x).numpy().reshape(t.size, -1)
            pred = r["intercept"] + r["slope"] * t[:, None]
            scale = np.abs(f).max() + 1e-300
            assert np.abs(pred - f).max() / scale < 1e-9, (name, method, s)


def _quadrature(net, x0, x1, n=200_001):
    t = np.linspace(0.0, 1.0, n)
    d = x1 - x0
    with torch.no_grad():
        f = torch.cat([net(x0[None] + torch.from_numpy(c).view(-1, *([1] * x0.ndim)) * d[None])
                       for c in np.array_split(t, 20)]).reshape(n, -1).numpy()
    g = f[0] + t[:, None] * (f[-1] - f[0])
    integral = np.trapezoid(np.abs(f - g), t, axis=0)
    return integral * float(torch.linalg.vector_norm(d))


@pytest.mark.parametrize("method", METHODS)
def test_deviation_matches_quadrature(method):
    torch.manual_seed(4)
    net = MLP(n_in=3, width=12, depth=2, k=2).eval().double()
    x0, x1 = segments((3,), 3, seed=4)
    res = discover(net, x0, x1, method=method)
    for s in range(3):
        q = _quadrature(net, x0[s], x1[s])
        np.testing.assert_allclose(res.deviation[s], q, rtol=1e-5, atol=1e-12)
    # the integrand changes sign inside some regions here: the exact split matters
    sign_changes = 0
    for s in range(3):
        r = res.regions(s)
        g0, g1 = res.f0[s], res.f1[s]
        h0 = r["intercept"] + r["slope"] * r["t_start"][:, None] - (g0 + r["t_start"][:, None] * (g1 - g0))
        h1 = r["intercept"] + r["slope"] * r["t_end"][:, None] - (g0 + r["t_end"][:, None] * (g1 - g0))
        sign_changes += int(((h0 * h1) < 0).sum())
    assert sign_changes > 0


def test_methods_agree(nets):
    for name, net, shape in nets:
        x0, x1 = segments(shape, 5, seed=5)
        assert_walk_matches_exact(discover(net, x0, x1, method="walk"), discover(net, x0, x1, method="subdivide"), label=name)
