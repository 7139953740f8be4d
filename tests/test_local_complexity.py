"""Local complexity (Humayun et al. 2024) against closed forms and a per-neuron loop."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.engine.local_complexity import frame, local_complexity, neighbourhood
from tests.nets import MLP, MaxCNN


def _net(n_in=5, width=40, depth=1, seed=0):
    torch.manual_seed(seed)
    return MLP(n_in, width, depth).double().eval().requires_grad_(False)


def test_frame_orthonormal_and_seeded():
    u = frame(12, 5, seed=3)
    np.testing.assert_allclose((u @ u.T).numpy(), np.eye(5), atol=1e-12)
    assert torch.equal(u, frame(12, 5, seed=3)) and not torch.equal(u, frame(12, 5, seed=4))
    with pytest.raises(ValueError, match="n_dirs"):
        frame(4, 5)
    v = neighbourhood(torch.zeros(2, 12, dtype=torch.float64), 0.5, u, include_centre=True)
    assert v.shape == (2, 11, 12)
    np.testing.assert_allclose(v[0, :10].norm(dim=1).numpy(), 0.5)


def test_one_hidden_layer_closed_form():
    # the hyperplane w.x + b = 0 meets conv{x +- r u_k} iff |w.x + b| <= r max_k |w.u_k| (the
    # cross-polytope's support function): the count is the number of such neurons
    net, rng = _net(), np.random.default_rng(1)
    lin = net.net[0]
    x = torch.as_tensor(rng.normal(size=(64, 5)))
    for r, n_dirs in [(0.05, 2), (0.3, 3), (1.0, 5), (3.0, 1)]:
        u = frame(5, n_dirs, seed=7)
        a = (x @ lin.weight.T + lin.bias).abs()
        reach = r * (lin.weight @ u.T).abs().amax(1)
        assert ((a - reach).abs() > 1e-9).all()  # no point on the edge: the oracle is unambiguous
        expected = (a < reach).sum(1)
        res = local_complexity(net, x, r, n_dirs, seed=7)
        assert res.layers == ("relu#0",) and res.units == (40,)
        assert torch.equal(res.lc, expected) and torch.equal(res.per_layer[:, 0], expected)
        # the centre lies inside the hull: adding it changes nothing in the first layer
        assert torch.equal(local_complexity(net, x, r, n_dirs, seed=7, include_centre=True).lc, expected)
        assert 0 < expected.sum() < expected.numel() * 40 or r == 0.05


def test_far_point_and_vanishing_radius():
    net = _net(depth=2, seed=2)
    lin = net.net[0]
    x = torch.as_tensor(np.random.default_rng(3).normal(size=(32, 5)))
    # well inside one region of every layer-1 neuron: zero as the radius shrinks
    dist = ((x @ lin.weight.T + lin.bias).abs() / lin.weight.norm(dim=1)).amin(1)
    small = local_complexity(net, x, float(dist.min()) * 0.9, 4, seed=0)
    assert (small.per_layer[:, 0] == 0).all()
    assert (local_complexity(net, x, 1e-9, 4, seed=0).lc == 0).all()
    # a point put on neuron 0's hyperplane: exactly that neuron at any small radius
    w, b = lin.weight[0], lin.bias[0]
    on = x[:1] - ((x[:1] @ w + b) / (w @ w)) * w
    tiny = local_complexity(net, on, 1e-7, 4, seed=0)
    assert tiny.lc.tolist() == [1] and tiny.per_layer[0, 0] == 1


def _reference(net: MLP, x, r, u):
    """Per point, per vertex, per neuron: the signs of each hidden layer's pre-activation."""
    linears = [m for m in net.net if isinstance(m, nn.Linear)][:-1]
    out = np.zeros((x.shape[0], len(linears)), dtype=np.int64)
    for i in range(x.shape[0]):
        verts = [x[i] + s * r * u[k] for k in range(u.shape[0]) for s in (1, -1)]
        signs = []  # per vertex: per layer, the list of signs
        for v in verts:
            h, per = v, []
            for lin in linears:
                z = lin.weight @ h + lin.bias
                per.append(torch.sign(z).tolist())
                h = torch.relu(z)
            signs.append(per)
        for layer in range(len(linears)):
            for j in range(len(signs[0][layer])):
                out[i, layer] += len({s[layer][j] for s in signs}) > 1
    return out


