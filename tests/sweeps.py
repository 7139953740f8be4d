"""A tiny sweep written into a temporary folder (absolute paths), shared by the sweep tests."""

from pathlib import Path

import yaml


def tiny_sweep(tmp: Path, *, name="tiny", variants=None, n_paths=4, anchors=4, n_shards=2, train_extra=None,
               executor="debug", planes=None, analysis=None, discover_resources=None) -> Path:
    train = {"recipe": "vanilla", "model": {"name": "vgg8", "widths": [4, 8]}, "data": {"name": "digits"},
             "lr": 0.05, "batch_size": 64, "stop": "epochs", "max_epochs": 1, **(train_extra or {})}
    (tmp / "train.yaml").write_text(yaml.safe_dump(train))
    disc = {"paths": {"kind": "circle", "n_paths": n_paths, "anchors": anchors, "seed": 1}, "batch_size": 16,
            "chunk_segments": 8, **({"planes": planes} if planes else {})}
    (tmp / "discover.yaml").write_text(yaml.safe_dump(disc))
    res = {"cpus": 1, "mem_gb": 1.5, "time_min": 10}
    sweep = {"name": name, "root": str(tmp / "out"), "train": str(tmp / "train.yaml"),
             "discover": str(tmp / "discover.yaml"),
             "variants": variants or {"vanilla": {}, "noise-0.4": {"data.label_noise": 0.4}},
             "grid": {"seed": [0]}, "checkpoints": ["init", "final"], "n_shards": n_shards, "executor": executor,
             "train_resources": res, "discover_resources": {**res, **(discover_resources or {})},
             "aggregate_resources": res}
    if analysis is not None:
        (tmp / "analysis.yaml").write_text(yaml.safe_dump(analysis))
        sweep["analysis"] = str(tmp / "analysis.yaml")
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path
