"""A failing certificate is an error by default (``on_certificate="raise"``), a warning on
request, in both 1-D engines and on planes; correct networks pass in float64 and float32.

The planted fault is a ReLU the engine cannot see: computed under
``torch._C.DisableTorchFunction`` (so the engine's TorchFunctionMode never sees it) inside a
function that ``torch.fx.wrap`` keeps opaque to tracing. Every engine reads the network as
affine: one region per segment, the chord of a bent function.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.engine.certificate import GAP_RTOL, CertificateWarning, gap_tolerance
from pipeline.engine.planes import discover_plane, discover_plane_iter
from pipeline.engine.lines import CertificateError, discover, discover_iter, prepare
from tests.nets import zoo


def hidden_relu(z):
    with torch._C.DisableTorchFunction():
        return torch.relu(z)


torch.fx.wrap("hidden_relu")


class HiddenReLU(nn.Module):
    """A two-layer MLP whose ReLU no engine sees."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.l1, self.l2 = nn.Linear(2, 16), nn.Linear(16, 3)

    def forward(self, x):
        z = self.l1(x)
        # + 0 z: the output still carries the input as the engine sees it, so the preflight's
        # check (an output that does not depend on the input is refused, tests/test_allowlist.py)
        # lets it through and the certificate is what must catch the hidden kink
        return self.l2(hidden_relu(z) + 0.0 * z)


def _ends(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return tuple(2 * torch.randn(n, 2, generator=g, dtype=torch.float64) for _ in range(3))


NET = HiddenReLU().eval()
X0, X1, X2 = _ends()


@pytest.mark.parametrize("method", ["subdivide", "walk"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_hidden_kink_raises(method, dtype):
    with pytest.raises(CertificateError, match=r"segment 0 \(gap 0\.1\d* > tolerance") as info:
        discover(NET, X0, X1, method=method, dtype=dtype)
    msg = str(info.value)
    assert "treated some op as affine" in msg and "on_certificate='warn'" in msg
    assert 0 in info.value.index.tolist() and (info.value.gap > info.value.tol).all()
    with pytest.raises(CertificateError, match="segment 0"):
        list(discover_iter(NET, X0, X1, method=method, dtype=dtype))


@pytest.mark.parametrize("method", ["subdivide", "walk"])
def test_hidden_kink_warns_and_flags(method):
    with pytest.warns(CertificateWarning, match="segment 0"):
        res = discover(NET, X0, X1, method=method, on_certificate="warn")
    # the engine saw no kink: one region per segment, and the certificate says so
    assert (res.density == 1).all()
    assert not res.certified[0] and res.continuity_gap[0] > 0.05
    np.testing.assert_array_equal(res.certified, res.continuity_gap <= res.gap_tol)
    with pytest.warns(CertificateWarning):
        chunks = list(discover_iter(NET, X0, X1, method=method, on_certificate="warn", chunk_segments=1))
    assert [c.certified[0] for c in chunks] == list(res.certified)


def test_hidden_kink_on_planes():
    with pytest.raises(CertificateError, match=r"plane 0 \(gap"):
        discover_plane(NET, X0, X1, X2)
    with pytest.raises(CertificateError, match="plane 0"):
        list(discover_plane_iter(NET, X0, X1, X2))
    with pytest.warns(CertificateWarning, match="plane 0"):
        res = discover_plane(NET, X0, X1, X2, on_certificate="warn")
    assert (res.n_regions == 1).all() and not res.certified[0]
    assert res.gap_tol.shape == (3,)


def test_option_is_validated():
    with pytest.raises(ValueError, match="on_certificate"):
        discover(NET, X0, X1, on_certificate="ignore")
    with pytest.raises(ValueError, match="on_certificate"):
        list(discover_iter(NET, X0, X1, on_certificate=None))
    with pytest.raises(ValueError, match="on_certificate"):
        discover_plane(NET, X0, X1, X2, on_certificate="skip")


def test_message_names_declared_affine_ops():
    ready = prepare(NET)
    ready.assumed_affine_report = lambda: "You declared these ops affine: hidden_relu."
    with pytest.raises(CertificateError, match="You declared these ops affine: hidden_relu"):
        discover(ready, X0, X1)


def test_walk_midpoint_check_catches_the_chord():
    """Before the midpoint check the walk's certificate was 1e-16 here: the one region's map
    (the chord) agrees with f at both ends."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CertificateWarning)
        for certify in ("all", "strict", "sample"):
            res = discover(NET, X0, X1, method="walk", on_certificate="warn", certify=certify)
            assert res.continuity_gap[0] > 0.05, certify


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("method", ["subdivide", "walk"])
def test_correct_networks_pass(method, dtype):
    for name, net, shape in zoo():
        g = torch.Generator().manual_seed(0)
        x0 = torch.randn(4, *shape, generator=g, dtype=torch.float64)
        x1 = x0 + 3 * torch.randn(4, *shape, generator=g, dtype=torch.float64)
        res = discover(net, x0, x1, method=method, dtype=dtype)  # raises if the tolerance is too tight
        assert res.certified.all() and res.density.sum() > 4, name
        # a margin: the largest gap of a correct result is far below its tolerance
        assert (res.continuity_gap <= 0.5 * res.gap_tol).all(), (name, res.continuity_gap / res.gap_tol)


def test_vgg8_like_passes_both_dtypes():
    from pipeline.inputs.models import build

    torch.manual_seed(0)
    net = build("vgg8", num_classes=10, in_channels=1, input_size=8, widths=(8, 16)).eval()
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    x1 = x0 + torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    for dtype in (torch.float64, torch.float32):
        for method in ("subdivide", "walk"):
            assert discover(net, x0, x1, method=method, dtype=dtype).certified.all()
        x2 = x0 + 0.3 * torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
        p = discover_plane(net, x0, x0 + 0.3 * (x1 - x0), x2, dtype=dtype)
        assert p.certified.all() and (p.n_regions > 1).all()


def test_tolerance_is_relative_and_concatenates():
    assert gap_tolerance(torch.float64, np.array([1.0, 10.0])).tolist() == [GAP_RTOL[torch.float64],
                                                                           10 * GAP_RTOL[torch.float64]]
    assert GAP_RTOL[torch.float32] > 1e4 * GAP_RTOL[torch.float64]
    net = zoo()[0][1]
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    whole = discover(net, x0, x1)
    parts = list(discover_iter(net, x0, x1, chunk_segments=2))
    assert len(parts) == 3
    from pipeline.engine.result import RegionResult

    np.testing.assert_allclose(RegionResult.concat(parts).gap_tol, whole.gap_tol, rtol=1e-12)
    # the walk's tolerance allows its merged slivers: 4 eps x the largest |slope|
    walk = discover(net, x0, x1, method="walk", eps=1e-4)
    steep = np.array([np.abs(walk.regions(i)["slope"]).max() for i in range(5)])
    assert (walk.gap_tol >= 4e-4 * steep).all()
