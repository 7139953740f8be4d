"""The jobs a sweep submits: submitit callables, the same objects on SLURM and on this machine.

Each is :class:`submitit.helpers.Checkpointable`: on a timeout or a preemption submitit calls
``checkpoint``, which requeues a fresh instance; the stage's own state on disk (a run's
``checkpoints/LAST``, a store's complete shards, the aggregation cache) makes the requeued
job resume where the first one stopped.

Each job ignores the preemption signal once its work is done (:func:`ignore_preemption`): a
signal that lands while Python exits would otherwise kill a finished job, which SLURM then
records as FAILED.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import submitit

from pipeline.config import from_dict, write_atomic
from pipeline.stages.discovery import DiscoverConfig, discover_run, shard_done
from pipeline.stages.train import TrainConfig

__all__ = ["TrainJob", "DiscoverJob", "AggregateJob", "use_allocated_cpus", "use_allocated_device", "job_device",
           "ignore_preemption"]


class TrainJob(submitit.helpers.Checkpointable):
    """Train (or resume) one run; on preemption or timeout, requeue a fresh instance."""

    def __init__(self, run_dir: str, config: dict):
        self.run_dir, self.config = str(run_dir), config

    def __call__(self):
        from pipeline.stages.train import train

        use_allocated_cpus()
        train(from_dict(TrainConfig, self.config), self.run_dir, progress=False)
        ignore_preemption()
        return self.run_dir

    def checkpoint(self, *args, **kwargs):
        return submitit.helpers.DelayedSubmission(TrainJob(self.run_dir, self.config))


class DiscoverJob(submitit.helpers.Checkpointable):
    """Write one shard of one store, and of its plane store if any (skipped if complete);
    requeue a fresh instance if preempted."""

    def __init__(self, run_dir: str, config: dict, shard: int):
        self.run_dir, self.config, self.shard = str(run_dir), config, shard

    def __call__(self):
        from dataclasses import replace

        use_allocated_cpus()
        cfg = from_dict(DiscoverConfig, self.config)
        cfg = replace(cfg, device=use_allocated_device(cfg.device))  # a local field: the store's id is the same
        status = discover_run(self.run_dir, cfg, shards=[self.shard], progress=False)
        ignore_preemption()
        return {"run": self.run_dir, "shard": self.shard, "complete": shard_done(status, self.shard)}

    def checkpoint(self, *args, **kwargs):
        return submitit.helpers.DelayedSubmission(DiscoverJob(self.run_dir, self.config, self.shard))


class AggregateJob(submitit.helpers.Checkpointable):
    """Aggregate every complete store of the sweep (incremental: reruns are cheap), with the
    sweep's analysis config (a mapping of :class:`analysis.config.AnalysisConfig`)."""

    def __init__(self, root: str, config: dict | None = None):
        self.root, self.config = str(root), dict(config or {})

    def __call__(self):
        from analysis.config import AnalysisConfig
        from analysis.aggregation import aggregate

        use_allocated_cpus()
        written = aggregate(self.root, config=from_dict(AnalysisConfig, self.config))  # into <root>/analysis
        # the marker goes last
        write_atomic(Path(self.root) / "analysis" / "DONE", json.dumps(written, default=str, indent=1))
        ignore_preemption()
        return written

    def checkpoint(self, *args, **kwargs):
        return submitit.helpers.DelayedSubmission(AggregateJob(self.root, self.config))


def use_allocated_cpus():
    """Use the CPUs SLURM gave the job, not every core of the node (oversubscribed OpenMP
    slows small ops down by orders of magnitude)."""
    import os

    import torch

    n = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE")
    if n:
        torch.set_num_threads(max(1, int(n)))


