"""Submitting a sweep: what :func:`jobs.plan.plan` lists as missing, to SLURM or this machine.

    submit(sweep, base, executor="slurm")    # returns at once; `sweep status` follows it

Submitting twice submits nothing the second time; a preempted or cancelled sweep resumes where
it was (what is done is decided from the filesystem alone). One process at a time submits to a
sweep folder (:mod:`jobs.lock`): a second one is refused, naming the first.
"""

from __future__ import annotations

import logging
from pathlib import Path

import submitit

from pipeline.config import to_dict

from .ledger import record
from .lock import sweep_lock
from .plan import jobs_in_flight, plan, summary
from .sweepconfig import Resources, SweepConfig, analysis_config, claim_root
from .tasks import AggregateJob, DiscoverJob, TrainJob

__all__ = ["submit", "check_resources", "executor_for", "wait_all", "job_error"]


log = logging.getLogger("jobs.submit")


def executor_for(kind: str, folder: Path, res: Resources, name: str):
    ex = submitit.AutoExecutor(folder=str(folder), cluster=kind)
    params = {"timeout_min": res.time_min, "cpus_per_task": res.cpus, "name": name}
    if kind == "slurm":
        params.update(slurm_array_parallelism=res.array_parallelism, slurm_mem=f"{int(res.mem_gb * 1024)}M")
        if res.partition:
            params["slurm_partition"] = res.partition
        if res.gpus:
            params["slurm_gpus_per_node"] = res.gpus
    ex.update_parameters(**params)
    return ex


def check_resources(sweep: SweepConfig, kind: str):
    """Refuse what this machine cannot do before anything is written: SLURM without ``sbatch``,
    GPUs asked of the local executors on a machine without CUDA."""
    import shutil

    if kind == "slurm" and not shutil.which("sbatch"):
        raise RuntimeError("executor 'slurm' asked for but there is no sbatch on this machine: use --executor "
                           "local, or start a cluster (scripts/slurm/start.sh)")
    if kind != "slurm":
        gpus = [s for s in ("train", "discover", "aggregate") if getattr(sweep, f"{s}_resources").gpus]
        if gpus:
            import torch

            if not torch.cuda.is_available():
                raise RuntimeError(f"{', '.join(gpus)}_resources ask for GPUs, but this machine has none that torch "
                                   f"can use (torch.cuda.is_available() is False): set gpus: 0 to run on the CPU "
                                   f"here, or submit with --executor slurm to a cluster with GPUs")


def submit(sweep: SweepConfig, base: Path, *, executor: str | None = None, dry_run: bool = False,
           wait: bool | None = None, workers: int | None = None) -> dict:
    """Submit what is missing.

    - ``slurm``: a training array, per-run discovery arrays with ``afterok`` dependencies and
      one aggregation job; returns at once (``wait=True`` waits).
    - ``local``: a pool of ``workers`` processes on this machine (default: one per core), each
      run's discovery starting as soon as its training ends, then the aggregation; waits.
    - ``debug``: every job in this process, stage after stage (for debuggers); waits.

    Holds the sweep folder's lock (:func:`jobs.lock.sweep_lock`) from before the plan to the
    return, so that two submissions never both run the missing jobs; a dry run takes none.
    Returns ``{"submitted": n, "plan": ..., "jobs": [...]}``.
    """
    kind = executor or sweep.executor
    check_resources(sweep, kind)
    if dry_run:
        return _submit(sweep, base, kind, dry_run, wait, workers)
    with sweep_lock(base / sweep.root):
        return _submit(sweep, base, kind, dry_run, wait, workers)


def _refuse_in_flight(root: Path) -> None:
    """A SLURM submission returns at once, so its lock is gone while its jobs run: a second
    submission would plan their unfinished work again and submit it twice."""
    busy = jobs_in_flight(root)
    if busy:
        shown = ", ".join(f"{jid} ({stage}, {state})" for stage, jid, state in busy[:8])
        more = f" and {len(busy) - 8} more" if len(busy) > 8 else ""
        ids = " ".join(sorted({jid.split("_")[0] for _, jid, _ in busy}))
        raise RuntimeError(f"{len(busy)} SLURM job(s) this sweep submitted are still queued or running: {shown}{more}. "
                           f"Submitting now would run their work twice. Wait for them (python -m jobs sweep status "
                           f"SWEEP), or cancel them (scancel {ids}) and submit again. Nothing was submitted.")


