"""A tiny sweep of real discovery stores from seeded random networks, in seconds, on a CPU.

    python -c "from analysis.synthetic import make_sweep; make_sweep('/tmp/sweep')"
    python -m analysis /tmp/sweep --out /tmp/sweep-analysis

For the tests (golden tables), the notebook and trying the analysis without training anything.
Every run folder looks like one written by ``jobs train`` and ``jobs discover``: ``config.yaml``
(the recipe is the setting), ``metrics.csv`` and ``regions/<checkpoint>-<hash>.zarr``. The
networks are small MLPs on 4-dimensional inputs, not trained: the "initialisation" is drawn
from the seed alone (so runs sharing a seed and width share it, as real runs do) and the
"trained" network is that initialisation moved by a perturbation seeded by the run's config,
larger with more label noise. The numbers mean nothing; they are exact and reproducible.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SyntheticRun", "DEFAULT_RUNS", "make_sweep", "make_paths"]


@dataclass(frozen=True)
class SyntheticRun:
    setting: str  # the recipe: vanilla | augment | noisy | double_descent
    seed: int = 0
    noise: float = 0.0
    width: int = 8
    checkpoints: tuple = ("init", "final")
    hidden_relu: bool = False  # a ReLU the engine cannot see: every certificate of this network fails


# 2 settings x 2 seeds, two noise levels (one with a single seed: a missing seed), init and
# final everywhere, and a one-seed double-descent sweep over three widths
DEFAULT_RUNS = (
    SyntheticRun("vanilla", 0), SyntheticRun("vanilla", 1),
    SyntheticRun("augment", 0), SyntheticRun("augment", 1),
    SyntheticRun("noisy", 0, 0.2), SyntheticRun("noisy", 1, 0.2),
    SyntheticRun("noisy", 0, 0.6),
    SyntheticRun("double_descent", 0, 0.2, 2, ("final",)),
    SyntheticRun("double_descent", 0, 0.2, 4, ("final",)),
    SyntheticRun("double_descent", 0, 0.2, 8, ("final",)),
)
N_IN, K = 4, 3


def _hash(obj, n=12) -> str:
    return hashlib.md5(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]


def make_paths(n_paths: int = 8, anchors: int = 4, seed: int = 0):
    """Closed loops of ``anchors`` random points in R^4: ``(x0, x1, path_id, segment_index,
    config)``. Path ids are spread out (as base-image indices are) to exercise matching by id."""
    import torch

    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n_paths, anchors, N_IN, generator=g, dtype=torch.float64) * 2.0
    b = torch.roll(a, shifts=-1, dims=1)  # each loop closes on itself
    ids = np.sort(np.random.default_rng(seed).choice(1000, size=n_paths, replace=False)).astype(np.int64)
    config = {"kind": "circle", "n_paths": n_paths, "anchors": anchors, "radius": 1.0, "split": "train",
              "seed": seed, "class_balanced": False}
    return (a.reshape(-1, N_IN), b.reshape(-1, N_IN), np.repeat(ids, anchors), np.tile(np.arange(anchors), n_paths),
            config)


def _network(run: SyntheticRun, cfg: dict, checkpoint: str):
    import torch
    from torch import nn

    torch.manual_seed(run.seed)  # the initialisation depends on the seed (and width) only
    w = run.width
    net = nn.Sequential(nn.Linear(N_IN, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, K)).double()
    if checkpoint != "init":
        g = torch.Generator().manual_seed(int(_hash(cfg, 8), 16))
        amp = {"augment": 0.3}.get(run.setting, 0.5) + run.noise
        with torch.no_grad():
            for p in net.parameters():
                p.add_(amp * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return (_HiddenReLU(net) if run.hidden_relu else net).eval()


def _HiddenReLU(net):
    """``net`` followed by a ReLU computed where the engine's TorchFunctionMode cannot see it."""
    import torch

    class HiddenReLU(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            y = self.net(x)
            with torch._C.DisableTorchFunction():
                r = torch.relu(y)
            return r + 0.0 * y  # still input-derived for the preflight: the certificate must catch it

    return HiddenReLU().eval()


def _metrics(run: SyntheticRun, cfg: dict):
    import pandas as pd

    rng = np.random.default_rng(int(_hash(cfg, 8), 16))
    epochs = 3
    base = 0.05 + 0.6 * run.noise + 0.2 / run.width
    rows = []
    for e in range(1, epochs + 1):
        decay = 1.0 / e
        rows.append({"epoch": e, "lr": 0.01, "train_loss": round(decay * (0.5 + rng.random()), 4),
                     "train_error": round(decay * 0.3, 4), "val_loss": float("nan"), "val_error": float("nan"),
                     "test_loss": round(1.0 + base + decay * rng.random(), 4),
                     "test_error": round(base + 0.1 * decay, 4), "stop_criterion": e})
    return pd.DataFrame(rows)


def _write_store(store: Path, net, paths, n_shards: int, attrs: dict, write_shards=None, on_certificate="raise"):
    from pipeline.stages.discovery import DiscoverConfig, write_shards as write

    x0, x1, path_id, segment_index, config = paths
    # walk is pinned: the golden tables were made with it
    cfg = DiscoverConfig(method="walk", n_shards=n_shards, batch_size=16, chunk_segments=64, device="cpu",
                         on_certificate=on_certificate)
    write(store, net, x0, x1, path_id, segment_index, cfg, attrs, path_config=config, shards=write_shards)


def make_sweep(root, runs=DEFAULT_RUNS, n_paths: int = 8, anchors: int = 4, n_shards: int = 2,
               dataset: str = "synthetic", on_certificate: str = "raise") -> list[Path]:
    """Write a sweep of ``runs`` under ``root/runs/<run-id>/``; returns the run folders.

    Parameters
    ----------
    root : path
        Sweep root (created).
    runs : sequence of SyntheticRun
    n_paths, anchors : int
        The one path set every network is probed on.
    n_shards : int
        Shards per store.
    dataset : str
        The dataset name recorded in each config.
    on_certificate : {"raise", "warn"}
        The discovery's choice (a run with ``hidden_relu`` fails every certificate).

    Returns
    -------
    list of Path
        Run folders, in the order of ``runs``.
    """
    import torch
    import yaml

    root = Path(root)
    paths = make_paths(n_paths, anchors)
    from pipeline.inputs.paths import path_set_id

    path_hash = path_set_id(paths[4])
    out = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: threads only add overhead
    try:
        for run in runs:
            cfg = {"recipe": run.setting, "seed": run.seed,
                   "model": {"name": "mlp", "k": run.width, "widths": [run.width, run.width], "pool": "avg"},
                   "data": {"name": dataset, "label_noise": run.noise, "noise_seed": 0,
                            "augment": run.setting == "augment"}, **({"hidden_relu": True} if run.hidden_relu else {})}
            run_dir = root / "runs" / _hash(cfg)
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=True))
            _metrics(run, cfg).to_csv(run_dir / "metrics.csv", index=False)
            for ckpt in run.checkpoints:
                net = _network(run, cfg, ckpt)
                sha = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in net.parameters())).hexdigest()
                attrs = {"checkpoint_sha256": sha, "checkpoint": ckpt, "run": str(run_dir), "model": cfg["model"],
                         "dataset": cfg["data"], "split": "train", "paths": paths[4]}
                _write_store(run_dir / "regions" / f"{ckpt}-{path_hash}.zarr", net, paths, n_shards, attrs,
                             on_certificate=on_certificate)
            out.append(run_dir)
    finally:
        torch.set_num_threads(threads)
    return out
