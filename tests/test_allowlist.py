"""Networks as people write them: every op found, a constant, or refused by name before any work.

The engine keeps an allowlist of affine ops (pipeline.engine.allowlist) and follows which values carry
the input: anything else applied to an input-derived value is refused, naming the op, in the
walk, the subdivision and the planes alike; what touches only parameters and constants is a
constant whatever the op; sizes read from the batch follow it; a forward that branches on a
shape traces with the example input's shapes.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.engine.planes import discover_plane
from pipeline.engine.lines import UnsupportedOpError, discover, prepare

ENGINES = ["walk", "subdivide", "plane"]


class Body(nn.Module):
    def __init__(self, act, n_in=4, width=8, k=3):
        super().__init__()
        self.a, self.b, self.act = nn.Linear(n_in, width), nn.Linear(width, k), act

    def forward(self, x):
        return self.b(self.act(self.a(x)))


def _run(net, engine, **kw):
    g = torch.Generator().manual_seed(0)
    x0, x1, x2 = (torch.randn(2, 4, generator=g, dtype=torch.float64) for _ in range(3))
    net = net.double().eval()
    if engine == "plane":
        return discover_plane(net, x0, x1, x2, **kw)
    return discover(net, x0, x1, method=engine, **kw)


REFUSED = {
    "where": (lambda z: torch.where(z > 0, z, 0.0), "gt"),
    "mask_product": (lambda z: z * (z > 0).to(z.dtype), "gt"),
    "masked_fill": (lambda z: z.masked_fill(z < 0, 0.0), "lt"),
    "sign": (lambda z: torch.sign(z) * 0.5 + z, "sign"),
    "round": (lambda z: torch.round(z), "round"),
    "floor": (lambda z: z.floor(), "floor"),
    "integer_cast": (lambda z: z.long().to(z.dtype), "long"),
    "to_int": (lambda z: z.to(torch.int32).double(), "to"),
    "item": (lambda z: z * float(z[0, 0]), "__float__|item"),
    "square": (lambda z: z * z, "mul.*two operands"),
    "matmul_self": (lambda z: z @ z.T[:, :8][:8] if False else torch.einsum("bi,bi->b", z, z)[:, None] + z, "einsum"),
    "divide_by_input": (lambda z: z / (z.abs() + 1), "div"),
    "gelu": (F.gelu, "gelu.*not piecewise linear"),
    "sigmoid": (torch.sigmoid, "sigmoid"),
    "layer_norm": (nn.LayerNorm(8), "layer_norm"),
    "softmax": (lambda z: F.softmax(z, 1), "softmax"),
    "whole_max": (lambda z: z - z.max(), "batch"),
    "max_over_batch": (lambda z: z - z.amax(0), "batch"),
    "index_from_input": (lambda z: z.gather(1, z.argmax(1, keepdim=True)).expand(-1, 8), "argmax"),
    "indices_used": (lambda z: z + z.max(1, keepdim=True).indices.to(z.dtype), "to|int64"),
    "exp": (torch.exp, "exp"),
    "hardshrink": (F.hardshrink, "hardshrink"),
    "clamp_tensor_bound": (lambda z: torch.clamp(z, min=torch.zeros(8, dtype=z.dtype)), "tensor bound"),
}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_by_name(name, engine):
    act, pattern = REFUSED[name]
    with pytest.raises(UnsupportedOpError, match=pattern):
        _run(Body(act), engine)


def test_refused_before_any_work(monkeypatch):
    """The refusal comes from the preflight pass, before the engine starts."""
    import pipeline.engine.subdivide as sub

    started = []
    real = sub.run_graph
    monkeypatch.setattr(sub, "run_graph", lambda *a, **k: started.append(1) or real(*a, **k))
    with pytest.raises(UnsupportedOpError, match="gt"):
        _run(Body(REFUSED["where"][0]), "subdivide")
    assert not started


class ConstantOps(nn.Module):
    """Ops that would be refused on the input are constants on parameters and buffers."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)
        self.register_buffer("mask", torch.tensor([1, 0, 1, 1, 0, 1, 1, 1], dtype=torch.bool))

    def forward(self, x):
        w = torch.where(self.a.weight > 0, self.a.weight, 0.1 * self.a.weight)  # a weight from parameters
        scale = torch.sigmoid(self.b.bias).sum() + torch.abs(self.b.weight).amax()
        z = torch.relu(F.linear(x, w, self.a.bias)).masked_fill(~self.mask, 0.0)
        return self.b(z) * scale


