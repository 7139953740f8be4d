"""The paper's architectures: shapes, parameter counts, initialisation, accepted by the engine."""

import numpy as np
import pytest
import torch

from pipeline.inputs.models import MODELS, ResNet18, VGG8, build, count_parameters
from pipeline.engine.lines import discover
from tests.compare import assert_walk_matches_exact


def test_vgg8_shape_and_count():
    net = VGG8()
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    convs = [(3, 6), (6, 6), (6, 16), (16, 16), (16, 64), (64, 64)]
    expected = sum(o * i * 9 + o for i, o in convs) + 1024 * 120 + 120 + 120 * 10 + 10
    assert count_parameters(net) == expected == 174_116
    assert VGG8(num_classes=100)(torch.randn(1, 3, 32, 32)).shape == (1, 100)
    assert VGG8(in_channels=1, input_size=8, widths=(6, 16))(torch.randn(1, 1, 8, 8)).shape == (1, 10)


@pytest.mark.parametrize("k", [1, 4, 16])
def test_resnet18_shape_and_count(k):
    net = ResNet18(k=k)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    widths = [k, 2 * k, 4 * k, 8 * k]
    n = 3 * k * 9  # stem
    c = k
    for i, w in enumerate(widths):
        for j in range(2):
            n += c * w * 9 + w * w * 9 + (c * w if c != w else 0)
            c = w
    n += 8 * k * 10 + 10
    assert count_parameters(net) == n


def test_resnet_init_statistics():
    torch.manual_seed(0)
    net = ResNet18(k=16)
    for b in net.blocks:
        assert b.conv2.weight.std().item() < 2e-6
        fan_in = b.conv1.weight[0].numel()
        np.testing.assert_allclose(b.conv1.weight.std().item(), (2 / fan_in) ** 0.5 / 8 ** 0.5, rtol=0.1)
    assert net.fc.weight.std().item() < 2e-6


def test_registry():
    assert set(MODELS) == {"vgg8", "resnet18"}
    assert isinstance(build("VGG8"), VGG8)
    with pytest.raises(ValueError, match="known models: resnet18, vgg8"):
        build("vgg11")


@pytest.mark.parametrize("make,shape", [(lambda: VGG8(), (3, 32, 32)), (lambda: VGG8(pool="max"), (3, 32, 32)),
                                        (lambda: ResNet18(k=2), (3, 32, 32))])
def test_engine_accepts_paper_models(make, shape):
    torch.manual_seed(0)
    net = make().eval()
    x0 = torch.randn(2, *shape, dtype=torch.float64)
    x1 = x0 + 0.02 * torch.randn(2, *shape, dtype=torch.float64)  # short: few regions, fast
    w = discover(net, x0, x1, method="walk")
    s = discover(net, x0, x1, method="subdivide")
    assert w.density.min() > 1
    assert_walk_matches_exact(w, s)
    assert s.continuity_gap.max() < 1e-9


def test_vgg8_init_and_summary():
    torch.manual_seed(0)
    net = VGG8()
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            fan_out = m.out_channels * 9
            np.testing.assert_allclose(m.weight.std().item(), (2 / fan_out) ** 0.5, rtol=0.15)
            assert torch.count_nonzero(m.bias) == 0
    from pipeline.inputs.models import summary

    text = summary(net)
    assert "total parameters: 174,116" in text and "features.0" in text
