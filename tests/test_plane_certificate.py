"""The planes' default certificate: a float32 screen of every region's centroid, float64 on a
sample of 16 regions per plane and wherever the screen is inconclusive (the 1-D scheme,
pipeline.engine.certificate.screen). It must report what a float64 check of every centroid reports."""

import numpy as np
import pytest
import torch

import pipeline.engine.certificate as certificate
import pipeline.engine.planes.assemble as plane_assemble
import pipeline.engine.planes.certify as plane_certify
import pipeline.engine.planes.discover as plane_discover
from pipeline.engine.planes import CertificateError, CertificateWarning, discover_plane
from tests.nets import MaxCNN, ResLeaky


def _case(net_cls, n_planes=2, scale=0.2):
    torch.manual_seed(0)
    net = net_cls().eval().double()
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn((n_planes, 2, 6, 6), generator=g, dtype=torch.float64) * scale for _ in range(3)]
    return net, xs


def _rows(monkeypatch):
    """Rows the centroid certificate evaluates, per precision."""
    rows = {torch.float32: 0, torch.float64: 0}
    real = plane_certify.forward_blocked

    def spy(model, x, block):
        rows[x.dtype] += x.shape[0]
        return real(model, x, block)

    _patch_forward(monkeypatch, spy)
    return rows


def _patch_forward(monkeypatch, forward):
    """``forward`` for every forward of the planes: the corners' (discover) and the centroids' (certify)."""
    for module in (plane_discover, plane_certify):
        monkeypatch.setattr(module, "forward_blocked", forward)


@pytest.mark.parametrize("net_cls", [MaxCNN, ResLeaky])
def test_clean_planes_pass_the_screen_in_float32(monkeypatch, net_cls):
    net, xs = _case(net_cls)
    strict = discover_plane(net, *xs, certify="strict")
    rows = _rows(monkeypatch)
    res = discover_plane(net, *xs)
    corners = 3 * 2  # the corners' forward, in float64
    assert (res.n_regions > 4 * certificate.CERTIFY_SAMPLES).all()  # so the sample is a sample
    assert rows[torch.float32] == res.total_regions  # every centroid screened
    assert rows[torch.float64] == corners + 2 * certificate.CERTIFY_SAMPLES  # none inconclusive
    assert res.continuity_gap.max() < 1e-12
    scale = np.abs(res.f_corners).max()
    assert (res.certificate_tol > 0).all() and res.certificate_tol.max() < 1e-5 * scale
    # the same partition and maps; the strict check saw nothing the screen let through
    for name in ("n_regions", "area", "centroid", "uv", "intercept", "grad"):
        np.testing.assert_array_equal(getattr(res, name), getattr(strict, name), err_msg=name)
    assert (strict.certificate_tol == 0).all() and strict.continuity_gap.max() < 1e-12
    assert (res.region_gap <= strict.region_gap + 1e-15).all()


def _bend_one_map(monkeypatch, offset, sampled_too=False):
    """One region's affine map is wrong by ``offset`` at its centroid (as if the engine had
    misread one op there): a region outside the certificate's float64 sample."""
    real = plane_assemble.certify_centroids
    state = {}

    def faulty(prepared, how, chunk, rplane, cen, pred, *args):
        pick = np.flatnonzero(certificate.sampled(rplane) == sampled_too)[3]
        pred = pred.copy()
        pred[pick, 0] += offset
        state["region"] = int(pick)
        return real(prepared, how, chunk, rplane, cen, pred, *args)

    monkeypatch.setattr(plane_assemble, "certify_centroids", faulty)
    return state


def test_one_bad_map_is_caught_by_the_default_and_not_by_the_sample(monkeypatch):
    net, xs = _case(MaxCNN, n_planes=1)
    state = _bend_one_map(monkeypatch, 1e-4)
    sample = discover_plane(net, *xs, certify="sample")
    with pytest.raises(CertificateError, match="plane 0"):
        discover_plane(net, *xs)
    with pytest.warns(CertificateWarning, match="plane 0"):
        res = discover_plane(net, *xs, on_certificate="warn")
        strict = discover_plane(net, *xs, certify="strict", on_certificate="warn")
    assert not res.certified[0] and not strict.certified[0]
    assert sample.continuity_gap[0] < 1e-12  # its 16 regions are not the bad one
    r = state["region"]
    for out in (res, strict):
        assert out.continuity_gap[0] == pytest.approx(1e-4, rel=1e-6)
        assert np.argmax(out.region_gap) == r
    assert res.continuity_gap[0] > 100 * res.certificate_tol[0]  # far outside the screen's tolerance


def test_the_screen_confirms_in_float64_before_it_reports(monkeypatch):
    """A fault that only the float32 copy makes (its forward is off by 1e-3 at one centroid):
    float64 has the last word, so the certificate stays clean and one row more is evaluated."""
    net, xs = _case(MaxCNN, n_planes=1)
    clean = discover_plane(net, *xs)
    assert clean.total_regions <= plane_certify.CERTIFY_ROWS  # one float32 pass, whose row i is region i
    rows = _rows(monkeypatch)
    counted = plane_certify.forward_blocked

    def off_in_float32(model, x, block):
        y = counted(model, x, block)
        if x.dtype == torch.float32:
            y = y.clone()
            y[np.flatnonzero(~certificate.sampled(np.zeros(x.shape[0], dtype=np.int64)))[0]] += 1e-3
        return y

    _patch_forward(monkeypatch, off_in_float32)
    res = discover_plane(net, *xs)
    assert rows[torch.float64] == 3 + certificate.CERTIFY_SAMPLES + 1  # corners, the sample, the doubtful one
    assert res.continuity_gap[0] < 1e-12
    np.testing.assert_array_equal(res.area, clean.area)


@pytest.mark.parametrize("certify", ["all", "strict", "sample"])
def test_float32_mode_has_no_screen(certify):
    net, xs = _case(MaxCNN, n_planes=1)
    res = discover_plane(net.float(), *(x.float() for x in xs), dtype=torch.float32, certify=certify)
    assert (res.certificate_tol == 0).all() and res.continuity_gap.max() < 1e-4


def test_certify_options():
    net, xs = _case(MaxCNN, n_planes=1)
    off = discover_plane(net, *xs, certify=None)
    assert (off.certificate_tol == 0).all() and off.region_gap.max() < 1e-12  # the fit's residual alone
    same = discover_plane(net, *xs, certify=True)  # True and False stand for "all" and None
    assert (same.certificate_tol > 0).all()
    assert (discover_plane(net, *xs, certify=False).certificate_tol == 0).all()
    with pytest.raises(ValueError, match="certify must be one of"):
        discover_plane(net, *xs, certify="some")