def job_device(requested: str, env, n_cuda: int) -> tuple[str, str]:
    """The torch device a job uses for ``requested`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``),
    and why, in words for its log; ``env`` is the job's environment, ``n_cuda`` how many GPUs
    torch sees (``torch.cuda.device_count()``).

    SLURM gives a job its GPUs by setting ``CUDA_VISIBLE_DEVICES`` (``SLURM_JOB_GPUS`` in a
    batch job, ``SLURM_STEP_GPUS`` in a step, name the same GPUs by their index on the node),
    so torch numbers the job's own GPUs from 0 and ``cuda:0`` is the first one this job was
    given, whichever it is on the node: the device never comes from ``SLURM_LOCALID`` or the
    like, so jobs sharing a node cannot collide. A SLURM job given no GPU runs ``auto`` on the
    CPU even where torch sees GPUs (without device cgroups a job sees every GPU of the node:
    using one would take another job's). Raises ``RuntimeError`` for what cannot work: a
    ``cuda`` device torch does not have, or GPUs from SLURM without ``CUDA_VISIBLE_DEVICES``
    while torch sees several (which one is ours is unknown)."""
    if requested == "cpu":
        return "cpu", "device: cpu asked for"
    visible = env.get("CUDA_VISIBLE_DEVICES")
    slurm_gpus = env.get("SLURM_STEP_GPUS") or env.get("SLURM_JOB_GPUS")
    in_slurm = bool(env.get("SLURM_JOB_ID"))
    if in_slurm and slurm_gpus:
        source = (f"CUDA_VISIBLE_DEVICES={visible} from SLURM" if visible is not None else
                  f"SLURM gave GPU {slurm_gpus} but set no CUDA_VISIBLE_DEVICES")
        if visible is None and n_cuda > 1:
            raise RuntimeError(f"{source}, and torch sees {n_cuda} GPUs: which is this job's is unknown (check the "
                               "cluster's gres.conf; SLURM sets CUDA_VISIBLE_DEVICES for the GPUs it allocates)")
    elif in_slurm:
        source = "SLURM gave this job no GPU"
        if requested == "auto":
            return "cpu", source + (f" (torch sees {n_cuda}, other jobs' to use: ask for gpus in the job's resources, "
                                    "or set device: cuda)" if n_cuda else "")
    else:
        source = f"CUDA_VISIBLE_DEVICES={visible}" if visible is not None else "CUDA_VISIBLE_DEVICES unset"
    if n_cuda == 0:
        if requested == "auto":
            return "cpu", f"no CUDA visible; {source}"
        raise RuntimeError(f"device: {requested} asked for, but torch sees no GPU ({source})")
    index = 0 if requested in ("auto", "cuda") else int(requested.split(":", 1)[1])
    if index >= n_cuda:
        raise RuntimeError(f"device: {requested} asked for, but torch sees {n_cuda} GPU(s) ({source})")
    return f"cuda:{index}", f"{source}; torch sees {n_cuda}"


def use_allocated_device(requested: str = "auto", report=functools.partial(print, flush=True)) -> str:
    """The device this job uses (:func:`job_device` on this process's environment), reported with
    the reason (``report``: print, to the job's output, or a logger's method):
    ``device cuda:0 (CUDA_VISIBLE_DEVICES=1 from SLURM; torch sees 1)``."""
    import os

    import torch

    device, why = job_device(requested, os.environ, torch.cuda.device_count())
    report(f"device {device} ({why})")
    return device


def ignore_preemption():
    """Ignore submitit's preemption and timeout signal (USR2 unless ``SUBMITIT_PREEMPT_SIGNAL`` says
    otherwise) from here on: call it when the job's work is done and on disk.

    SLURM sends the signal ``signal_delay_s`` before the time limit, whether or not the job is
    about to end. If it lands while Python exits (finalisation puts every Python-level handler
    back to the default, and USR2's default is to terminate), it kills a job that has finished, and SLURM records FAILED (seen in CI: "Exiting
    after successful completion", then FAILED). An ignored signal stays ignored through exit.
    There is nothing left to checkpoint, and SLURM's SIGKILL at the limit still ends a job that
    hangs.

    Only in a process submitit started for the job (it sets ``SUBMITIT_EXECUTOR``): a job run in
    the caller's process (the debug executor, the local pool's aggregation) leaves its signals
    alone."""
    import os
    import signal

    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    signal.signal(getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG), signal.SIG_IGN)
