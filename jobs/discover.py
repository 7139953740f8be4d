"""Region discovery for one trained run, from the command line (``pipeline/stages/discovery.py``).

    python -m jobs discover runs/digits-vgg8 --config configs/discover/digits.yaml --shard 0/4
    python -m jobs discover runs/digits-vgg8 --from-store runs/digits-vgg8/regions/final-6b2d1440.zarr

Each shard holds a contiguous block of the path set; a complete shard is skipped, any other
(missing, interrupted or damaged) is written again from scratch (see ``pipeline/store/lines.py``).
Without ``--shard`` every missing shard is written in turn. The store goes to
``<run>/regions/<checkpoint>-<path set id>.zarr``. ``--from-store`` rewrites the shards of an
existing store with the discovery config it was written with (``python -m jobs verify`` prints
that command for each damaged shard); ``--deep`` judges existing shards by their checksums too.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.stages.discovery import DiscoverConfig, discover_run
from pipeline.store.identity import StoreError

log = logging.getLogger("jobs.discover")


def _parse_shard(text: str):
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= i < n")
    return i, n


def _config_from_store(store: Path) -> DiscoverConfig:
    """The discovery config a store records (its ``discover_config`` attribute)."""
    from pipeline.config import from_dict
    from pipeline.store.identity import store_attrs

    recorded = store_attrs(store).get("discover_config")
    if not recorded:
        raise StoreError(f"{store} records no discovery config (discover_config attribute): pass --config and "
                         "--store instead")
    from dataclasses import replace

    # the device is this machine's choice (a local field): the store may come from a GPU node
    return replace(from_dict(DiscoverConfig, recorded), device="auto")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jobs discover", description=__doc__.splitlines()[0],
        epilog="example: python -m jobs discover runs/digits-vgg8 --config configs/discover/digits.yaml --shard 0/2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", type=Path, help="a training run folder (with checkpoints/)")
    p.add_argument("--config", type=Path, default=None, help="a discovery YAML (configs/discover/*.yaml)")
    p.add_argument("--shard", type=_parse_shard, default=None, help="i/n: write shard i of n (default: all missing)")
    p.add_argument("--checkpoint", default=None, help="override the config's checkpoint (init, final, epoch-NNNN)")
    p.add_argument("--store", type=Path, default=None, help="store path (default: <run>/regions/<ckpt>-<hash>.zarr)")
    p.add_argument("--from-store", type=Path, default=None,
                   help="an existing store: write into it, with the discovery config it records (instead of --config)")
    p.add_argument("--deep", action="store_true",
                   help="judge existing shards by their checksums too (reads them): rewrites shards with flipped bytes")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from dataclasses import replace

    from pipeline.config import ConfigError, load_config

    if a.from_store and (a.config or a.store):
        p.error("--from-store takes the store and its config: leave out --config and --store")
    try:
        cfg = _config_from_store(a.from_store) if a.from_store else \
            load_config(a.config, DiscoverConfig) if a.config else DiscoverConfig()
    except (ConfigError, StoreError) as err:
        p.error(str(err))
    if a.checkpoint:
        cfg = replace(cfg, checkpoint=a.checkpoint)
    shards = None
    if a.shard:
        cfg = replace(cfg, n_shards=a.shard[1])
        shards = [a.shard[0]]
    from pipeline.store.identity import store_attrs, store_geometry

    # a plane store's path follows from the config; --from-store names the segment store only if it is one
    segments = a.from_store if a.from_store and store_geometry(store_attrs(a.from_store)) == "line" else None
    from .tasks import use_allocated_device

    device = use_allocated_device(cfg.device, report=log.info)  # under srun: SLURM's GPU
    try:
        status = discover_run(a.run, replace(cfg, device=device), shards, store=a.store or segments, deep=a.deep)
    except (FileNotFoundError, ConfigError, StoreError) as err:  # a missing checkpoint names those that exist
        print(f"error: {err}", file=sys.stderr)
        return 2
    for what, st in (("segments", status), ("planes", status.get("planes"))):
        if st is not None:
            log.info("%s: complete shards %d/%d%s", what, len(st["complete"]), st["n_shards"],
                     f"; leftovers of killed jobs: {st['leftovers']}" if st["leftovers"] else "")
    return 0
