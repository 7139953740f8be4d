"""What following the input op by op costs: two checkouts of the engine, side by side.

    git worktree add ../before 239f111          # the engine before the allowlist
    .venv/bin/python bench/allowlist_ab.py --compare ../before . --rounds 5

Each round runs, in a fresh process per checkout (interleaved: A, B, A, B...), one torch thread,
float64, on ``bench/_common.py``'s closed digit paths (first fraction of each segment, as in
bench/engine.py): VGG8 and ResNet18 k=8, walk and subdivide, 8 segments each, and one plane of
VGG8 (a triangle shrunk to 0.1). Prints per case the median seconds of each checkout, their
ratio and the region counts (which must be equal), and writes ``bench/results/allowlist-ab.json``.
``--once`` times the checkout it runs in once and prints JSON (what ``--compare`` calls).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = [("vgg8", "walk", 0.02), ("vgg8", "subdivide", 0.02), ("resnet18k8", "walk", 0.01),
         ("resnet18k8", "subdivide", 0.01), ("vgg8", "plane", 0.1)]


def once() -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import build_network, path_segments, take_segments

    from pipeline.engine.planes import discover_plane
    from pipeline.engine.lines import discover

    torch.set_num_threads(1)
    x0, x1 = take_segments(*path_segments(2), 8)
    out = {}
    for net_name, method, frac in CASES:
        net = build_network(net_name).double()
        t = time.perf_counter()
        if method == "plane":
            a, b, c = x0[:1], x0[:1] + frac * (x1[:1] - x0[:1]), x0[:1] + frac * (x0[1:2] - x0[:1])
            regions = int(discover_plane(net, a, b, c).n_regions.sum())
        else:
            regions = discover(net, x0, x0 + frac * (x1 - x0), method=method).n_regions
        out[f"{net_name} {method}"] = (time.perf_counter() - t, regions)
    return out


def compare(a: str, b: str, rounds: int) -> int:
    here = Path(__file__).resolve()
    samples = {a: [], b: []}
    for r in range(rounds):
        for checkout in (a, b):
            env = dict(os.environ, PYTHONPATH=str(Path(checkout).resolve()), OMP_NUM_THREADS="1")
            res = subprocess.run([sys.executable, str(here), "--once"], env=env, capture_output=True, text=True,
                                 check=True)
            samples[checkout].append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{rounds} {checkout} done", file=sys.stderr, flush=True)
    rows = {}
    print(f"{'case':22s} {'A (s)':>8s} {'B (s)':>8s} {'B/A':>6s}  regions A / B")
    for case in samples[a][0]:
        ta = statistics.median(s[case][0] for s in samples[a])
        tb = statistics.median(s[case][0] for s in samples[b])
        ra, rb = samples[a][0][case][1], samples[b][0][case][1]
        rows[case] = {"a_s": ta, "b_s": tb, "ratio": tb / ta, "regions_a": ra, "regions_b": rb}
        print(f"{case:22s} {ta:8.2f} {tb:8.2f} {tb / ta:6.2f}  {ra} / {rb}")
    out = here.parent / "results" / "allowlist-ab.json"
    out.write_text(json.dumps({"a": a, "b": b, "rounds": rounds, "cases": rows, "samples": samples}, indent=1))
    print(f"wrote {out}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="example: bench/allowlist_ab.py --compare ../before . --rounds 5")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--once", action="store_true")
    args = p.parse_args(argv)
    if args.once:
        print(json.dumps(once()))
        return 0
    if not args.compare:
        p.error("give --compare A B or --once")
    return compare(*args.compare, args.rounds)


if __name__ == "__main__":
    raise SystemExit(main())
