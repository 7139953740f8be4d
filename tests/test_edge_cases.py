"""Edge cases with defined answers, the pitfalls of ``shared/DESIGN.md``, and engine options."""

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.engine.lines import CertificateError, CertificateWarning, RegionResult, UnsupportedOpError, discover, discover_iter
from tests.conftest import segments
from tests.nets import MLP, MaxCNN, ResLeaky

METHODS = ["walk", "subdivide"]
EPS = 1e-6


def _relu_sum(kinks, weights, k=1):
    """f(x) = sum_j w_j relu(x - c_j) on a 1-D input: kinks at known places."""
    f64 = torch.float64
    net = nn.Sequential(nn.Linear(1, len(kinks), dtype=f64), nn.ReLU(), nn.Linear(len(kinks), k, dtype=f64))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.copy_(-torch.tensor(kinks, dtype=f64))
        net[2].weight.copy_(torch.tensor(weights, dtype=f64).expand(k, -1))
        net[2].bias.zero_()
    return net.eval()


ZERO, ONE = torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)


@pytest.mark.parametrize("method", METHODS)
def test_equal_ends(method):
    x = torch.randn(3, 4, dtype=torch.float64)
    res = discover(MLP().eval(), x, x.clone(), method=method)
    assert (res.density == 1).all()
    assert np.all(res.deviation == 0) and np.all(res.total_variation == 0)
    assert np.all(res.length == 0)


@pytest.mark.parametrize("method", METHODS)
def test_last_region_counted_and_integrated(method):
    # all the nonlinearity sits in the last region [0.9, 1]: AD = 0.405 + 0.045 exactly
    res = discover(_relu_sum([0.9], [10.0]), ZERO, ONE, method=method)
    np.testing.assert_allclose(res.breakpoints(0), [0.0, 0.9, 1.0], atol=1e-15)
    assert res.density[0] == 2 and res.t_end[-1] == 1.0
    np.testing.assert_allclose(res.deviation[0, 0], 0.45, rtol=1e-12)
    np.testing.assert_allclose(res.total_variation[0, 0], 1.0, rtol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_walk_never_steps_past_one(method):
    res = discover(ResLeaky().eval(), *segments((2, 6, 6), 4, seed=9), method=method)
    assert np.all(res.t_start < res.t_end) and np.all(res.t_end <= 1.0)
    for i in range(4):
        b = res.breakpoints(i)
        assert b[0] == 0.0 and b[-1] == 1.0 and b.size == res.density[i] + 1


def test_regions_thinner_than_eps():
    # kinks at 0.5 and 0.5 + 3e-7: a region of width 3e-7 < eps
    net = _relu_sum([0.5, 0.5 + 3e-7], [1.0, 2.0])
    walk = discover(net, ZERO, ONE, method="walk")
    exact = discover(net, ZERO, ONE, method="subdivide")
    np.testing.assert_allclose(exact.breakpoints(0), [0.0, 0.5, 0.5 + 3e-7, 1.0], atol=1e-15)
    # the walk merges the sliver into the region it lands in, and the certificate shows it
    np.testing.assert_allclose(walk.breakpoints(0), [0.0, 0.5, 1.0], atol=1e-15)
    np.testing.assert_allclose(walk.slope[-1], [3.0])
    np.testing.assert_allclose(walk.continuity_gap[0], 6e-7, rtol=1e-6)
    assert exact.continuity_gap[0] < 1e-15
    # a sliver wider than eps is found by both
    wide = _relu_sum([0.5, 0.5 + 3e-6], [1.0, 2.0])
    assert discover(wide, ZERO, ONE, method="walk").density[0] == 3


@pytest.mark.parametrize("method", METHODS)
def test_segment_on_a_boundary(method):
    # unit 1 is zero along the whole segment (it lies on that unit's hyperplane);
    # unit 2 starts exactly on its kink and moves into its active side
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)).double().eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]))
        net[0].bias.copy_(torch.tensor([0.0, 0.0, 0.5]))
        net[2].weight.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
        net[2].bias.zero_()
    x0 = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    x1 = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    res = discover(net, x0, x1, method=method)
    np.testing.assert_allclose(res.breakpoints(0), [0.0, 0.5, 1.0], atol=1e-15)
    # first region: unit 2 active from t = 0 (slope 2), unit 3 active until 0.5 (slope -3)
    np.testing.assert_allclose(res.slope[:, 0], [2.0 - 3.0, 2.0], atol=1e-12)
    assert res.continuity_gap[0] < 1e-12
    again = discover(net, x0, x1, method=method)  # deterministic
    np.testing.assert_array_equal(again.t_start, res.t_start)


