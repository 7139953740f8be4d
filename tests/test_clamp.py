"""Clamping between constant bounds (hardtanh, relu6, clamp in all their spellings): two kinks
per unit, treated exactly by both methods, checked against a closed form, against each other
and against the dense-sampling pattern oracle of ``tests/nets.py`` (which sees the clamp's
three states: below, inside, above)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.engine import pwl
from pipeline.engine.lines import discover
from tests.compare import EPS, nearest
from tests.conftest import segments
from tests.nets import patterns, true_breakpoints

# spelling -> (activation, its bounds): the networks scale the pre-activations to the bounds
SPELLINGS = {
    "nn.ReLU6": (nn.ReLU6(), (0.0, 6.0)),
    "nn.ReLU6-inplace": (nn.ReLU6(inplace=True), (0.0, 6.0)),
    "nn.Hardtanh": (nn.Hardtanh(-0.5, 1.5), (-0.5, 1.5)),
    "F.relu6": (F.relu6, (0.0, 6.0)),
    "F.relu6-inplace": (lambda x: F.relu6(x, inplace=True), (0.0, 6.0)),
    "F.hardtanh": (lambda x: F.hardtanh(x, -1.0, 0.5), (-1.0, 0.5)),
    "F.hardtanh-inplace": (lambda x: F.hardtanh(x, min_val=-0.5, max_val=1.0, inplace=True), (-0.5, 1.0)),
    "F.hardtanh_": (lambda x: F.hardtanh_(x, -1.0, 1.0), (-1.0, 1.0)),
    "Tensor.clamp": (lambda x: x.clamp(0, 6), (0.0, 6.0)),
    "torch.clamp": (lambda x: torch.clamp(x, min=-1, max=1), (-1.0, 1.0)),
    "Tensor.clamp_": (lambda x: x.clamp_(-0.5, 2.0), (-0.5, 2.0)),
    "torch.clamp_": (lambda x: torch.clamp_(x, max=1.0, min=-1.0), (-1.0, 1.0)),
    "torch.clip": (lambda x: torch.clip(x, -1.0, 1.0), (-1.0, 1.0)),
    "Tensor.clip_": (lambda x: x.clip_(-1.0, 0.5), (-1.0, 0.5)),
    "clamp_min": (lambda x: torch.clamp_min(x, -0.5), (-0.5, 0.5)),
    "clamp_max_": (lambda x: x.clamp_max_(0.5), (-0.5, 0.5)),
    "clamp-upper-only": (lambda x: x.clamp(max=0.3), (-0.3, 0.3)),
    "clamp-min-0": (lambda x: x.clamp(min=0), (0.0, 1.0)),  # a ReLU
}


class ClampNet(nn.Module):
    """Two hidden layers with the activation; pre-activations scaled to straddle both bounds;
    a skip connection reads the first layer's output (in-place spellings must not harm it)."""

    def __init__(self, act, bounds, n_in=3, width=12, k=2):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(n_in, width), nn.Linear(width, width), nn.Linear(width, k)
        self.act = act
        lo, hi = bounds
        self.centre, self.gain = 0.5 * (lo + hi), 1.2 * (hi - lo)

    def forward(self, x):
        h = self.act(self.gain * self.l1(x) + self.centre)
        y = self.act(self.gain * self.l2(h) + self.centre)
        return self.l3(y + h)


def _net(spelling):
    torch.manual_seed(7)
    act, bounds = SPELLINGS[spelling]
    return ClampNet(act, bounds).eval().double()


