"""Sweeps: one YAML file -> training job array -> dependent discovery arrays -> aggregation.

    python -m jobs sweep submit configs/demo.yaml [--executor slurm] [--dry-run]
    python -m jobs sweep status configs/demo.yaml
    python -m jobs sweep resume configs/demo.yaml     # submit only what is missing

A sweep file names a base training recipe, named settings (overrides), a grid (for example
seeds or ResNet widths), a discovery config, the checkpoints to analyse and per-stage
resources. It expands into a deterministic list of runs, each named by its setting and a hash
of its full config, under ``<root>/runs/<run-id>/``. What is done is decided from the
filesystem alone (final checkpoints, complete shards, the aggregation marker), so submitting
twice submits nothing the second time, and a preempted or cancelled sweep resumes where it was.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import submitit
import yaml

from pipeline.config import ConfigError, config_hash, from_dict, to_dict, write_atomic
from pipeline.train import TrainConfig

from .discover import DiscoverConfig, store_path

log = logging.getLogger("jobs.sweep")
EXECUTORS = ("slurm", "local", "debug")
# SLURM states of a job that ended without finishing (prefixes: sacct may add "by <uid>", or cut names short)
FAILED_STATES = ("FAILED", "OUT_OF_ME", "NODE_FAIL", "TIMEOUT", "CANCELLED", "BOOT_FAIL", "DEADLINE")


@dataclass(frozen=True)
class Resources:
    partition: str | None = None
    gpus: int = 0
    cpus: int = 2
    mem_gb: float = 8.0
    time_min: int = 60
    array_parallelism: int = 32  # the throttle: at most this many tasks of an array at once


@dataclass(frozen=True)
class SweepConfig:
    name: str = "sweep"
    root: str = "sweeps/sweep"  # relative paths here are relative to where the command runs (the checkout)
    train: str = "configs/train/digits-vgg8.yaml"  # base recipe
    settings: dict = field(default_factory=lambda: {"vanilla": {}})  # name -> dotted-key overrides
    grid: dict = field(default_factory=lambda: {"seed": [0]})  # dotted key -> values (cartesian product)
    discover: str = "configs/discover/digits.yaml"
    checkpoints: tuple = ("init", "final")
    n_shards: int = 2
    executor: str = "local"
    train_resources: Resources = field(default_factory=Resources)
    discover_resources: Resources = field(default_factory=Resources)
    aggregate_resources: Resources = field(default_factory=lambda: Resources(cpus=2, time_min=30))

    def __post_init__(self):
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}; got {self.executor!r}")
        if not self.settings:
            raise ValueError("a sweep needs at least one setting (e.g. settings: {vanilla: {}})")


@dataclass(frozen=True)
class Run:
    run_id: str
    setting: str
    config: TrainConfig
    run_dir: Path


def _set(d: dict, dotted: str, value):
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def load_sweep(path, base=None) -> tuple[SweepConfig, Path]:
    """The sweep config and the folder its relative paths are resolved against (default: the
    current directory, as for any command line), after checking the files it names exist."""
    from pipeline.config import load_config

    cfg = load_config(Path(path), SweepConfig)
    base = Path(base or Path.cwd()).resolve()
    for key in ("train", "discover"):
        if not (base / getattr(cfg, key)).is_file():
            raise ConfigError(f"{path}: {key}: {base / getattr(cfg, key)} does not exist (relative paths are "
                              f"resolved against {base}: run from the checkout, or use absolute paths)")
    return cfg, base


def sweep_root(arg) -> tuple[Path, "SweepConfig | None"]:
    """A sweep named on the command line, as a sweep YAML or as its root folder: ``(root,
    config or None)``."""
    arg = Path(arg)
    if arg.is_file():
        sweep, base = load_sweep(arg)
        return base / sweep.root, sweep
    if arg.is_dir():
        return arg.resolve(), None
    raise ConfigError(f"{arg}: neither a sweep file (configs/*.yaml) nor a sweep folder")


def expand(sweep: SweepConfig, base: Path) -> list[Run]:
    """Every training run of the sweep, in a fixed order, named by setting and config hash."""
    recipe = yaml.safe_load((base / sweep.train).read_text()) or {}
    keys = sorted(sweep.grid)
    runs = []
    for setting in sorted(sweep.settings):
        for values in itertools.product(*(sweep.grid[k] for k in keys)):
            d = copy.deepcopy(recipe)
            for k, v in (sweep.settings[setting] or {}).items():
                _set(d, k, v)
            for k, v in zip(keys, values):
                _set(d, k, v)
            try:
                cfg = from_dict(TrainConfig, d)
            except ConfigError as err:
                raise ConfigError(f"sweep {sweep.name}, setting '{setting}': {err}") from err
            run_id = f"{setting}-{config_hash(cfg)}"
            runs.append(Run(run_id, setting, cfg, base / sweep.root / "runs" / run_id))
    hashes = [config_hash(r.config) for r in runs]
    if len(set(hashes)) != len(hashes):
        same = sorted({r.run_id for r, h in zip(runs, hashes) if hashes.count(h) > 1})
        raise ConfigError(f"sweep {sweep.name}: {', '.join(same)} are the same training config (a setting "
                          "that changes nothing?): each network would be trained twice")
    return runs


def discover_config(sweep: SweepConfig, base: Path, checkpoint: str) -> DiscoverConfig:
    from pipeline.config import load_config

    cfg = load_config(base / sweep.discover, DiscoverConfig)
    return replace(cfg, checkpoint=checkpoint, n_shards=sweep.n_shards)


# ----------------------------------------------------------------------------- the jobs


class TrainJob(submitit.helpers.Checkpointable):
    """Train (or resume) one run; on preemption or timeout, requeue a fresh instance."""

    def __init__(self, run_dir: str, config: dict):
        self.run_dir, self.config = str(run_dir), config

    def __call__(self):
        from pipeline.train import train

        _threads()
        train(from_dict(TrainConfig, self.config), self.run_dir, progress=False)
        return self.run_dir

    def checkpoint(self, *args, **kwargs):
        return submitit.helpers.DelayedSubmission(TrainJob(self.run_dir, self.config))


class DiscoverJob(submitit.helpers.Checkpointable):
    """Write one shard of one store (skipped if complete); requeue a fresh instance if preempted."""

    def __init__(self, run_dir: str, config: dict, shard: int):
        self.run_dir, self.config, self.shard = str(run_dir), config, shard

    def __call__(self):
        from .discover import run

        _threads()
        status = run(self.run_dir, from_dict(DiscoverConfig, self.config), shards=[self.shard], progress=False)
        return {"run": self.run_dir, "shard": self.shard, "complete": self.shard in status["complete"]}

    def checkpoint(self, *args, **kwargs):
        return submitit.helpers.DelayedSubmission(DiscoverJob(self.run_dir, self.config, self.shard))


class AggregateJob(submitit.helpers.Checkpointable):
    """Aggregate every complete store of the sweep (incremental: reruns are cheap)."""

    def __init__(self, root: str):
        self.root = str(root)

    def __call__(self):
        from analysis.report import aggregate

        _threads()
        written = aggregate(self.root)  # into <root>/analysis
        # the marker goes last
        write_atomic(Path(self.root) / "analysis" / "DONE", json.dumps(written, default=str, indent=1))
        return written

    def checkpoint(self, *args, **kwargs):
        return submitit.helpers.DelayedSubmission(AggregateJob(self.root))


def _threads():
    """Use the CPUs SLURM gave the job, not every core of the node (oversubscribed OpenMP
    slows small ops down by orders of magnitude)."""
    import os

    import torch

    n = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE")
    if n:
        torch.set_num_threads(max(1, int(n)))


# ----------------------------------------------------------------------------- status


def plan(sweep: SweepConfig, base: Path) -> dict:
    """Done / incomplete / to-launch per stage, from the filesystem alone."""
    from pipeline.store import shard_status

    runs = expand(sweep, base)
    train = {"done": [], "incomplete": [], "todo": []}
    discover = {"done": [], "incomplete": [], "todo": []}
    for r in runs:
        ck = r.run_dir / "checkpoints"
        key = "done" if (ck / "final.pt").exists() else "incomplete" if (ck / "LAST").exists() else "todo"
        train[key].append(r)
        for checkpoint in sweep.checkpoints:
            dcfg = discover_config(sweep, base, checkpoint)
            store = store_path(r.run_dir, dcfg)
            complete = set()
            started = store.exists()
            if started:
                st = shard_status(store)
                complete = set(st["complete"])
            for shard in range(sweep.n_shards):
                item = (r, dcfg, shard)
                discover["done" if shard in complete else "incomplete" if started else "todo"].append(item)
    marker = base / sweep.root / "analysis" / "DONE"
    aggregate = {"done": [1] if marker.exists() and not (discover["todo"] or discover["incomplete"]) else [],
                 "incomplete": [], "todo": []}
    if not aggregate["done"]:
        aggregate["todo"] = [1]
    return {"runs": runs, "train": train, "discover": discover, "aggregate": aggregate}


def summary(p: dict) -> str:
    lines = [f"{'stage':<10} {'done':>6} {'incomplete':>11} {'to launch':>10}"]
    for stage in ("train", "discover", "aggregate"):
        s = p[stage]
        lines.append(f"{stage:<10} {len(s['done']):>6} {len(s['incomplete']):>11} {len(s['todo']):>10}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- submission


def _executor(kind: str, folder: Path, res: Resources, name: str):
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


def _record(root: Path, stage: str, job, **extra):
    with open(root / "submissions.jsonl", "a") as f:
        f.write(json.dumps({"time": time.time(), "stage": stage, "job_id": str(job.job_id),
                            "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr), **extra}) + "\n")


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


# what makes a sweep folder "this sweep": everything but where and how its jobs run
_IDENTITY_EXCLUDED = ("executor", "train_resources", "discover_resources", "aggregate_resources", "root")


def claim_root(sweep: SweepConfig, base: Path, runs: list[Run]) -> None:
    """Make ``<root>`` this sweep's folder, or refuse if it holds another sweep.

    A folder that holds a different sweep (another name, settings, grid, discovery config,
    checkpoints or shards, or runs from an edited training recipe) would mix two experiments
    in one analysis: nothing is written and the error lists the differences. Executor and
    resources may change between submissions (resume a local sweep on SLURM, for example).
    """
    root = base / sweep.root
    have_file, runs_file = root / "sweep.yaml", root / "runs.txt"
    want = {k: v for k, v in to_dict(sweep).items() if k not in _IDENTITY_EXCLUDED}
    ids = sorted(r.run_id for r in runs)
    if have_file.exists():
        have = {k: v for k, v in (yaml.safe_load(have_file.read_text()) or {}).items() if k not in _IDENTITY_EXCLUDED}
        diff = [k for k in sorted(set(want) | set(have)) if json.dumps(want.get(k), sort_keys=True, default=str)
                != json.dumps(have.get(k), sort_keys=True, default=str)]
        if not diff and runs_file.exists() and runs_file.read_text().split() != ids:
            diff = ["the training runs (the recipe file changed since the sweep was submitted)"]
        if diff:
            detail = "; ".join(d if d.startswith("the ") else f"{d}: folder has {have.get(d)!r}, config has "
                               f"{want.get(d)!r}" for d in diff)
            raise ConfigError(f"{root} already holds another sweep ({have_file}): {detail}. Nothing was written. "
                              "Give this sweep its own root (root: in the sweep file), or move that folder away.")
    elif root.exists() and any(root.iterdir()):
        raise ConfigError(f"{root} exists and is not a sweep folder (no sweep.yaml): nothing was written. Give the "
                          "sweep another root, or empty the folder.")
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(have_file, yaml.safe_dump(to_dict(sweep), sort_keys=True))
    write_atomic(runs_file, "\n".join(ids) + "\n")


def submit(sweep: SweepConfig, base: Path, *, executor: str | None = None, dry_run: bool = False,
           wait: bool | None = None, workers: int | None = None) -> dict:
    """Submit what is missing.

    - ``slurm``: a training array, per-run discovery arrays with ``afterok`` dependencies and
      one aggregation job; returns at once (``wait=True`` waits).
    - ``local``: a pool of ``workers`` processes on this machine (default: one per core), each
      run's discovery starting as soon as its training ends, then the aggregation; waits.
    - ``debug``: every job in this process, stage after stage (for debuggers); waits.

    Returns ``{"submitted": n, "plan": ..., "jobs": [...]}``.
    """
    kind = executor or sweep.executor
    check_resources(sweep, kind)
    root = base / sweep.root
    p = plan(sweep, base)
    print(f"sweep {sweep.name} ({len(p['runs'])} runs) in {root}\n{summary(p)}")
    if dry_run:
        print("dry run: nothing submitted")
        return {"submitted": 0, "plan": p, "jobs": []}
    claim_root(sweep, base, p["runs"])
    if kind == "local":
        from .local import run_local

        n = run_local(sweep, root, p, workers=workers)
        return {"submitted": n, "plan": p, "jobs": []}
    logs = root / "logs" / "%j"
    wait = kind != "slurm" if wait is None else wait
    submitted = 0
    all_jobs = []

    to_train = p["train"]["todo"] + p["train"]["incomplete"]
    train_jobs = {}
    if to_train:
        ex = _executor(kind, logs, sweep.train_resources, f"{sweep.name}-train")
        with ex.batch():
            for r in to_train:
                train_jobs[r.run_id] = ex.submit(TrainJob(str(r.run_dir), to_dict(r.config)))
        for r in to_train:
            _record(root, "train", train_jobs[r.run_id], run=r.run_id)
        all_jobs += list(train_jobs.values())
        submitted += len(to_train)
        if wait:
            _wait(train_jobs.values(), "train")

    disc_jobs = []
    pending = p["discover"]["todo"] + p["discover"]["incomplete"]
    by_run = {}
    for r, dcfg, shard in pending:
        by_run.setdefault(r.run_id, (r, []))[1].append((dcfg, shard))
    for run_id, (r, items) in by_run.items():
        ex = _executor(kind, logs, sweep.discover_resources, f"{sweep.name}-discover")
        dep = train_jobs.get(run_id)
        if dep is not None and kind == "slurm":
            ex.update_parameters(slurm_additional_parameters={"dependency": f"afterok:{dep.job_id}"})
        with ex.batch():
            jobs = [ex.submit(DiscoverJob(str(r.run_dir), to_dict(dcfg), shard)) for dcfg, shard in items]
        for job, (dcfg, shard) in zip(jobs, items):
            _record(root, "discover", job, run=run_id, checkpoint=dcfg.checkpoint, shard=shard)
        disc_jobs += jobs
        all_jobs += jobs
        submitted += len(jobs)
    if wait and disc_jobs:
        _wait(disc_jobs, "discover")

    if p["aggregate"]["todo"] or submitted:
        ex = _executor(kind, logs, sweep.aggregate_resources, f"{sweep.name}-aggregate")
        deps = [j.job_id for j in disc_jobs] or [j.job_id for j in train_jobs.values()]
        if deps and kind == "slurm":
            ex.update_parameters(slurm_additional_parameters={"dependency": "afterok:" + ":".join(map(str, deps))})
        job = ex.submit(AggregateJob(str(root)))
        _record(root, "aggregate", job)
        all_jobs.append(job)
        submitted += 1
        if wait:
            _wait([job], "aggregate")
    print(f"submitted {submitted} job(s) with the {kind} executor; logs in {root / 'logs'}")
    return {"submitted": submitted, "plan": p, "jobs": all_jobs}


def _wait(jobs, stage):
    failed = []
    for job in jobs:
        try:
            job.result()
        except Exception as err:  # submitit re-raises the job's exception with its traceback
            failed.append((job, err))
    if failed:
        lines = "\n".join(f"  job {j.job_id}: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
                          f"\n    log: {j.paths.stderr}" for j, e in failed)
        raise RuntimeError(f"{len(failed)} {stage} job(s) failed:\n{lines}")


def status(sweep: SweepConfig, base: Path) -> str:
    """The filesystem's view, plus the scheduler's state of every recorded job and the log
    path and last lines of each failed one."""
    root = base / sweep.root
    out = [f"sweep {sweep.name} in {root}", summary(plan(sweep, base))]
    sub = root / "submissions.jsonl"
    if sub.exists():
        records = [json.loads(line) for line in sub.read_text().splitlines() if line.strip()]
        states = _sacct([r["job_id"] for r in records])
        failed = []
        counts = {}
        for r in records:
            st = states.get(r["job_id"], "local (see logs)" if r["job_id"].startswith("local-") else "unknown")
            counts[st] = counts.get(st, 0) + 1
            if st.startswith(FAILED_STATES):
                failed.append((r, st))
        out.append("jobs: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        for r, st in failed:
            out.append(f"  {r['stage']} job {r['job_id']} {st} ({r.get('run', '')}): {r['stderr']}\n"
                       f"{log_tail(r['stderr'])}")
    return "\n".join(out)


def log_tail(path, n: int = 6) -> str:
    """The last ``n`` lines of a job's log, indented (empty if there is no log)."""
    path = Path(path)
    if not path.exists():
        return ""
    return "\n".join("      " + line for line in path.read_text(errors="replace").strip().splitlines()[-n:])


def _sacct(ids) -> dict:
    import shutil
    import subprocess

    ids = [i for i in ids if i.split("_")[0].isdigit()]  # SLURM ids only (not the local pool's)
    if not ids or not shutil.which("sacct"):
        return {}
    res = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(sorted(set(ids)))],
                         capture_output=True, text=True)
    states = {}
    for line in res.stdout.splitlines():
        if "|" in line:
            jid, st = line.split("|", 1)
            states[jid] = st.split()[0] if st else st
    return states


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m jobs sweep", description="Submit, resume and inspect a sweep.",
        epilog="example: python -m jobs sweep submit configs/demo.yaml --dry-run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=["submit", "resume", "status"])
    p.add_argument("sweep", type=Path, help="a sweep YAML (configs/sweeps/*.yaml)")
    p.add_argument("--executor", choices=EXECUTORS, default=None, help="override the sweep's executor")
    p.add_argument("--dry-run", action="store_true", help="print what would be submitted, submit nothing")
    p.add_argument("--workers", type=int, default=None, help="local executor: processes at once (default: cores)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        sweep, base = load_sweep(a.sweep)
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
