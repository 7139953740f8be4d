"""The default certificate (float32 screen of every region, float64 on a sample and wherever the
screen is inconclusive) catches every fault the tests plant, including one missed kink that a
per-segment sample does not see."""

import numpy as np
import pytest
import torch
from torch import nn

import pipeline.engine.certificate as certificate
import pipeline.engine.kinks as kinks
from pipeline.engine.lines import CertificateError, CertificateWarning, UnsupportedOpError, discover
from tests.conftest import segments
from tests.nets import MaxCNN


def _wide_mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 96), nn.ReLU(), nn.Linear(96, 96), nn.ReLU(), nn.Linear(96, 96), nn.ReLU(),
                         nn.Linear(96, 4)).eval()


def _float64_calls(monkeypatch):
    """Rows evaluated per precision by the midpoint certificate."""
    rows = {torch.float32: 0, torch.float64: 0}
    real = certificate._Midpoints._finish

    def spy(self, sl, y, *args):
        rows[y.dtype] += sl.size
        return real(self, sl, y, *args)

    monkeypatch.setattr(certificate._Midpoints, "_finish", spy)
    return rows


def test_clean_network_passes_the_screen_in_float32(monkeypatch):
    net = _wide_mlp()
    x0, x1 = segments((6,), 3, seed=2, scale=8.0)
    rows = _float64_calls(monkeypatch)
    res = discover(net, x0, x1)
    assert res.density.min() > 3 * certificate.CERTIFY_SAMPLES  # so the sample is a sample
    assert rows[torch.float32] == res.n_regions  # every region screened
    assert rows[torch.float64] == 3 * certificate.CERTIFY_SAMPLES  # none inconclusive
    assert res.continuity_gap.max() < 1e-12  # the float64 part of the check
    scale = np.abs(res.f0).max()
    assert np.all(res.certificate_tol > 0) and res.certificate_tol.max() < 1e-5 * scale
    strict = discover(net, x0, x1, certify="strict")
    assert np.all(strict.certificate_tol == 0)
    np.testing.assert_array_equal(strict.t_start, res.t_start)


def _drop_one_crossing(monkeypatch, which_call: int, which: float):
    """Make the subdivision miss one ReLU kink: at the ``which_call``-th ReLU layer that has
    crossings, drop the one at quantile ``which`` of its list."""
    real = kinks.relu_crossings
    state = {"calls": 0, "dropped": None}

    def faulty(za, zb, same):
        out = real(za, zb, same)
        piece, tau = out[0], out[-1]
        if piece.numel() > 2 and state["dropped"] is None:
            if state["calls"] == which_call:
                i = int(which * (piece.numel() - 1))
                state["dropped"] = (int(piece[i]), float(tau[i]))
                keep = torch.ones(piece.numel(), dtype=torch.bool)
                keep[i] = False
                out = tuple(v[keep] for v in out)
            state["calls"] += 1
        return out

    monkeypatch.setattr(kinks, "relu_crossings", faulty)
    return state


def test_one_missed_kink_is_caught_by_the_default(monkeypatch):
    net = _wide_mlp()
    x0, x1 = segments((6,), 1, seed=2, scale=8.0)
    clean = discover(net, x0, x1)
    state = _drop_one_crossing(monkeypatch, which_call=2, which=0.5)
    sampled = discover(net, x0, x1, certify="sample")
    assert state["dropped"] is not None
    assert sampled.density[0] == clean.density[0] - 1
    state["calls"], state["dropped"] = 0, None
    with pytest.raises(CertificateError, match="segment 0"):
        discover(net, x0, x1)  # the default
    state["calls"], state["dropped"] = 0, None
    with pytest.warns(CertificateWarning, match="segment 0"):
        res = discover(net, x0, x1, on_certificate="warn")
    assert not res.certified[0]
    assert res.density[0] == clean.density[0] - 1
    # the sample of 16 regions per segment happens to miss the bent region; the screen does not
    assert sampled.continuity_gap[0] < 1e-12
    assert res.continuity_gap[0] > 1e-6
    assert res.continuity_gap[0] > 100 * res.certificate_tol[0]  # far outside the screen's tolerance


def test_misread_max_pool_is_caught_by_the_default(monkeypatch):
    net = MaxCNN().eval()
    x0, x1 = segments((2, 6, 6), 2, seed=3)
    assert discover(net, x0, x1).continuity_gap.max() < 1e-12
    real = kinks.maxpool_crossings
    calls = {"n": 0}

    def first_pool_blind(wa, wb, same):  # the first max-pool's argmax changes are not seen
        calls["n"] += 1
        piece, tau = real(wa, wb, same)
        return (piece[:0], tau[:0]) if calls["n"] == 1 else (piece, tau)

    monkeypatch.setattr(kinks, "maxpool_crossings", first_pool_blind)
    with pytest.warns(CertificateWarning):
        res = discover(net, x0, x1, on_certificate="warn")
    assert res.continuity_gap.min() > 1e-6 and not res.certified.any()
    calls["n"] = 0
    with pytest.raises(CertificateError):
        discover(net, x0, x1)


