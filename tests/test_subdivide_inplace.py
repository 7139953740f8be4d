"""subdivide rectifies a ReLU's input in place only when nothing reads it afterwards.

The in-place ReLU saves one tensor of the chain's size per ReLU layer (allocation and page
faults: about 7 % of subdivide's time on VGG8). These networks reuse a ReLU's input after it,
apply a ReLU to a view shared by two sub-chains, and chain two ReLUs across chain splits (``max_vertices`` small, so the
sub-chains hold views of one tensor): the result must equal the walk's.
"""

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.engine.lines import discover
from tests.conftest import segments


class Reuse(nn.Module):
    """relu(h) and h both feed the output; relu(relu(g)); a ReLU applied to a tensor computed
    before an earlier ReLU (so, after a chain split there, a view shared by two sub-chains)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 64, dtype=torch.float64)
        self.e = nn.Linear(3, 64, dtype=torch.float64)
        self.b = nn.Linear(64, 64, dtype=torch.float64)
        self.act = nn.ReLU()
        self.c = nn.Linear(64, 2, dtype=torch.float64)

    def forward(self, x):
        h = self.a(x)
        k = self.e(x)
        r = self.act(h)
        q = torch.relu(k)
        g = torch.relu(torch.relu(self.b(r) - 0.1))
        return self.c(r + 0.5 * h + g + q)


@pytest.mark.parametrize("max_vertices", [4, 1024])
def test_inplace_relu_keeps_later_uses_intact(max_vertices):
    torch.manual_seed(3)
    net = Reuse().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x0, x1 = segments((3,), 5, seed=11)
    walk = discover(net, x0, x1, method="walk")
    sub = discover(net, x0, x1, method="subdivide", max_vertices=max_vertices, batch_size=2)
    np.testing.assert_array_equal(sub.density, walk.density)
    np.testing.assert_allclose(sub.t_start, walk.t_start, atol=1e-9)
    np.testing.assert_allclose(sub.deviation, walk.deviation, rtol=1e-8, atol=1e-12)
    assert sub.continuity_gap.max() < 1e-12
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
