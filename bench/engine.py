"""Region-engine benchmark: throughput, memory, efficiency, scheduling, profiles, baselines.

Run by hand from the repository root::

    .venv/bin/python bench/engine.py                      # full run (~25 min on 2 cores)
    .venv/bin/python bench/engine.py --quick              # smoke test (~3 min), small counts
    .venv/bin/python bench/engine.py --only throughput,published
    .venv/bin/python bench/engine.py --engine-rev HEAD    # measure pipeline/ as committed at HEAD

Writes ``bench/results/engine-<date>.json`` (every sample; ``-quick`` suffix for ``--quick``)
and regenerates the section "Region engine (bench/engine.py)" of ``docs/benchmarks.md`` from
it. With ``--only`` the sections run are merged into the JSON of the same day.
``--docs-only`` rebuilds the markdown from an existing JSON.

Workload (bench-only helpers in ``bench/_common.py``): closed circular translation paths. A
scikit-learn digit (8x8) is upsampled to 32x32 (bilinear), repeated over 3 channels and
standardised; M = 8 copies are translated by (r cos θ_j, r sin θ_j), r = 4 px, θ_j = 2πj/M
(replicate padding, bilinear ``grid_sample``, crop back), and consecutive anchors are joined,
the last back to the first. 8 seeded digits give 64 segments. A full segment crosses
thousands of regions on VGG8 (the census section), so the timed workloads use the first
fraction ``frac`` of each segment (``x0 -> x0 + frac (x1 - x0)``), fixed per network, so each
piece crosses a few hundred regions and a configuration runs in seconds.

Measurement rules: every timed sample runs under a ``Meter`` recording how many cores other
processes kept busy meanwhile (the machine is shared); before a sample the worker waits
(bounded) for the machine to be quiet, and short samples taken under foreign load are
retried. Throughput and memory configurations each get their own fresh worker process (peak
RSS = its ``ru_maxrss``); the workers of the variants being compared stay alive side by side
and are driven in interleaved rounds. The other sections interleave their variants inside one
fresh worker. Medians over repeats are quoted.

Modules (all in ``bench/``): ``engine.py`` the command line, ``main`` and ``engine_source``;
``engine_plan.py`` the plan (networks, fractions, counts per section); ``engine_sections.py`` the
section drivers ``sec_*`` and the summaries of their samples (``resummarise``);
``engine_workers.py`` the worker processes and the ``Runner`` (parent side) and which samples a
median uses; ``engine_ops.py`` the timed operations ``op_*`` and the worker loop ``serve`` (run in
a worker, started as ``bench/engine.py --serve``); ``engine_measure.py`` the worker-side
measurement helpers (segments, ``measured``, ``interleaved``, pass counter, stage timers);
``engine_report.py`` and ``engine_findings.py`` the section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import engine_workers  # noqa: E402
from engine_ops import serve  # noqa: E402
from engine_plan import NETS, SECTIONS, make_plan  # noqa: E402
from engine_report import write_docs  # noqa: E402
from engine_sections import SECTION_FUNCS  # noqa: E402
from engine_workers import Runner, clean_threshold  # noqa: E402


def engine_source(rev):
    """Export ``pipeline/`` at ``rev`` to a temporary directory, or use the working tree."""
    git = ["git", "-C", str(REPO)]
    info = {"head": subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()}
    if rev:
        tmp = Path(tempfile.mkdtemp(prefix="engine-snapshot-"))
        commit = subprocess.run(git + ["rev-parse", rev], capture_output=True, text=True, check=True).stdout.strip()
        arch = subprocess.run(git + ["archive", commit, "pipeline"], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=arch, check=True)
        info.update(source=f"pipeline/ at {rev} = {commit[:10]} (git archive)", commit=commit, path=str(tmp),
                    temporary=True)
    else:
        dirty = subprocess.run(git + ["status", "--porcelain", "pipeline"], capture_output=True,
                               text=True).stdout.strip()
        info.update(source=f"working tree at {info['head'][:10]}" +
                    (", pipeline/ with uncommitted changes" if dirty else ""),
                    commit=info["head"], path=str(REPO), dirty=bool(dirty))
    h = hashlib.sha256()
    for f in sorted(Path(info["path"], "pipeline").rglob("*.py")):
        h.update(f.read_bytes())
    info["pipeline_sha256"] = h.hexdigest()[:16]
    return info


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description="Region-engine benchmark (see the module docstring).")
    ap.add_argument("--quick", action="store_true", help="smoke test: fewer configurations, small counts")
    ap.add_argument("--only", default="", help=f"comma-separated sections among: {', '.join(SECTIONS)}")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the workers (default: torch's)")
    ap.add_argument("--nets", default="", help=f"comma-separated subset of {', '.join(NETS)}")
    ap.add_argument("--tag", default="", help="suffix of the JSON and title of a separate docs section")
    ap.add_argument("--engine-rev", default="", help="benchmark pipeline/ as committed at this git revision")
    ap.add_argument("--out", default="", help="JSON path (default bench/results/engine-<date>[-quick].json)")
    ap.add_argument("--docs", default=str(REPO / "docs" / "benchmarks.md"))
    ap.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    ap.add_argument("--docs-only", default="", metavar="JSON", help="only rebuild the docs from this JSON")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        return serve(args.threads)
    if args.docs_only:
        write_docs(json.loads(Path(args.docs_only).read_text()), Path(args.docs_only), Path(args.docs))
        print(f"wrote {args.docs}")
        return

    from _common import NETWORKS, machine_info

    only = [s.strip() for s in args.only.split(",") if s.strip()]
    for s in only:
        if s not in SECTIONS:
            ap.error(f"unknown section {s!r}; choose among: {', '.join(SECTIONS)}")
    plan = make_plan(args.quick)
    if args.nets:
        plan["nets"] = [n.strip() for n in args.nets.split(",") if n.strip()]
        for n in plan["nets"]:
            if n not in NETS:
                ap.error(f"unknown network {n!r}; choose among: {', '.join(NETS)}")
    src = engine_source(args.engine_rev)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([src["path"], str(REPO), str(HERE)] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    import torch

    machine = machine_info(["bench/engine.py"] + list(argv))
    machine["threads"] = args.threads or torch.get_num_threads()
    engine_workers.CLEAN = clean_threshold(machine["threads"], machine["cores"] or 2)
    machine["loadavg_start"] = open("/proc/loadavg").read().split()[:3]
    date = dt.date.today().isoformat()
    out_path = Path(args.out) if args.out else HERE / "results" / f"engine-{date}{'-quick' if args.quick else ''}{'-' + args.tag if args.tag else ''}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(out_path.read_text()) if (only and out_path.exists()) else {}
    data.setdefault("sections", {})
    data.update(machine=machine, engine=src, networks=NETWORKS, tag=args.tag, clean_threshold=engine_workers.CLEAN,
                plan=json.loads(json.dumps(plan, default=list)), quick=args.quick)
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
          f"{machine['threads']} threads; engine: {src['source']}", flush=True)
    run = Runner(env, args.threads, plan["gate"])
    t0 = time.perf_counter()
    try:
        for s in (only or SECTIONS):
            print(f"{run.stamp()} == {s}", flush=True)
            ts = time.perf_counter()
            res = SECTION_FUNCS[s](run, plan)
            res.update(command=machine["command"], date=machine["date"], engine=src["source"], threads=machine["threads"],
                       minutes=(time.perf_counter() - ts) / 60)
            data["sections"][s] = res
            out_path.write_text(json.dumps(data, indent=1, default=str))
    finally:
        data["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
        data["wall_minutes"] = (time.perf_counter() - t0) / 60
        data["gate_waited_s"] = run.waited
        data.setdefault("runs", []).append({
            "command": machine["command"], "date": machine["date"], "engine": src["source"],
            "threads": machine["threads"], "sections": list(only or SECTIONS), "wall_minutes": data["wall_minutes"],
            "gate_waited_s": run.waited, "loadavg_start": machine["loadavg_start"],
            "loadavg_end": data["machine"]["loadavg_end"]})
        out_path.write_text(json.dumps(data, indent=1, default=str))
        if src.get("temporary"):
            shutil.rmtree(src["path"], ignore_errors=True)
    print(f"{run.stamp()} wrote {out_path} (waited {run.waited:.0f}s in total for a quiet machine)", flush=True)
    if not args.no_docs:
        write_docs(data, out_path, Path(args.docs))
        print(f"{run.stamp()} wrote {args.docs}", flush=True)


if __name__ == "__main__":
    main()
