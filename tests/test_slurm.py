"""Integration on a real single-node SLURM cluster (scripts/slurm/start.sh): sbatch via submitit.

The fixture starts the cluster's daemons that are not running, recording their PIDs in its own
state folder, and stops exactly those at the end. Marked slow: `make test` (CI) runs them.

The fault tests at the end run the jobs' checkpoint path for real: a training job that reaches
its time limit (SLURM's USR2 before the limit, submitit's checkpoint and requeue) and a discovery
job preempted twice (USR2 first, then a plain ``scontrol requeue``, which kills it outright).
"""

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.stages.discovery import discover_run
from jobs.sweep import expand, load_sweep, plan, status, submit
from pipeline.store.lines import open_store
from tests.sweeps import tiny_sweep

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm-state")
    env = {**os.environ, "CI_STATE": str(state)}
    out = subprocess.run(["bash", str(ROOT / "scripts/slurm/start.sh")], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    yield
    subprocess.run(["bash", str(ROOT / "scripts/slurm/stop.sh")], env=env, capture_output=True, text=True)


def _wait_done(sweep, base, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        p = plan(sweep, base)
        if not (p["train"]["todo"] or p["train"]["incomplete"] or p["discover"]["todo"] or p["discover"]["incomplete"]
                or p["aggregate"]["todo"]):
            return p
        time.sleep(2)
    raise AssertionError("sweep did not finish in time:\n" + status(sweep, base))


def _squeue(name):
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i %t"], capture_output=True, text=True).stdout
    return [line.split() for line in out.splitlines()]


def test_sweep_end_to_end_through_sbatch(cluster, tmp_path):
    """`python -m jobs run --executor slurm`: submit, wait with sacct, report."""
    from jobs.run import run

    path = tiny_sweep(tmp_path, executor="slurm")
    out = run(path, poll_s=2)
    assert out["jobs"] == 11 and out["html"].exists() and out["markdown"].exists()
    sweep, base = load_sweep(path)
    p = _wait_done(sweep, base)
    for r in p["runs"]:
        assert (r.run_dir / "checkpoints" / "final.pt").exists()
        for store in (r.run_dir / "regions").glob("*.zarr"):
            assert len(open_store(store).paths()) == 4
    assert "COMPLETED 11" in status(sweep, base)
    assert submit(sweep, base)["submitted"] == 0  # a second submission of a finished sweep


def test_failing_job_is_reported_with_its_traceback(cluster, tmp_path):
    from jobs.run import run

    extra = {"data": {"name": "cifar10", "root": str(tmp_path / "no-cifar")}}
    path = tiny_sweep(tmp_path, name="broken", variants={"vanilla": {}}, train_extra=extra, executor="slurm")
    with pytest.raises(RuntimeError, match="(?s)1 SLURM job.*failed.*dependants were cancelled.*DatasetNotFoundError"):
        run(path, poll_s=2)
    deadline = time.time() + 30  # the dependants that could never run are gone from the queue
    while (_squeue("broken-discover") or _squeue("broken-aggregate")) and time.time() < deadline:
        time.sleep(1)
    assert not _squeue("broken-discover") and not _squeue("broken-aggregate")
    sweep, base = load_sweep(path)
    report = status(sweep, base)
    assert "train job" in report and "FAILED" in report
    assert "DatasetNotFoundError" in report and "no-cifar" in report  # the traceback's last lines


def test_cancelled_discovery_resumes_to_an_equal_store(cluster, tmp_path):
    # 960 segments: enough that the shard cannot finish in the grace SLURM gives a cancelled
    # job (SIGTERM, which submitit ignores, then SIGKILL after KillWait)
    sweep, base = load_sweep(tiny_sweep(tmp_path, name="cancel", variants={"vanilla": {}}, n_paths=40, anchors=24,
                                        n_shards=1, executor="slurm"))
    from dataclasses import replace

    sweep = replace(sweep, checkpoints=("final",))
    submit(sweep, base)
    run = expand(sweep, base)[0]
    deadline = time.time() + 300
    while time.time() < deadline and not list((run.run_dir / "regions").glob("final-*.zarr/shard-00000.tmp-*/regions/t_start/c/*")):
        time.sleep(0.5)
    jobs = _squeue("cancel-discover")
    assert jobs and jobs[0][1] == "R", jobs
    subprocess.run(["scancel", "-n", "cancel-discover"], check=True)
    subprocess.run(["scancel", "-n", "cancel-aggregate"], check=True)
    time.sleep(3)
    p = plan(sweep, base)
    assert p["discover"]["incomplete"] and not p["discover"]["done"]
    assert submit(sweep, base)["submitted"] == 2  # the shard and the aggregation, nothing else
    _wait_done(sweep, base)
    store = next((run.run_dir / "regions").glob("final-*.zarr"))
    from jobs.sweep import discover_config

    clean = tmp_path / "clean.zarr"
    discover_run(run.run_dir, discover_config(sweep, base, "final"), progress=False, store=clean)
    a, b = open_store(store), open_store(clean)
    for name in ("density", "deviation", "path_id"):
        np.testing.assert_array_equal(a.segment_array(name), b.segment_array(name))
    np.testing.assert_array_equal(a.regions("t_start").compute(), b.regions("t_start").compute())


# ---------- faults: time limits and preemptions, through submitit's checkpoint path ----------

TERMINAL = {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE"}


def _attempts(job_id):
    """One ``(state, start, end)`` per run of the job, oldest first (``sacct --duplicates``)."""
    out = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-j", str(job_id), "-o", "State,Start,End"],
                         capture_output=True, text=True).stdout
    return [(state.split()[0], start, end) for state, start, end in (line.split("|") for line in out.splitlines())]


def _job_state(job_id):
    out = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%t"], capture_output=True, text=True).stdout
    return out.strip()


def _wait_finished(job, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = _attempts(job.job_id)
        if runs and runs[-1][0] in TERMINAL and not _job_state(job.job_id):
            return runs
        time.sleep(1)
    subprocess.run(["scancel", str(job.job_id)])
    raise AssertionError(f"job {job.job_id} did not finish in {timeout} s: {_attempts(job.job_id)}\n" + _log(job))


def _log(job):
    """The job's submitit log, every attempt appended (its warnings also go to stderr)."""
    return job.paths.stdout.read_text() if job.paths.stdout.exists() else ""


def _stamp(sacct_time):
    from datetime import datetime

    return datetime.fromisoformat(sacct_time).timestamp()  # sacct prints local time, as does fromtimestamp


@pytest.fixture
def cancel_at_end():
    """Job ids to cancel when the test ends, whatever happened (a no-op for finished jobs)."""
    ids = []
    yield ids
    if ids:
        subprocess.run(["scancel", *map(str, ids)], capture_output=True)


def _executor(folder, name, time_min, max_num_timeout=3, **params):
    """An executor set up as :func:`jobs.submit.executor_for` sets it up, plus ``params``
    (``max_num_timeout``, how many timeouts submitit requeues, is a constructor argument)."""
    import submitit

    ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="slurm", slurm_max_num_timeout=max_num_timeout)
    ex.update_parameters(timeout_min=time_min, cpus_per_task=1, name=name, slurm_mem="1024M", **params)
    return ex


# 0.11-0.28 s an epoch here (a quiet fast day to loaded): 66-170 s of training, more than a first
# attempt can do (below); at 300 epochs a quiet day's 34 s ended before the first signal
LONG_TRAIN = {"recipe": "vanilla", "model": {"name": "vgg8", "widths": [4, 8]}, "data": {"name": "digits"},
              "lr": 0.02, "batch_size": 16, "stop": "epochs", "max_epochs": 600, "step_epochs": 200,
              "checkpoint_every": 1}


def test_training_past_its_time_limit_resumes_to_the_same_weights(cluster, tmp_path, cancel_at_end):
    """A 1-minute job asks SLURM for USR2 10 s before its limit; submitit calls ``TrainJob.checkpoint``
    and requeues the job, which resumes from ``checkpoints/LAST``.

    SLURM checks time limits every 30 s and signals at the first check that finds the limit less
    than delay + 30 s away: 20-50 s into the first attempt. A requeued attempt starts ~12 s after
    the check that ended the last one (the cluster's cred_expire=10), so its signal comes at the
    check after next, ~48 s in. 66-170 s of training (600 epochs) thus cannot end in the first
    attempt, and ends in the second to fourth. (Longer delays are worse: with 20 s the requeued attempts lasted to the
    next check, 16 s; with 40 s every attempt got its signal at its first check, 8 s in.)"""
    import pandas as pd
    import torch

    from jobs.tasks import TrainJob
    from pipeline.config import from_dict, to_dict
    from pipeline.stages.train import TrainConfig, train

    cfg = from_dict(TrainConfig, LONG_TRAIN)
    run_dir = tmp_path / "run"
    max_timeouts = 8
    ex = _executor(tmp_path / "logs", "fault-train", 1, slurm_signal_delay_s=10,
                   max_num_timeout=max_timeouts)
    job = ex.submit(TrainJob(str(run_dir), to_dict(cfg)))
    cancel_at_end.append(job.job_id)
    t0 = time.time()
    reference = tmp_path / "reference"
    # uninterrupted, in this process while the job runs; one torch thread here (conftest) as in the job
    train(cfg, reference, device="cpu")
    t_ref = time.time() - t0
    runs = _wait_finished(job, timeout=900)
    log = _log(job)
    print(f"\ntraining job {job.job_id}: {len(runs)} attempts {runs}; reference {t_ref:.0f} s, "
          f"job {time.time() - t0:.0f} s")
    states = [r[0] for r in runs]
    assert states[-1] == "COMPLETED" and set(states[:-1]) == {"REQUEUED"} and len(runs) >= 2, (runs, log)
    assert len(runs) <= max_timeouts + 1
    assert job.result() == str(run_dir)
    # every attempt but the last caught SLURM's USR2 (a timeout for submitit: the limit is < 10 min) and requeued
    assert log.count("Starting with JobEnvironment") == len(runs), log
    assert log.count("Caught signal SIGUSR2") == len(runs) - 1, log
    # submitit logs "Requeued job" only after `scontrol requeue` returns, and SLURM's SIGTERM/SIGKILL of the
    # requeued attempt can come first (seen in CI): the requeue itself is sacct's REQUEUED states above
    assert log.count("this job is timed-out") == len(runs) - 1, log
    assert log.count("Calling checkpoint method") == len(runs) - 1, log
    # resumed, not restarted: epoch 1 was written in the first attempt and never again
    ckpts = sorted((run_dir / "checkpoints").glob("epoch-*.pt"))
    assert len(ckpts) == cfg.max_epochs - 1  # the last epoch is final.pt
    mtimes = [p.stat().st_mtime for p in ckpts]
    assert mtimes == sorted(mtimes)
    assert mtimes[0] < _stamp(runs[1][1]) <= (run_dir / "checkpoints" / "final.pt").stat().st_mtime
    assert not list(run_dir.rglob("*.tmp-*"))  # the interrupted writes cleaned up after themselves
    # the same weights, bit for bit, and one metrics row per epoch, as the uninterrupted run
    a = torch.load(run_dir / "checkpoints" / "final.pt", weights_only=False)
    b = torch.load(reference / "checkpoints" / "final.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == cfg.max_epochs and a["finished"]
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    m = pd.read_csv(run_dir / "metrics.csv")
    assert m.epoch.tolist() == list(range(1, cfg.max_epochs + 1))
    pd.testing.assert_frame_equal(m, pd.read_csv(reference / "metrics.csv"), check_exact=True)


FAULT_DISCOVER = {"paths": {"kind": "circle", "n_paths": 80, "anchors": 8, "seed": 1}, "batch_size": 16,
                  "chunk_segments": 8, "n_shards": 1}


def _writing(job_id, store, seen, timeout=300):
    """Wait until the job runs and has written regions into a shard temporary not in ``seen``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if _job_state(job_id) == "R":
            new = [p.name for p in store.glob("shard-00000.tmp-*")
                   if p.name not in seen and list(p.glob("regions/t_start/c/*"))]
            if new:
                return new[0]
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never started writing a new shard temporary in {store}: {_attempts(job_id)}")


def _stopped(job_id, timeout=120):
    """Wait until the job's current run has ended (requeued: pending again, or gone)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if _job_state(job_id) in ("PD", ""):
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still running {timeout} s after its preemption: {_attempts(job_id)}")


def test_preempted_discovery_resumes_to_an_equal_store(cluster, tmp_path, cancel_at_end):
    """Preempted twice mid-shard: ``scancel --signal=USR2`` (what submitit takes for a preemption:
    checkpoint, requeue, the shard's temporary removed on the way out), then ``scontrol requeue``
    (SLURM requeues it itself; SIGTERM, which submitit ignores, then SIGKILL: no checkpoint, the
    temporary stays). The third run writes the shard; the store equals an uninterrupted one."""
    import threading

    import zarr

    from jobs.tasks import DiscoverJob
    from pipeline.config import from_dict, to_dict
    from pipeline.stages.discovery import DiscoverConfig, store_path
    from pipeline.store.verify import shard_status
    from pipeline.stages.train import TrainConfig, train

    run_dir = tmp_path / "run"
    train(from_dict(TrainConfig, {**LONG_TRAIN, "max_epochs": 1, "batch_size": 64}), run_dir, device="cpu")
    dcfg = from_dict(DiscoverConfig, FAULT_DISCOVER)
    store = store_path(run_dir, dcfg)
    job = _executor(tmp_path / "logs", "fault-discover", 10).submit(DiscoverJob(str(run_dir), to_dict(dcfg), 0))
    cancel_at_end.append(job.job_id)
    clean = tmp_path / "clean.zarr"  # the uninterrupted discovery, beside the job
    ref = threading.Thread(target=discover_run, args=(run_dir, dcfg), kwargs={"progress": False, "store": clean},
                           daemon=True)
    ref.start()

    first = _writing(job.job_id, store, set())
    subprocess.run(["scancel", "--signal=USR2", str(job.job_id)], check=True)
    _stopped(job.job_id)
    assert not (store / first).exists()  # submitit's exit ran the writer's abort
    second = _writing(job.job_id, store, {first})
    subprocess.run(["scontrol", "requeue", str(job.job_id)], check=True)
    _stopped(job.job_id)
    assert (store / second).exists()  # killed: nothing cleaned up
    runs = _wait_finished(job, timeout=600)
    ref.join()
    log = _log(job)
    print(f"\ndiscovery job {job.job_id}: {runs}")
    assert [r[0] for r in runs] == ["REQUEUED", "REQUEUED", "COMPLETED"], (runs, log)
    assert job.result() == {"run": str(run_dir), "shard": 0, "complete": True}
    assert log.count("Starting with JobEnvironment") == 3, log
    # as above: the checkpoint path ran once; the requeues are sacct's REQUEUED states
    assert log.count("Caught signal SIGUSR2") == 1 and log.count("Calling checkpoint method") == 1, log
    assert "Bypassing signal SIGTERM" in log
    st = shard_status(store)
    assert st["complete"] == [0] and not st["missing"] and not st["incomplete"], st
    assert st["leftovers"] == [second], st  # the killed run's, listed (and ignored by readers)
    # every array of the store equals the uninterrupted discovery's
    a, b = open_store(store), open_store(clean)
    for group in ("segments", "regions"):
        names = sorted(zarr.open_group(str(store / "shard-00000" / group), mode="r").array_keys())
        assert names and names == sorted(zarr.open_group(str(clean / "shard-00000" / group), mode="r").array_keys())
        for name in names:
            x, y = (r.segment_array(name) if group == "segments" else r.regions(name).compute() for r in (a, b))
            np.testing.assert_array_equal(x, y, err_msg=f"{group}/{name}")


# ---------- GPUs: the test cluster's node advertises 2 placeholder GPUs (scripts/slurm/start.sh) ----------
# SLURM schedules GPU requests against them and sets each job's CUDA_VISIBLE_DEVICES as on a GPU node;
# no process can use them, so torch sees none and `auto` runs on the CPU (what a GPU node would change
# is only torch's count, which tests/test_tasks.py::test_job_device_uses_the_gpu_slurm_gives covers).

GPU_ENV = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE", "SLURM_LOCALID")


def _report_gpu(meeting: str, timeout: float = 120):
    """A job that reports its GPU environment and :func:`jobs.tasks.job_device`'s answer, once
    every job of its meeting has started (so they provably held their GPUs at the same time)."""
    import torch

    from jobs.tasks import job_device

    env = {k: os.environ.get(k) for k in GPU_ENV}
    folder = Path(meeting)
    (folder / os.environ["SLURM_JOB_ID"]).touch()
    n = int((folder / "expected").read_text())
    deadline = time.time() + timeout
    while len(list(folder.glob("[0-9]*"))) < n and time.time() < deadline:
        time.sleep(0.2)
    together = len(list(folder.glob("[0-9]*"))) >= n
    return {"env": env, "device": job_device("auto", os.environ, torch.cuda.device_count()), "together": together}


def test_gpu_jobs_on_one_node_each_get_their_own_gpu(cluster, tmp_path, cancel_at_end):
    """Two jobs with the sweep file's ``discover_resources: {gpus: 1}`` run at once on the node's
    2 GPUs, each with one GPU of its own in CUDA_VISIBLE_DEVICES (what torch would number cuda:0)."""
    from jobs.submit import executor_for

    sweep, _ = load_sweep(tiny_sweep(tmp_path, name="gpu", executor="slurm",
                                     discover_resources={"gpus": 1, "cpus": 1, "mem_gb": 0.25, "time_min": 5}))
    assert sweep.discover_resources.gpus == 1
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    (meeting / "expected").write_text("2")
    ex = executor_for("slurm", tmp_path / "logs" / "%j", sweep.discover_resources, "gpu-report")
    jobs = [ex.submit(_report_gpu, str(meeting)) for _ in range(2)]
    cancel_at_end.extend(j.job_id for j in jobs)
    for job in jobs:
        assert "#SBATCH --gpus-per-node=1\n" in job.paths.submission_file.read_text()
    out = [job.result() for job in jobs]
    print("\n" + "\n".join(f"job {j.job_id}: {o}" for j, o in zip(jobs, out)))
    assert all(o["together"] for o in out), out
    gpus = [o["env"]["CUDA_VISIBLE_DEVICES"] for o in out]
    assert sorted(gpus) == ["0", "1"], out  # one each, not the same one
    for o, gpu in zip(out, gpus):
        assert gpu in (o["env"]["SLURM_STEP_GPUS"], o["env"]["SLURM_JOB_GPUS"]), o  # SLURM's, by index on the node
        assert o["device"] == ("cpu", f"no CUDA visible; CUDA_VISIBLE_DEVICES={gpu} from SLURM"), o


def test_sweep_discovery_asks_for_its_gpu_and_logs_its_device(cluster, tmp_path):
    """A sweep whose discovery asks for a GPU: sbatch gets --gpus-per-node=1 for the discovery jobs
    only, and each discovery job logs the device it uses and why."""
    from jobs.run import run

    path = tiny_sweep(tmp_path, name="gpusweep", variants={"vanilla": {}}, n_shards=1, executor="slurm",
                      discover_resources={"gpus": 1, "mem_gb": 0.5})
    out = run(path, poll_s=2)
    assert out["jobs"] == 4  # 1 training, 2 checkpoints x 1 shard, 1 aggregation
    logs = tmp_path / "out" / "logs"
    scripts = {p: p.read_text() for p in logs.rglob("*_submission.sh")}
    assert any("--job-name=gpusweep-discover" in s for s in scripts.values()), scripts
    for s in scripts.values():  # the discovery's script asks for one GPU, the training's and aggregation's none
        assert ("#SBATCH --gpus-per-node=1\n" in s) == ("--job-name=gpusweep-discover" in s), s
    device_lines = [line for p in logs.rglob("*_log.out") for line in p.read_text().splitlines()
                    if line.startswith("device ")]
    assert len(device_lines) == 2, device_lines
    assert all(re.fullmatch(r"device cpu \(no CUDA visible; CUDA_VISIBLE_DEVICES=[01] from SLURM\)", line)
               for line in device_lines), device_lines
