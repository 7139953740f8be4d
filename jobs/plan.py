"""What a sweep has done and what is left, from the filesystem alone; and its jobs' states.

    print(summary(plan(sweep, base)))   # done / incomplete / to launch, per stage
    print(status(sweep, base))          # the same, plus the scheduler's view of each job

A run is trained when ``checkpoints/final.pt`` exists; a shard is done when the store (and the
plane store, when the discovery config has ``planes``) lists it complete (marked complete, and its files match its manifest: a damaged shard is incomplete, so
``sweep resume`` writes it again); the aggregation when nothing upstream is left and
``<root>/analysis`` holds the sweep's current aggregation: its last run succeeded and no store
changed since it started (:func:`analysis.status.stale_reason`: the store fingerprints it
recorded against the stores now), so a failed, killed or outdated aggregation is never done.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.stages.discovery import store_paths

from .ledger import records
from .sweepconfig import SweepConfig, discover_config, expand

__all__ = ["FAILED_STATES", "ACTIVE_STATES", "plan", "summary", "status", "log_tail", "sacct_states", "jobs_in_flight"]

# SLURM states of a job that ended without finishing (prefixes: sacct may add "by <uid>", or cut names short)
FAILED_STATES = ("FAILED", "OUT_OF_ME", "NODE_FAIL", "TIMEOUT", "CANCELLED", "BOOT_FAIL", "DEADLINE")
# SLURM states of a job that may still write (sacct's, first word)
ACTIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
                 "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT")


def plan(sweep: SweepConfig, base: Path) -> dict:
    """Done / incomplete / to-launch per stage, from the filesystem alone.

    Returns
    -------
    dict
        ``runs``; ``train``, ``discover`` and ``aggregate``, each ``{"done", "incomplete",
        "todo"}`` (discovery items are ``(run, discover config, shard)``; a damaged shard is
        incomplete); ``damaged``: ``(run, discover config, shard, error)`` of each damaged
        shard (the cheap check of :func:`pipeline.store.verify.shard_status`); ``uncertified``:
        ``(run, discover config, store, n)`` of each store holding ``n`` rows whose certificate
        failed (written with ``on_certificate: warn``; from the shards' attributes);
        ``aggregate_why``: why the aggregation is not done, in words (``None`` when it is).
    """
    from pipeline.store.placement import placement_problems
    from pipeline.store.verify import shard_info, shard_status

    runs = expand(sweep, base)
    train = {"done": [], "incomplete": [], "todo": []}
    discover = {"done": [], "incomplete": [], "todo": []}
    damaged, uncertified, misplaced = [], [], []
    hashes = {}  # checkpoint file -> sha256: the segment and plane stores of a run share it
    for r in runs:
        ck = r.run_dir / "checkpoints"
        key = "done" if (ck / "final.pt").exists() else "incomplete" if (ck / "LAST").exists() else "todo"
        train[key].append(r)
        for checkpoint in sweep.checkpoints:
            dcfg = discover_config(sweep, base, checkpoint)
            complete = set(range(sweep.n_shards))
            started = False
            for store in store_paths(r.run_dir, dcfg):  # the segments', and the planes' if any
                if not store.exists():
                    complete = set()
                    continue
                started = True
                problems = placement_problems(store, hashes=hashes)
                if problems:  # another run's or checkpoint's store: none of its shards is this run's
                    misplaced.append((r, dcfg, store, problems))
                    complete = set()
                    continue
                st = shard_status(store)
                complete &= set(st["complete"])
                damaged += [(r, dcfg, i, st["errors"][i]) for i in st["damaged"]]
                failed = sum(int(shard_info(store, i).get("n_uncertified") or 0) for i in st["complete"])
                if failed:
                    uncertified.append((r, dcfg, store, failed))
            for shard in range(sweep.n_shards):
                item = (r, dcfg, shard)
                discover["done" if shard in complete else "incomplete" if started else "todo"].append(item)
    root = base / sweep.root
    if discover["todo"] or discover["incomplete"]:
        why = "discovery is not finished"
    else:
        from analysis.status import stale_reason

        why = stale_reason(root / "analysis", root)
    aggregate = {"done": [] if why else [1], "incomplete": [], "todo": [1] if why else []}
    return {"runs": runs, "train": train, "discover": discover, "aggregate": aggregate, "aggregate_why": why,
            "damaged": damaged, "uncertified": uncertified, "misplaced": misplaced}


def summary(p: dict) -> str:
    lines = [f"{'stage':<10} {'done':>6} {'incomplete':>11} {'to launch':>10}"]
    for stage in ("train", "discover", "aggregate"):
        s = p[stage]
        lines.append(f"{stage:<10} {len(s['done']):>6} {len(s['incomplete']):>11} {len(s['todo']):>10}")
    return "\n".join(lines)


def status(sweep: SweepConfig, base: Path) -> str:
    """The filesystem's view, plus the scheduler's state of every recorded job and the log
    path and last lines of each failed one."""
    root = base / sweep.root
    p = plan(sweep, base)
    out = [f"sweep {sweep.name} in {root}", summary(p)]
    if p["aggregate_why"] and not (p["discover"]["todo"] or p["discover"]["incomplete"]):
        out.append(f"aggregation not done: {p['aggregate_why']}")
    if p["damaged"]:
        out.append(f"damaged shards ({len(p['damaged'])}, counted as incomplete: `sweep resume` writes them again):")
        out += [f"  {err}" for *_, err in p["damaged"]]  # each names its store and shard
    if p["misplaced"]:
        out.append(f"stores that are not their run's ({len(p['misplaced'])}, counted as incomplete: remove each, "
                   "then `sweep resume` discovers it again):")
        out += [f"  {store}: " + "; ".join(problems) for *_, store, problems in p["misplaced"]]
    if p["uncertified"]:
        out.append(f"failing certificates ({len(p['uncertified'])} store(s), written with on_certificate: warn; "
                   "the aggregation leaves their paths out):")
        out += [f"  {r.run_dir.name} checkpoint {dcfg.checkpoint}: {n} "
                f"{'planes' if 'planes-' in store.name else 'segments'} in {store}"
                for r, dcfg, store, n in p["uncertified"]]
    submitted = records(root)
    if submitted:
        states = sacct_states([r["job_id"] for r in submitted])
        failed = []
        counts = {}
        for r in submitted:
            st = states.get(r["job_id"], "local (see logs)" if r["job_id"].startswith("local-") else "unknown")
            counts[st] = counts.get(st, 0) + 1
            if st.startswith(FAILED_STATES):
                failed.append((r, st))
        out.append("jobs: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        for r, st in failed:
            out.append(f"  {r['stage']} job {r['job_id']} {st} ({r.get('run', '')}): {r['stderr']}\n"
                       f"{log_tail(r['stderr'])}")
    return "\n".join(out)


def jobs_in_flight(root: Path) -> list[tuple[str, str, str]]:
    """``(stage, job id, state)`` of every SLURM job in the sweep's ledger that is still queued or
    running (from ``sacct``; none without SLURM)."""
    recs = records(root)
    states = sacct_states([r["job_id"] for r in recs])
    return [(r["stage"], r["job_id"], states[r["job_id"]]) for r in recs
            if states.get(r["job_id"], "") in ACTIVE_STATES]


def log_tail(path, n: int = 6) -> str:
    """The last ``n`` lines of a job's log, indented (empty if there is no log)."""
    path = Path(path)
    if not path.exists():
        return ""
    return "\n".join("      " + line for line in path.read_text(errors="replace").strip().splitlines()[-n:])


def sacct_states(ids) -> dict:
    import shutil
    import subprocess

    ids = [i for i in ids if i.split("_")[0].isdigit()]  # SLURM ids only (not the local pool's)
    if not ids or not shutil.which("sacct"):
        return {}
    res = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(sorted(set(ids)))],
                         capture_output=True, text=True)
    states = {}
    for line in res.stdout.splitlines():
        if "|" in line:
            jid, st = line.split("|", 1)
            states[jid] = st.split()[0] if st else st
    return states
