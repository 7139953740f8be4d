"""How often the engine would make the host wait for a GPU, counted on the CPU (pipeline/engine/census.py).

    .venv/bin/python bench/host_waits.py bench/results/host-waits.json
    (cd ../before && PYTHONPATH=$PWD ../main/.venv/bin/python ../main/bench/host_waits.py /tmp/before.json)

VGG8 and ResNet18 k=8 (random init, float64) on the first segment of bench/_common.py's closed
digit path (ResNet18: its first quarter): subdivide with chains of 65,536 vertices (a GPU's
size) and with the CPU's 256, the walk, and a plane (a triangle of 0.01 x the path's first
anchors, tiles of 131,072 vertices). Counts, not times: the census slows nothing it counts
much, but the numbers do not depend on the machine. Writes JSON with, per case, the regions,
the waits and the waits by kind.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import build_network, path_segments  # noqa: E402

from pipeline.engine.census import HostSyncCensus  # noqa: E402
from pipeline.engine.planes import discover_plane  # noqa: E402
from pipeline.engine.lines import discover  # noqa: E402


def main(out_path: str):
    x0, x1 = path_segments(1)
    a, c = x0[:1], x0[2:3]
    out = {}
    for name in ["vgg8", "resnet18k8"]:
        net = build_network(name)
        b = a + (1.0 if name == "vgg8" else 0.25) * (x1[:1] - a)
        cases = {
            "subdivide, 65,536 vertices": lambda: discover(net, a, b, max_vertices=65536),
            "subdivide, 256 vertices (CPU)": lambda: discover(net, a, b, max_vertices=256),
            "walk": lambda: discover(net, a, b, method="walk"),
            "plane, 131,072 vertices": lambda: discover_plane(net, a, a + 0.01 * (x1[:1] - a), a + 0.01 * (c - a),
                                                              max_vertices=131072),
        }
        for case, fn in cases.items():
            with HostSyncCensus() as census:
                r = fn()
            n = int(r.n_regions) if hasattr(r, "segment_index") else int(r.total_regions)
            out[f"{name}: {case}"] = {"regions": n, "waits": census.total, "by_kind": dict(census.by_kind)}
            print(f"{name:11s} {case:32s} regions {n:6d}  waits {census.total:6d}", flush=True)
    Path(out_path).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/results/host-waits.json")
