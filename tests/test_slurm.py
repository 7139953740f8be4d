"""Integration on a real single-node SLURM cluster (scripts/slurm/start.sh): sbatch via submitit.

The fixture starts the cluster's daemons that are not running, recording their PIDs in its own
state folder, and stops exactly those at the end. Marked slow: `make test` (CI) runs them.
"""

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.discover import discover_run
from jobs.sweep import expand, load_sweep, plan, status, submit
from pipeline.store import open_store
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
    sweep, base = load_sweep(tiny_sweep(tmp_path, name="cancel", variants={"vanilla": {}}, n_paths=40, anchors=8,
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