def test_two_layers_against_a_loop():
    net = _net(n_in=4, width=12, depth=2, seed=5)
    x = torch.as_tensor(np.random.default_rng(5).normal(size=(10, 4)))
    u = frame(4, 3, seed=11)
    for r in (0.1, 0.7):
        res = local_complexity(net, x, r, directions=u)
        np.testing.assert_array_equal(res.per_layer.numpy(), _reference(net, x, r, u))
        assert res.layers == ("relu#0", "relu#1")
        # blocks of a single point give the same counts
        assert torch.equal(local_complexity(net, x, r, directions=u, row_block=1).per_layer, res.per_layer)


class _Spelled(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        torch.manual_seed(0)
        self.l1, self.l2, self.l3 = nn.Linear(6, 16), nn.Linear(16, 16), nn.Linear(16, 2)
        self.how, self.act = how, nn.ReLU(inplace=how == "inplace")

    def act_fn(self, z):
        return {"module": self.act, "inplace": self.act, "F": F.relu, "torch": torch.relu,
                "method": torch.Tensor.relu, "method_": torch.Tensor.relu_}[self.how](z)

    def forward(self, x):
        return self.l3(self.act_fn(self.l2(self.act_fn(self.l1(x)))))


def test_any_spelling_of_relu_counts_alike():
    x = torch.as_tensor(np.random.default_rng(0).normal(size=(16, 6)))
    got = {how: local_complexity(_Spelled(how).double().eval(), x, 0.4, 4, seed=1).per_layer
           for how in ("module", "inplace", "F", "torch", "method", "method_")}
    first = got["module"]
    assert first.sum() > 0
    for how, per in got.items():
        assert torch.equal(per, first), how


def test_clamp_bounds_counted_apart_and_max_pool_not_counted():
    torch.manual_seed(0)
    lin = nn.Linear(3, 8).double()
    clamped = nn.Sequential(lin, nn.Hardtanh(-0.5, 0.5), nn.Linear(8, 2)).double().eval()
    x = torch.as_tensor(np.random.default_rng(2).normal(size=(20, 3)))
    u = frame(3, 2, seed=0)
    res = local_complexity(clamped, x, 0.8, directions=u)
    assert res.layers == ("clamp#0",) and res.units == (16,)
    z = x @ lin.weight.T + lin.bias
    reach = 0.8 * (lin.weight @ u.T).abs().amax(1)
    expected = ((z - 0.5).abs() < reach).sum(1) + ((z + 0.5).abs() < reach).sum(1)
    assert torch.equal(res.lc, expected)

    cnn = MaxCNN().double().eval()
    res = local_complexity(cnn, torch.randn(3, 2, 6, 6, dtype=torch.float64), 0.5, 6, seed=0)
    assert res.layers == ("relu#0",) and res.units == (4 * 6 * 6,)


def test_loud_on_what_it_cannot_count():
    net = nn.Sequential(nn.Linear(3, 4), nn.GELU()).double().eval()
    with pytest.raises(ValueError, match="(?i)gelu"):
        local_complexity(net, torch.zeros(1, 3, dtype=torch.float64), 0.1, 2)
    with pytest.raises(ValueError, match="radius"):
        local_complexity(_net(), torch.zeros(1, 5, dtype=torch.float64), 0.0, 2)
    with pytest.raises(ValueError, match="training mode"):
        local_complexity(MLP(), torch.zeros(1, 4), 0.1, 2)