class Precomputed(nn.Module):
    def __init__(self, src):
        super().__init__()
        with torch.no_grad():
            self.register_buffer("w", src.a.weight.where(src.a.weight > 0, 0.1 * src.a.weight))
            self.register_buffer("scale", torch.sigmoid(src.b.bias).sum() + torch.abs(src.b.weight).amax())
        self.src = src

    def forward(self, x):
        z = torch.relu(F.linear(x, self.w, self.src.a.bias)) * self.src.mask
        return self.src.b(z) * self.scale


@pytest.mark.parametrize("engine", ENGINES)
def test_constants_are_constants(engine):
    torch.manual_seed(0)
    net = ConstantOps().double().eval()
    a, b = _run(net, engine), _run(Precomputed(net).double().eval(), engine)
    np.testing.assert_array_equal(a.density, b.density)
    np.testing.assert_allclose(a.deviation, b.deviation, rtol=1e-10)


def test_escape_hatch_runs_and_the_certificate_still_checks():
    """assume_affine lets a refused op through; a wrong declaration fails the certificate, which
    names the op, in every engine."""
    from pipeline.engine.lines import CertificateError, CertificateWarning

    net = Body(lambda z: torch.where(z > 0, z, 0.0))
    declared = (torch.where, torch.Tensor.gt)
    assert prepare(net.double().eval(), assume_affine=declared).assumed_affine_report() == ""
    for engine in ENGINES:
        with pytest.raises(CertificateError, match=r"Tensor\.gt|torch\.where"):
            _run(net, engine, assume_affine=declared)
        with pytest.warns(CertificateWarning):
            res = _run(net, engine, assume_affine=declared, on_certificate="warn")
        assert res.continuity_gap.max() > 1e-3, engine


class BatchRead(nn.Module):
    """The batch size read at the top of forward and used after a ReLU, and other sizes."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 3, 3, padding=1), nn.Linear(3 * 16, 2)

    def forward(self, x):
        n, c = x.shape[0], x.size(1)
        assert x.ndim == 4
        h = torch.relu(self.a(x))
        h = F.max_pool2d(h, 2, ceil_mode=False).reshape(n, -1)
        h = torch.relu(h.view(x.size(0), 3 * h.shape[1] // 3))
        return self.b(h) * c


class Plain(nn.Module):
    def __init__(self, src):
        super().__init__()
        self.src = src

    def forward(self, x):
        h = F.max_pool2d(torch.relu(self.src.a(x)), 2).flatten(1)
        return self.src.b(torch.relu(h))


class ShapeBranch(Plain):
    def forward(self, x):
        if x.shape[-1] > 4:  # torch.fx cannot trace this symbolically
            x = x[..., :8, :8]
        return super().forward(x)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("cls", [BatchRead, ShapeBranch])
def test_sizes_and_shape_branches(cls, engine):
    torch.manual_seed(0)
    src = BatchRead().double().eval()
    net = (cls() if cls is BatchRead else cls(src)).double().eval()
    if cls is BatchRead:
        net.load_state_dict(src.state_dict())
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64) for _ in range(3)]
    ref = Plain(src).eval()
    if engine == "plane":
        a, b = discover_plane(net, *xs), discover_plane(ref, *xs)
    else:
        a, b = discover(net, xs[0], xs[1], method=engine), discover(ref, xs[0], xs[1], method=engine)
    assert a.density.sum() > 4
    np.testing.assert_array_equal(a.density, b.density)


def test_lost_input_is_refused():
    """An op hidden from torch's dispatch makes the output look constant: refused, not counted."""

    class Hidden(Body):
        def forward(self, x):
            with torch._C.DisableTorchFunction():
                h = torch.relu(self.a(x))
            return self.b(h)

    with pytest.raises(UnsupportedOpError, match="does not depend on its input"):
        _run(Hidden(None), "walk")
