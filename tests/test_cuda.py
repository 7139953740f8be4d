"""The engine on CUDA against the CPU: skipped where torch sees no CUDA device.

Run them on a GPU node with ``python -m pytest -q -m cuda`` (``bench/gpu.py`` runs them and the
CUDA cases of ``tests/test_edge_cases.py``). They need only torch, numpy and pytest.
"""

import numpy as np
import pytest
import torch

from pipeline.inputs.models import VGG8
from pipeline.engine.planes import discover_plane
from pipeline.engine.lines import discover
from tests.conftest import segments

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")]

RTOL = 1e-9  # float64 on the device against the CPU, relative to each array's largest value


def _vgg(pool="avg"):
    """A VGG8 of the real layout on 8x8 inputs, narrow enough for a unit test."""
    torch.manual_seed(0)
    return VGG8(num_classes=3, in_channels=2, input_size=8, widths=(3, 4, 6), hidden=16, pool=pool).eval()


def _close(a, b):
    a, b = np.asarray(a), np.asarray(b)
    scale = np.abs(a).max() if a.size else 0.0
    np.testing.assert_allclose(b, a, rtol=0, atol=RTOL * max(scale, 1e-300))


def _same_lines(cpu, dev):
    """Equal results; the maps by their values at the regions' ends (a slope from two values a
    thin region apart magnifies their rounding: bench/gpu.py, compare_lines)."""
    np.testing.assert_array_equal(cpu.density, dev.density)
    for f in ("t_start", "t_end", "f0", "f1", "deviation"):
        _close(getattr(cpu, f), getattr(dev, f))
    for t in (cpu.t_start, cpu.t_end):
        _close(cpu.intercept + cpu.slope * t[:, None], dev.intercept + dev.slope * t[:, None])


@pytest.mark.parametrize("pool", ["avg", "max"])
@pytest.mark.parametrize("method", ["subdivide", "walk"])
def test_cuda_lines_equal_cpu(method, pool):
    net = _vgg(pool)
    x0, x1 = segments((2, 8, 8), 4, seed=1)
    cpu = discover(net, x0, x1, method=method, device="cpu")
    dev = discover(net, x0, x1, method=method, device="cuda")
    assert cpu.n_regions > 4 * 4  # the segments cross regions: the check means something
    _same_lines(cpu, dev)


def test_cuda_small_work_sizes_equal_cpu():
    net = _vgg()
    x0, x1 = segments((2, 8, 8), 5, seed=2)
    _same_lines(discover(net, x0, x1, device="cpu"),
                discover(net, x0, x1, device="cuda", batch_size=2, max_vertices=8))


def test_cuda_plane_equals_cpu():
    net = _vgg()
    x0, x1 = segments((2, 8, 8), 1, seed=3)
    x1, x2 = x0 + 0.1 * (x1 - x0), x0 + 0.1 * (segments((2, 8, 8), 1, seed=4)[0] - x0)  # a few hundred regions
    cpu = discover_plane(net, x0, x1, x2, device="cpu")
    dev = discover_plane(net, x0, x1, x2, device="cuda")
    assert cpu.n_regions.sum() > 10
    np.testing.assert_array_equal(cpu.n_regions, dev.n_regions)
    for f in ("area", "centroid", "deviation"):
        _close(getattr(cpu, f), getattr(dev, f))
    region = np.repeat(np.arange(len(cpu.area)), np.diff(cpu.vertex_offset))
    u, v = cpu.uv[:, :1], cpu.uv[:, 1:]
    _close(*(r.intercept[region] + u * r.grad[region, 0] + v * r.grad[region, 1] for r in (cpu, dev)))


@pytest.mark.parametrize("method", ["subdivide", "walk"])
def test_cuda_float32_counts_near_float64(method):
    net = _vgg()
    x0, x1 = segments((2, 8, 8), 4, seed=5)
    r64 = discover(net, x0, x1, method=method, device="cuda")
    r32 = discover(net, x0, x1, method=method, device="cuda", dtype=torch.float32)
    assert r32.certified.all()
    # float32 merges regions thinner than its resolution: a few per cent at most on a net this small
    assert abs(r32.n_regions - r64.n_regions) <= max(2, 0.03 * r64.n_regions)
