"""The measures against hand computations."""

import numpy as np
import pytest

from pipeline.engine.measures import abs_linear_integral, absolute_deviation, continuity_gap, path_measures, total_variation


def test_abs_linear_integral_exact():
    rng = np.random.default_rng(0)
    u, v, w = rng.normal(size=200), rng.normal(size=200), rng.uniform(0.1, 2, size=200)
    s = np.linspace(0, 1, 100_001)
    quad = np.array([np.trapezoid(np.abs(a + (b - a) * s), s) * c for a, b, c in zip(u, v, w)])
    np.testing.assert_allclose(abs_linear_integral(u, v, w), quad, rtol=1e-8, atol=1e-12)
    # a sign change halves the naive trapezoid: two triangles, not |u| + |v| over 2
    assert abs_linear_integral(np.array([1.0]), np.array([-1.0]), np.array([1.0]))[0] == 0.5
    assert abs_linear_integral(np.array([0.0]), np.array([0.0]), np.array([1.0]))[0] == 0.0


def test_deviation_is_not_the_upper_bound():
    # one region, f = 1 - 2t against g = 1 - 2t + 0 ... make h = 1 - 2t: crosses zero at 1/2
    offset = np.array([0, 1])
    f0, f1 = np.array([[0.0]]), np.array([[0.0]])
    dev = absolute_deviation(np.array([0.0]), np.array([1.0]), np.array([[1.0]]), np.array([[-2.0]]), offset, f0, f1,
                             np.array([2.0]))
    np.testing.assert_allclose(dev, [[2.0 * 0.5]])  # ∫|1 - 2t| = 1/2, times the length 2
    upper = 2.0 * (1.0 + 2.0 / 2)  # ∫ (|h(0)| + t |slope|): the published bound
    assert dev[0, 0] < upper / 3


def test_total_variation_and_gap():
    t0, t1 = np.array([0.0, 0.5, 0.0]), np.array([0.5, 1.0, 1.0])
    a, b = np.array([[0.0], [1.0], [2.0]]), np.array([[2.0], [0.0], [-1.0]])
    off = np.array([0, 2, 3])
    np.testing.assert_allclose(total_variation(t0, t1, b, off), [[1.0], [1.0]])
    gap = continuity_gap(t0, t1, a, b, off, np.array([[0.0], [2.0]]), np.array([[1.0], [1.5]]))
    np.testing.assert_allclose(gap, [0.0, 0.5])


def test_path_measures_sum_then_norm():
    pid = np.array([3, 3, 7, 7, 7])
    dens = np.array([2, 3, 1, 1, 4])
    dev = np.arange(10.0).reshape(5, 2)
    tv = np.ones((5, 2))
    length = np.array([1.0, 1.0, 2.0, 0.0, 1.0])
    pm = path_measures(pid, dens, dev, tv, length)
    np.testing.assert_array_equal(pm["path_id"], [3, 7])
    np.testing.assert_array_equal(pm["density"], [5, 6])
    np.testing.assert_allclose(pm["deviation"], [np.hypot(0 + 2, 1 + 3), np.hypot(4 + 6 + 8, 5 + 7 + 9)])
    np.testing.assert_allclose(pm["density_per_length"], [2.5, 2.0])
