"""A prepared network gives the same result as the module, and never a stale one."""

import numpy as np
import pytest
import torch

from pipeline.engine.lines import discover, prepare
from tests.conftest import segments
from tests.nets import MaxCNN, ResLeaky


@pytest.mark.parametrize("method", ["walk", "subdivide"])
def test_prepared_equals_module(method):
    net = ResLeaky().eval()
    x0, x1 = segments((2, 6, 6), 3, seed=5)
    ready = prepare(net)
    ref = discover(net, x0, x1, method=method)
    for _ in range(2):
        res = discover(ready, x0, x1, method=method)
        np.testing.assert_array_equal(res.t_start, ref.t_start)
        np.testing.assert_array_equal(res.slope, ref.slope)


def test_in_place_change_of_the_source_is_seen():
    net = MaxCNN().eval()
    x0, x1 = segments((2, 6, 6), 2, seed=6)
    ready = prepare(net)
    before = discover(ready, x0, x1)
    with torch.no_grad():
        net.c1.weight.mul_(-1.5)  # in place: same tensor, new version
    after = discover(ready, x0, x1)
    fresh = discover(net, x0, x1)
    np.testing.assert_array_equal(after.t_start, fresh.t_start)
    assert not np.array_equal(after.f0, before.f0)
    net.fc.weight = torch.nn.Parameter(torch.randn_like(net.fc.weight))  # a new parameter object
    np.testing.assert_array_equal(discover(ready, x0, x1).f0, discover(net, x0, x1).f0)


def test_prepared_checks_dtype_and_mode():
    net = MaxCNN().eval()
    x0, x1 = segments((2, 6, 6), 1, seed=7)
    ready = prepare(net)
    with pytest.raises(ValueError, match="prepared for torch.float64"):
        discover(ready, x0, x1, dtype=torch.float32)
    r32 = discover(prepare(net, dtype=torch.float32), x0, x1, dtype=torch.float32)
    assert r32.n_regions > 0
    net.train()
    with pytest.raises(ValueError, match="training mode"):
        discover(ready, x0, x1)


def test_source_model_is_untouched():
    net = MaxCNN().eval()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    discover(prepare(net), *segments((2, 6, 6), 1, seed=8))
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
    assert next(net.parameters()).dtype == torch.float32 and next(net.parameters()).requires_grad
