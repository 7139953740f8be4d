"""Bad input: a clear error naming the problem, and the caller's model left exactly as it was."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.engine.pwl import UnsupportedOpError
from pipeline.engine.lines import discover
from tests.nets import MLP, FunctionalMix, ResLeaky


class Act(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.l1, self.l2, self.fn = nn.Linear(3, 8), nn.Linear(8, 2), fn

    def forward(self, x):
        return self.l2(self.fn(self.l1(x)))


X0, X1 = torch.randn(2, 3), torch.randn(2, 3)


@pytest.mark.parametrize("method", ["walk", "subdivide"])
@pytest.mark.parametrize(
    "fn,name",
    [(nn.GELU(), "gelu"), (torch.sigmoid, "sigmoid"), (nn.Tanh(), "tanh"), (F.silu, "silu"),
     (lambda x: torch.clamp(x, min=torch.zeros(8)), "clamp with a tensor bound"), (F.hardswish, "hardswish"),
     (lambda x: x.clamp(-torch.ones(8), torch.ones(8)), "clamp with a tensor bound"), (nn.Hardsigmoid(), "hardsigmoid"),
     (torch.sign, "sign"), (lambda x: F.dropout(x, 0.5), "dropout"),
     (lambda x: F.layer_norm(x, (8,)), "layer_norm")],
)
def test_unsupported_op_is_named(method, fn, name):
    with pytest.raises(UnsupportedOpError, match=name):
        discover(Act(fn).eval(), X0, X1, method=method)


def test_train_mode_is_refused():
    net = ResLeaky().train()
    with pytest.raises(ValueError, match="training mode.*eval"):
        discover(net, torch.randn(1, 2, 6, 6), torch.randn(1, 2, 6, 6))
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU()).eval()
    bn_fn = Act(lambda x: F.batch_norm(x, None, None, training=True)).eval()
    with pytest.raises(UnsupportedOpError, match="batch_norm.*training"):
        discover(bn_fn, X0, X1)
    discover(bn, X0, X1)  # eval BatchNorm is affine and fine


@pytest.mark.parametrize(
    "x0,x1,match",
    [(torch.randn(2, 3), torch.randn(3, 3), "same shape"),
     (torch.randn(3), torch.randn(3), r"shape \(S, \*input_shape\)"),
     (torch.full((2, 3), float("nan")), torch.randn(2, 3), "non-finite"),
     (torch.randn(2, 3), torch.tensor([[0.0, float("inf"), 0.0], [0, 0, 0]]), "non-finite"),
     (torch.zeros(0, 3), torch.zeros(0, 3), "no segments")],
)
def test_bad_inputs(x0, x1, match):
    with pytest.raises(ValueError, match=match):
        discover(MLP(n_in=3).eval(), x0, x1)


def test_bad_options():
    net = MLP(n_in=3).eval()
    for kw, match in [({"method": "bisect"}, "method"), ({"eps": 0.0}, "eps"), ({"eps": 2.0}, "eps"),
                      ({"dtype": torch.float16}, "dtype"), ({"batch_size": 0}, "batch_size"),
                      ({"scheduling": "greedy"}, "scheduling"), ({"jvp": "reverse"}, "jvp")]:
        with pytest.raises(ValueError, match=match):
            discover(net, X0, X1, **kw)
    with pytest.raises(TypeError, match="nn.Module"):
        discover(lambda x: x, X0, X1)
    with pytest.raises(TypeError, match="floating"):
        discover(net, X0.long(), X1.long())


@pytest.mark.parametrize("method", ["walk", "subdivide"])
def test_cuda_asked_for_without_cuda(monkeypatch, method):
    # Runs on any machine: a GPU one is made to look like one without CUDA.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    net = MLP(n_in=3).eval()
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(RuntimeError, match="device='cuda' was asked for but no CUDA device is available"):
        discover(net, X0, X1, method=method, device="cuda")
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]) and v.device.type == "cpu", k


def test_unsupported_pool_options():
    class P(nn.Module):
        def __init__(self, **kw):
            super().__init__()
            self.kw = kw

        def forward(self, x):
            out = F.max_pool2d(x, 2, **self.kw)
            return (out[0] if isinstance(out, tuple) else out).flatten(1)

    x0, x1 = torch.randn(1, 1, 5, 5), torch.randn(1, 1, 5, 5)
    with pytest.raises(UnsupportedOpError, match="return_indices"):
        discover(P(return_indices=True).eval(), x0, x1)
    # ceil_mode is followed where it changes the output (tests/test_pwl_ops.py) and where it does not
    assert discover(P(ceil_mode=True).eval(), x0, x1).n_segments == 1
    discover(P(ceil_mode=True).eval(), torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4))


def test_branch_on_the_input_is_refused_by_name():
    """Control flow on the input's values is a threshold the engine cannot see: both engines
    refuse it, naming the comparison, before any work."""
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(3, 2)

        def forward(self, x):
            return self.l(x).relu() if x.sum() > 0 else self.l(x)

    for method in ("subdivide", "walk"):
        with pytest.raises(UnsupportedOpError, match="Tensor.gt"):
            discover(Branchy().eval(), X0, X1, method=method)


def _snapshot(model):
    return (copy.deepcopy(model.state_dict()), [m.training for m in model.modules()],
            [p.dtype for p in model.parameters()], [p.requires_grad for p in model.parameters()],
            [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()])


@pytest.mark.parametrize("method", ["walk", "subdivide"])
def test_model_left_as_it_was(method):
    net = FunctionalMix().eval()
    before = _snapshot(net)
    out_before = net(X0).detach().clone()
    discover(net, X0, X1, method=method)
    bad = Act(nn.GELU()).eval()
    bad_before = _snapshot(bad)
    with pytest.raises(UnsupportedOpError):
        discover(bad, X0, X1, method=method)
    for model, snap in ((net, before), (bad, bad_before)):
        after = _snapshot(model)
        assert after[1:] == snap[1:]
        for k, v in snap[0].items():
            assert torch.equal(v, after[0][k])
    assert torch._C._len_torch_function_stack() == 0  # no mode left behind
    assert torch.equal(net(X0).detach(), out_before)


@pytest.mark.parametrize("method", ["walk", "subdivide"])
def test_nan_inside_the_network_is_an_error_not_a_hang(method):
    net = MLP(n_in=3, width=4, depth=2).eval().double()
    with torch.no_grad():
        net.net[0].weight.fill_(1e308)  # overflows to inf; inf - inf downstream is nan
        net.net[2].weight[0, 0] = -1.0
    x0, x1 = torch.ones(1, 3, dtype=torch.float64), 2 * torch.ones(1, 3, dtype=torch.float64)
    with pytest.raises(FloatingPointError, match="nan or inf inside segment"):
        discover(net, x0, x1, method=method)