@pytest.mark.parametrize("method", METHODS)
def test_single_output_single_segment(method):
    res = discover(_relu_sum([0.2, 0.7], [1.0, -1.0]), ZERO, ONE, method=method)
    assert res.f0.shape == (1, 1) and res.slope.shape == (3, 1) and res.n_segments == 1


def test_inplace_relu_equals_out_of_place():
    a, b = MLP(inplace=False).eval(), MLP(inplace=True).eval()
    b.load_state_dict(a.state_dict())
    x0, x1 = segments((4,), 4, seed=3)
    for m in METHODS:
        ra, rb = discover(a, x0, x1, method=m), discover(b, x0, x1, method=m)
        np.testing.assert_array_equal(ra.density, rb.density)
        np.testing.assert_allclose(ra.slope, rb.slope, rtol=1e-12, atol=1e-14)


class _InplaceDiscarded(nn.Module):
    """In-place ops whose result is not used: the network reads the rectified tensors again."""

    def __init__(self, op):
        super().__init__()
        self.a, self.b, self.op = nn.Linear(3, 8), nn.Linear(8, 2), op

    def forward(self, x):
        x = x * 1.5
        h = self.a(x)
        self.op(h)
        self.op(x)
        return self.b(h + x.sum(1, keepdim=True))


@pytest.mark.parametrize("op", [torch.relu_, lambda h: h.clamp_(-0.5, 0.5), lambda h: nn.functional.leaky_relu_(h, 0.1),
                                nn.ReLU6(inplace=True)])
def test_inplace_op_with_discarded_result(op):
    """The dual backend rectifies the dual tensor itself (primal and tangent), as eager
    PyTorch does; it used to return a rectified copy and leave the input as it was."""
    torch.manual_seed(0)
    net = _InplaceDiscarded(op).eval()
    x0, x1 = segments((3,), 4, seed=4)
    sub = discover(net, x0, x1, method="subdivide")
    assert sub.continuity_gap.max() < 1e-12
    for jvp in ("stacked", "dual"):
        w = discover(net, x0, x1, method="walk", jvp=jvp)
        np.testing.assert_array_equal(w.density, sub.density)
        np.testing.assert_allclose(w.slope, sub.slope, rtol=1e-9, atol=1e-12)
        assert w.continuity_gap.max() < 1e-12, jvp


def test_dual_linearize_leaves_its_arguments_alone():
    from pipeline.engine.linearize import linearize

    class RectifiesItsInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 2, dtype=torch.float64)

        def forward(self, x):
            x.relu_()
            return self.a(x)

    net = RectifiesItsInput().eval()
    x, d = torch.randn(3, 3, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    x_before, d_before = x.clone(), d.clone()
    a = linearize(net, x, d, jvp="dual")
    b = linearize(net, x, d, jvp="stacked")
    assert torch.equal(x, x_before) and torch.equal(d, d_before)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)


def _same(a: RegionResult, b: RegionResult, rtol=1e-10):
    np.testing.assert_array_equal(a.density, b.density)
    np.testing.assert_allclose(a.t_start, b.t_start, rtol=rtol, atol=1e-13)
    np.testing.assert_allclose(a.deviation, b.deviation, rtol=rtol, atol=1e-13)
    np.testing.assert_allclose(a.total_variation, b.total_variation, rtol=rtol, atol=1e-13)


