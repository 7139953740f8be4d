"""The engine on a device other than the CPU, checked on the CPU.

* Every tensor the engine makes is on the working device or deliberately on the host: with
  torch's default device set to ``meta``, a tensor made without a device would be a meta
  tensor, and mixing it with real ones fails. Results must equal a plain run.
* Host waits (pipeline.engine.census): their count grows with the piecewise-linear ops and the chunks
  of work, not with the regions.
* Out of memory: a simulated small device (an op that raises ``torch.OutOfMemoryError`` past a
  number of rows) makes the engine redo its work smaller, with a warning, and the same result.
"""

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from pipeline.engine.census import HostSyncCensus, classify
from pipeline.stages.discovery import DiscoverConfig
from pipeline.config import identity_dict
from pipeline.inputs.models import VGG8, ResNet18
from pipeline.engine.planes import discover_plane
from pipeline.engine.prepared import prepare
from pipeline.engine.lines import discover
from pipeline.engine.worksize import DeviceMemoryError, largest_activation, shrink_on_oom, work_sizes
import pipeline.engine.walk as walk_module
from tests.nets import MaxCNN, zoo


def _same(a, b):
    np.testing.assert_array_equal(a.density, b.density)
    np.testing.assert_allclose(a.t_start, b.t_start, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(a.deviation, b.deviation, rtol=1e-10, atol=1e-13)


def _same_plane(a, b):
    np.testing.assert_array_equal(a.n_regions, b.n_regions)
    np.testing.assert_allclose(a.deviation, b.deviation, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name,net,shape", zoo(), ids=[z[0] for z in zoo()])
def test_every_tensor_is_made_on_the_working_device(name, net, shape):
    torch.manual_seed(1)
    x0, x1, x2 = torch.randn(3, 2, *shape, dtype=torch.float64)
    for method in ("subdivide", "walk"):
        ref = discover(net, x0, x1, method=method)
        with torch.device("meta"):  # a tensor made without device= lands on meta, and the run fails
            got = discover(net, x0, x1, method=method, device="cpu")
        _same(ref, got)
    ref = discover_plane(net, x0, x1, x2)
    with torch.device("meta"):
        _same_plane(ref, discover_plane(net, x0, x1, x2, device="cpu"))


def test_the_meta_check_catches_a_tensor_made_without_its_device(monkeypatch):
    """The check above is not vacuous: drop one device= from the walk and it fails."""
    net, shape = zoo()[0][1:]
    x0, x1 = torch.randn(2, 2, *shape, dtype=torch.float64)
    real = torch.arange

    def careless(*args, **kwargs):
        kwargs.pop("device", None)
        return real(*args, **kwargs)

    monkeypatch.setattr(walk_module.torch, "arange", careless)
    with torch.device("meta"), pytest.raises((RuntimeError, NotImplementedError)):
        discover(net, x0, x1, method="walk", device="cpu")


# ------------------------------------------------------------------------- the census


def test_census_classifies_the_waits():
    x = torch.randn(6)
    m = x > 0
    with HostSyncCensus() as c:
        x.sum().item()
        bool(m.any())
        x[m]
        m.nonzero()
        x.tolist()
        x.numpy()
        torch.repeat_interleave(torch.arange(3), torch.tensor([1, 2, 3]))
        torch.where(m)
        x[:3] + 1  # none of these wait
        torch.where(m, x, 0.0)
        x.argmax()
    assert c.by_kind == {"scalar": 2, "shape": 4, "to_host": 2}, c.as_dict()
    assert classify(torch.Tensor.sum, (x,), {}) is None


def _path(net_input=(3, 32, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((2, *net_input), generator=g, dtype=torch.float64)


def _net(arch):
    torch.manual_seed(0)
    return (VGG8() if arch == "vgg8" else ResNet18(k=8)).eval()


def _census(fn):
    with HostSyncCensus() as c:
        res = fn()
    return res, c.total


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vgg8", "resnet18"])
def test_subdivide_waits_per_op_and_chunk_not_per_region(arch):
    net = _net(arch)
    a, b = _path()
    short, long_ = 0.1, 0.4
    run = lambda f: discover(net, a[None], (a + f * (b - a))[None], max_vertices=1 << 16)  # noqa: E731
    (r1, n1), (r2, n2) = _census(lambda: run(short)), _census(lambda: run(long_))
    assert r2.n_regions > 2.5 * r1.n_regions
    # VGG8 at 3,383 regions: 64 waits before (boolean masks per op), 36 after; ResNet18 134 and 66
    assert n2 <= n1 + 20, (n1, n2, r1.n_regions, r2.n_regions)
    assert n2 < 100


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vgg8", "resnet18"])
def test_walk_waits_once_per_step(monkeypatch, arch):
    net = _net(arch)
    a, b = _path()
    x0 = torch.stack([a, b, a + 0.5 * (b - a), b])[:3]
    x1 = x0 + (0.05 if arch == "vgg8" else 0.02) * (torch.roll(x0, 1, 0) - x0)
    steps = []
    real = walk_module.linearize
    monkeypatch.setattr(walk_module, "linearize", lambda *a, **k: steps.append(1) or real(*a, **k))
    res, n = _census(lambda: discover(net, x0, x1, method="walk", batch_size=3))
    # before: 8 waits per step on VGG8 (a zero.any() per ReLU, a bad.any() per step)
    assert n <= len(steps) + 60, (n, len(steps), res.n_regions)
    assert len(steps) < 0.6 * res.n_regions  # three segments in flight: a step finds up to three regions


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vgg8", "resnet18"])
def test_plane_waits_grow_with_cut_rounds_not_regions(arch):
    net = _net(arch)
    a, b = _path()
    c = torch.roll(a, 3, -1)
    run = lambda s: discover_plane(net, a[None], (a + s * (b - a))[None], (a + s * (c - a))[None],  # noqa: E731
                                   max_vertices=1 << 17)
    small = 0.002 if arch == "vgg8" else 0.001
    (p1, n1), (p2, n2) = _census(lambda: run(small)), _census(lambda: run(3 * small))
    assert p2.total_regions > 5 * p1.total_regions
    assert n2 < 2.5 * n1, (n1, n2, p1.total_regions, p2.total_regions)


# ------------------------------------------------------------------------- work sizes


def test_cpu_sizes_are_the_tuned_constants_and_overrides_are_kept():
    net = MaxCNN().eval()
    ready = prepare(net)
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    s = work_sizes(ready, x, "subdivide")
    assert (s.batch_size, s.max_vertices, s.row_block) == (64, 256, 16)
    assert work_sizes(ready, x, "walk").row_block == 64
    s = work_sizes(ready, x, "subdivide", batch_size=7, max_vertices=99, row_block=3)
    assert (s.batch_size, s.max_vertices, s.row_block) == (7, 99, 3)


def test_sizes_follow_the_memory_budget():
    torch.manual_seed(0)
    ready = prepare(VGG8().eval())
    x = torch.zeros(1, 3, 32, 32, dtype=torch.float64)
    per_row = largest_activation(ready, x) * 8
    assert per_row == 6 * 32 * 32 * 8  # VGG8's first conv: 6 channels at 32 x 32
    small, big = (work_sizes(ready, x, "subdivide", memory_bytes=m) for m in (2**26, 2**30))
    assert big.max_vertices == pytest.approx(16 * small.max_vertices, rel=0.01)
    assert small.max_vertices * 6 * per_row <= 2**26
    walk = work_sizes(ready, x, "walk", memory_bytes=2**30)
    assert walk.batch_size * 2 * 6 * per_row <= 2**30
    assert "budget" in big.why


def test_local_fields_stay_out_of_the_identity():
    a, b = DiscoverConfig(), DiscoverConfig(batch_size=512, max_vertices=65536)
    assert identity_dict(a) == identity_dict(b)
    with pytest.raises(ValueError, match="max_vertices"):
        DiscoverConfig(max_vertices=3)


# ------------------------------------------------------------------------- out of memory


class SmallDevice(TorchFunctionMode):
    """A device that runs out of memory when a layer gets more than ``rows`` rows."""

    def __init__(self, rows: int):
        super().__init__()
        self.rows, self.refused = rows, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (F.conv2d, F.linear) and args and args[0].shape[0] > self.rows:
            self.refused += 1
            raise torch.OutOfMemoryError(f"simulated: {args[0].shape[0]} rows")
        return func(*args, **kwargs)


@pytest.mark.parametrize("method", ["subdivide", "walk"])
def test_out_of_memory_is_redone_smaller(method, caplog):
    net = MaxCNN().eval()
    torch.manual_seed(3)
    x0, x1 = torch.randn(2, 6, 2, 6, 6, dtype=torch.float64)
    ref = discover(net, x0, x1, method=method)
    device = SmallDevice(rows=40)
    with caplog.at_level(logging.WARNING, logger="pipeline.engine.worksize"), device:
        got = discover(net, x0, x1, method=method, batch_size=6, max_vertices=4096, row_block=0)
    assert device.refused > 0
    assert "out of memory" in caplog.text and "redoing it at" in caplog.text
    _same(ref, got)


def test_planes_out_of_memory_is_redone_smaller(caplog):
    net = MaxCNN().eval()
    torch.manual_seed(4)
    x0, x1, x2 = torch.randn(3, 2, 2, 6, 6, dtype=torch.float64)
    ref = discover_plane(net, x0, x1, x2)
    device = SmallDevice(rows=300)
    with caplog.at_level(logging.WARNING, logger="pipeline.engine.worksize"), device:
        got = discover_plane(net, x0, x1, x2, max_vertices=8192, row_block=0)
    assert device.refused > 0 and "planes: a chunk of planes" in caplog.text
    _same_plane(ref, got)


def test_out_of_memory_at_the_smallest_size_says_so():
    def never(size):
        raise torch.OutOfMemoryError("simulated")

    with pytest.raises(DeviceMemoryError, match="out of memory even at 4"):
        shrink_on_oom("a test", 64, never, floor=4)
