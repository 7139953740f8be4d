"""Small networks covering every op the engine supports, and an independent pattern oracle."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode


class MLP(nn.Module):
    def __init__(self, n_in=4, width=32, depth=2, k=3, inplace=False):
        super().__init__()
        layers, c = [], n_in
        for _ in range(depth):
            layers += [nn.Linear(c, width), nn.ReLU(inplace=inplace)]
            c = width
        layers.append(nn.Linear(c, k))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class FunctionalMix(nn.Module):
    """ReLU spelled every way: module, F.relu, torch.relu, Tensor.relu, in-place variants."""

    def __init__(self, n_in=3, width=16, k=2):
        super().__init__()
        self.l1, self.l2, self.l3, self.l4 = (nn.Linear(n_in, width), nn.Linear(width, width),
                                              nn.Linear(width, width), nn.Linear(width, k))
        self.act = nn.ReLU()

    def forward(self, x):
        h = self.act(self.l1(x))
        h = F.relu(self.l2(h))
        h = torch.relu(self.l3(h)) + 0.5 * h  # residual: h must not be touched
        h = self.l4(h.relu_())
        return h


class AvgCNN(nn.Module):
    def __init__(self, c=2, k=3, side=6):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                               nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                               nn.Flatten(), nn.Linear(24, k))

    def forward(self, x):
        return self.f(x)


class MaxCNN(nn.Module):
    def __init__(self, c=2, k=3):
        super().__init__()
        self.c1 = nn.Conv2d(c, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 2 * 2, k)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)  # 6 -> 3
        x = nn.functional.max_pool2d(self.c2(x), kernel_size=2, stride=1, padding=0)  # 3 -> 2, no ReLU
        return self.fc(x.flatten(1))


class ResLeaky(nn.Module):
    """A residual block with BatchNorm (eval), LeakyReLU, dropout (eval) and a 1-D max-pool."""

    def __init__(self, c=2, k=3):
        super().__init__()
        self.c1 = nn.Conv2d(c, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.drop = nn.Dropout(0.3)
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool1d(3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 18, k)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.2, 0.2)

    def forward(self, x):
        h = self.bn(self.c1(x))
        y = self.act(self.c2(F.leaky_relu(h, 0.2)))
        y = torch.relu(y + h)
        y = self.pool(self.drop(y).flatten(2))  # (N, 4, 36) -> (N, 4, 18)
        return self.fc(torch.cat([y[:, :2], y[:, 2:]], 1).flatten(1))


def zoo():
    """(name, model, input_shape) for every test network, seeded and in eval mode."""
    torch.manual_seed(0)
    nets = [
        ("mlp", MLP(), (4,)),
        ("mlp_inplace", MLP(inplace=True), (4,)),
        ("functional", FunctionalMix(), (3,)),
        ("avg_cnn", AvgCNN(), (2, 6, 6)),
        ("max_cnn", MaxCNN(), (2, 6, 6)),
        ("res_leaky", ResLeaky(), (2, 6, 6)),
    ]
    return [(n, m.eval(), s) for n, m, s in nets]


# clamping ops by name: (keyword of the lower bound, its default, of the upper, its default);
# the bounds are the arguments after the input, in this order, when given by position
_CLAMPS = {
    "clamp": ("min", None, "max", None), "clip": ("min", None, "max", None),
    "clamp_min": ("min", None, None, None), "clamp_max": (None, None, "max", None),
    "hardtanh": ("min_val", -1.0, "max_val", 1.0), "relu6": (None, 0.0, None, 6.0),
}


def _clamp_bounds(name, args, kwargs):
    lo_key, lo, hi_key, hi = _CLAMPS[name]
    rest = list(args[1:])
    if lo_key is not None:
        lo = rest.pop(0) if rest else kwargs.get(lo_key, lo)
    if hi_key is not None:
        hi = rest.pop(0) if rest else kwargs.get(hi_key, hi)
    return (-np.inf if lo is None else float(lo)), (np.inf if hi is None else float(hi))


class _PatternMode(TorchFunctionMode):
    """Records, with plain torch calls, the sign of every ReLU input, the side of every clamp
    input (0 below the lower bound, 1 between the bounds, 2 above the upper one) and every
    max-pool argmax."""

    def __init__(self):
        super().__init__()
        self.parts = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ("relu", "relu_", "leaky_relu", "leaky_relu_"):
            self.parts.append((args[0] > 0).flatten(1).clone())
        elif name.rstrip("_") in _CLAMPS:
            lo, hi = _clamp_bounds(name.rstrip("_"), args, kwargs)
            z = args[0]
            self.parts.append(((z > lo).long() + (z > hi).long()).flatten(1))
        elif name in ("max_pool2d", "_max_pool2d", "max_pool1d", "_max_pool1d"):
            x = args[0]
            kw = dict(kwargs)
            names = ["kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"]
            for i, a in enumerate(args[1:]):
                kw[names[i]] = a
            kw["return_indices"] = True
            pool = F.max_pool2d if "2d" in name else F.max_pool1d
            _, idx = pool(x, **kw)
            self.parts.append(idx.flatten(1))
        return func(*args, **kwargs)


def patterns(model, x) -> np.ndarray:
    """Activation pattern of each row of ``x``, as an integer array (rows comparable)."""
    mode = _PatternMode()
    with torch.no_grad(), mode:
        model(x)
    return torch.cat([p.long() for p in mode.parts], 1).numpy()


def true_breakpoints(model, x0, x1, n=4001, bisect=50):
    """Breakpoints of one segment found by dense sampling of patterns, refined by bisection.

    Every interval of the grid (step 1/(n-1)) whose end patterns differ holds at least one
    breakpoint; bisection locates one to ~1e-15. Regions narrower than the grid step that
    leave and re-enter the same pattern are invisible to this oracle, as they should be.
    """
    ts = np.linspace(0.0, 1.0, n)
    x = lambda t: (x0[None] + torch.as_tensor(t, dtype=x0.dtype).view(-1, *([1] * x0.ndim)) * (x1 - x0)[None])
    pats = patterns(model, x(ts))
    change = np.flatnonzero((pats[1:] != pats[:-1]).any(1))
    lo, hi = ts[change].copy(), ts[change + 1].copy()
    plo = pats[change]
    for _ in range(bisect):
        mid = 0.5 * (lo + hi)
        pm = patterns(model, x(mid))
        same = (pm == plo).all(1)
        lo = np.where(same, mid, lo)
        hi = np.where(same, hi, mid)
    return 0.5 * (lo + hi), ts[1] - ts[0]
