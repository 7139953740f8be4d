"""Sweeps from the command line: submit, resume and inspect (the parts are modules of their own).

    python -m jobs sweep submit configs/demo.yaml [--executor slurm] [--dry-run]
    python -m jobs sweep status configs/demo.yaml   # or the sweep's folder: sweeps/demo
    python -m jobs sweep resume configs/demo.yaml     # submit only what is missing

- ``jobs/sweepconfig.py``: the sweep file, its expansion into runs, the sweep folder's identity;
- ``jobs/tasks.py``: the training, discovery and aggregation jobs (submitit callables);
- ``jobs/plan.py``: what is done and what is left, from the filesystem; job states;
- ``jobs/submit.py``: submission to SLURM, the local pool (``jobs/local.py``) or this process;
- ``jobs/ledger.py``: the record of submitted jobs.

The names most used are re-exported here.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from pipeline.config import ConfigError

from .plan import FAILED_STATES, log_tail, plan, status, summary
from .submit import check_resources, submit
from .sweepconfig import (EXECUTORS, Resources, Run, SweepConfig, claim_root, discover_config, expand, load_sweep,
                          load_sweep_or_folder, sweep_root)
from .tasks import AggregateJob, DiscoverJob, TrainJob

__all__ = ["SweepConfig", "Resources", "Run", "load_sweep", "sweep_root", "expand", "discover_config", "claim_root",
           "plan", "summary", "status", "log_tail", "FAILED_STATES", "submit", "check_resources", "TrainJob",
           "DiscoverJob", "AggregateJob", "EXECUTORS", "main"]


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m jobs sweep", description="Submit, resume and inspect a sweep.",
        epilog="example: python -m jobs sweep submit configs/demo.yaml --dry-run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=["submit", "resume", "status"])
    p.add_argument("sweep", type=Path, help="a sweep YAML (configs/sweeps/*.yaml); status also takes its folder")
    p.add_argument("--executor", choices=EXECUTORS, default=None, help="override the sweep's executor")
    p.add_argument("--dry-run", action="store_true", help="print what would be submitted, submit nothing")
    p.add_argument("--workers", type=int, default=None, help="local executor: processes at once (default: cores)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if a.action != "status" and a.sweep.is_dir():
        p.error(f"{a.sweep} is a folder: {a.action} takes the sweep file (configs/sweeps/*.yaml); status takes either")
    try:
        sweep, base = load_sweep_or_folder(a.sweep) if a.action == "status" else load_sweep(a.sweep)
    except ConfigError as err:
        p.error(str(err))
    if a.action == "status":
        print(status(sweep, base))
        return 0
    try:
        submit(sweep, base, executor=a.executor, dry_run=a.dry_run, workers=a.workers)
    except (ConfigError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
