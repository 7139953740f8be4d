"""timm's model zoo as clients of the engine: ``timm.create_model(name, pretrained=False,
num_classes=10)`` at 32x32 inputs, on one short segment each.

The ReLU family (ReLU, ReLU6, LeakyReLU, max/avg-pooling, BatchNorm in eval) must run
unchanged with both methods; walk and subdivide must agree (tests/compare.py) and the maps
must reproduce the network at a random interior point of every region (float64, 1e-9
relative). BatchNorm is calibrated on random inputs with random scales and shifts as in
tests/test_zoo.py (timm's BatchNormAct2d is a BatchNorm2d subclass, so it is calibrated too).
Families with an op that is not piecewise linear must be refused by name.

The patterns that made timm's models fail before the engine learned them, kept below with
their timm file:line: BatchNormAct2d's ``_assert(x.ndim == 4, ...)`` (fx nodes nobody reads,
once kept alive and refused as batch-dependent values), VGG's ConvMlp branching on a shape
(traced now with the example input's shapes), global max pools (adaptive max-pool, amax) and
NF-ResNet's weight standardisation (``batch_norm(weight, training=True)``: a constant). Each model takes at most ~15 s
per method on one thread.
"""

import copy
import functools

import numpy as np
import pytest
import torch

from pipeline.engine.pwl import UnsupportedOpError
from pipeline.engine.lines import discover
from tests.compare import EPS, assert_walk_matches_exact
from tests.nets import patterns
from tests.test_zoo import _check_maps, calibrate_batchnorm

timm = pytest.importorskip("timm")

# What made these models fail before the engine followed them (timm 1.0.31):
# - timm/layers/norm_act.py:103, BatchNormAct2d.forward: _assert(x.ndim == 4, f'...{x.ndim}...').
#   torch.fx records nodes nobody reads (x.ndim for the f-string, the _assert's None); the
#   subdivision kept them alive and refused them at the next ReLU as batch-dependent values.
# - timm/models/vgg.py:84, ConvMlp.forward branches on x.shape[-2]: fx cannot trace a Python
#   branch on a proxy; the engine now traces with the example input's shapes.
# - timm/layers/adaptive_avgmax_pool.py:32, :52 (F.adaptive_max_pool2d) and :75 (x.amax((2, 3))):
#   global max pools, now piecewise-linear ops of the engine.
# - timm/layers/std_conv.py:57, :160: the weight is standardised with
#   F.batch_norm(weight, training=True), a constant of the network (no input in it).

# name -> (segment length, BatchNorm scale or None, slow)
# Comments: regions crossed, seconds walk/subdivide (one thread, shared machine; subdivide of
# the BatchNormAct2d models measured before the engine's fix, on a patched copy), activation and notable ops.
RELU_FAMILY = {
    "resnet18": (0.1, 1.0, False),  # 55 regions, 2.1/0.9 s; ReLU, max-pool 3/2/1
    # resnet10t: ReLU, tiered deep stem, avg-pool downsampling
    "resnet10t": (0.08, 1.0, False),  # 44 regions, 0.8/0.4 s
    # resnet26d: ResNet-D: deep stem, avg-pool shortcut, no SE
    "resnet26d": (0.02, 1.0, False),  # 79 regions, 3.8/0.9 s
    "resnet50": (0.008, 1.0, True),  # 110 regions, 6.5/1.8 s; bottleneck ReLU
    # dla34: ReLU, tree aggregation, max-pool 2/2 downsampling
    "dla34": (0.02, 1.0, False),  # 47 regions, 2.0/1.0 s
    # hrnet_w18_small: ReLU, multi-resolution, nearest Upsample
    "hrnet_w18_small": (0.04, 1.0, False),  # 87 regions, 3.0/1.1 s
    # selecsls42b: ReLU, concatenation of selected features
    "selecsls42b": (0.01, 1.0, False),  # 45 regions, 3.3/1.1 s
    # vgg11_bn: ReLU, 5 max-pools, ConvMlp pre-logits (7x7 conv)
    "vgg11_bn": (0.015, 1.0, True),  # 30 regions, walk 6.2 s
    # regnetx_002: ReLU (ConvNormAct / BatchNormAct2d), grouped conv
    "regnetx_002": (0.05, 1.0, False),  # 45 regions, 0.8/0.4 s
    # densenet121: BatchNormAct2d + ReLU, concatenation, avg-pool
    "densenet121": (0.01, 1.0, True),  # 77 regions, 4.2/1.9 s
    # dpn68: ReLU, dual path (add + concat), BatchNormAct2d
    "dpn68": (0.006, 1.0, True),  # 99 regions, 6.6/1.8 s
    # mobilenetv2_100: ReLU6 in BatchNormAct2d, depthwise conv
    "mobilenetv2_100": (0.01, 3.0, True),  # 159 regions, 10.2/1.0 s
    "mnasnet_100": (0.02, 1.0, False),  # 39 regions, 2.4/0.8 s; ReLU in BatchNormAct2d
    "spnasnet_100": (0.01, 1.0, True),  # 69 regions, 4.5/0.9 s; ReLU in BatchNormAct2d
    # cspresnet50: LeakyReLU(0.01) in BatchNormAct2d, max-pool
    "cspresnet50": (0.01, 1.0, True),  # 75 regions, 6.2/1.9 s
    "cspdarknet53": (0.01, 1.0, True),  # 80 regions, 6.9/3.0 s; LeakyReLU(0.01) in BatchNormAct2d
    "darknet17": (0.05, 1.0, False),  # 52 regions, 2.1/1.0 s; LeakyReLU(0.01) in BatchNormAct2d
    "resnetv2_50": (0.01, 1.0, True),  # 79 regions, 5.9/2.2 s; pre-activation, BatchNormAct2d + ReLU
}
SIDE = 32

