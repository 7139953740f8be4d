"""What a plane path set costs on trained networks: regions per plane and seconds per plane.

    .venv/bin/python bench/plane_sets.py sweeps/demo/runs/noise-1.0-<id> sweeps/demo/runs/vanilla-<id> ...

For each run folder and each of its ``init`` and ``final`` checkpoints, builds the plane sets
below with :func:`pipeline.inputs.plane_sets.bundle_planes` (``n_planes`` 8, seed 0, the run's data)
and times :func:`pipeline.engine.planes.discover_plane` on them (float64, one plane per chunk, as
discovery writes them), one torch thread. Prints one Markdown row per (run, checkpoint, plane
set): the median and largest region count over the planes and the mean seconds per plane.
Chooses ``scale`` / ``radius`` of a sweep's ``planes:`` for its budget.
"""

from __future__ import annotations

import argparse
import time

SETS = (("images", {"scale": 0.1}), ("images", {"scale": 0.2}), ("translate", {"radius": 0.25}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="training run folders (with checkpoints/init.pt and final.pt)")
    p.add_argument("--n-planes", type=int, default=8)
    a = p.parse_args(argv)

    import numpy as np
    import torch
    import yaml

    from pipeline.config import from_dict
    from pipeline.inputs.data import DataConfig, load
    from pipeline.inputs.plane_sets import PlaneSetConfig, bundle_planes
    from pipeline.engine.planes import discover_plane
    from pipeline.stages.train import load_checkpoint

    torch.set_num_threads(1)
    print("| run | model | checkpoint | planes | regions per plane (median, max) | s per plane |")
    print("|---|---|---|---|---:|---:|")
    for run in a.runs:
        cfg = yaml.safe_load(open(f"{run}/config.yaml"))
        data = load(from_dict(DataConfig, cfg["data"]))
        for checkpoint in ("init", "final"):
            model, _ = load_checkpoint(run, checkpoint)
            model = model.double()
            for kind, options in SETS:
                planes = bundle_planes(data, PlaneSetConfig(kind=kind, n_planes=a.n_planes, **options))
                t = time.perf_counter()
                res = discover_plane(model, planes.x0, planes.x1, planes.x2, domain=planes.config.domain,
                                     chunk_planes=1)
                per = (time.perf_counter() - t) / a.n_planes
                opt = ", ".join(f"{k} {v}" for k, v in options.items())
                print(f"| {run.rstrip('/').split('/')[-1]} | {cfg['model']['name']} | {checkpoint} | {kind} ({opt}) "
                      f"| {int(np.median(res.n_regions)):,}, {int(res.n_regions.max()):,} | {per:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
