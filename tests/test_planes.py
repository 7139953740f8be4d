"""Exact 2-D slices (pipeline.engine.planes) against the network, the 1-D engine, dense sampling and
regioncam's 2-D mode."""

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.engine.planes import discover_plane
from pipeline.engine.pwl import UnsupportedOpError
from pipeline.engine.lines import discover
from tests.nets import MLP, FunctionalMix, MaxCNN, ResLeaky, patterns

# (name, model, input shape, corner scale): region counts of a few hundred to a few thousand
CASES = {
    "mlp": (lambda: MLP(), (4,), 2.0),
    "max_cnn": (lambda: MaxCNN(), (2, 6, 6), 0.2),
    "res_leaky": (lambda: ResLeaky(), (2, 6, 6), 0.1),
    "clamp": (lambda: nn.Sequential(nn.Linear(3, 12), nn.Hardtanh(-0.5, 0.7), nn.Linear(12, 12), nn.ReLU6(),
                                    nn.Linear(12, 2)), (3,), 3.0),
}


def _net(name):
    torch.manual_seed(0)
    make, shape, scale = CASES[name]
    net = make().eval().double()
    g = torch.Generator().manual_seed(1)
    x0, x1, x2 = (torch.randn((1, *shape), generator=g, dtype=torch.float64) * scale for _ in range(3))
    return net, shape, (x0, x1, x2)


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    net, shape, xs = _net(request.param)
    res = discover_plane(net, *xs)
    return request.param, net, shape, xs, res


def _x(xs, uv):
    x0, x1, x2 = xs
    uv = torch.as_tensor(np.asarray(uv), dtype=torch.float64)
    b = (-1,) + (1,) * (x0.ndim - 1)
    return x0 + uv[:, 0].view(b) * (x1 - x0) + uv[:, 1].view(b) * (x2 - x0)


def _forward(net, xs, uv):
    with torch.no_grad():
        return net(_x(xs, uv)).numpy().reshape(len(uv), -1)


def _inside(res, uv, margin=1e-9):
    """Per point: the region it is deepest inside, that depth (signed distance to the nearest
    edge, > 0 inside), and how many regions hold it deeper than ``margin`` / than ``-margin``."""
    best, where = np.full(uv.shape[0], -np.inf), np.full(uv.shape[0], -1)
    deep, near = np.zeros(uv.shape[0], dtype=int), np.zeros(uv.shape[0], dtype=int)
    for r in range(res.total_regions):
        p = res.polygon(r)
        lo, hi = p.min(0) - 2 * margin, p.max(0) + 2 * margin
        idx = np.flatnonzero(((uv >= lo) & (uv <= hi)).all(1))
        if idx.size == 0:
            continue
        q = uv[idx]
        e = np.roll(p, -1, axis=0) - p
        cross = e[None, :, 0] * (q[:, None, 1] - p[None, :, 1]) - e[None, :, 1] * (q[:, None, 0] - p[None, :, 0])
        d = (cross / np.linalg.norm(e, axis=1)).min(1)
        deep[idx] += d > margin
        near[idx] += d > -margin
        take = d > best[idx]
        best[idx[take]], where[idx[take]] = d[take], r
    return where, best, deep, near


def _triangle_points(n, rng, margin=0.0):
    uv = rng.uniform(margin, 1 - margin, size=(4 * n + 50, 2))
    uv = uv[uv.sum(1) <= 1 - margin]
    return uv[:n]


def test_partition_is_exact(case):
    name, net, shape, xs, res = case
    assert res.n_regions[0] > 20, name
    np.testing.assert_allclose(res.area.sum() + res.dropped_area.sum(), 0.5, rtol=0, atol=1e-12)
    assert res.dropped_area.sum() < 1e-12
    assert res.hull_gap.max() < 1e-12 and res.continuity_gap.max() < 1e-9, name
    cnt = np.diff(res.vertex_offset)
    assert (cnt >= 3).all()
    for r in range(res.total_regions):
        p = res.polygon(r)
        e = np.roll(p, -1, axis=0) - p
        turn = e[:, 0] * np.roll(e[:, 1], -1) - e[:, 1] * np.roll(e[:, 0], -1)
        assert (turn >= -1e-14 * max(1.0, np.abs(e).max() ** 2)).all(), (name, r)  # convex, counter-clockwise
        shoelace = 0.5 * np.sum(p[:, 0] * np.roll(p[:, 1], -1) - np.roll(p[:, 0], -1) * p[:, 1])
        assert abs(shoelace - res.area[r]) <= 1e-12 + 1e-9 * res.area[r], (name, r)
        assert (p >= -1e-12).all() and (p.sum(1) <= 1 + 1e-12).all()
    # random points of the triangle lie in exactly one polygon (away from edges by 1e-9)
    uv = _triangle_points(1500, np.random.default_rng(0))
    _, _, deep, near = _inside(res, uv)
    assert (deep <= 1).all() and (near >= 1).all(), name