def _submit(sweep: SweepConfig, base: Path, kind: str, dry_run: bool, wait: bool | None, workers: int | None) -> dict:
    root = base / sweep.root
    p = plan(sweep, base)
    print(f"sweep {sweep.name} ({len(p['runs'])} runs) in {root}\n{summary(p)}")
    if dry_run:
        print("dry run: nothing submitted")
        return {"submitted": 0, "plan": p, "jobs": []}
    if kind == "slurm":
        _refuse_in_flight(root)
    claim_root(sweep, base, p["runs"])
    if kind == "local":
        from .local import run_local

        n = run_local(sweep, root, p, workers=workers, analysis=analysis_config(sweep, base))
        return {"submitted": n, "plan": p, "jobs": []}
    logs = root / "logs" / "%j"
    wait = kind != "slurm" if wait is None else wait
    submitted = 0
    all_jobs = []

    to_train = p["train"]["todo"] + p["train"]["incomplete"]
    train_jobs = {}
    if to_train:
        ex = executor_for(kind, logs, sweep.train_resources, f"{sweep.name}-train")
        with ex.batch():
            for r in to_train:
                train_jobs[r.run_id] = ex.submit(TrainJob(str(r.run_dir), to_dict(r.config)))
        for r in to_train:
            record(root, "train", train_jobs[r.run_id], run=r.run_id)
        all_jobs += list(train_jobs.values())
        submitted += len(to_train)
        if wait:
            wait_all(train_jobs.values(), "train")

    disc_jobs = []
    pending = p["discover"]["todo"] + p["discover"]["incomplete"]
    by_run = {}
    for r, dcfg, shard in pending:
        by_run.setdefault(r.run_id, (r, []))[1].append((dcfg, shard))
    for run_id, (r, items) in by_run.items():
        ex = executor_for(kind, logs, sweep.discover_resources, f"{sweep.name}-discover")
        dep = train_jobs.get(run_id)
        if dep is not None and kind == "slurm":
            ex.update_parameters(slurm_additional_parameters={"dependency": f"afterok:{dep.job_id}"})
        with ex.batch():
            jobs = [ex.submit(DiscoverJob(str(r.run_dir), to_dict(dcfg), shard)) for dcfg, shard in items]
        for job, (dcfg, shard) in zip(jobs, items):
            record(root, "discover", job, run=run_id, checkpoint=dcfg.checkpoint, shard=shard)
        disc_jobs += jobs
        all_jobs += jobs
        submitted += len(jobs)
    if wait and disc_jobs:
        wait_all(disc_jobs, "discover")

    if p["aggregate"]["todo"] or submitted:
        ex = executor_for(kind, logs, sweep.aggregate_resources, f"{sweep.name}-aggregate")
        deps = [j.job_id for j in disc_jobs] or [j.job_id for j in train_jobs.values()]
        if deps and kind == "slurm":
            ex.update_parameters(slurm_additional_parameters={"dependency": "afterok:" + ":".join(map(str, deps))})
        job = ex.submit(AggregateJob(str(root), analysis_config(sweep, base)))
        record(root, "aggregate", job)
        all_jobs.append(job)
        submitted += 1
        if wait:
            wait_all([job], "aggregate")
    print(f"submitted {submitted} job(s) with the {kind} executor; logs in {root / 'logs'}")
    return {"submitted": submitted, "plan": p, "jobs": all_jobs}


def job_error(job) -> BaseException | None:
    """Wait for ``job``; the exception it raised, or ``None``.

    A debug job runs here, in this process, when asked for its outcome. Its ``result()`` opens
    pdb's post-mortem on a failure: a prompt that waits for input, which hangs a batch command
    (or, with stdin closed, buries the error). ``exception()`` runs it without one; the
    traceback goes to this process's log instead.
    """
    from submitit.local.debug import DebugJob

    if isinstance(job, DebugJob):
        err = job.exception()
        if err is not None:
            log.error("debug job %s failed", job.job_id, exc_info=(type(err), err, err.__traceback__))
        return err
    try:
        job.result()
    except Exception as err:  # submitit re-raises the job's exception with its traceback
        return err
    return None


def wait_all(jobs, stage):
    from submitit.local.debug import DebugJob

    failed = [(job, err) for job in jobs if (err := job_error(job)) is not None]
    if failed:
        lines = "\n".join(f"  job {j.job_id}: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
                          + ("\n    (ran in this process: traceback above)" if isinstance(j, DebugJob)
                             else f"\n    log: {j.paths.stderr}") for j, e in failed)
        raise RuntimeError(f"{len(failed)} {stage} job(s) failed:\n{lines}")