def test_options_do_not_change_the_result():
    net = MaxCNN().eval()
    x0, x1 = segments((2, 6, 6), 7, seed=4)
    walk = {"method": "walk"}
    ref = discover(net, x0, x1, **walk)
    _same(ref, discover(net, x0, x1, jvp="dual", **walk))
    _same(ref, discover(net, x0, x1, scheduling="static", batch_size=3, **walk))
    _same(ref, discover(net, x0, x1, batch_size=1, **walk))
    lean = discover(net, x0, x1, keep_affine=False, **walk)
    assert lean.intercept is None and lean.slope is None
    _same(ref, lean)
    sub = discover(net, x0, x1, method="subdivide")
    _same(sub, discover(net, x0, x1, method="subdivide", max_vertices=8, batch_size=2))
    for method, full in (("walk", ref), ("subdivide", sub)):
        chunks = list(discover_iter(net, x0, x1, chunk_segments=3, batch_size=2, method=method))
        assert [c.segment_index.tolist() for c in chunks] == [[0, 1, 2], [3, 4, 5], [6]]
        _same(full, RegionResult.concat(chunks))
    sampled = discover(net, x0, x1, method="subdivide", certify="sample")
    _same(sub, sampled)
    assert np.all(sampled.continuity_gap <= sub.continuity_gap)  # a sample of the same check
    with pytest.raises(ValueError, match="keep_affine"):
        lean.evaluate(0, [0.5])


@pytest.mark.parametrize("method", METHODS)
def test_float32_mode(method):
    net = MLP().eval()
    x0, x1 = segments((4,), 4, seed=6)
    r64 = discover(net, x0, x1, method=method)
    r32 = discover(net, x0, x1, method=method, dtype=torch.float32)
    assert r32.t_start.dtype == np.float64  # breakpoints and measures stay float64
    assert np.abs(r32.density - r64.density).max() <= 1
    np.testing.assert_allclose(r32.deviation, r64.deviation, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_matches_cpu(method):
    net = MaxCNN().eval()
    x0, x1 = segments((2, 6, 6), 3, seed=7)
    _same(discover(net, x0, x1, method=method), discover(net, x0, x1, method=method, device="cuda"), rtol=1e-8)


def test_progress_bar(capsys):
    discover(MLP().eval(), *segments((4,), 3), progress=True)
    assert "regions" in capsys.readouterr().err


class Squared(nn.Module):
    """x * x is not piecewise linear, and no function-level hook can tell it from x * 2."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(3, 6, dtype=torch.float64), nn.Linear(6, 2, dtype=torch.float64)

    def forward(self, x):
        h = torch.relu(self.l1(x))
        return self.l2(h * h)


@pytest.mark.parametrize("method,certify", [("walk", "all"), ("subdivide", "all"), ("subdivide", "sample")])
def test_certificate_catches_an_op_declared_affine_wrongly(method, certify):
    """h * h is refused by name (two input-derived operands); declared affine anyway, the
    certificate sees the maps are not the network."""
    torch.manual_seed(0)
    x0, x1 = segments((3,), 3, seed=8)
    with pytest.raises(UnsupportedOpError, match="two operands"):
        discover(Squared().eval(), x0, x1, method=method, certify=certify)
    with pytest.raises(CertificateError, match="Tensor.mul"):  # loud by default, naming the op
        discover(Squared().eval(), x0, x1, method=method, certify=certify, assume_affine=(torch.Tensor.mul,))
    with pytest.warns(CertificateWarning):
        res = discover(Squared().eval(), x0, x1, method=method, certify=certify, on_certificate="warn",
                       assume_affine=(torch.Tensor.mul,))
    assert res.continuity_gap.min() > 1e-3  # far above rounding: the maps are not the network
    assert not res.certified.any()