def test_maps_reproduce_network(case):
    name, net, shape, xs, res = case
    rng = np.random.default_rng(1)
    pts, rows = [], []
    for r in range(res.total_regions):
        p = res.polygon(r)
        w = rng.dirichlet(np.ones(p.shape[0]), size=2)
        pts.append(w @ p)
        rows += [r, r]
    uv, rows = np.concatenate(pts), np.array(rows)
    f = _forward(net, xs, uv)
    pred = res.intercept[rows] + uv[:, :1] * res.grad[rows, 0] + uv[:, 1:] * res.grad[rows, 1]
    assert np.abs(pred - f).max() / np.abs(f).max() < 1e-9, name


def test_neighbours_agree_on_shared_edges(case):
    name, net, shape, xs, res = case
    mids, own, normals = [], [], []
    for r in range(res.total_regions):
        p = res.polygon(r)
        e = np.roll(p, -1, axis=0) - p
        length = np.linalg.norm(e, axis=1)
        ok = length > 1e-6
        mids.append((p + 0.5 * e)[ok])
        normals.append((np.stack([e[:, 1], -e[:, 0]], 1) / length[:, None])[ok])  # outward for CCW
        own += [r] * int(ok.sum())
    m, n, own = np.concatenate(mids), np.concatenate(normals), np.array(own)
    probe = m + 1e-8 * n
    interior = (probe.min(1) > 0) & (probe.sum(1) < 1)
    m, probe, own = m[interior], probe[interior], own[interior]
    other = _inside(res, probe)[0]
    assert (other != own).all(), name
    ev = lambda r, q: res.intercept[r] + q[:, :1] * res.grad[r, 0] + q[:, 1:] * res.grad[r, 1]
    scale = np.abs(res.f_corners).max()
    assert np.abs(ev(own, m) - ev(other, m)).max() < 1e-9 * scale, name


def _line_breakpoints(res, a, b):
    """Where the line a -> b enters and leaves each polygon (Cyrus-Beck), merged within 1e-9."""
    d = b - a
    ts = []
    for r in range(res.total_regions):
        p = res.polygon(r)
        e = np.roll(p, -1, axis=0) - p
        nrm = np.stack([-e[:, 1], e[:, 0]], 1)  # inward for CCW
        num = ((a[None] - p) * nrm).sum(1)  # >= 0 inside at t = 0
        den = (d[None] * nrm).sum(1)
        lo, hi = 0.0, 1.0
        for k in range(p.shape[0]):
            if abs(den[k]) < 1e-300:
                if num[k] < 0:
                    lo, hi = 1.0, 0.0
                continue
            t = -num[k] / den[k]
            if den[k] > 0:
                lo = max(lo, t)
            else:
                hi = min(hi, t)
        if hi - lo > 1e-9:
            ts += [lo, hi]
    ts = np.sort(ts)
    return ts[np.r_[True, np.diff(ts) > 1e-9]]


def test_lines_match_the_1d_engine(case):
    name, net, shape, xs, res = case
    rng = np.random.default_rng(2)
    for _ in range(3):
        a, b = _triangle_points(2, rng, margin=0.02)
        ours = _line_breakpoints(res, a, b)
        ends = _x(xs, np.stack([a, b]))
        one = discover(net, ends[:1], ends[1:], method="subdivide")
        ref = one.breakpoints(0)
        # every polygon edge the line crosses is a 1-D breakpoint, within 1e-7 in t
        assert (np.abs(ours[:, None] - ref[None]).min(1) <= 1e-7).all(), name
        # and every 1-D breakpoint is an edge, except (seen on max-pool ties, 1 line in ~100)
        # a 1-D vertex where the map does not change: slopes equal on both sides
        unmatched = np.flatnonzero(np.abs(ref[:, None] - ours[None]).min(1) > 1e-7)
        jump = np.abs(one.slope[unmatched] - one.slope[unmatched - 1]).max(1) if unmatched.size else np.zeros(0)
        assert (jump < 1e-9 * np.abs(one.slope).max()).all(), (name, ref[unmatched], jump)


