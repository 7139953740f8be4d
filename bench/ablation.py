"""The engine's round-four choices switched off one at a time, interleaved, medians, one thread.

    .venv/bin/python bench/ablation.py --reps 3
    .venv/bin/python bench/ablation.py --reps 3 --only MLP

* dense layers in blocks of at least 256 rows (``pipeline.engine.rowblock.LINEAR_BLOCK``) against the
  convolutions' 16, on the MLP 3072-1024x3-10 over 16 lines between digit images;
* max_vertices 256 (default) against 1024 on VGG8 (4 segments) and ResNet18 k=8 (1 segment);
* the certificate: all (float32 screen, default), strict (every midpoint in float64), sample.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WideMLP, build_network, digit_images, path_segments  # noqa: E402

import pipeline.engine.rowblock as rowblock  # noqa: E402
from pipeline.engine.lines import discover, prepare  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--only", default="", help="run only workloads whose name contains this (e.g. MLP)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    x0, x1 = path_segments(1, m=8, r=4.0)[:2]
    torch.manual_seed(0)
    mlp = WideMLP(depth=3).eval()
    imgs = digit_images(17, seed=1)
    ready = prepare(mlp)
    cases = {}
    for cert in ("sample", "all"):
        for block in (rowblock.LINEAR_BLOCK, 0):
            cases[(f"MLP, 16 lines, certify={cert}", f"dense layers in blocks of {max(block, 16)} rows")] = (
                ready, imgs[:16], imgs[1:17], dict(certify=cert), block)
    vgg, res = prepare(build_network("vgg8")), prepare(build_network("resnet18k8"))
    for net_name, prep, n in (("VGG8, 4 segments", vgg, 4), ("ResNet18 k=8, 1 segment", res, 1)):
        for mv in (256, 1024):
            cases[(f"{net_name}, certify=sample", f"max_vertices={mv}")] = (
                prep, x0[:n], x1[:n], dict(max_vertices=mv, batch_size=2, certify="sample"), rowblock.LINEAR_BLOCK)
        for cert in ("all", "strict", "sample"):
            cases[(f"{net_name}, certificate", f"certify={cert}")] = (prep, x0[:n], x1[:n], dict(batch_size=2, certify=cert),
                                                                   rowblock.LINEAR_BLOCK)
    cases = {k: v for k, v in cases.items() if a.only in k[0]}
    secs, info = {}, {}
    for rep in range(a.reps):
        for key, (prep, s0, s1, kw, block) in cases.items():
            rowblock.LINEAR_BLOCK = block
            t = time.perf_counter()
            r = discover(prep, s0, s1, **kw)
            secs.setdefault(key, []).append(time.perf_counter() - t)
            info[key] = (r.n_regions, float(r.continuity_gap.max()), float(r.certificate_tol.max()))
            print(f"rep {rep}: {key}: {secs[key][-1]:.2f} s", file=sys.stderr, flush=True)
    print("| workload | variant | regions | largest certificate | largest certificate_tol | seconds (median) |")
    print("|---|---|---:|---:|---:|---:|")
    for key, s in secs.items():
        n, gap, tol = info[key]
        print(f"| {key[0]} | {key[1]} | {n:,} | {gap:.1e} | {tol:.1e} | {np.median(s):.2f} |")


if __name__ == "__main__":
    main()
