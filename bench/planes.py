"""Exact 2-D slices (pipeline.engine.planes.discover_plane): regions/s and peak RSS.

    .venv/bin/python bench/planes.py [--reps 3] [--skip-cifar] [--out bench/results/planes-DATE.json]

1. regioncam's own setting: MLPs 2 -> 64x4 and 2 -> 256x4 -> 10 (torch default init, seed 0)
   over the square [-1, 1]^2: regioncam ``Regioncam(size=1)`` (float32, Rust) against
   ``discover_plane(domain="parallelogram")`` with x0 = (-1, -1), x1 = (1, -1), x2 = (-1, 1)
   (float64). Each run is a fresh subprocess (so its peak RSS is its own); the time is the
   median of ``--reps`` runs and covers the region computation only (the model built and, for
   ours, prepared beforehand; our time includes the certificate and the measures).
2. CIFAR-shaped: one triangle through three digit-derived 3x32x32 images (bench/_common.py
   digit_images(3, seed=0)) on VGG8 and ResNet18 k=8 (as bench/_common.py builds them), shrunk
   about x0 by a factor ``s`` (x1' = x0 + s (x1 - x0), ...), since the full triangle holds far
   more regions than a short benchmark can visit. One run each.

One torch thread throughout (the machine is shared).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _mlp(width, depth=4):
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers, c = [], 2
    for _ in range(depth):
        layers += [nn.Linear(c, width), nn.ReLU()]
        c = width
    return nn.Sequential(*layers, nn.Linear(c, 10)).eval()


def worker(kind: str, arg: str, engine: str) -> dict:
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from bench._common import peak_rss_mib

    torch.set_num_threads(1)
    rss0 = None
    if kind == "mlp":
        net = _mlp(int(arg))
        if engine == "regioncam":
            import regioncam

            layers = regioncam.nn.convert(net)
            rss0 = peak_rss_mib()
            t0 = time.perf_counter()
            rc = regioncam.Regioncam(size=1.0)
            rc.add(layers)
            n = rc.num_faces
            wall = time.perf_counter() - t0
            extra = {"area_sum_uv": float(sum(f.area for f in rc.faces)) / 4}
        else:
            from pipeline.engine.planes import discover_plane
            from pipeline.engine.lines import prepare

            ready = prepare(net)
            x0, x1, x2 = (torch.tensor([p], dtype=torch.float64) for p in ([-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]))
            rss0 = peak_rss_mib()
            t0 = time.perf_counter()
            res = discover_plane(ready, x0, x1, x2, domain="parallelogram")
            wall = time.perf_counter() - t0
            n = int(res.n_regions[0])
            extra = {"area_sum_uv": float(res.area.sum()), "n_pieces": int(res.n_pieces[0]),
                     "dropped_pieces": int(res.dropped_pieces[0]), "continuity_gap": float(res.continuity_gap[0])}
    else:
        from bench._common import build_network, digit_images
        from pipeline.engine.planes import discover_plane
        from pipeline.engine.lines import prepare

        s = float(arg)
        net = build_network(kind)
        imgs = digit_images(3, seed=0)
        x0, x1, x2 = imgs[0:1], imgs[1:2], imgs[2:3]
        ready = prepare(net)
        rss0 = peak_rss_mib()
        t0 = time.perf_counter()
        res = discover_plane(ready, x0, x0 + s * (x1 - x0), x0 + s * (x2 - x0))
        wall = time.perf_counter() - t0
        n = int(res.n_regions[0])
        extra = {"shrink": s, "area_sum_uv": float(res.area.sum()), "n_pieces": int(res.n_pieces[0]),
                 "dropped_pieces": int(res.dropped_pieces[0]), "continuity_gap": float(res.continuity_gap[0]),
                 "density_input": float(res.density_input[0]), "deviation_mean": float(np.mean(res.deviation))}
    return {"kind": kind, "arg": arg, "engine": engine, "regions": n, "seconds": wall, "regions_per_s": n / wall,
            "peak_rss_mib": peak_rss_mib(), "peak_rss_before_mib": rss0, **extra}


def run(kind, arg, engine):
    out = subprocess.run([sys.executable, __file__, "--worker", kind, arg, engine], capture_output=True, text=True,
                         cwd=ROOT)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", nargs=3)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip-cifar", action="store_true")
    ap.add_argument("--cifar", default="vgg8:0.03,resnet18k8:0.01", help="network:shrink,...")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(*a.worker)))
        return
    sys.path.insert(0, str(ROOT))
    from bench._common import machine_info

    rows = []
    for width in ("64", "256"):
        for engine in ("regioncam", "ours"):
            reps = [run("mlp", width, engine) for _ in range(a.reps)]
            best = sorted(reps, key=lambda r: r["seconds"])[len(reps) // 2]
            best["seconds_all"] = [r["seconds"] for r in reps]
            rows.append(best)
            print(f"mlp 2-{width}x4-10 {engine:9s} regions {best['regions']:7d}  {best['seconds']:7.2f} s  "
                  f"{best['regions_per_s']:9.0f} regions/s  peak RSS {best['peak_rss_mib']:.0f} MiB "
                  f"(+{best['peak_rss_mib'] - best['peak_rss_before_mib']:.0f} over the set-up)", flush=True)
    if not a.skip_cifar:
        for item in a.cifar.split(","):
            net, s = item.split(":")
            r = run(net, s, "ours")
            rows.append(r)
            print(f"{net} triangle shrunk x{s}: regions {r['regions']}  {r['seconds']:.1f} s  "
                  f"{r['regions_per_s']:.0f} regions/s  peak RSS {r['peak_rss_mib']:.0f} MiB "
                  f"(+{r['peak_rss_mib'] - r['peak_rss_before_mib']:.0f})  "
                  f"dropped {r['dropped_pieces']}  gap {r['continuity_gap']:.1e}", flush=True)
    out = Path(a.out or ROOT / "bench" / "results" / f"planes-{dt.date.today().isoformat()}.json")
    out.write_text(json.dumps({"machine": machine_info(sys.argv), "rows": rows}, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