# Configurations with other piecewise-linear ops (both methods):
# (name, create_model kwargs, input side, segment length, BatchNorm scale or None). At 64x64 the
# last map is 2x2, so the global max pools have kinks.
OTHER_OPS = {
    "resnet18-max": ("resnet18", {"global_pool": "max"}, 64, 0.05, 1.0),  # nn.AdaptiveMaxPool2d
    "resnet18-avgmax": ("resnet18", {"global_pool": "avgmax"}, 64, 0.05, 1.0),  # avg + adaptive max
    "resnet18-fastmax": ("resnet18", {"global_pool": "fastmax"}, 64, 0.05, 1.0),  # x.amax((2, 3))
    "nf_resnet26": ("nf_resnet26", {}, 32, 0.05, None),  # ReLU, ScaledStdConv2d, no BatchNorm
}
SEGMENTS = 1


def _model(name, kwargs, side, gain):
    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    return calibrate_batchnorm(net, side, gain)


def _segments(side, length):
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(SEGMENTS, 3, side, side, generator=g, dtype=torch.float64)
    d = torch.randn(SEGMENTS, 3, side, side, generator=g, dtype=torch.float64)
    d *= length / torch.linalg.vector_norm(d.flatten(1), dim=1).view(-1, 1, 1, 1)
    return x0, x0 + d


def _check_result(res, net, x0, x1, label):
    assert 10 <= res.density.min() and res.density.max() <= 400, (label, res.density)
    assert res.continuity_gap.max() < 1e-9 * np.abs(res.f0).max(), (label, res.continuity_gap)
    _check_maps(copy.deepcopy(net).double(), x0, x1, res, np.random.default_rng(0), label)


@functools.lru_cache(maxsize=1)
def _walk(name):
    """The model, its segment and the walk's result (cached: the two tests of a model run
    one after the other)."""
    length, gain, _ = RELU_FAMILY[name]
    net = _model(name, {}, SIDE, gain)
    x0, x1 = _segments(SIDE, length)
    return net, x0, x1, discover(net, x0, x1, method="walk")


def _agree(walk, sub, label):
    assert_walk_matches_exact(walk, sub, label=label)
    for s in range(walk.n_segments):
        if np.diff(sub.breakpoints(s)).min() > 2 * EPS:  # no sliver the walk may merge
            assert walk.density[s] == sub.density[s], (label, s)
            np.testing.assert_allclose(walk.breakpoints(s), sub.breakpoints(s), atol=1e-9, rtol=0)


