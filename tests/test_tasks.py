"""The sweep's job callables outside SLURM (tests/test_slurm.py runs them on a real cluster)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A job process as submitit leaves it: a Python handler on USR2 (submitit's checkpoint-and-requeue;
# here one that exits 3, so a signal that reaches it shows), then the job, then a USR2 from SLURM
# after the work is done, as in CI where the signal landed during "Exiting after successful completion".
JOB = textwrap.dedent("""
    import os, signal, sys, time
    signal.signal(signal.SIGUSR2, lambda *_: os._exit(3))
    from jobs.tasks import TrainJob
    config = {"recipe": "vanilla", "model": {"name": "vgg8", "widths": [4, 8]}, "data": {"name": "digits"},
              "stop": "epochs", "max_epochs": 1}
    assert TrainJob(sys.argv[1], config)() == sys.argv[1]
    os.kill(os.getpid(), signal.SIGUSR2)
    time.sleep(0.2)
    print("survived, ignored:", signal.getsignal(signal.SIGUSR2) is signal.SIG_IGN)
""")


@pytest.mark.parametrize("executor", ["slurm", None])
def test_a_finished_job_ignores_a_late_preemption_signal(tmp_path, executor):
    env = {k: v for k, v in os.environ.items() if k != "SUBMITIT_EXECUTOR"}
    if executor:
        env["SUBMITIT_EXECUTOR"] = executor
    r = subprocess.run([sys.executable, "-c", JOB, str(tmp_path / "run")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert (tmp_path / "run" / "checkpoints" / "final.pt").exists(), r.stderr
    if executor:  # in a submitit job: ignored from the end of the work on, through exit
        assert r.returncode == 0 and "survived, ignored: True" in r.stdout, (r.returncode, r.stdout, r.stderr)
    else:  # run in the caller's process (debug executor): the caller's handler is left in place
        assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)


# ---------- which device a job uses (jobs.tasks.job_device); tests/test_slurm.py runs it under SLURM ----------

SLURM_GPU1 = {"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "1", "CUDA_VISIBLE_DEVICES": "1", "SLURM_LOCALID": "0"}


@pytest.mark.parametrize("requested, env, n_cuda, device, why", [
    # SLURM gave GPU 1 of the node: torch numbers it 0, whatever SLURM_LOCALID says
    ("auto", SLURM_GPU1, 1, "cuda:0", "CUDA_VISIBLE_DEVICES=1 from SLURM; torch sees 1"),
    ("cuda", {**SLURM_GPU1, "SLURM_LOCALID": "1"}, 1, "cuda:0", "CUDA_VISIBLE_DEVICES=1 from SLURM"),
    ("auto", {**SLURM_GPU1, "SLURM_STEP_GPUS": "1"}, 1, "cuda:0", "CUDA_VISIBLE_DEVICES=1 from SLURM"),
    # the test cluster's placeholder GPUs: SLURM allocates one, torch sees none
    ("auto", SLURM_GPU1, 0, "cpu", "no CUDA visible; CUDA_VISIBLE_DEVICES=1 from SLURM"),
    # a SLURM job given no GPU does not take one of the node's
    ("auto", {"SLURM_JOB_ID": "7"}, 4, "cpu", "SLURM gave this job no GPU (torch sees 4"),
    ("cuda", {"SLURM_JOB_ID": "7"}, 4, "cuda:0", "SLURM gave this job no GPU; torch sees 4"),
    ("auto", {"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "3"}, 1, "cuda:0", "SLURM gave GPU 3 but set no CUDA_VISIBLE"),
    # outside SLURM
    ("auto", {}, 0, "cpu", "no CUDA visible; CUDA_VISIBLE_DEVICES unset"),
    ("auto", {}, 2, "cuda:0", "CUDA_VISIBLE_DEVICES unset; torch sees 2"),
    ("cuda:1", {"CUDA_VISIBLE_DEVICES": "2,3"}, 2, "cuda:1", "CUDA_VISIBLE_DEVICES=2,3; torch sees 2"),
    ("cpu", SLURM_GPU1, 1, "cpu", "device: cpu asked for"),
])
def test_job_device_uses_the_gpu_slurm_gives(requested, env, n_cuda, device, why):
    from jobs.tasks import job_device

    got, reason = job_device(requested, env, n_cuda)
    assert got == device and why in reason, (got, reason)


@pytest.mark.parametrize("requested, env, n_cuda, match", [
    ("cuda", SLURM_GPU1, 0, "torch sees no GPU"),
    ("cuda:1", SLURM_GPU1, 1, "torch sees 1 GPU"),
    ("auto", {"SLURM_JOB_ID": "7", "SLURM_JOB_GPUS": "3"}, 2, "which is this job's is unknown"),
])
def test_job_device_refuses_what_cannot_work(requested, env, n_cuda, match):
    from jobs.tasks import job_device

    with pytest.raises(RuntimeError, match=match):
        job_device(requested, env, n_cuda)
