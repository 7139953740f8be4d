"""Property tests: symmetries of the region structure that any correct engine must respect."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.engine.lines import discover
from tests.nets import MLP, AvgCNN

EPS = 1e-6
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _net(kind, seed):
    torch.manual_seed(seed)
    if kind == "mlp":
        return MLP(n_in=3, width=16, depth=2, k=2).eval(), (3,)
    return AvgCNN(c=1, k=2).eval(), (1, 6, 6)


def _ends(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((1, *shape), generator=g, dtype=torch.float64) * 2, torch.randn((1, *shape), generator=g, dtype=torch.float64) * 2


def _wide(b):
    """Breakpoints bounding regions wider than 2 eps on both sides (comparable across runs)."""
    gaps = np.diff(b)
    ok = np.ones(b.size, dtype=bool)
    ok[1:] &= gaps > 2 * EPS
    ok[:-1] &= gaps > 2 * EPS
    return b[ok]


def _close(a, b, tol=2 * EPS):
    j = np.clip(np.searchsorted(b, a), 1, b.size - 1)
    return np.minimum(np.abs(a - b[j - 1]), np.abs(a - b[j])).max() <= tol


@SETTINGS
@given(kind=st.sampled_from(["mlp", "cnn"]), seed=st.integers(0, 10_000), method=st.sampled_from(["walk", "subdivide"]))
def test_reversal_mirrors_breakpoints(kind, seed, method):
    net, shape = _net(kind, seed % 50)
    x0, x1 = _ends(shape, seed)
    fwd = discover(net, x0, x1, method=method)
    bwd = discover(net, x1, x0, method=method)
    bf, bb = fwd.breakpoints(0), bwd.breakpoints(0)
    mirrored = np.sort(1.0 - bb)
    assert _close(_wide(bf), mirrored) and _close(_wide(mirrored), bf)
    if method == "subdivide" or np.diff(bf).min() > 2 * EPS:
        assert fwd.density[0] == bwd.density[0]
    np.testing.assert_allclose(fwd.deviation, bwd.deviation, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(fwd.f0, bwd.f1, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(kind=st.sampled_from(["mlp", "cnn"]), seed=st.integers(0, 10_000), split=st.floats(0.05, 0.95),
       method=st.sampled_from(["walk", "subdivide"]))
def test_split_segment_gives_union_of_halves(kind, seed, split, method):
    net, shape = _net(kind, seed % 50)
    x0, x1 = _ends(shape, seed)
    xs = x0 + split * (x1 - x0)
    whole = discover(net, x0, x1, method=method).breakpoints(0)
    first = discover(net, x0, xs, method=method).breakpoints(0) * split
    second = split + discover(net, xs, x1, method=method).breakpoints(0) * (1 - split)
    union = np.unique(np.concatenate([first, second]))
    # the split point is a breakpoint of the halves only; rescaling costs ~1e-16 per unit t
    expected = np.unique(np.concatenate([whole, [split]]))
    assert _close(_wide(union), expected, 2 * EPS + 1e-12)
    assert _close(_wide(expected), union, 2 * EPS + 1e-12)