def test_grid_patterns_are_regions(case):
    name, net, shape, xs, res = case
    n = 120
    g = (np.arange(n) + 0.5) / n
    uv = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    uv = uv[uv.sum(1) < 1]
    region, depth, _, _ = _inside(res, uv)
    clear = depth > 1e-9  # not on an edge
    pats = patterns(net, _x(xs, uv[clear]))
    _, pid = np.unique(pats, axis=0, return_inverse=True)
    pid = pid.ravel()
    region = region[clear]
    # the map pattern -> region is a function, and injective
    pairs = np.unique(np.stack([pid, region], 1), axis=0)
    assert np.unique(pairs[:, 0]).size == pairs.shape[0], name
    assert np.unique(pairs[:, 1]).size == pairs.shape[0], name
    assert pairs.shape[0] <= res.n_regions[0]


def test_tiny_net_fine_grid_sees_every_region():
    torch.manual_seed(3)
    net = MLP(n_in=2, width=5, depth=2, k=2).eval().double()
    xs = tuple(torch.tensor([p], dtype=torch.float64) for p in ([-1.0, -1.0], [1.5, -1.0], [-1.0, 1.5]))
    res = discover_plane(net, *xs)
    n = 400
    g = (np.arange(n) + 0.5) / n
    uv = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    uv = uv[uv.sum(1) < 1]
    pats = patterns(net, _x(xs, uv))
    assert res.area.min() > 1e-4  # every region holds grid points
    assert np.unique(pats, axis=0).shape[0] == res.n_regions[0]


def test_domains_batches_and_chunking_agree():
    net, shape, (x0, x1, x2) = _net("max_cnn")
    g = torch.Generator().manual_seed(5)
    xs = [torch.cat([x, torch.randn((2, *shape), generator=g, dtype=torch.float64) * 0.15]) for x in (x0, x1, x2)]
    ref = discover_plane(net, *xs, domain="parallelogram")
    small = discover_plane(net, *xs, domain="parallelogram", max_vertices=64, chunk_planes=2)
    assert ref.n_planes == 3 and (ref.plane_index == [0, 1, 2]).all()
    np.testing.assert_array_equal(ref.n_regions, small.n_regions)
    assert (small.n_pieces > small.n_regions).all()  # splits and max-pool cuts merged back
    for i in range(3):
        np.testing.assert_allclose(np.sort(ref.area[ref.region_slice(i)]), np.sort(small.area[small.region_slice(i)]),
                                   atol=1e-12)
        np.testing.assert_allclose(ref.area[ref.region_slice(i)].sum(), 1.0, atol=1e-12)
        one = discover_plane(net, xs[0][i:i + 1], xs[1][i:i + 1], xs[2][i:i + 1], domain="parallelogram")
        assert one.n_regions[0] == ref.n_regions[i]
    np.testing.assert_allclose(small.deviation, ref.deviation, rtol=1e-9, atol=1e-15)
    assert ref.plane_offset[-1] == ref.total_regions


@pytest.mark.parametrize("name", ["res_leaky", "functional"])
def test_small_tiles_change_nothing(name):
    """Tiles split during the cut rounds and between ops (in-place ReLUs, residual adds,
    1-D max-pool): the same regions as one big tile."""
    if name == "functional":
        torch.manual_seed(0)
        net = FunctionalMix().eval().double()
        g = torch.Generator().manual_seed(2)
        xs = tuple(torch.randn((1, 3), generator=g, dtype=torch.float64) * 4 for _ in range(3))
    else:
        net, _, xs = _net(name)
    ref = discover_plane(net, *xs, max_vertices=100_000)
    small = discover_plane(net, *xs, max_vertices=16)
    assert ref.n_regions[0] == small.n_regions[0] > 30
    np.testing.assert_allclose(np.sort(ref.area), np.sort(small.area), atol=1e-12)
    assert small.continuity_gap[0] < 1e-9