class HiddenSquare(nn.Module):
    """x * x is not piecewise linear, and no function-level hook can tell it from x * 2."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(6, 24), nn.Linear(24, 3)

    def forward(self, x):
        h = torch.relu(self.l1(x))
        return self.l2(h * h)


def test_hidden_square_is_refused_by_name_and_caught_when_declared_affine():
    """h * h is a product of two input-derived values: refused before any work. Declared affine
    (the escape hatch), it runs, and the default certificate catches it."""
    torch.manual_seed(0)
    x0, x1 = segments((6,), 3, seed=8)
    with pytest.raises(UnsupportedOpError, match="mul.*two operands derived from the input"):
        discover(HiddenSquare().eval(), x0, x1)
    with pytest.raises(CertificateError, match="segment 0.*Tensor.mul"):
        discover(HiddenSquare().eval(), x0, x1, assume_affine=(torch.Tensor.mul,))
    with pytest.warns(CertificateWarning):
        res = discover(HiddenSquare().eval(), x0, x1, on_certificate="warn", assume_affine=(torch.Tensor.mul,))
    assert res.continuity_gap.min() > 1e-3 and not res.certified.any()


def test_screen_sends_a_large_error_to_float64(monkeypatch):
    """A fault that only the float32 copy makes (its forward is off by 1e-3 in one region)
    must be confirmed in float64 before it is reported: the float64 value is what counts."""
    net = _wide_mlp()
    x0, x1 = segments((6,), 1, seed=2, scale=8.0)
    real = certificate._Midpoints._finish

    def off_in_float32(self, sl, y, *args):
        if y.dtype == torch.float32:  # one region outside the float64 sample
            i = np.flatnonzero(~certificate.sampled(self.rseg))[0]
            y = y.clone()
            y[torch.from_numpy(sl == i)] += 1e-3
        return real(self, sl, y, *args)

    monkeypatch.setattr(certificate._Midpoints, "_finish", off_in_float32)
    rows = _float64_calls(monkeypatch)
    res = discover(net, x0, x1)
    assert rows[torch.float64] == certificate.CERTIFY_SAMPLES + 1  # the sample and the doubtful one
    assert res.continuity_gap[0] < 1e-12  # float64 says the map is right


@pytest.mark.parametrize("certify", ["all", "strict", "sample"])
def test_float32_mode_has_no_screen(certify):
    net = _wide_mlp()
    x0, x1 = segments((6,), 2, seed=4)
    res = discover(net, x0, x1, dtype=torch.float32, certify=certify)
    assert np.all(res.certificate_tol == 0)
    assert res.continuity_gap.max() < 1e-4


@pytest.mark.parametrize("name", ["res_leaky", "max_cnn", "functional", "avg_cnn"])
def test_resumed_screen_equals_a_whole_float32_forward(nets, name):
    """The screen starts at the first piecewise-linear op from values interpolated between the
    segment's ends (skip connections included): it must give the network's float32 outputs."""
    from pipeline.engine.prepared import prepare

    net, shape = next((m, s) for n, m, s in nets if n == name)
    x0, x1 = segments(shape, 3, seed=9)
    res = discover(net, x0, x1, certify="sample")
    ready = prepare(net)
    seg = np.repeat(np.arange(res.n_segments), res.density)
    mid = 0.5 * (res.t_start + res.t_end)
    d = (x1 - x0).double()
    at = certificate._Midpoints(x0.double(), d, seg, mid, res.intercept, res.slope, ready.device, 64)
    prefix = certificate._AffinePrefix(ready.plan, torch.cat([x0, x0 + d]).double(), res.n_segments)
    assert prefix.ok and prefix.start > 0
    every = np.arange(seg.size)
    _, resumed = at.resumed(ready.screen_plan, prefix, torch.float32, every, 16, 0)
    _, whole = at.forward(ready.screen, torch.float32, every, 16)
    _, exact = at.forward(ready.work, torch.float64, every, 16)
    scale = np.abs(exact).max()
    assert np.abs(resumed - exact).max() < 1e-5 * scale
    assert np.abs(resumed - whole).max() < 1e-5 * scale


class SquareFirst(nn.Module):
    """A hidden x * x before the first ReLU: the screen's interpolated prefix cannot see it,
    the float64 sample (a whole forward) must."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(24, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.l2(torch.relu(self.l1(x * x)))


def test_hidden_square_before_the_first_kink_is_caught(monkeypatch):
    resumed = []
    real = certificate._Midpoints.resumed
    monkeypatch.setattr(certificate._Midpoints, "resumed", lambda self, *a: resumed.append(1) or real(self, *a))
    torch.manual_seed(0)
    x0, x1 = segments((24,), 3, seed=10)
    with pytest.warns(CertificateWarning):
        res = discover(SquareFirst().eval(), x0, x1, on_certificate="warn", assume_affine=(torch.Tensor.mul,))
    assert resumed  # 6 live values at the first ReLU against 24 inputs: the screen starts there
    assert res.continuity_gap.min() > 1e-3
