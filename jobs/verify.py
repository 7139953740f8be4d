"""Check stores against their shards' manifests: which shards are damaged, and how to rewrite them.

    python -m jobs verify runs/digits-vgg8/regions/final-6b2d1440.zarr    # one store
    python -m jobs verify sweeps/demo --deep                              # every store of a sweep

The cheap check (the default) stats every file of every complete shard and compares each
array's own metadata (shape, dtype, chunks) and chunk files with the manifest: a missing,
truncated or added chunk or metadata file, or an edited manifest or array metadata, is found.
It is the check the readers and the aggregation apply (:mod:`pipeline.store.manifest`). ``--deep`` also reads every file and compares its
checksum (flipped bytes); it reads the whole store. Each damaged shard is printed with what is
wrong and the command that rewrites it. A store that is not its run's (its recorded run,
checkpoint sha256 or name disagree with where it sits: another network's store copied into
place, :mod:`pipeline.store.placement`) is reported too. Exit status 1 if any shard is damaged
or any store misplaced.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def stores_under(arg: Path) -> tuple[Path, list[Path]]:
    """The stores named by ``arg``: a store itself, a sweep folder or a sweep YAML (every
    ``<run>/regions/*.zarr`` below its root). Returns ``(root, stores)``."""
    from analysis.collect import find_stores
    from pipeline.store.identity import is_store

    if is_store(arg):
        return arg.parent, [arg]
    from .sweepconfig import sweep_root

    root = sweep_root(arg)[0]
    return root, find_stores(root)


def verify(stores, root: Path, deep: bool = False, out=None) -> int:
    """Print each store's damaged shards (with the error and the command that rewrites each),
    missing shards and leftovers; returns the number of damaged shards and misplaced stores.
    ``out``: where to print (``sys.stdout`` at the time of the call by default)."""
    out = sys.stdout if out is None else out
    from pipeline.store.identity import StoreError
    from pipeline.store.placement import placement_problems
    from pipeline.store.verify import shard_status

    damaged = 0
    for store in stores:
        name = store.relative_to(root).as_posix() if store.is_relative_to(root) else str(store)
        try:
            st = shard_status(store, deep=deep)
            misplaced = placement_problems(store)
        except StoreError as err:
            print(f"{name}: cannot be read as a store: {err}", file=out)
            damaged += 1
            continue
        if misplaced:
            print(f"{name}: NOT THIS RUN'S STORE: " + "; ".join(misplaced)
                  + " (remove it and rerun discovery for this run)", file=out)
            damaged += 1
            continue
        damaged += len(st["damaged"])
        notes = [f"{len(st['complete'])} of {st['n_shards']} shards complete and whole"]
        not_written = [i for i in st["missing"] if i not in st["damaged"]]
        if not_written:
            notes.append(f"not written yet or interrupted: {not_written}")
        if st["leftovers"]:
            notes.append(f"leftovers of killed writers (ignored, safe to delete): {st['leftovers']}")
        print(f"{name}: " + "; ".join(notes), file=out)
        for i in st["damaged"]:
            print(f"  DAMAGED shard {i}: {st['errors'][i]}", file=out)
    return damaged


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jobs verify", description=__doc__.splitlines()[0],
        epilog="example: python -m jobs verify configs/demo.yaml --deep",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", type=Path, help="a store (*.zarr), a sweep folder, or a sweep YAML")
    p.add_argument("--deep", action="store_true", help="compare every file's checksum too (reads the whole store)")
    a = p.parse_args(argv)
    from analysis.config import AnalysisError
    from pipeline.config import ConfigError

    try:
        root, stores = stores_under(a.target)
    except (ConfigError, AnalysisError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    damaged = verify(stores, root, deep=a.deep)
    check = "deep (checksums)" if a.deep else "cheap (file sizes; --deep also compares checksums)"
    print(f"{len(stores)} store(s) checked, {check}: "
          + (f"{damaged} damaged shard(s) or misplaced store(s)" if damaged else "no damaged shard"))
    return 1 if damaged else 0
