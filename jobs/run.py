"""A sweep from start to report: train, discover, aggregate, report, resuming what exists.

    python -m jobs run configs/demo.yaml                      # this machine (local executor)
    python -m jobs run configs/demo.yaml --executor slurm     # the same on a SLURM cluster

Runs every missing job of the sweep (training, then each run's discovery shards, then the
aggregation), waits for them, and writes ``<root>/report/index.html`` and ``report.md``. It is
safe to run again: finished work is found on disk and skipped, so after a crash, a
preemption or Ctrl-C the same command resumes. One ``run`` at a time per sweep folder: it holds
``<root>/.lock`` (:mod:`jobs.lock`) until the report is written, and a second is refused.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("jobs.run")


def wait_slurm(jobs, poll_s: float = 10.0, timeout_s: float | None = None) -> None:
    """Wait for submitit SLURM jobs with a progress bar; on the first failure cancel this
    submission's jobs that can no longer run (their dependencies failed) and raise with the
    failed job's log."""
    from tqdm.auto import tqdm

    from .sweep import FAILED_STATES, log_tail

    start = time.time()
    with tqdm(total=len(jobs), unit="job", desc="slurm jobs", dynamic_ncols=True) as bar:
        while True:
            states = [j.state for j in jobs]  # submitit asks sacct, at most once per poll for all jobs
            done = sum(s == "COMPLETED" for s in states)
            bar.n = done
            bar.set_postfix(running=sum(s == "RUNNING" for s in states),
                            queued=sum(s in ("PENDING", "REQUEUED") for s in states))
            bar.refresh()
            failed = [(j, s) for j, s in zip(jobs, states) if s.startswith(FAILED_STATES)]
            if failed:
                for j, s in zip(jobs, states):
                    if s in ("PENDING", "REQUEUED"):
                        j.cancel(check=False)
                lines = "\n".join(f"  job {j.job_id} {s}; log: {j.paths.stderr}\n" + log_tail(j.paths.stderr)
                                  for j, s in failed)
                raise RuntimeError(f"{len(failed)} SLURM job(s) failed; their pending dependants were cancelled. "
                                   f"Fix the cause and run the same command again to resume:\n{lines}")
            if done == len(jobs):
                return
            if timeout_s is not None and time.time() - start > timeout_s:
                raise TimeoutError(f"{len(jobs) - done} job(s) still not done after {timeout_s:.0f} s")
            time.sleep(poll_s)


def run(sweep_file, executor: str | None = None, workers: int | None = None, poll_s: float = 10.0,
        base=None) -> dict:
    """Submit what is missing, wait, write the report; returns the report's files and timings.
    Relative paths in the sweep file resolve against ``base`` (default: the current folder).
    The sweep folder's lock is held throughout: :class:`jobs.lock.SweepLocked` if another
    process holds it, before anything is submitted."""
    from .lock import sweep_lock
    from .report import report
    from .sweep import load_sweep, submit

    sweep, base = load_sweep(sweep_file, base)
    kind = executor or sweep.executor
    root = base / sweep.root
    with sweep_lock(root):
        t0 = time.perf_counter()
        res = submit(sweep, base, executor=kind, workers=workers)
        if kind == "slurm" and res["jobs"]:
            wait_slurm(res["jobs"], poll_s=poll_s)
        t1 = time.perf_counter()
        written = report(root, title=sweep.name)
        t2 = time.perf_counter()
    return {**written, "root": root, "jobs": res["submitted"], "jobs_s": t1 - t0, "report_s": t2 - t1}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jobs run", description=__doc__.split("\n\n")[0],
        epilog="example: python -m jobs run configs/demo.yaml --executor local --workers 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweep", type=Path, help="a sweep YAML (configs/demo.yaml, configs/sweeps/*.yaml)")
    p.add_argument("--executor", choices=("local", "slurm", "debug"), default=None,
                   help="override the sweep's executor: local (this machine, a process per core), slurm, "
                        "or debug (everything in this process)")
    p.add_argument("--workers", type=int, default=None, help="local executor: processes at once (default: cores)")
    p.add_argument("--base", type=Path, default=None,
                   help="folder the sweep file's relative paths resolve against (default: the current folder)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("distributed").setLevel(logging.WARNING)
    from analysis.config import AnalysisError
    from pipeline.config import ConfigError

    start = time.perf_counter()
    try:
        out = run(a.sweep, executor=a.executor, workers=a.workers, base=a.base)
    except (ConfigError, AnalysisError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: finished work is saved (checkpoints, complete shards); run the same command again "
              "to resume", file=sys.stderr)
        return 130
    import json

    found = json.loads(out["findings"].read_text())["findings"]
    print("\nfindings:")
    for f in found:
        print(f"  - {f['text']}")
    print(f"\n{out['jobs']} job(s) in {out['jobs_s']:.0f} s, report in {out['report_s']:.1f} s "
          f"(total {time.perf_counter() - start:.0f} s)")
    print(f"report:  {out['html']}\n         {out['markdown']}\nresults: {out['root']}: analysis/paths.parquet (one "
          f"row per network and path), runs/*/regions/*.zarr (every region); the notebook analysis/explore.ipynb "
          f"of the checkout shows how to read them")
    return 0
