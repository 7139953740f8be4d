"""One runner per sweep folder (jobs/lock.py): real processes holding, racing for and dying with
the lock, and `run` / `sweep submit` refused while another process holds it."""

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.lock import LOCK_NAME, SweepLocked, sweep_lock

ROOT = Path(__file__).resolve().parents[1]

# takes the lock on argv[1] once argv[2] exists (a start line for racers), says so, holds it;
# with argv[3] = a pid, then records that pid as the holder (a holder the file gets wrong)
HOLDER = """
import json, os, sys, time
from pathlib import Path
from jobs.lock import SweepLocked, sweep_lock

root, go = sys.argv[1], Path(sys.argv[2])
while not go.exists():
    time.sleep(0.01)
try:
    with sweep_lock(root) as path:
        if len(sys.argv) > 3:  # through the lock's own descriptor: closing another would drop the lock
            from jobs.lock import _HELD
            fd = _HELD[(os.getpid(), path.parent)][0]
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"host": os.uname().nodename, "pid": int(sys.argv[3])}).encode(), 0)
        print("held", flush=True)
        time.sleep(600)
except SweepLocked as err:
    print("refused:", err, flush=True)
"""


@pytest.fixture
def holders(tmp_path):
    """holders(root, n, fake_pid=None): n processes started at once taking the lock on root; each
    has said whether it holds it (``proc.said``). All killed at the end."""
    procs = []

    def start(root: Path, n: int = 1, fake_pid: int | None = None):
        go = tmp_path / f"go-{len(procs)}"
        extra = [] if fake_pid is None else [str(fake_pid)]
        new = [subprocess.Popen([sys.executable, "-c", HOLDER, str(root), str(go), *extra], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
        procs.extend(new)
        go.write_text("")
        for p in new:
            p.said = p.stdout.readline().strip()  # each says "held" or "refused: ..." (blocks until then)
            assert p.said, p.stderr.read()
        return new

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_two_runners_started_at_once_one_runs_the_other_is_refused_by_name(tmp_path, holders):
    root = tmp_path / "sweep"
    a, b = holders(root, n=2)
    held = [p for p in (a, b) if p.said == "held"]
    refused = [p for p in (a, b) if p.said.startswith("refused")]
    assert len(held) == 1 and len(refused) == 1, (a.said, b.said)
    msg = refused[0].said
    assert f"sweep folder {root} is being run by pid {held[0].pid} on host {socket.gethostname()}" in msg
    assert "wait for it" in msg and "If that process is gone" in msg
    with pytest.raises(SweepLocked, match=f"pid {held[0].pid} on host"):  # and this process too
        with sweep_lock(root):
            pass


def test_a_lock_file_left_by_a_killed_holder_is_taken_over(tmp_path, holders, caplog):
    root = tmp_path / "sweep"
    (p,) = holders(root)
    assert p.said == "held"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert str(p.pid) in (root / LOCK_NAME).read_text()  # the file stays; the kernel dropped the lock
    with caplog.at_level(logging.WARNING, logger="jobs.lock"), sweep_lock(root) as path:
        assert f'"pid": {os.getpid()}' in path.read_text()
    assert f"took over {root / LOCK_NAME}" in caplog.text and f"pid {p.pid} on host" in caplog.text


def test_the_lock_is_released_on_return_and_on_error(tmp_path, holders):
    root = tmp_path / "sweep"
    root.mkdir()
    with sweep_lock(root):
        assert (root / LOCK_NAME).exists()
    assert not (root / LOCK_NAME).exists()
    with pytest.raises(ValueError, match="boom"), sweep_lock(root):
        raise ValueError("boom")
    assert not (root / LOCK_NAME).exists() and root.is_dir()
    (p,) = holders(root)
    assert p.said == "held"


def test_a_folder_the_lock_made_is_removed_with_it_if_nothing_else_was_written(tmp_path):
    root = tmp_path / "new" / "sweep"
    with pytest.raises(ValueError), sweep_lock(root):
        raise ValueError("the plan failed")
    assert not root.exists()


def test_nested_use_in_one_process_keeps_the_lock(tmp_path, holders):
    """POSIX locks drop when the process closes any descriptor of the file: the inner block
    must not open it again, or the outer would end up holding nothing."""
    root = tmp_path / "sweep"
    with sweep_lock(root):
        with sweep_lock(root):
            pass
        (p,) = holders(root)
        assert p.said.startswith("refused") and f"pid {os.getpid()}" in p.said


def test_a_held_lock_whose_recorded_holder_does_not_exist_says_so(tmp_path, holders):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(gone.stdout)
    root = tmp_path / "sweep"
    (p,) = holders(root, fake_pid=pid)
    assert p.said == "held"
    with pytest.raises(SweepLocked, match=f"the holder it records, pid {pid} on this host .* does not exist") as err:
        with sweep_lock(root):
            pass
    assert "fuser" in str(err.value)


@pytest.mark.parametrize("command", ["run", "submit"])
def test_run_and_submit_refuse_a_held_sweep_before_writing_anything(tmp_path, holders, capsys, command):
    from jobs.run import main as run_main
    from jobs.sweep import main as sweep_main
    from tests.sweeps import tiny_sweep

    from jobs.sweep import claim_root, expand, load_sweep

    path = tiny_sweep(tmp_path)
    sweep, base = load_sweep(path)
    claim_root(sweep, base, expand(sweep, base))  # a sweep folder, as after a first submission
    root = tmp_path / "out"
    (p,) = holders(root)
    assert p.said == "held"
    before = {f.name: f.stat().st_mtime_ns for f in root.iterdir()}
    rc = run_main([str(path)]) if command == "run" else sweep_main(["submit", str(path)])
    err = capsys.readouterr().err
    assert rc == 1 and f"error: sweep folder {root} is being run by pid {p.pid}" in err
    assert {f.name: f.stat().st_mtime_ns for f in root.iterdir()} == before  # nothing written, no job run
    assert sweep_main(["status", str(path)]) == 0  # reading takes no lock
    assert sweep_main(["submit", str(path), "--dry-run"]) == 0
