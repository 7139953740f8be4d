"""The local pool's workers die with the process that made it, by SIGKILL too: real processes,
real signals (a worker that outlived its parent went on writing shards beside the resumed run)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# a `python -m jobs run` in miniature: a pool whose workers run jobs that beat until killed;
# "main" submits from the main thread, "thread" from a thread that has exited before the kill
DRIVER = """
import sys, threading, time
from jobs.local import LocalPool
from tests.heartbeat import Heartbeat

folder, n, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
pool = LocalPool(folder + "/logs", workers=n)
submit = lambda: [pool.submit(Heartbeat(folder, i), name=f"beat {i}") for i in range(n)]
if how == "main":
    submit()
else:
    t = threading.Thread(target=submit)
    t.start()
    t.join()
time.sleep(600)
"""


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def beats(folder: Path, n: int) -> list[str]:
    return [(folder / f"beat-{i}").read_text() for i in range(n)]


@pytest.fixture
def driver(tmp_path):
    """Start the driver; yields (process, worker pids once known); kills whatever is left."""
    started, pids = [], []

    def start(how: str, n: int = 2):
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path), str(n), how], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        started.append(proc)
        deadline = time.monotonic() + 90  # each worker imports torch first
        while time.monotonic() < deadline and not all((tmp_path / f"pid-{i}").exists() for i in range(n)):
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.1)
        pids.extend(int((tmp_path / f"pid-{i}").read_text()) for i in range(n))
        assert len(pids) == n and proc.poll() is None
        return proc, pids

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def check_workers_die(proc, pids, folder: Path, within_s: float):
    time.sleep(0.5)
    before = beats(folder, len(pids))
    time.sleep(0.5)
    assert beats(folder, len(pids)) != before and all(map(alive, pids))  # running before the kill
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and any(map(alive, pids)):
        time.sleep(0.05)
    left = [p for p in pids if alive(p)]
    assert not left, f"worker(s) {left} outlived their pool's process, SIGKILLed {within_s} s ago"
    stopped = beats(folder, len(pids))
    time.sleep(0.5)
    assert beats(folder, len(pids)) == stopped  # and nothing beats any more


def test_workers_die_when_the_pool_s_process_is_killed(tmp_path, driver):
    proc, pids = driver("main")
    check_workers_die(proc, pids, tmp_path, within_s=3.0)


def test_workers_spawned_by_another_thread_outlive_it_and_die_with_the_process(tmp_path, driver):
    """Linux sends the parent-death signal when the spawning *thread* exits: workers spawned by a
    short-lived thread must go on after it (they are still beating, check_workers_die checks),
    and the watchdog ends them when the process dies."""
    proc, pids = driver("thread")
    time.sleep(1.0)  # the submitting thread is long gone
    check_workers_die(proc, pids, tmp_path, within_s=4.0)  # it looks every WATCH_S = 1 s


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_the_worker_asks_linux_for_sigkill_on_parent_death():
    """The kernel's own record, read back with PR_GET_PDEATHSIG in a fresh process (asking it of
    pytest's process would tie pytest to its parent thread): the signal comes even while a job
    holds the GIL in C code, where the watchdog thread could not run."""
    code = ("import ctypes; from jobs.local import _set_pdeathsig; assert _set_pdeathsig(); "
            "v = ctypes.c_int(-1); ctypes.CDLL(None).prctl(2, ctypes.byref(v), 0, 0, 0); print(v.value)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.split() == [str(int(signal.SIGKILL))], out.stderr
