"""What a mixed-precision subdivision (pieces in float32, breakpoints and maps in float64) would
find and what it would cost, against the pure float64 run.

    .venv/bin/python bench/precision.py --reps 2

On VGG8 (4 circular-path segments) and ResNet18 k=8 (1 segment), one thread, interleaved:

* the float32 subdivision's breakpoints against float64's: counts, and how far each float32
  breakpoint is from the nearest float64 one (the pieces a mixed scheme would start from);
* the times of the float64 subdivision, the float32 subdivision, and one float64 forward at
  every float32 vertex. Float64 maps need float64 values at every vertex: a mixed scheme costs
  at least the float32 subdivision plus those forwards (or a float64 layer-wise replay, which
  is the float64 subdivision without its sign tests).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import build_network, path_segments  # noqa: E402

from pipeline.engine.linearize import forward_blocked  # noqa: E402
from pipeline.engine.lines import discover, prepare  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    x0, x1 = path_segments(1, m=8, r=4.0)[:2]
    loads = {"vgg8": (build_network("vgg8"), 4), "resnet18k8": (build_network("resnet18k8"), 1)}
    times = {}
    for rep in range(a.reps):
        for name, (net, n) in loads.items():
            r64p, r32p = prepare(net), prepare(net, dtype=torch.float32)
            s0, s1 = x0[:n], x1[:n]
            t = time.perf_counter()
            r64 = discover(r64p, s0, s1, batch_size=2, certify="sample")
            t64 = time.perf_counter() - t
            t = time.perf_counter()
            r32 = discover(r32p, s0, s1, batch_size=2, dtype=torch.float32, certify="sample")
            t32 = time.perf_counter() - t
            seg = np.repeat(np.arange(n), r32.density + 1)
            tv = np.concatenate([r32.breakpoints(i) for i in range(n)])
            d = (s1 - s0).double()
            x = s0.double()[seg] + torch.from_numpy(tv).view(-1, 1, 1, 1) * d[seg]
            t = time.perf_counter()
            forward_blocked(r64p.work, x, 16)
            tf = time.perf_counter() - t
            times.setdefault(name, []).append((t64, t32, tf))
            if rep == 0:
                gaps = []
                for i in range(n):
                    b64, b32 = r64.breakpoints(i)[1:-1], r32.breakpoints(i)[1:-1]
                    j = np.clip(np.searchsorted(b64, b32), 1, b64.size - 1)
                    gaps.append(np.minimum(np.abs(b32 - b64[j - 1]), np.abs(b32 - b64[j])))
                gaps = np.concatenate(gaps)
                print(f"{name}: float64 {r64.n_regions:,} regions, float32 {r32.n_regions:,}; float32 breakpoints "
                      f"from the nearest float64 one: median {np.median(gaps):.1e}, 99th percentile "
                      f"{np.quantile(gaps, 0.99):.1e}, largest {gaps.max():.1e}, within 1e-6: "
                      f"{np.mean(gaps < 1e-6):.2%}", flush=True)
    print("\n| network | float64 subdivision (s) | float32 subdivision (s) | float64 forward at every float32 vertex (s) "
          "| float32 + forwards against float64 |")
    print("|---|---:|---:|---:|---:|")
    for name, rows in times.items():
        t64, t32, tf = (float(np.median(c)) for c in zip(*rows))
        print(f"| {name} | {t64:.2f} | {t32:.2f} | {tf:.2f} | {(t32 + tf) / t64:.2f}x the time |")


if __name__ == "__main__":
    main()