@pytest.mark.parametrize("domain", ["triangle", "parallelogram"])
def test_measures(domain):
    net, shape, xs = _net("mlp")
    res = discover_plane(net, *xs, domain=domain)
    area = 0.5 if domain == "triangle" else 1.0
    a, b = (xs[1] - xs[0]).flatten(), (xs[2] - xs[0]).flatten()
    cross = np.sqrt(float(a @ a) * float(b @ b) - float(a @ b) ** 2)
    np.testing.assert_allclose(res.density, res.n_regions / area)
    np.testing.assert_allclose(res.density_input, res.n_regions / (area * cross))
    np.testing.assert_allclose(res.input_area, cross)
    # deviation against a midpoint-rule quadrature of |f - g| on a fine grid
    n = 600
    gg = (np.arange(n) + 0.5) / n
    uv = np.stack(np.meshgrid(gg, gg), -1).reshape(-1, 2)
    if domain == "triangle":
        uv = uv[uv.sum(1) < 1]
    f = _forward(net, xs, uv)
    c = res.f_corners[0]
    gl = c[0] + uv[:, :1] * (c[1] - c[0]) + uv[:, 1:] * (c[2] - c[0])
    quad = np.abs(f - gl).sum(0) / n ** 2
    np.testing.assert_allclose(res.deviation[0], quad, rtol=2e-2)
    # a network affine on the plane: one region, deviation zero
    lin = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double().eval()
    with torch.no_grad():
        lin[0].bias.fill_(100.0)
    one = discover_plane(lin, *xs, domain=domain)
    assert one.n_regions[0] == 1 and one.deviation.max() < 1e-9
    np.testing.assert_allclose(one.area, [area])


def test_matches_regioncam_2d():
    regioncam = pytest.importorskip("regioncam")
    for seed, width, depth in [(0, 16, 3), (1, 32, 2)]:
        torch.manual_seed(seed)
        layers, c = [], 2
        for _ in range(depth):
            layers += [nn.Linear(c, width), nn.ReLU()]
            c = width
        net = nn.Sequential(*layers, nn.Linear(c, 3)).eval()
        rc = regioncam.Regioncam(size=1.0)  # the square [-1, 1]^2
        rc.add(regioncam.nn.convert(net))
        ref = np.sort([f.area for f in rc.faces]) / 4.0  # (u, v) units: the square has side 2
        x0, x1, x2 = (torch.tensor([p], dtype=torch.float64) for p in ([-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]))
        res = discover_plane(net, x0, x1, x2, domain="parallelogram")
        assert res.n_regions[0] == rc.num_faces > 50
        np.testing.assert_allclose(np.sort(res.area), ref, atol=1e-6)


def test_errors():
    class Gelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(3, 4)

        def forward(self, x):
            return torch.nn.functional.gelu(self.l(x))

    net = Gelu().eval()
    x = torch.randn(1, 3)
    with pytest.raises(UnsupportedOpError) as one_d:
        discover(net, x, x + 1, method="subdivide")
    with pytest.raises(UnsupportedOpError) as two_d:
        discover_plane(net, x, x + 1, x + torch.tensor([[1.0, -1.0, 0.0]]))
    assert str(one_d.value) == str(two_d.value)
    mlp = MLP().eval()
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="same shape"):
        discover_plane(mlp, x, x, x[:1])
    with pytest.raises(ValueError, match="batches of plane corners"):
        discover_plane(mlp, x[0], x[0], x[0])
    with pytest.raises(ValueError, match="non-finite"):
        discover_plane(mlp, x, x + 1, x * float("nan"))
    with pytest.raises(ValueError, match="domain"):
        discover_plane(mlp, x, x + 1, x - 1, domain="disc")
    with pytest.raises(ValueError, match="no planes"):
        discover_plane(mlp, x[:0], x[:0], x[:0])
    with pytest.raises(RuntimeError):  # the network's own shape error
        discover_plane(mlp, torch.randn(1, 5), torch.randn(1, 5), torch.randn(1, 5))


def test_sliver_maps_pass_through_their_vertices():
    """A region's map is a least-squares fit over its vertices. Solved by the normal equations,
    on the slivers of this ResNet18's plane (FixUp init, outputs about 3e-7) it missed its own
    vertices by 8e-10 of the outputs (the 2x2 determinant cancels: conditioning squared);
    by Gram-Schmidt, by rounding."""
    from pipeline.inputs.models import build

    torch.manual_seed(0)
    net = build("resnet18", num_classes=10, in_channels=1, k=4, input_size=8).eval()
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(1, 1, 8, 8, generator=g, dtype=torch.float64)
    x1, x2 = (x0 + 0.1 * torch.randn(1, 1, 8, 8, generator=g, dtype=torch.float64) for _ in range(2))
    res = discover_plane(net, x0, x1, x2, certify=None)  # the fit's residual alone
    assert res.n_regions[0] > 1000
    assert res.continuity_gap[0] < 1e-12 * np.abs(res.f_corners).max()


def test_concat_refuses_results_of_different_domains():
    from pipeline.engine.planes import PlaneResult

    net, _, xs = _net("mlp")
    tri, par = (discover_plane(net, *xs, domain=d) for d in ("triangle", "parallelogram"))
    assert PlaneResult.concat([tri, tri]).n_planes == 2
    with pytest.raises(ValueError, match="different domain"):
        PlaneResult.concat([tri, par])