def _run(net, x0, x1):
    return {"walk": discover(net, x0, x1, method="walk"),
            "walk-dual": discover(net, x0, x1, method="walk", jvp="dual"),
            "subdivide": discover(net, x0, x1, method="subdivide")}


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_recognised(spelling):
    """The op is seen as a clamp (or, ``clamp(min=0)``, a ReLU) with the right bounds."""
    act, (lo, hi) = SPELLINGS[spelling]
    seen = []

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            call = pwl.recognise(func, args, kwargs or {})
            if call is not None:
                seen.append(call)
            return func(*args, **(kwargs or {}))

    with Spy():
        act(torch.randn(4, 3))
    assert len(seen) == 1, seen
    call = seen[0]
    if spelling == "clamp-min-0":
        assert call.kind == "relu" and call.negative_slope == 0.0
        return
    assert call.kind == "clamp"
    expected = {"clamp_min": (-0.5, np.inf), "clamp_max_": (-np.inf, 0.5), "clamp-upper-only": (-np.inf, 0.3)}
    assert (call.lo, call.hi) == expected.get(spelling, (lo, hi))
    assert call.inplace == ("inplace" in spelling or spelling.endswith("_"))


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_methods_agree_and_maps_reproduce_network(spelling):
    net = _net(spelling)
    x0, x1 = segments((3,), 4, seed=3)
    res = _run(net, x0, x1)
    sub = res["subdivide"]
    assert sub.density.sum() > 4 * 3  # the segments cross kinks
    rng = np.random.default_rng(0)
    for name, r in res.items():
        np.testing.assert_array_equal(r.density, sub.density, err_msg=f"{spelling} {name}")
        np.testing.assert_allclose(r.t_start, sub.t_start, atol=1e-9, rtol=0, err_msg=f"{spelling} {name}")
        np.testing.assert_allclose(r.t_end, sub.t_end, atol=1e-9, rtol=0, err_msg=f"{spelling} {name}")
        assert r.continuity_gap.max() < 1e-9, (spelling, name)
        for s in range(4):
            reg = r.regions(s)
            t = reg["t_start"] + rng.uniform(0.05, 0.95, reg["t_start"].size) * (reg["t_end"] - reg["t_start"])
            with torch.no_grad():
                f = net(x0[s][None] + torch.from_numpy(t)[:, None] * (x1[s] - x0[s])[None]).numpy()
            pred = reg["intercept"] + reg["slope"] * t[:, None]
            assert np.abs(pred - f).max() / np.abs(f).max() < 1e-9, (spelling, name, s)


@pytest.mark.parametrize("spelling", ["nn.ReLU6", "F.hardtanh", "Tensor.clamp_", "torch.clip", "clamp_min",
                                      "clamp-upper-only"])
def test_dense_sampling_oracle(spelling):
    net = _net(spelling)
    x0, x1 = segments((3,), 3, seed=2)
    res = _run(net, x0, x1)
    both_kinks = False
    for s in range(3):
        truth, _ = true_breakpoints(net, x0[s], x1[s])
        d = x1[s] - x0[s]
        for name, r in res.items():
            got = r.breakpoints(s)
            # every pattern change seen by sampling is a breakpoint of the engine
            assert nearest(truth, got) <= 2 * EPS, (spelling, name, s)
            # every engine breakpoint is a real change of the 3-state pattern
            inner = got[1:-1]
            before = patterns(net, x0[s][None] + torch.from_numpy(inner - 4 * EPS)[:, None] * d)
            after = patterns(net, x0[s][None] + torch.from_numpy(inner + 4 * EPS)[:, None] * d)
            assert (before != after).any(1).all(), (spelling, name, s)
        # the segments cross both bounds of the two-sided clamps (states 0<->1 and 1<->2)
        mid = 0.5 * (got[1:] + got[:-1])
        pat = patterns(net, x0[s][None] + torch.from_numpy(mid)[:, None] * d)
        change = pat[1:] != pat[:-1]
        low = (change & (np.minimum(pat[1:], pat[:-1]) == 0)).any()
        high = (change & (np.maximum(pat[1:], pat[:-1]) == 2)).any()
        both_kinks |= bool(low and high)
    assert both_kinks or spelling in ("clamp_min", "clamp-upper-only")


class Clamp1D(nn.Module):
    def forward(self, x):
        return torch.clamp(x, -1, 1)


