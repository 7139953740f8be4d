"""Train one network from a recipe file, resuming if the run folder has a checkpoint.

    python -m jobs train configs/train/digits-vgg8.yaml --out runs/digits-vgg8 --seed 1
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

log = logging.getLogger("jobs.train")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jobs train", description=__doc__.splitlines()[0],
        epilog="example: python -m jobs train configs/train/digits-vgg8.yaml --out runs/digits-vgg8",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", type=Path, help="a recipe YAML (configs/train/*.yaml)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<config name>-<hash>)")
    p.add_argument("--seed", type=int, default=None, help="override the config's seed")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from pipeline.config import ConfigError, config_hash, load_config
    from pipeline.inputs.models import summary
    from pipeline.stages.train import TrainConfig, build_model, train

    try:
        cfg = load_config(a.config, TrainConfig)
    except ConfigError as err:
        p.error(str(err))
    if a.seed is not None:
        cfg = replace(cfg, seed=a.seed)
    out = a.out or Path("runs") / f"{a.config.stem}-{config_hash(cfg)}"
    from pipeline.inputs.data import load
    from pipeline.inputs.sources import DatasetNotFoundError

    try:
        metrics = train(cfg, out, progress=True)
    except (ConfigError, DatasetNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    data = load(cfg.data)
    log.info("%s", summary(build_model(cfg, data.num_classes, data.input_shape)))
    last = metrics.iloc[-1]
    log.info("run %s: %d epochs, train loss %.4g, test error %.3f; checkpoints in %s", out, last.epoch,
             last.train_loss, last.test_error, out / "checkpoints")
    return 0
