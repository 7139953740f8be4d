"""Statistics of a plane's partition (pipeline.engine.planes.stats) against closed forms, hand-built
partitions, the network itself and dense sampling."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.engine.planes import PlaneResult, discover_plane
from pipeline.engine.planes.stats import (STATS_COLUMNS, adjacency, boundary_pieces, decision_boundary, plane_stats,
                                          plane_stats_table)

E1, E2, O = (torch.tensor([[0.0, 0.0]], dtype=torch.float64) for _ in range(3))
E1[0, 0], E2[0, 1] = 1.0, 1.0
UNIT = (O, E1, E2)  # x(u, v) = (u, v): the Gram matrix is the identity


def _net(*layers):
    net = nn.Sequential(*layers).double().eval()
    return net


def _linear(w, b):
    w = torch.as_tensor(w, dtype=torch.float64)
    lin = nn.Linear(w.shape[1], w.shape[0]).double()
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(torch.as_tensor(b, dtype=torch.float64))
    return lin


def _pairs(e):
    return {(int(i), int(j)): float(x) for i, j, x in zip(e["i"], e["j"], e["length"])}


def _by_box(res):
    """Plane-local region rows keyed by their centroid rounded (to name regions in closed form)."""
    return {tuple(np.round(c, 3)): r for r, c in enumerate(res.centroid)}


def _hand(polys, intercept=None, grad=None, domain="parallelogram"):
    """A one-plane PlaneResult from CCW polygons (and affine maps) given by hand."""
    polys = [np.asarray(p, dtype=np.float64) for p in polys]
    uv = np.concatenate(polys)
    cnt = np.array([len(p) for p in polys])
    voff = np.concatenate([[0], np.cumsum(cnt)])
    x, y = uv[:, 0], uv[:, 1]
    area = np.array([0.5 * abs((p[:, 0] * np.roll(p[:, 1], -1) - np.roll(p[:, 0], -1) * p[:, 1]).sum())
                     for p in polys])
    n = len(polys)
    one = np.ones(1)
    return PlaneResult(
        plane_index=np.zeros(1, dtype=np.int64), n_regions=np.array([n]), plane_offset=np.array([0, n]),
        input_area=one, density=one * n, density_input=one * n, f_corners=np.zeros((1, 4, 1)),
        deviation=np.zeros((1, 1)), continuity_gap=0 * one, certificate_tol=0 * one, hull_gap=0 * one,
        n_pieces=np.array([n]), dropped_pieces=np.zeros(1, dtype=np.int64), dropped_area=0 * one, area=area,
        centroid=np.array([p.mean(0) for p in polys]), vertex_offset=voff, uv=np.stack([x, y], 1),
        region_gap=np.zeros(n), intercept=intercept, grad=grad, domain=domain)


# --- (a) adjacency in closed form -----------------------------------------------------------------

def test_two_relus_on_the_square_neighbours_and_shared_lengths():
    net = _net(_linear([[1, 0], [0, 1]], [-0.3, -0.4]), nn.ReLU())
    res = discover_plane(net, *UNIT, domain="parallelogram")
    assert res.n_regions[0] == 4
    box = _by_box(res)
    a, b = box[(0.15, 0.2)], box[(0.65, 0.2)]
    c, d = box[(0.15, 0.7)], box[(0.65, 0.7)]
    e = adjacency(res, 0, gram=np.eye(2))
    got = _pairs(e)
    want = {tuple(sorted(k)): v for k, v in {(a, b): 0.4, (c, d): 0.6, (a, c): 0.3, (b, d): 0.7}.items()}
    assert set(got) == set(want)  # a and d meet at a corner only: no edge
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-12)
    np.testing.assert_allclose(e["length_input"], e["length"], rtol=1e-12)  # G = identity
    st = plane_stats(res, 0, gram=np.eye(2))
    assert st["mean_degree"] == 2.0 and st["n_adjacent"] == 4
    # with d1 = 2 e1, d2 = 3 e2 input lengths scale by 2 along u and by 3 along v
    e2 = adjacency(res, 0, gram=np.diag([4.0, 9.0]))
    for i, j, x, xin in zip(e2["i"], e2["j"], e2["length"], e2["length_input"]):
        vertical = {int(i), int(j)} in ({a, b}, {c, d})  # a shared side along v
        assert xin == pytest.approx(x * (3.0 if vertical else 2.0), rel=1e-12)


def test_a_vertex_in_the_middle_of_a_neighbours_edge():
    # the left region's right side is one edge; on the right it is split between two regions
    left = [(0, 0), (0.5, 0), (0.5, 1), (0, 1)]
    low = [(0.5, 0), (1, 0), (1, 0.5), (0.5, 0.5 + 1e-13)]  # the split point a hair off the line
    high = [(0.5, 0.5 + 1e-13), (1, 0.5), (1, 1), (0.5, 1)]
    got = _pairs(adjacency(_hand([left, low, high])))
    assert set(got) == {(0, 1), (0, 2), (1, 2)}
    assert got[(0, 1)] == pytest.approx(0.5, abs=1e-12) and got[(0, 2)] == pytest.approx(0.5, abs=1e-12)
    assert got[(1, 2)] == pytest.approx(0.5, abs=1e-12)
    # parallel sides 1e-3 apart do not touch; a corner alone is no edge
    apart = _pairs(adjacency(_hand([[(0, 0), (0.5, 0), (0.5, 1), (0, 1)], [(0.501, 0), (1, 0), (1, 1), (0.501, 1)]])))
    assert apart == {}
    corner = _pairs(adjacency(_hand([[(0, 0), (0.5, 0), (0.5, 0.5), (0, 0.5)], [(0.5, 0.5), (1, 0.5), (1, 1),
                                                                               (0.5, 1)]])))
    assert corner == {}


# --- (b) the decision boundary in closed form ----------------------------------------------------

@pytest.mark.parametrize("domain,length", [("parallelogram", np.sqrt(2)), ("triangle", np.sqrt(2) / 2)])
def test_boundary_of_u_against_v(domain, length):
    res = discover_plane(_net(_linear([[1, 0], [0, 1]], [0, 0])), *UNIT, domain=domain)
    st = plane_stats(res, 0, gram=np.eye(2))
    assert st["boundary_length"] == pytest.approx(length, rel=1e-12)
    assert st["boundary_length_input"] == pytest.approx(length, rel=1e-12)
    assert st["boundary_pieces"] == 1
    # scaled inputs: x = 3 (u, v), input lengths three times the (u, v) ones
    scaled = plane_stats(res, 0, gram=9 * np.eye(2))
    assert scaled["boundary_length_input"] == pytest.approx(3 * length, rel=1e-12)


def test_boundary_bends_across_a_region_edge():
    # f0 = u + 2 relu(u - 0.3), f1 = v: the tie v = u up to u = 0.3, then v = 3u - 0.6
    net = _net(_linear([[1, 0], [1, 0], [0, 1]], [0, -0.3, 0]), nn.ReLU(), _linear([[1, 2, 0], [0, 0, 1]], [0, 0]))
    res = discover_plane(net, *UNIT, domain="parallelogram")
    assert res.n_regions[0] == 2
    segs = decision_boundary(res, 0)
    assert len(segs) == 2  # one per region
    st = plane_stats(res, 0, gram=np.eye(2))
    want = 0.3 * np.sqrt(2) + np.hypot(1.6 / 3 - 0.3, 0.7)
    assert st["boundary_length"] == pytest.approx(want, rel=1e-12)
    assert st["boundary_pieces"] == 1  # joined across the region edge u = 0.3


def test_two_boundary_pieces_and_no_region_edge_counted():
    # f0 = 0.1, f1 = |u - 0.5|: ties at u = 0.4 and u = 0.6; the region edge u = 0.5 is no boundary
    net = _net(_linear([[1, 0], [-1, 0]], [-0.5, 0.5]), nn.ReLU(), _linear([[0, 0], [1, 1]], [0.1, 0]))
    res = discover_plane(net, *UNIT, domain="parallelogram")
    st = plane_stats(res, 0, gram=np.eye(2))
    assert st["boundary_length"] == pytest.approx(2.0, rel=1e-12)
    assert st["boundary_pieces"] == 2
    segs = decision_boundary(res, 0)
    np.testing.assert_allclose(np.sort(np.unique(np.round(segs[:, :, 0], 12))), [0.4, 0.6])
    # a class leading in the middle of a region only (max(|u|, |v|, c) style): the inner cell's sides
    hand = _hand([[(-1, -1), (1, -1), (1, 1), (-1, 1)]], intercept=np.array([[0.5, 0, 0, 0, 0]]),
                 grad=np.array([[[0.0, 1, -1, 0, 0], [0.0, 0, 0, 1, -1]]]))
    segs = decision_boundary(hand, 0)
    inner = sum(np.linalg.norm(s[1] - s[0]) for s in segs if np.abs(s).max() <= 0.5 + 1e-12)
    assert inner == pytest.approx(4.0, rel=1e-12)  # the square |u|, |v| <= 0.5 around the constant class
    # and the four diagonals from its corners to the domain's: 4 sqrt(2) / 2
    assert sum(np.linalg.norm(s[1] - s[0]) for s in segs) == pytest.approx(4.0 + 4 * np.sqrt(0.5), rel=1e-12)
    assert boundary_pieces(segs, 1e-9) == 1


# --- (c) areas and vertices -----------------------------------------------------------------------

def test_areas_and_vertices_by_hand_on_the_triangle():
    res = discover_plane(_net(_linear([[1, 0]], [-0.3]), nn.ReLU()), *UNIT, domain="triangle")
    assert res.n_regions[0] == 2
    assert res.area.sum() == pytest.approx(0.5, rel=1e-12)
    st = plane_stats(res, 0, gram=np.eye(2))
    right, left = 0.7 ** 2 / 2, 0.5 - 0.7 ** 2 / 2  # shares of the domain's area: x 2
    assert st["area_median"] == pytest.approx(0.5, rel=1e-12)  # the mean of the two shares, which sum to 1
    shares = np.array([left, right]) / 0.5
    assert st["effective_regions"] == pytest.approx(np.exp(-(shares * np.log(shares)).sum()), rel=1e-12)
    assert st["vertices_mean"] == 3.5 and st["vertices_max"] == 4  # a quadrilateral and a triangle
    assert st["mean_degree"] == 1.0
    assert _pairs(adjacency(res, 0)) == {(0, 1): pytest.approx(0.7, abs=1e-12)}


# --- (d) a random MLP against dense sampling -------------------------------------------------------

@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(3)
    net = _net(nn.Linear(3, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 4))
    g = torch.Generator().manual_seed(4)
    xs = [torch.randn((1, 3), generator=g, dtype=torch.float64) * 2 for _ in range(3)]
    res = discover_plane(net, *xs, domain="parallelogram")
    d1, d2 = (xs[1] - xs[0])[0].numpy(), (xs[2] - xs[0])[0].numpy()
    gram = np.array([[d1 @ d1, d1 @ d2], [d1 @ d2, d2 @ d2]])
    return net, xs, res, gram


def test_adjacency_against_sampling_beside_every_edge(mlp):
    _, _, res, gram = mlp
    assert res.n_regions[0] > 30
    e = adjacency(res, 0, gram=gram)
    got = _pairs(e)
    # every region's perimeter is its shared sides plus its part of the domain's boundary
    per = sum(np.linalg.norm(np.roll(res.polygon(r), -1, 0) - res.polygon(r), axis=1).sum()
              for r in range(res.total_regions))
    assert per == pytest.approx(2 * sum(got.values()) + 4.0, rel=1e-9)
    # sample just outside each side: the region found there is a neighbour, for that share of the side
    m, delta = 16, 1e-8
    pts, owner, w, step = [], [], [], 0.0
    for r in range(res.total_regions):
        p = res.polygon(r)
        q = np.roll(p, -1, 0)
        for a, b in zip(p, q):
            d = b - a
            n = np.array([d[1], -d[0]]) / np.linalg.norm(d)  # outward for a CCW polygon
            t = (np.arange(m) + 0.5) / m
            pts.append(a + t[:, None] * d + delta * n)
            owner += [r] * m
            w += [np.linalg.norm(d) / m] * m
            step = max(step, np.linalg.norm(d) / m)
    pts, owner, w = np.concatenate(pts), np.array(owner), np.array(w)
    inside = ((pts >= 0) & (pts <= 1)).all(1)
    other = res.locate(0, pts[inside])
    est = {}
    for i, j, x in zip(owner[inside], other, w[inside]):
        if i != j and j >= 0:
            k = (min(i, j), max(i, j))
            est[k] = est.get(k, 0.0) + x / 2  # each side is seen from both regions
    for k in set(est) | set(got):
        assert abs(est.get(k, 0.0) - got.get(k, 0.0)) <= 2 * step, k
    # input lengths: each shared side's length times the Gram norm of its direction
    assert np.all(e["length_input"] > 0)


def test_boundary_against_the_network_on_a_dense_grid(mlp):
    net, xs, res, gram = mlp
    segs = decision_boundary(res, 0)
    assert len(segs) > 3
    # every segment is a tie of the network's top two logits
    mid = segs.mean(1)
    x = xs[0] + torch.as_tensor(mid[:, :1]) * (xs[1] - xs[0]) + torch.as_tensor(mid[:, 1:]) * (xs[2] - xs[0])
    with torch.no_grad():
        f = np.sort(net(x).numpy(), 1)
    np.testing.assert_allclose(f[:, -1], f[:, -2], atol=1e-9)
    # the L1 length (|du| + |dv|) against h x the class changes between grid neighbours
    n = 800
    t = (np.arange(n) + 0.5) / n
    uu, vv = np.meshgrid(t, t, indexing="ij")
    uv = np.stack([uu.ravel(), vv.ravel()], 1)
    x = xs[0] + torch.as_tensor(uv[:, :1]) * (xs[1] - xs[0]) + torch.as_tensor(uv[:, 1:]) * (xs[2] - xs[0])
    with torch.no_grad():
        cls = net(x).argmax(1).numpy().reshape(n, n)
    changes = (cls[1:] != cls[:-1]).sum() + (cls[:, 1:] != cls[:, :-1]).sum()
    l1 = np.abs(segs[:, 1] - segs[:, 0]).sum()
    assert l1 == pytest.approx(changes / n, rel=0.02, abs=2 / n)
    st = plane_stats(res, 0, gram=gram)
    assert st["boundary_length"] == pytest.approx(np.linalg.norm(segs[:, 1] - segs[:, 0], axis=1).sum())
    assert st["boundary_pieces"] >= 1


def test_gradient_jumps_against_the_maps(mlp):
    _, xs, res, gram = mlp
    st = plane_stats(res, 0, gram=gram)
    e = adjacency(res, 0, gram=gram)
    # input-space Jacobians: J = grad_uv^T pinv([d1 d2])
    d = np.stack([(xs[1] - xs[0])[0].numpy(), (xs[2] - xs[0])[0].numpy()], 1)  # (n, 2)
    pinv = np.linalg.pinv(d)  # (2, n)
    jac = np.einsum("rik,in->rkn", res.grad, pinv)  # (R, K, n): the plane's part of each logit's gradient
    jump = np.linalg.norm((jac[e["i"]] - jac[e["j"]]).reshape(len(e["i"]), -1), axis=1)
    want = (jump * e["length_input"]).sum() / e["length_input"].sum()
    assert st["grad_jump_per_length"] == pytest.approx(want, rel=1e-9)
    a, b = jac[e["i"]].reshape(len(e["i"]), -1), jac[e["j"]].reshape(len(e["i"]), -1)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert st["edge_cos_median"] == pytest.approx(np.nanmedian(cos), rel=1e-9)
    # across a shared side the maps agree: the jump is normal to it (continuity)
    assert st["grad_jump_per_length"] > 0


def test_without_maps_or_gram_the_columns_are_nan(mlp):
    _, _, res, gram = mlp
    np.testing.assert_allclose(res.gram[0], [gram[0, 0], gram[0, 1], gram[1, 1]], rtol=1e-12)  # recorded
    assert plane_stats(res, 0)["grad_jump_per_length"] == plane_stats(res, 0, gram=gram)["grad_jump_per_length"]
    st = plane_stats(replace(res, gram=None), 0)  # no Gram matrix: input-unit measures unknown
    assert np.isnan(st["boundary_length_input"]) and np.isnan(st["grad_jump_per_length"])
    assert np.isfinite(st["boundary_length"]) and np.isfinite(st["mean_degree"])
    bare = _hand([res.polygon(r) for r in range(res.total_regions)])
    st = plane_stats(bare, 0)
    assert np.isnan(st["boundary_length"]) and np.isnan(st["boundary_pieces"]) and np.isfinite(st["area_median"])
    table = plane_stats_table(res)
    assert set(table) == set(STATS_COLUMNS) and all(v.shape == (1,) for v in table.values())


# --- (e) the figure ---------------------------------------------------------------------------------

def test_the_figure_draws_the_boundary(mlp):
    from matplotlib.collections import LineCollection

    from analysis.figures import plane_figure

    _, _, res, _ = mlp
    segs = decision_boundary(res, 0)
    ax = plane_figure(res, boundary=True).axes[0]
    lines = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(lines) == 2 and all(len(c.get_segments()) == len(segs) for c in lines)
    np.testing.assert_allclose(np.array(lines[1].get_segments()), segs)  # the parallelogram: drawn as it is
    assert "decision boundary" in ax.get_title()
    assert not [c for c in plane_figure(res).axes[0].collections if isinstance(c, LineCollection)]
