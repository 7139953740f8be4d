"""Parent side of ``bench/engine.py``: the worker processes (each a fresh ``bench/engine.py
--serve``, driven command by command), the ``Runner`` that starts them and budgets the waits for a
quiet machine, and the rule for which samples a median is taken over (``CLEAN``, ``_use``)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


class Worker:
    """A fresh worker process (``bench/engine.py --serve``), driven command by command."""

    def __init__(self, runner):
        self.runner = runner
        self.p = subprocess.Popen([sys.executable, str(HERE / "engine.py"), "--serve",
                                   "--threads", str(runner.threads)],
                                  env=runner.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        self.err_tail = []
        self.t_err = threading.Thread(target=self._pump_stderr, daemon=True)
        self.t_err.start()

    def _pump_stderr(self):
        """Show the worker's progress lines (indented); keep the rest (warnings, profiler chatter)
        for error reports only."""
        for line in self.p.stderr:
            if line.startswith("    "):
                print(line.rstrip(), flush=True)
            else:
                self.err_tail = (self.err_tail + [line])[-40:]

    def __call__(self, op, **cfg):
        cfg = dict(cfg, op=op, gate_max=self.runner.gate_for_call(), clean=CLEAN)
        t0 = time.perf_counter()
        try:
            self.p.stdin.write(json.dumps(cfg) + "\n")
            self.p.stdin.flush()
            out = None
            for line in self.p.stdout:
                if line.startswith("RESULT "):
                    out = json.loads(line[7:])
                    break
            if out is None:
                code = self.p.wait()
                self.t_err.join(timeout=5)
                out = {"error": f"worker exited (code {code}): " + "".join(self.err_tail)[-2000:]}
        except (BrokenPipeError, OSError) as err:
            out = {"error": f"worker unreachable: {err}"}
        out["call_seconds"] = time.perf_counter() - t0
        self.runner.waited += out.get("gate_waited_s", 0.0)
        if "error" in out:
            print(f"{self.runner.stamp()} {op} {cfg} FAILED:\n{out['error']}", flush=True)
        return out

    def close(self):
        try:
            self.p.stdin.close()
            self.p.wait(timeout=60)
        except Exception:
            self.p.kill()


class Runner:
    def __init__(self, env, threads, gate):
        self.env, self.threads, self.gate = env, threads, gate
        self.waited = 0.0
        self.t_start = time.perf_counter()

    def gate_for_call(self):
        return max(0.0, min(self.gate["per_sample"] * 4, self.gate["total"] - self.waited))

    def stamp(self):
        s = int(time.perf_counter() - self.t_start)
        return f"[{s // 60:02d}:{s % 60:02d}]"

    def once(self, op, **cfg):
        w = Worker(self)
        try:
            return w(op, **cfg)
        finally:
            w.close()


def clean_threshold(threads: int, cores: int) -> float:
    """Foreign load (cores) above which a sample counts as disturbed: with ``threads`` of
    ``cores`` in use, other processes may hold the idle cores, plus a little."""
    return max(0.3, cores - threads + 0.1)


def med(xs):
    xs = sorted(x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x)))
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def _ok(samples):
    return [s for s in samples if "error" not in s]


# set by engine.main (from the thread count) and by engine_sections.resummarise (from the JSON)
CLEAN = 0.3  # samples during which other processes kept more cores busy than this are "disturbed"


def _clean(samples):
    return [s for s in _ok(samples) if s.get("foreign_cores", 0) <= CLEAN + 1e-9]


def _use(samples):
    """The samples a median is taken over: the undisturbed ones if there are any, else all."""
    c = _clean(samples)
    return c if c else _ok(samples)
