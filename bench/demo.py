"""The main job's time budget: `python -m jobs run configs/demo.yaml` from nothing, measured.

    .venv/bin/python bench/demo.py                  # one cold run in a temporary folder
    .venv/bin/python bench/demo.py --workers 2 --keep /tmp/demo-bench

Copies ``configs/`` into a fresh folder (so the checkout's ``sweeps/demo`` is not reused),
runs the demo there as a user would (a subprocess, the local executor), then reads the job
logs for the time each job took (its ``[name] done in X s`` line) and writes wall time, the
sum of job times per stage, and peak memory to ``bench/results/demo-<date>.json``. The venv
is assumed to exist (``make demo`` would create it; that is install time, not the job's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def stage_times(root: Path) -> dict:
    """Per stage: number of jobs, the sum and the largest of their run times (from the logs)."""
    records = [json.loads(line) for line in (root / "submissions.jsonl").read_text().splitlines() if line.strip()]
    out = {}
    for r in records:
        log = Path(r["stdout"])
        m = re.search(r"done in ([0-9.]+) s", log.read_text()) if log.exists() else None
        s = out.setdefault(r["stage"], {"jobs": 0, "sum_s": 0.0, "max_s": 0.0})
        s["jobs"] += 1
        if m:
            s["sum_s"] += float(m.group(1))
            s["max_s"] = max(s["max_s"], float(m.group(1)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=None, help="local executor processes (default: cores)")
    ap.add_argument("--keep", type=Path, default=None, help="run in this (new) folder and keep it")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/demo-<date>.json)")
    a = ap.parse_args(argv)
    base = a.keep or Path(tempfile.mkdtemp(prefix="demo-bench-"))
    if (base / "sweeps").exists():
        sys.exit(f"{base} already holds a sweep: give a new folder (the point is a cold run)")
    shutil.copytree(REPO / "configs", base / "configs", dirs_exist_ok=True)
    cmd = [sys.executable, "-m", "jobs", "run", "configs/demo.yaml", "--base", str(base)]
    if a.workers:
        cmd += ["--workers", str(a.workers)]
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, text=True, stdout=subprocess.PIPE)
    wall = time.perf_counter() - start
    print(proc.stdout[-4000:])
    if proc.returncode:
        sys.exit(f"the demo failed (exit {proc.returncode})")
    root = base / "sweeps" / "demo"
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {
        "command": " ".join(["bench/demo.py"] + (argv if argv is not None else sys.argv[1:])),
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.platform(), "cpus": os.cpu_count(),
        "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb_largest_process": usage.ru_maxrss / 1024, "stages": stage_times(root),
        "report": str(root / "report" / "index.html"),
    }
    out = a.out or REPO / "bench" / "results" / f"demo-{time.strftime('%Y-%m-%d')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(f"wrote {out}")
    if a.keep is None:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
