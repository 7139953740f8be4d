"""Bench-only helpers: networks, closed circular translation paths, timing, machine info.

Not part of the pipeline (the real paths module comes later); kept here so every benchmark
builds its workload the same way.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------- networks


class WideMLP(nn.Module):
    """Flatten 32x32x3 = 3072 -> 1024 -> ReLU -> 1024 -> ReLU -> 10. He (fan-in) init, zero biases."""

    def __init__(self, d_in: int = 3 * 32 * 32, width: int = 1024, depth: int = 2, num_classes: int = 10):
        super().__init__()
        layers, c = [nn.Flatten()], d_in
        for _ in range(depth):
            layers += [nn.Linear(c, width), nn.ReLU()]
            c = width
        layers.append(nn.Linear(c, num_classes))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.net(x)


NETWORKS = {
    "vgg8": "pipeline.inputs.models.VGG8() (paper Appendix B), random He init",
    "resnet18k8": "pipeline.inputs.models.ResNet18(k=8), FixUp-style init",
    "mlp1024": "WideMLP: flatten 3072 -> 1024 -> ReLU -> 1024 -> ReLU -> 10, He init",
}


def build_network(name: str, seed: int = 0) -> nn.Module:
    from pipeline.inputs.models import VGG8, ResNet18

    torch.manual_seed(seed)
    if name == "vgg8":
        net = VGG8()
    elif name == "resnet18k8":
        net = ResNet18(k=8)
    elif name == "mlp1024":
        net = WideMLP()
    else:
        raise ValueError(name)
    return net.eval()


# --------------------------------------------------------------------------- paths


def digit_images(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` scikit-learn digits (8x8), bilinearly upsampled to 32x32, 3 channels, standardised.

    Returns float64 ``(n, 3, 32, 32)``; each image has zero mean and unit std over its pixels.
    """
    from sklearn.datasets import load_digits

    imgs = load_digits().images  # (1797, 8, 8), values 0..16
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(imgs), size=n, replace=False)
    x = torch.from_numpy(imgs[idx]).double()[:, None]  # (n, 1, 8, 8)
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = x.repeat(1, 3, 1, 1)
    mu = x.mean(dim=(1, 2, 3), keepdim=True)
    sd = x.std(dim=(1, 2, 3), keepdim=True)
    return (x - mu) / sd


def translate(img: torch.Tensor, dx: float, dy: float, pad: int = 8) -> torch.Tensor:
    """Sub-pixel translation of ``(C, H, W)`` by ``(dx, dy)`` pixels (bilinear).

    Pads by replication, shifts with ``affine_grid`` + ``grid_sample`` (bilinear,
    align_corners=False), crops back to ``H x W``. Positive ``dx`` moves content right.
    """
    c, h, w = img.shape
    x = F.pad(img[None], (pad, pad, pad, pad), mode="replicate")
    hp, wp = h + 2 * pad, w + 2 * pad
    # output pixel p samples input p - shift; normalised coordinates span 2 over wp pixels
    theta = torch.tensor([[[1.0, 0.0, -2.0 * dx / wp], [0.0, 1.0, -2.0 * dy / hp]]], dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return y[0, :, pad:pad + h, pad:pad + w]


def circular_path(img: torch.Tensor, m: int = 8, r: float = 4.0) -> torch.Tensor:
    """``m`` anchors: ``img`` translated by ``(r cos θ_j, r sin θ_j)``, ``θ_j = 2πj/m``."""
    return torch.stack([translate(img, r * math.cos(2 * math.pi * j / m), r * math.sin(2 * math.pi * j / m))
                        for j in range(m)])


def closed_segments(anchors: torch.Tensor):
    """Consecutive anchors joined, the last back to the first: ``x0, x1`` of shape ``(m, ...)``."""
    return anchors, torch.roll(anchors, -1, dims=0)


def path_segments(n_paths: int, m: int = 8, r: float = 4.0, seed: int = 0):
    """Segments of ``n_paths`` closed circular paths (each from a different seeded digit).

    Returns ``x0, x1`` float64 of shape ``(n_paths * m, 3, 32, 32)``, path after path.
    """
    imgs = digit_images(n_paths, seed=seed)
    x0s, x1s = [], []
    for img in imgs:
        a, b = closed_segments(circular_path(img, m, r))
        x0s.append(a)
        x1s.append(b)
    return torch.cat(x0s), torch.cat(x1s)


def take_segments(x0, x1, n: int):
    """The first ``n`` segments, cycling if fewer exist."""
    idx = torch.arange(n) % x0.shape[0]
    return x0[idx].contiguous(), x1[idx].contiguous()


# --------------------------------------------------------------------------- timing & machine


def now() -> float:
    return time.perf_counter()


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def peak_rss_mib() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb / 1024.0


def machine_info(argv) -> dict:
    model = platform.processor() or ""
    cores = os.cpu_count()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            if k.strip() == "Model name":
                model = v.strip()
            elif k.strip() == "CPU(s)":
                cores = int(v.strip())
    except Exception:
        pass
    return {
        "cpu": model,
        "cores": cores,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python"] + list(argv)),
    }


# --------------------------------------------------------------------------- contention meter

_CLK = os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """CPU seconds spent busy by the whole machine (all cores) since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
        return (sum(v[:8]) - v[3] - v[4]) / _CLK  # user..steal minus idle and iowait
    except Exception:
        return float("nan")


def _own_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Meter:
    """Wall time of a block, and how many cores *other* processes kept busy meanwhile.

    ``foreign`` = (machine busy CPU time - this process's CPU time) / wall, in cores. On a
    shared 2-core machine a foreign load near 1 core makes 2-thread OpenMP kernels wait for a
    descheduled thread at every barrier, so such samples are flagged (and retried by the
    callers that can afford it).
    """

    def __enter__(self):
        self.m0, self.o0, self.t0 = _machine_busy_s(), _own_cpu_s(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        busy = _machine_busy_s() - self.m0
        own = _own_cpu_s() - self.o0
        self.own_cores = own / self.wall if self.wall > 0 else float("nan")
        self.foreign = max(0.0, (busy - own) / self.wall) if self.wall > 0 else float("nan")
        return False


def current_rss_mib() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except Exception:
        return float("nan")


def wait_quiet(max_wait: float, threshold: float = 0.3, window: float = 0.5) -> float:
    """Block (while this process is idle) until other processes keep fewer than ``threshold``
    cores busy over a ``window``, or ``max_wait`` seconds have passed. Returns seconds waited."""
    t0 = time.perf_counter()
    while True:
        m0, o0 = _machine_busy_s(), _own_cpu_s()
        time.sleep(window)
        busy = (_machine_busy_s() - m0 - (_own_cpu_s() - o0)) / window
        waited = time.perf_counter() - t0
        if not busy >= threshold or waited >= max_wait:  # nan (no /proc/stat) counts as quiet
            return waited
