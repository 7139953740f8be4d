"""The engine alone, in seconds: regions along closed loops of real 8x8 digits, both methods.

    python -m jobs engine --paths 8 --method both

Runs the region engine on a freshly initialised VGG8 (seeded) along closed loops through real
digit images (scikit-learn's, embedded) and prints the measures per path, with both methods
side by side so their agreement is visible. No training, no files: a smoke test of an install
(for the whole pipeline: ``python -m jobs demo``).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class DemoConfig:
    paths: int = 8  # closed loops
    anchors: int = 4  # real images per loop: anchors segments each
    seed: int = 0
    method: str = "both"  # walk, subdivide or both
    batch_size: int = 32


def digits_loops(cfg: DemoConfig) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Closed loops through real digit images: anchor j joins anchor j+1, the last the first."""
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float64) / 16.0  # (1797, 8, 8) in [0, 1]
    rng = np.random.default_rng(cfg.seed)
    pick = rng.choice(len(images), size=(cfg.paths, cfg.anchors), replace=False)
    a = torch.from_numpy(images[pick]).unsqueeze(2)  # (P, M, 1, 8, 8)
    b = torch.roll(a, shifts=-1, dims=1)  # within each loop: last anchor back to the first
    path_id = np.repeat(np.arange(cfg.paths), cfg.anchors)
    return a.flatten(0, 1), b.flatten(0, 1), path_id


def discover_loops(cfg: DemoConfig) -> dict[str, tuple]:
    """Per method (in the order walk, subdivide): ``(RegionResult, path measures)`` on the loops."""
    from pipeline.engine.measures import path_measures
    from pipeline.inputs.models import VGG8
    from pipeline.engine.lines import discover

    torch.manual_seed(cfg.seed)
    model = VGG8(num_classes=10, in_channels=1, input_size=8, widths=(6, 16)).eval()
    x0, x1, path_id = digits_loops(cfg)
    methods = ["walk", "subdivide"] if cfg.method == "both" else [cfg.method]
    out = {}
    for m in methods:
        t = time.perf_counter()
        res = discover(model, x0, x1, method=m, batch_size=cfg.batch_size, progress=True)
        sec = time.perf_counter() - t
        pm = path_measures(path_id, res.density, res.deviation, res.total_variation, res.length)
        print(f"[engine] {m}: {res.n_regions} regions on {res.n_segments} segments in {sec:.2f} s "
              f"({res.n_regions / sec:,.0f} regions/s); largest certificate gap "
              f"{res.continuity_gap.max():.1e}")
        out[m] = (res, pm)
    return out


def run(cfg: DemoConfig) -> list[dict]:
    found = discover_loops(cfg)
    methods = list(found)
    rows = {m: pm for m, (_, pm) in found.items()}
    table = []
    for i, pid in enumerate(rows[methods[0]]["path_id"]):
        row = {"path": int(pid)}
        for m in methods:
            row[f"density_{m}"] = int(rows[m]["density"][i])
        row["deviation"] = float(rows[methods[0]]["deviation"][i])
        row["total_variation"] = float(rows[methods[0]]["total_variation"][i])
        table.append(row)
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jobs engine",
        description="Linear regions of a seeded VGG8 along closed loops through real 8x8 digit images.",
        epilog="example: python -m jobs engine --paths 4 --method walk",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--paths", type=int, default=DemoConfig.paths, help="number of closed loops")
    p.add_argument("--anchors", type=int, default=DemoConfig.anchors, help="images per loop")
    p.add_argument("--seed", type=int, default=DemoConfig.seed)
    p.add_argument("--method", choices=["walk", "subdivide", "both"], default=DemoConfig.method)
    p.add_argument("--batch-size", type=int, default=DemoConfig.batch_size)
    a = p.parse_args(argv)
    cfg = DemoConfig(a.paths, a.anchors, a.seed, a.method, a.batch_size)
    table = run(cfg)
    cols = list(table[0])
    print("\n" + "  ".join(f"{c:>16}" for c in cols))
    for row in table:
        print("  ".join(f"{row[c]:>16.4g}" if isinstance(row[c], float) else f"{row[c]:>16}" for c in cols))
    return 0
