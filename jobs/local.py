"""The local executor: a sweep's jobs on this machine, a few at a time, in dependency order.

    from jobs.local import LocalPool
    with LocalPool(folder="sweeps/demo/logs", workers=2) as pool:
        job = pool.submit(TrainJob(...), name="train noisy-1a2b")
        job.result()

submitit's own local executor starts every job of an array at once; on a laptop that means
twenty processes, each with an OpenMP pool as wide as the machine, on two cores (small torch
ops then slow down by orders of magnitude). Here a fixed pool of ``workers`` processes (one per
core by default) runs the jobs, each process with ``threads`` CPU threads, and the Python
interpreter and torch are imported once per worker, not once per job. Each job writes its
output (stdout, stderr and logging) to its own files, ``<folder>/<job id>_log.out`` and
``_log.err``, and a job that raises keeps its traceback there. Jobs are submitit-style
callables: the same ``TrainJob`` and ``DiscoverJob`` objects that go to SLURM.

The workers die with the process that made the pool, SIGKILL included (:func:`_die_with_parent`):
a worker that outlived it would go on writing shards beside the run that resumes the sweep, then
sit holding its memory until killed by hand.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LocalPool", "LocalJob", "JobFailed", "default_workers"]


def default_workers() -> int:
    """One worker per CPU this process may use (``sched_getaffinity``, else ``cpu_count``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


class JobFailed(RuntimeError):
    """A job raised: the message names the job, the error and the log holding its traceback."""


@dataclass(frozen=True)
class _Paths:
    stdout: Path
    stderr: Path


class LocalJob:
    """A submitted job: ``job_id``, ``paths.stdout`` / ``paths.stderr``, ``result()``, ``done()``."""

    def __init__(self, job_id: str, name: str, paths: _Paths, future: cf.Future):
        self.job_id, self.name, self.paths, self.future = job_id, name, paths, future

    def done(self) -> bool:
        return self.future.done()

    def result(self):
        """The job's return value; :class:`JobFailed` if it raised (its traceback is in the log)."""
        try:
            return self.future.result()
        except cf.process.BrokenProcessPool as err:
            raise JobFailed(f"{self.name} (job {self.job_id}): its worker process died (killed, or out of "
                            f"memory?); log: {self.paths.stderr}") from err


_BUSY = None  # in a worker: the pool's count of jobs executing in its workers (a shared int)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCH_S = 1.0  # the fallback watchdog looks for its parent this often


class _SpawnedByMainThread:
    """Unpickles, in a worker, as whether the thread that spawned it was its parent's main thread.

    ``spawn`` pickles a worker's arguments in the thread that starts it (the one calling
    ``submit``), and Linux sends the parent-death signal when that *thread* exits: a worker
    started from a short-lived thread must not ask for it, or it dies with the thread.
    """

    def __reduce__(self):
        return bool, (threading.current_thread() is threading.main_thread(),)


def _set_pdeathsig() -> bool:
    """Ask Linux to SIGKILL this process when the thread that forked it exits; False if it cannot."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0),
                          ctypes.c_ulong(0), ctypes.c_ulong(0)) == 0
    except (OSError, AttributeError):  # no libc.prctl: use the watchdog
        return False


def _watch_parent(parent: int):
    while os.getppid() == parent:
        time.sleep(WATCH_S)
    # fd 2 is the running job's log, if any: say there why the job stopped
    os.write(2, f"worker {os.getpid()}: its pool's process (pid {parent}) is gone; exiting\n".encode())
    os._exit(1)


def _die_with_parent(parent: int, main_thread: bool):
    """Make this worker die when ``parent``, the process that made the pool, dies (SIGKILL too).

    On Linux, with ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` when the spawning thread was the
    parent's main thread (the signal follows the thread, see :class:`_SpawnedByMainThread`);
    the parent may have died before the call, so the parent pid is checked after it. Elsewhere
    (macOS; a worker spawned by another thread) a daemon thread polls ``getppid`` every
    ``WATCH_S`` seconds: a re-parented worker exits.
    """
    if main_thread and sys.platform.startswith("linux") and _set_pdeathsig():
        if os.getppid() != parent:  # died before prctl: no signal will come
            os._exit(1)
        return
    threading.Thread(target=_watch_parent, args=(parent,), name="parent-watchdog", daemon=True).start()


def _init_worker(threads: int, busy=None, parent: int | None = None, main_thread: bool = False):
    global _BUSY
    if parent is not None:  # first: importing torch takes seconds, the parent may die meanwhile
        _die_with_parent(parent, main_thread)
    _BUSY = busy
    # before torch is imported by the first job: OpenMP reads this once
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _run(fn, stdout: str, stderr: str, name: str = "job"):
    """Run ``fn()`` in a worker with fds 1 and 2 (and logging) sent to the job's log files; the
    last line of its stdout log says how long it took."""
    import logging

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(stdout, "a") as out, open(stderr, "a") as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        level = root.level
        root.setLevel(logging.INFO)
        start = time.perf_counter()
        _count_busy(+1)
        try:
            out = fn()
            print(f"[{name}] done in {time.perf_counter() - start:.2f} s")
            return out
        except BaseException as e:
            traceback.print_exc()
            sys.stderr.flush()
            summary = f"{type(e).__name__}: {e}".strip().splitlines()
            raise JobFailed(f"{summary[0] if summary else type(e).__name__} (traceback in {stderr})") from None
        finally:
            _count_busy(-1)
            sys.stdout.flush()
            sys.stderr.flush()
            root.removeHandler(handler)
            root.setLevel(level)
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _count_busy(step: int):
    if _BUSY is not None:
        with _BUSY.get_lock():
            _BUSY.value += step


class LocalPool:
    """At most ``workers`` jobs at once in worker processes (``spawn``: no state inherited).

    :meth:`running` counts the jobs executing in the workers now, as the workers report them;
    the others submitted and not done are queued. (``Future.running()`` would not do: the
    executor marks a future running when it enters its call queue, which holds one more job
    than there are workers.)
    """

    def __init__(self, folder, workers: int | None = None, threads: int = 1):
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.workers = workers or default_workers()
        context = mp.get_context("spawn")
        self._busy = context.Value("i", 0)  # each worker adds 1 while it executes a job
        self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=context,
                                            initializer=_init_worker,
                                            initargs=(threads, self._busy, os.getpid(), _SpawnedByMainThread()))
        self._count = 0
        self._prefix = f"local-{os.getpid()}"

    def submit(self, fn, name: str = "job") -> LocalJob:
        self._count += 1
        job_id = f"{self._prefix}-{self._count}"
        paths = _Paths(self.folder / f"{job_id}_log.out", self.folder / f"{job_id}_log.err")
        future = self._pool.submit(_run, fn, str(paths.stdout), str(paths.stderr), name)
        return LocalJob(job_id, name, paths, future)

    def running(self) -> int:
        """How many jobs are executing in the workers now (at most ``workers``)."""
        return self._busy.value

    def close(self, cancel: bool = False):
        self._pool.shutdown(wait=True, cancel_futures=cancel)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        # on an error or Ctrl-C, jobs not yet started are dropped; running ones finish their
        # atomic writes (a killed one would leave only a temporary, which resume ignores)
        self.close(cancel=exc_type is not None)


def _shard_regions(store: Path, shard: int) -> int:
    """Regions in a complete shard (its attributes), 0 if unreadable: for the progress bar only."""
    from pipeline.store.verify import shard_info

    try:
        return int(shard_info(store, shard).get("n_regions", 0))
    except Exception:  # noqa: BLE001 - a progress figure must never fail the run
        return 0


PROGRESS_S = 2.0  # the progress bar's running / queued counts are refreshed at least this often


def run_local(sweep, root: Path, plan: dict, workers: int | None = None, analysis: dict | None = None) -> int:
    """Run what ``plan`` (:func:`jobs.plan.plan`) lists as missing on a :class:`LocalPool`.

    Trainings start longest first (by epoch budget); each run's discovery shards start as soon
    as its training ends, so the pool stays busy; the aggregation runs last, in this process.
    A failed job does not stop the others: its dependants are skipped, everything that
    finished stays on disk, and the error at the end lists each failure with its log, so the
    same command resumes. ``analysis``: the sweep's analysis config (a mapping) for the
    aggregation. Returns the number of jobs run.
    """
    import concurrent.futures as cf

    from pipeline.config import to_dict
    from tqdm.auto import tqdm

    from pipeline.stages.discovery import store_paths

    from .ledger import record
    from .tasks import AggregateJob, DiscoverJob, TrainJob

    to_train = sorted(plan["train"]["todo"] + plan["train"]["incomplete"],
                      key=lambda r: (-r.config.max_epochs, r.run_id))
    shards: dict[str, list] = {}
    for r, dcfg, shard in plan["discover"]["todo"] + plan["discover"]["incomplete"]:
        shards.setdefault(r.run_id, []).append((r, dcfg, shard))
    total = len(to_train) + sum(map(len, shards.values()))
    failed, count, regions = [], 0, 0
    logs = root / "logs"
    with LocalPool(logs, workers) as pool, tqdm(total=total, unit="job", desc=f"sweep {sweep.name}",
                                                 dynamic_ncols=True) as bar:
        pending, stores = {}, {}  # submitted and not done: executing in a worker, or queued

        def launch(job, stage, **extra):
            pending[job.future] = (job, stage, extra)
            record(root, stage, job, **extra)

        def launch_discovery(run_id):
            for r, dcfg, shard in shards.pop(run_id, []):
                job = pool.submit(DiscoverJob(str(r.run_dir), to_dict(dcfg), shard),
                                  name=f"discover {run_id} {dcfg.checkpoint} shard {shard}")
                stores[job.future] = (store_paths(r.run_dir, dcfg), shard)
                launch(job, "discover", run=run_id, checkpoint=dcfg.checkpoint, shard=shard)

        bar.write(f"{pool.workers} worker process(es), one CPU thread each; job logs in {logs}")
        training = {r.run_id for r in to_train}
        for r in to_train:
            launch(pool.submit(TrainJob(str(r.run_dir), to_dict(r.config)), name=f"train {r.run_id}"),
                   "train", run=r.run_id)
        for run_id in [k for k in shards if k not in training]:
            launch_discovery(run_id)
        while pending:
            done, _ = cf.wait(list(pending), timeout=PROGRESS_S, return_when=cf.FIRST_COMPLETED)
            for future in done:
                job, stage, extra = pending.pop(future)
                count += 1
                bar.update(1)
                try:
                    job.result()
                except Exception as err:
                    failed.append((job, err))
                    bar.write(f"FAILED {job.name}: {err}")
                    if stage == "train":
                        skipped = shards.pop(extra["run"], [])
                        bar.update(len(skipped))
                    continue
                if stage == "train":
                    launch_discovery(extra["run"])
                else:
                    paths, shard = stores.pop(future)
                    regions += sum(_shard_regions(p, shard) for p in paths)
            executing = min(pool.running(), len(pending))
            bar.set_postfix(running=executing, queued=len(pending) - executing, failed=len(failed),
                            regions=f"{regions:,}")
    if failed:
        lines = "\n".join(f"  {j.name}: {e}" for j, e in failed)  # each names its log
        raise JobFailed(f"{len(failed)} job(s) failed (everything else is saved; fix the cause and run the same "
                        f"command again to resume):\n{lines}")
    if plan["aggregate"]["todo"] or count:
        print("aggregating ...", flush=True)
        AggregateJob(str(root), analysis)()
        count += 1
    print(f"ran {count} job(s) on this machine ({regions:,} regions found by this run's discovery jobs); "
          f"logs in {logs}")
    return count
