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
