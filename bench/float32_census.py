"""Regions found per method and precision on section 5's workload of bench/engine.py.

    .venv/bin/python bench/float32_census.py [vgg8|resnet18|mlp] [fraction of each segment]

VGG8 (or another bench network), 16 circular-path segments, each cut to its first 1/16,
B = 16, one thread. Prints a Markdown row per method and dtype: regions, regions narrower than
1e-5, the largest certificate and the time. Used for the float32 walk fix (issue 2).
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
torch.set_num_threads(1)

from _common import build_network, path_segments  # noqa: E402

from pipeline.engine.lines import discover  # noqa: E402

net = build_network(sys.argv[1] if len(sys.argv) > 1 else "vgg8")
frac = float(sys.argv[2]) if len(sys.argv) > 2 else 1 / 16
x0, x1 = path_segments(8, m=8, r=4.0, seed=0)
x0, x1 = x0[:16], x0[:16] + frac * (x1[:16] - x0[:16])
print("| method | dtype | regions | narrower than 1e-5 | certificate | seconds |\n|---|---|---:|---:|---:|---:|")
for method in ("walk", "subdivide"):
    for dtype in (torch.float64, torch.float32):
        t = time.perf_counter()
        r = discover(net, x0, x1, method=method, dtype=dtype, batch_size=16)
        s = time.perf_counter() - t
        thin = int(((r.t_end - r.t_start) < 1e-5).sum())
        print(f"| {method} | {str(dtype)[6:]} | {r.n_regions:,} | {thin} | {r.continuity_gap.max():.1e} | {s:.1f} |",
              flush=True)