@pytest.mark.parametrize("method,jvp", [("walk", "stacked"), ("walk", "dual"), ("subdivide", "stacked")])
def test_closed_form_1d(method, jvp):
    x0 = torch.tensor([[-3.0]], dtype=torch.float64)
    res = discover(Clamp1D().eval(), x0, -x0, method=method, jvp=jvp)
    np.testing.assert_allclose(res.breakpoints(0), [0.0, 1 / 3, 2 / 3, 1.0], atol=1e-15)
    np.testing.assert_allclose(res.slope.ravel(), [0.0, 6.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(res.intercept.ravel(), [-1.0, -3.0, 1.0], atol=1e-12)
    assert res.density[0] == 3 and res.continuity_gap[0] < 1e-12


@pytest.mark.parametrize("method,jvp", [("walk", "stacked"), ("walk", "dual"), ("subdivide", "stacked")])
@pytest.mark.parametrize(
    "a,b,expected",
    [(-1.0, 3.0, [0.0, 0.5, 1.0]),  # starts on the lower bound, moving in
     (-1.0, -3.0, [0.0, 1.0]),  # starts on the lower bound, moving out: one flat region
     (1.0, -3.0, [0.0, 0.5, 1.0]),  # starts on the upper bound, moving in
     (1.0, 5.0, [0.0, 1.0]),  # starts on the upper bound, moving out
     (-3.0, 1.0, [0.0, 0.5, 1.0]),  # ends on a bound
     (-1.0, 1.0, [0.0, 1.0])],  # from bound to bound
)
def test_segment_starting_on_a_bound(method, jvp, a, b, expected):
    x0 = torch.tensor([[a]], dtype=torch.float64)
    x1 = torch.tensor([[b]], dtype=torch.float64)
    res = discover(Clamp1D().eval(), x0, x1, method=method, jvp=jvp)
    np.testing.assert_allclose(res.breakpoints(0), expected, atol=1e-15)
    assert res.continuity_gap[0] < 1e-12
    # a 2-D input whose first unit starts on its bound and whose second stays on it throughout
    x0 = torch.tensor([[a, -1.0, 0.3]], dtype=torch.float64)
    x1 = torch.tensor([[b, -1.0, -2.0]], dtype=torch.float64)
    res = discover(Clamp1D().eval(), x0, x1, method=method, jvp=jvp)
    bp = np.sort(np.r_[expected, 1.3 / 2.3])
    np.testing.assert_allclose(res.breakpoints(0), bp, atol=1e-15)
    assert res.continuity_gap[0] < 1e-12


def test_tensor_bound_is_an_error():
    class TensorBound(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(3, 4)
            self.register_buffer("top", torch.ones(4))

        def forward(self, x):
            return self.l(x).clamp(max=self.top)

    for method in ("walk", "subdivide"):
        with pytest.raises(pwl.UnsupportedOpError, match="clamp with a tensor bound"):
            discover(TensorBound().eval(), torch.randn(2, 3), torch.randn(2, 3), method=method)


def test_bare_clamp_rectified_in_place_only_when_its_input_dies():
    """subdivide may clamp a dead input in place: a clamp whose input is read again later
    (the skip connection) must leave it intact; chained clamps across chain splits too."""

    class Reuse(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(3, 32), nn.Linear(32, 32), nn.Linear(32, 2)
            self.act = nn.ReLU6()

        def forward(self, x):
            h = 4 * self.a(x)
            r = self.act(h)
            g = torch.clamp(torch.clamp(6 * self.b(r), -1, 2), min=-0.5)
            return self.c(r + 0.5 * h + g)

    torch.manual_seed(3)
    net = Reuse().eval().double()
    x0, x1 = segments((3,), 4, seed=11)
    walk = discover(net, x0, x1, method="walk")
    for mv in (4, 1024):
        sub = discover(net, x0, x1, method="subdivide", max_vertices=mv, batch_size=2)
        np.testing.assert_array_equal(sub.density, walk.density)
        np.testing.assert_allclose(sub.t_start, walk.t_start, atol=1e-9)
        assert sub.continuity_gap.max() < 1e-12