def _relu_family_params():
    """(name, method) with both methods of a model next to each other: the walk is cached."""
    for name, (_, _, slow) in RELU_FAMILY.items():
        for method in ("walk", "subdivide"):
            marks = [pytest.mark.slow] if slow else []
            yield pytest.param(name, method, marks=marks, id=f"{name}-{method}")


@pytest.mark.parametrize("name,method", list(_relu_family_params()))
def test_timm_relu_family(name, method):
    """Both methods run every ReLU-family model unchanged; subdivide agrees with the walk; the
    maps of each reproduce the network."""
    net, x0, x1, walk = _walk(name)
    if method == "walk":
        _check_result(walk, net, x0, x1, (name, "walk"))
        if name == "mobilenetv2_100":  # ReLU6: the BatchNorm scale makes some inputs exceed 6
            bp = walk.breakpoints(0)
            mid = torch.from_numpy(0.5 * (bp[1:] + bp[:-1])).view(-1, 1, 1, 1)
            pat = patterns(copy.deepcopy(net).double(), x0[0][None] + mid * (x1[0] - x0[0])[None])
            change = pat[1:] != pat[:-1]
            assert (change & (np.maximum(pat[1:], pat[:-1]) == 2)).any()  # the kink at 6
            assert (change & (np.minimum(pat[1:], pat[:-1]) == 0)).any()  # the kink at 0
        return
    sub = discover(net, x0, x1, method="subdivide")
    _check_result(sub, net, x0, x1, (name, "subdivide"))
    _agree(walk, sub, name)


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(OTHER_OPS))
def test_timm_other_ops(key):
    """Global max pools and weight standardisation: both methods, agreement and maps, as for
    the ReLU family."""
    name, kwargs, side, length, gain = OTHER_OPS[key]
    net = _model(name, kwargs, side, gain)
    x0, x1 = _segments(side, length)
    walk = discover(net, x0, x1, method="walk")
    sub = discover(net, x0, x1, method="subdivide")
    _check_result(walk, net, x0, x1, (key, "walk"))
    _check_result(sub, net, x0, x1, (key, "subdivide"))
    _agree(walk, sub, key)


# Families with an op that is not piecewise linear: refused by both methods, naming the first
# such op the network calls. key -> (create_model kwargs, op named); the key up to its first '-'
# is the timm name.
REFUSED = {
    "efficientnet_b0": ({}, "silu"),  # SiLU everywhere, SE with sigmoid
    "rexnet_100": ({}, "silu"),  # SiLU and ReLU6, SE
    "dpn48b": ({}, "silu"),  # the 'b' DPNs: SiLU in the stem's ConvNormAct
    "convnext_atto": ({}, "layer_norm"),  # LayerNorm2d stem norm, then GELU
    "vit_tiny_patch16_224": ({"img_size": 32}, "layer_norm"),  # LayerNorm, GELU, softmax
    "mobilenetv3_small_100": ({}, "hardswish"),  # hardswish stem, hard-sigmoid SE
    "resnet18-gelu": ({"act_layer": "gelu"}, "gelu"),  # timm's act_layer override
    "resnet18-hardsigmoid": ({"act_layer": "hard_sigmoid"}, "hardsigmoid"),
    # ReLU but SE with sigmoid
    "regnety_002": ({}, "sigmoid"),
    "tresnet_m": ({}, "sigmoid"),  # LeakyReLU/ReLU, SE with sigmoid
    # BiT: GroupNormAct + StdConv2d (the weight standardisation is a constant)
    "resnetv2_50x1_bit": ({}, "group_norm"),
}


def _refused_params():
    for key in REFUSED:
        for method in ("walk", "subdivide"):
            yield pytest.param(key, method, id=f"{key}-{method}")


@pytest.mark.parametrize("key,method", list(_refused_params()))
def test_timm_refused_by_name(key, method):
    kwargs, op = REFUSED[key]
    name = key.split("-")[0]
    net = _model(name, kwargs, SIDE, 1.0)
    x0, x1 = _segments(SIDE, 1.0)  # long: kinks are crossed before the first refused op
    with pytest.raises(UnsupportedOpError, match=rf"\b{op}\b"):
        discover(net, x0, x1, method=method)
