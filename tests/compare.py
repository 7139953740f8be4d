"""How two engine results must agree: the walk may merge regions thinner than eps, nothing else."""

import numpy as np

EPS = 1e-6


def nearest(a: np.ndarray, b: np.ndarray) -> float:
    """Largest distance from a point of ``a`` to the nearest point of ``b`` (sorted)."""
    if a.size == 0:
        return 0.0
    j = np.clip(np.searchsorted(b, a), 1, b.size - 1)
    return float(np.minimum(np.abs(a - b[j - 1]), np.abs(a - b[j])).max())


def assert_walk_matches_exact(walk, exact, eps=EPS, label=""):
    """Every breakpoint of one within 2 eps of the other's; counts differ by the slivers only;
    measures equal up to the slivers' first-order (total variation) or second-order effect."""
    for i in range(exact.n_segments):
        bw, bs = walk.breakpoints(i), exact.breakpoints(i)
        assert nearest(bw, bs) <= 2 * eps and nearest(bs, bw) <= 2 * eps, (label, i)
        thin = int((np.diff(bs) < eps).sum())
        assert exact.density[i] - thin <= walk.density[i] <= exact.density[i], (label, i, thin)
    np.testing.assert_allclose(walk.deviation, exact.deviation, rtol=1e-6, atol=1e-12)
    slope_scale = np.abs(exact.slope).max()
    np.testing.assert_allclose(walk.total_variation, exact.total_variation, rtol=1e-9,
                               atol=4 * eps * slope_scale)
    np.testing.assert_allclose(walk.f0, exact.f0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(walk.f1, exact.f1, rtol=1e-12, atol=1e-12)
