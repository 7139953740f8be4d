"""Side by side on VGG8 circular-path segments: walk, subdivide (both certificates), and the
cost model of the published walk (two stacked passes per region), interleaved, medians.

    .venv/bin/python bench/compare.py --segments 4 --reps 2 --threads 1,2

Each thread count gets its own table, its ratios taken against the published cost model at
the same thread count; the runs of all thread counts and variants are interleaved in every
repetition, so drift in the machine's speed hits them alike.

The published cost model is our walk with one extra ordinary forward of the stacked batch
``[x; x + d]`` before every linearising pass: two stacked passes per region, same regions.
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import build_network, path_segments  # noqa: E402

import pipeline.walk as walk_module  # noqa: E402
from pipeline.linearize import bare_pass  # noqa: E402
from pipeline.regions import discover  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--segments", type=int, default=4)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", default="1,2",
                   help="comma-separated torch thread counts to compare at (1 avoids OpenMP "
                        "oversubscription when another process holds a core)")
    a = p.parse_args(argv)
    threads = [int(v) for v in str(a.threads).split(",") if v.strip()]
    net = build_network("vgg8")
    x0, x1 = path_segments(1, m=8, r=4.0)[:2]
    x0, x1 = x0[:a.segments], x1[:a.segments]
    linearize = walk_module.linearize

    def published(model, x, d, **k):
        bare_pass(model, x, d, row_block=k.get("row_block", 0))  # the pattern pass
        return linearize(model, x, d, **k)

    variants = {
        "published cost model (2 stacked passes/region)": ("pub", dict(method="walk", batch_size=4)),
        "walk (1 stacked pass/region)": ("walk", dict(method="walk", batch_size=4)),
        "subdivide, certify=all (default)": ("sub", dict(method="subdivide", batch_size=2, certify="all")),
        "subdivide, certify=sample": ("sub", dict(method="subdivide", batch_size=2, certify="sample")),
    }
    rps = {(n, k): [] for n in threads for k in variants}
    regions = {}
    for rep in range(a.reps):
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            for name, (kind, kw) in variants.items():
                walk_module.linearize = published if kind == "pub" else linearize
                t = time.perf_counter()
                res = discover(net, x0, x1, **kw)
                sec = time.perf_counter() - t
                walk_module.linearize = linearize
                rps[n_threads, name].append(res.n_regions / sec)
                regions[name] = (res.n_regions, float(res.continuity_gap.max()))
                print(f"rep {rep}, {n_threads} thread(s), {name}: {res.n_regions} regions in {sec:.1f} s",
                      file=sys.stderr, flush=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"workload: VGG8 (random init, float64), {a.segments} segments of a closed circular path (r=4, M=8), "
          f"{a.reps} repetitions")
    for n_threads in threads:
        base = np.median(rps[n_threads, next(iter(variants))])
        print(f"\n{n_threads} torch thread(s):\n")
        print("| variant | regions | largest certificate | regions/s (median) | vs published |")
        print("|---|---:|---:|---:|---:|")
        for name in variants:
            n, gap = regions[name]
            med = np.median(rps[n_threads, name])
            print(f"| {name} | {n:,} | {gap:.1e} | {med:,.0f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
