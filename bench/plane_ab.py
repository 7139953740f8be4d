"""Time discover_plane on three of the demo's networks, for side-by-side runs of two checkouts.

    for r in ../before .; do PYTHONPATH=$r .venv/bin/python bench/plane_ab.py \\
        sweeps/demo/runs/vanilla-<resnet18> sweeps/demo/runs/noise-1.0-<vgg8> sweeps/demo/runs/vanilla-<vgg8>; done

Planes (4 each, seed 0, the final checkpoint, one torch thread): image triangles shrunk to 0.2
on the first two runs, translate squares of radius 0.25 px on the third. Prints the total
region count and seconds of each, on one line prefixed by the checkout's folder name.
"""

from __future__ import annotations

import sys
import time


def main(argv=None) -> int:
    runs = (argv if argv is not None else sys.argv[1:])
    if len(runs) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    import torch
    import yaml

    import pipeline
    from pipeline.config import from_dict
    from pipeline.inputs.data import DataConfig, load
    from pipeline.inputs.plane_sets import PlaneSetConfig, bundle_planes
    from pipeline.engine.planes import discover_plane
    from pipeline.stages.train import load_checkpoint

    torch.set_num_threads(1)
    out = []
    for run, (kind, options) in zip(runs, (("images", {"scale": 0.2}), ("images", {"scale": 0.2}),
                                           ("translate", {"radius": 0.25}))):
        data = load(from_dict(DataConfig, yaml.safe_load(open(f"{run}/config.yaml"))["data"]))
        model, _ = load_checkpoint(run, "final")
        planes = bundle_planes(data, PlaneSetConfig(kind=kind, n_planes=4, **options))
        t = time.perf_counter()
        res = discover_plane(model.double(), planes.x0, planes.x1, planes.x2, domain=planes.config.domain,
                             chunk_planes=1)
        out.append(f"{run.rstrip('/').split('/')[-1][:12]} {kind} regions {int(res.n_regions.sum())} "
                   f"{time.perf_counter() - t:.2f}s")
    print(pipeline.__file__.split("/")[-3], " | ".join(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
