"""Side by side, interleaved, medians: our methods against the published cost model and regioncam.

    .venv/bin/python bench/compare.py --reps 3 --threads 1,2          # every workload
    .venv/bin/python bench/compare.py --workloads vgg8 --reps 2 --threads 1

Workloads (``--workloads``, comma-separated):

``vgg8``      VGG8 (random init, float64), 4 segments of one closed circular path (r=4, M=8)
``resnet18``  ResNet18 k=8, the first ``--resnet-segments`` segments of the same path
``mlp1``      the MLP 3072-1024x3-10 (He init), one line between two digit images
``mlp64``     the same MLP, 64 lines between consecutive digit images

Variants: the published cost model (our walk with one extra ordinary forward of the stacked
batch ``[x; x + d]`` before every linearising pass: two stacked passes per region, same
regions), the walk, subdivide with each certificate (``all`` is the default), subdivide in
float32, and on the MLPs regioncam (``pip install regioncam``: float32, Rust, exact 1-D; lines
one after the other, as its API takes one line at a time). Every variant of every workload
and thread count runs once per repetition, interleaved, so drift in the machine's speed hits
them alike; ratios are taken against the published cost model (or regioncam on the MLPs) at
the same thread count. ``cores`` is process CPU time over wall time: regions/s per core
divides by it.
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
from _common import WideMLP, build_network, digit_images, path_segments  # noqa: E402

import pipeline.engine.walk as walk_module  # noqa: E402
from pipeline.engine.linearize import bare_pass  # noqa: E402
from pipeline.engine.lines import discover  # noqa: E402

LINEARIZE = walk_module.linearize


def _published(model, x, d, **k):
    bare_pass(model, x, d, row_block=k.get("row_block", 0))  # the pattern pass
    return LINEARIZE(model, x, d, **k)


def regioncam_lines(net, x0, x1):
    """Regions along each line with regioncam's Regioncam1D; returns the total count.

    ``Regioncam1D.through_points(p)`` spans the middle 75% of the segment between its two
    points (its input coordinate runs over +-0.75 of the half-distance; checked by comparing
    its end outputs with the network's), so the points are spread by 1/0.75 about the midpoint
    to make it cover exactly ``x0 -> x1``."""
    import regioncam

    layers = regioncam.nn.convert(net.net[1:].float())  # without the Flatten
    total = 0
    for a, b in zip(x0.reshape(len(x0), -1).float().numpy(), x1.reshape(len(x1), -1).float().numpy()):
        m, h = (a + b) / 2, (b - a) / 2 / 0.75
        cam = regioncam.Regioncam1D.through_points(np.stack([m - h, m + h]))
        cam.add(layers)
        total += cam.num_edges
    return total


def workloads(names, resnet_segments):
    out = {}
    x0, x1 = path_segments(1, m=8, r=4.0)[:2]
    if "vgg8" in names:
        out["vgg8"] = (build_network("vgg8"), x0[:4], x1[:4], False)
    if "resnet18" in names:
        out["resnet18"] = (build_network("resnet18k8"), x0[:resnet_segments], x1[:resnet_segments], False)
    if "mlp1" in names or "mlp64" in names:
        torch.manual_seed(0)
        mlp = WideMLP(depth=3).eval()
        imgs = digit_images(65, seed=1)
        if "mlp1" in names:
            out["mlp1"] = (mlp, imgs[:1], imgs[1:2], True)
        if "mlp64" in names:
            out["mlp64"] = (mlp, imgs[:64], imgs[1:65], True)
    return out


def variants(is_mlp: bool):
    v = {}
    if not is_mlp:
        v["published cost model (2 stacked passes/region)"] = ("pub", dict(method="walk", batch_size=4))
        v["walk (1 stacked pass/region)"] = ("ours", dict(method="walk", batch_size=4))
    bs = 64 if is_mlp else 2
    v["subdivide, certify=all (default)"] = ("ours", dict(method="subdivide", batch_size=bs))
    v["subdivide, certify=strict"] = ("ours", dict(method="subdivide", batch_size=bs, certify="strict"))
    v["subdivide, certify=sample"] = ("ours", dict(method="subdivide", batch_size=bs, certify="sample"))
    v["subdivide, float32"] = ("ours", dict(method="subdivide", batch_size=bs, dtype=torch.float32))
    if is_mlp:
        v["regioncam (float32, one line at a time)"] = ("regioncam", {})
    return v


def run_once(kind, kw, net, x0, x1):
    walk_module.linearize = _published if kind == "pub" else LINEARIZE
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        if kind == "regioncam":
            n, gap = regioncam_lines(net, x0, x1), float("nan")
        else:
            res = discover(net, x0, x1, **kw)
            n, gap = res.n_regions, float(res.continuity_gap.max())
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        walk_module.linearize = LINEARIZE
    return n, gap, wall, cpu


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", default="vgg8,resnet18,mlp1,mlp64")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    p.add_argument("--resnet-segments", type=int, default=1)
    a = p.parse_args(argv)
    threads = [int(v) for v in str(a.threads).split(",") if v.strip()]
    loads = workloads(set(a.workloads.split(",")), a.resnet_segments)
    stats = {}
    for wname, (net, x0, x1, is_mlp) in loads.items():  # warm-up: first calls load kernels
        discover(net, x0[:1], x1[:1])
    for rep in range(a.reps):
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            for wname, (net, x0, x1, is_mlp) in loads.items():
                for vname, (kind, kw) in variants(is_mlp).items():
                    n, gap, wall, cpu = run_once(kind, kw, net, x0, x1)
                    s = stats.setdefault((n_threads, wname, vname), {"rps": [], "sec": [], "cores": []})
                    s["rps"].append(n / wall)
                    s["sec"].append(wall)
                    s["cores"].append(cpu / wall)
                    s["n"], s["gap"] = n, gap
                    print(f"rep {rep}, {n_threads} thread(s), {wname}, {vname}: {n} regions in {wall:.2f} s",
                          file=sys.stderr, flush=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"command: .venv/bin/python bench/compare.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    for wname, (net, x0, x1, is_mlp) in loads.items():
        for n_threads in threads:
            names = list(variants(is_mlp))
            base_name = names[-1] if is_mlp else names[0]
            base = np.median(stats[n_threads, wname, base_name]["rps"])
            print(f"\n{wname}, {x0.shape[0]} segment(s), {n_threads} torch thread(s):\n")
            print(f"| variant | regions | largest certificate | time (s, median) | regions/s | cores "
                  f"| regions/s per core | vs {'regioncam' if is_mlp else 'published'} |")
            print("|---|---:|---:|---:|---:|---:|---:|---:|")
            for vname in names:
                s = stats[n_threads, wname, vname]
                rps, cores = np.median(s["rps"]), np.median(s["cores"])
                print(f"| {vname} | {s['n']:,} | {s['gap']:.1e} | {np.median(s['sec']):.3f} | {rps:,.0f} | {cores:.2f} "
                      f"| {rps / cores:,.0f} | {rps / base:.2f}x |")


if __name__ == "__main__":
    main()
