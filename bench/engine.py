"""Region-engine benchmark: throughput, memory, efficiency, scheduling, profiles, baselines.

Run by hand from the repository root::

    .venv/bin/python bench/engine.py            # full run (~25 min on 2 cores)
    .venv/bin/python bench/engine.py --quick    # smoke test (~3 min), small counts
    .venv/bin/python bench/engine.py --only throughput,published
    .venv/bin/python bench/engine.py --engine-rev HEAD   # measure a committed engine snapshot

Writes ``bench/results/engine-<date>.json`` (every sample) and regenerates the section
"Region engine (bench/engine.py)" of ``docs/benchmarks.md`` from it. With ``--only`` the
sections run are merged into the JSON of the same day.

Workload (bench-only, see ``bench/_common.py``): closed circular translation paths. A
scikit-learn digit (8x8) is upsampled to 32x32, repeated over 3 channels and standardised;
M = 8 copies are translated by (r cos θ_j, r sin θ_j), r = 4 px, θ_j = 2πj/M (replicate pad,
bilinear ``grid_sample``, crop back), and consecutive anchors are joined, the last back to
the first. 8 digits (seeded) give 64 segments. Full segments hold thousands of regions
(see the census), so the timed workloads use the first fraction ``frac`` of each segment
(``x0 -> x0 + frac (x1 - x0)``), fixed per network so each piece holds a few hundred regions.

Every timing is taken with a ``Meter`` that records how many cores other processes kept busy
meanwhile (the machine is shared); short samples taken under foreign load are retried.
Throughput and memory configurations run each in a fresh subprocess (peak RSS is
``ru_maxrss`` of that process), in interleaved rounds; the other sections run their
variants interleaved inside one fresh subprocess. Medians are quoted.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import datetime as dt
import hashlib
import json
import math
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# ---------------------------------------------------------------------------- the plan

NETS = ("vgg8", "resnet18k8", "mlp1024")
BATCHES = (1, 4, 16, 64)
# fraction of each path segment used in the timed workloads (regions per piece in the census)
FRAC = {"vgg8": 1 / 8, "resnet18k8": 1 / 32, "mlp1024": 1.0}
QUICK_FRAC = {"vgg8": 1 / 64, "resnet18k8": 1 / 256, "mlp1024": 1 / 4}
N_PATHS = 8  # 8 closed paths x 8 segments = 64 segments
SEED = 0
PUBLISHED = (450, 650)  # regions/s of the published implementation on VGG8, these 2 cores

SECTIONS = ("census", "throughput", "efficiency", "scheduling", "subdivide", "precision", "naive", "published")


def make_plan(quick: bool) -> dict:
    frac = QUICK_FRAC if quick else FRAC
    p = {"quick": quick, "frac": dict(frac)}
    if quick:
        p["census"] = [{"net": "vgg8", "n_seg": 2, "batch": 2}, {"net": "mlp1024", "n_seg": 8, "batch": 8}]
        p["throughput"] = {"batches": (1, 16), "variants": ("walk", "walk-dual", "subdivide"), "rounds": 1,
                           "reps": {}}
        p["passlevel"] = {"batches": (1, 16), "reps": 3}
        p["scheduling"] = [{"net": "vgg8", "batch": 8, "n_seg": 16, "fmax": 1 / 32, "reps": 1}]
        p["maxvert"] = {"net": "vgg8", "batch": 8, "values": (512, 4096), "rounds": 1}
        p["sub_profile"] = {"net": "vgg8", "batch": 8}
        p["precision"] = {"nets": ("vgg8",), "batch": 8, "reps": 1}
        p["naive"] = {"net": "vgg8", "frac": 1 / 64, "max_level": 14, "time_cap": 20.0}
        p["published"] = {"net": "vgg8", "batches": (16,), "reps": 1}
    else:
        p["census"] = [{"net": "vgg8", "n_seg": 16, "batch": 16}, {"net": "mlp1024", "n_seg": 64, "batch": 64},
                       {"net": "resnet18k8", "n_seg": 2, "batch": 2}]
        # rounds of fresh subprocesses; reps[(net, variant, batch)] caps the rounds of the costly ones
        p["throughput"] = {"batches": BATCHES, "variants": ("walk", "walk-dual", "subdivide"), "rounds": 3,
                           "reps": {("vgg8", "subdivide", 64): 1, ("resnet18k8", "subdivide", 64): 1,
                                    ("resnet18k8", "walk", 64): 2, ("resnet18k8", "walk-dual", 64): 1,
                                    ("vgg8", "walk-dual", 64): 2, ("resnet18k8", "subdivide", 16): 2}}
        p["passlevel"] = {"batches": BATCHES, "reps": 7}
        p["scheduling"] = [{"net": "vgg8", "batch": 16, "n_seg": 32, "fmax": 1 / 4, "reps": 3},
                           {"net": "mlp1024", "batch": 16, "n_seg": 64, "fmax": 1.0, "reps": 3}]
        p["maxvert"] = {"net": "vgg8", "batch": 16, "values": (512, 1024, 4096, 16384), "rounds": 2}
        p["sub_profile"] = {"net": "vgg8", "batch": 16}
        p["precision"] = {"nets": ("vgg8", "resnet18k8", "mlp1024"), "batch": 16, "reps": 2}
        p["naive"] = {"net": "vgg8", "frac": 1 / 8, "max_level": 20, "time_cap": 240.0}
        p["published"] = {"net": "vgg8", "batches": (4, 16, 64), "reps": 3}
    return p


# ---------------------------------------------------------------------------- worker side


_PATHS = {}


def all_segments():
    from _common import path_segments

    if "x" not in _PATHS:
        _PATHS["x"] = path_segments(N_PATHS, m=8, r=4.0, seed=SEED)
    return _PATHS["x"]


def segments(n: int, frac: float = 1.0, offset: int = 0, fracs=None):
    """``n`` segments (cycling over the 64), each cut to its first ``frac`` (or ``fracs[i]``)."""
    import torch

    x0, x1 = all_segments()
    idx = (torch.arange(n) + offset) % x0.shape[0]
    a, b = x0[idx].clone(), x1[idx].clone()
    f = torch.full((n,), float(frac), dtype=torch.float64) if fracs is None else torch.as_tensor(fracs).double()
    b = a + f.view(-1, 1, 1, 1) * (b - a)
    return a.contiguous(), b.contiguous()


def prepared(net, dtype):
    m = copy.deepcopy(net).to(dtype).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def measured(fn, *, max_foreign=0.3, retries=2, retry_below=30.0):
    """Run ``fn`` under a Meter; retry (up to ``retries``) when other processes kept more than
    ``max_foreign`` cores busy and the run is short enough. Keeps the least disturbed attempt."""
    from _common import Meter

    best = None
    attempts = 0
    while True:
        attempts += 1
        with Meter() as m:
            out = fn()
        if best is None or m.foreign < best[0].foreign:
            best = (m, out)
        if m.foreign <= max_foreign or attempts > retries or m.wall > retry_below:
            break
        time.sleep(2.0)
    m, out = best
    return {"seconds": m.wall, "foreign_cores": round(m.foreign, 3), "own_cores": round(m.own_cores, 3),
            "attempts": attempts}, out


def per_call(fn, *, target=0.25, min_calls=2):
    """Seconds per call of ``fn``: a block of calls long enough to time (~``target`` s)."""
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-5)
    k = max(min_calls, int(target / one))
    t0 = time.perf_counter()
    for _ in range(k):
        fn()
    return (time.perf_counter() - t0) / k


class StepCounter:
    """Counts the walk's linearising passes (wraps ``pipeline.walk.linearize``; no engine edit)."""

    def __init__(self, extra=None):
        import pipeline.walk as W

        self.W = W
        self.orig = getattr(W, "linearize", None)
        self.extra = extra
        self.steps = 0
        self.rows = 0
        self.t = []  # start time of each linearising pass
        self.r = []  # rows in flight at each pass

    def __enter__(self):
        if self.orig is None:
            return self
        orig, extra = self.orig, self.extra

        def counting(model, x, d, **kw):
            self.t.append(time.perf_counter())
            self.r.append(x.shape[0])
            self.steps += 1
            self.rows += x.shape[0]
            if extra is not None:
                extra(model, x, d, **kw)
            return orig(model, x, d, **kw)

        self.W.linearize = counting
        return self

    def __exit__(self, *exc):
        if self.orig is not None:
            self.W.linearize = self.orig
        return False

    def full_step_seconds(self, batch):
        """Mean time from one pass to the next (the whole walk iteration) while ``batch`` rows
        are in flight, and how many such steps there were."""
        iv = [self.t[i + 1] - self.t[i] for i in range(len(self.t) - 1) if self.r[i] == batch]
        return (sum(iv) / len(iv) if iv else None), len(iv)


def _discover_kw(variant, batch, dtype, max_vertices=4096, scheduling="continuous"):
    import torch

    method = "subdivide" if variant == "subdivide" else "walk"
    kw = {"method": method, "batch_size": batch, "dtype": getattr(torch, dtype)}
    if method == "walk":
        kw["jvp"] = "dual" if variant == "walk-dual" else "stacked"
        kw["scheduling"] = scheduling
    else:
        kw["max_vertices"] = max_vertices
    return kw


def run_discover(net, x0, x1, kw, extra=None):
    from pipeline.regions import discover

    with StepCounter(extra) as sc:
        res = discover(net, x0, x1, **kw)
    return res, sc


def summary_of(res, sc, timing):
    out = dict(timing)
    out.update(regions=int(res.n_regions), segments=int(res.n_segments),
               regions_per_s=res.n_regions / timing["seconds"],
               density_mean=float(res.density.mean()), density_min=int(res.density.min()),
               density_max=int(res.density.max()), gap_max=float(res.continuity_gap.max()))
    if sc is not None and sc.steps:
        out.update(steps=sc.steps, rows=sc.rows)
    return out


def w_throughput(c):
    """One configuration in this fresh process: warm-up, one timed discover, peak RSS."""
    import torch
    from _common import build_network, current_rss_mib, peak_rss_mib
    from pipeline.linearize import bare_pass

    net = build_network(c["net"])
    kw = _discover_kw(c["variant"], c["batch"], c.get("dtype", "float64"), c.get("max_vertices", 4096))
    x0, x1 = segments(c["n_seg"], c["frac"])
    wa, wb = segments(min(c["n_seg"], c["batch"]), c["frac"] / 16, offset=32)
    run_discover(net, wa, wb, kw)  # warm-up: lazy initialisation, allocator, fx trace
    rss_before = current_rss_mib()
    timing, (res, sc) = measured(lambda: run_discover(net, x0, x1, kw), retry_below=c.get("retry_below", 30.0))
    out = summary_of(res, sc, timing)
    out.update(peak_rss_mib=peak_rss_mib(), rss_before_mib=rss_before)
    if c["variant"].startswith("walk"):
        # the efficiency baseline at the same batch: one bare pass (no interception)
        jvp = kw["jvp"]
        model = prepared(net, kw["dtype"])
        b = min(c["batch"], c["n_seg"])
        x, d = x0[:b].to(kw["dtype"]), (x1 - x0)[:b].to(kw["dtype"])
        x = x + 0.37 * d
        bare_pass(model, x, d, jvp=jvp)
        tb = sorted(per_call(lambda: bare_pass(model, x, d, jvp=jvp), target=0.1) for _ in range(5))
        out["bare_pass_s"] = tb[len(tb) // 2]
        # in situ, two ways: (a) the whole run as if every step were full (regions / B steps),
        # (b) the mean walk iteration while the batch is full (timed between passes)
        out["eff_full_batch"] = out["bare_pass_s"] * (res.n_regions / b) / timing["seconds"]
        if sc.steps:
            out["s_per_step"] = timing["seconds"] / sc.steps
            out["mean_rows_per_step"] = sc.rows / sc.steps
            full_s, n_full = sc.full_step_seconds(b)
            out["full_step_s"], out["full_steps"] = full_s, n_full
            if full_s:
                out["eff_in_situ"] = out["bare_pass_s"] / full_s
    return out


def w_passlevel(c):
    """bare_pass vs linearize(track=False) vs linearize(track=True), interleaved, per batch and jvp."""
    import torch
    from _common import Meter, build_network
    from pipeline.linearize import bare_pass, linearize

    net = build_network(c["net"])
    model = prepared(net, torch.float64)
    x0, x1 = segments(64, c["frac"])
    rows = []
    for b in c["batches"]:
        x, d = x0[:b], (x1 - x0)[:b]
        x = x + 0.37 * d
        for jvp in ("stacked", "dual"):
            fns = {"bare": lambda: bare_pass(model, x, d, jvp=jvp),
                   "notrack": lambda: linearize(model, x, d, jvp=jvp, track=False),
                   "linearize": lambda: linearize(model, x, d, jvp=jvp, track=True)}
            for f in fns.values():
                f()
            samples = {k: [] for k in fns}
            foreign = []
            for r in range(c["reps"]):
                order = list(fns) if r % 2 == 0 else list(fns)[::-1]
                with Meter() as m:
                    for k in order:
                        samples[k].append(per_call(fns[k], target=0.08))
                foreign.append(m.foreign)
            med = {k: sorted(v)[len(v) // 2] for k, v in samples.items()}
            rows.append({"batch": b, "jvp": jvp, "bare_s": med["bare"], "notrack_s": med["notrack"],
                         "linearize_s": med["linearize"], "efficiency": med["bare"] / med["linearize"],
                         "foreign_cores_median": sorted(foreign)[len(foreign) // 2], "samples": samples})
            print(f"    pass {c['net']} B={b} {jvp}: bare {med['bare']*1e3:.2f} ms, linearize "
                  f"{med['linearize']*1e3:.2f} ms, eff {med['bare']/med['linearize']:.2f}", file=sys.stderr, flush=True)
    return {"rows": rows}


def w_scheduling(c):
    import numpy as np
    from _common import build_network

    net = build_network(c["net"])
    rng = np.random.default_rng(SEED)
    fracs = c["fmax"] * 2.0 ** -rng.integers(0, 4, c["n_seg"])
    x0, x1 = segments(c["n_seg"], fracs=fracs)
    wa, wb = segments(c["batch"], c["fmax"] / 64, offset=32)
    samples = {"continuous": [], "static": []}
    for sched in samples:
        run_discover(net, wa, wb, _discover_kw("walk", c["batch"], "float64", scheduling=sched))
    for r in range(c["reps"]):
        order = ["continuous", "static"] if r % 2 == 0 else ["static", "continuous"]
        for sched in order:
            kw = _discover_kw("walk", c["batch"], "float64", scheduling=sched)
            timing, (res, sc) = measured(lambda: run_discover(net, x0, x1, kw))
            samples[sched].append(summary_of(res, sc, timing))
            print(f"    {sched}: {timing['seconds']:.2f}s {res.n_regions} regions", file=sys.stderr, flush=True)
    return {"fracs": fracs.tolist(), "samples": samples}


_LAYER_OPS = ("conv", "linear", "addmm", "matmul", "aten::mm", "pool", "relu", "clamp_min", "threshold")


def _is_layer(name: str) -> bool:
    return any(k in name for k in _LAYER_OPS)


def _profile_split(prof, labels, wall):
    """Split profiled time by enclosing label and by top-level op kind (network layer or other)."""
    evs = prof.events()
    label_total = {lab: 0.0 for lab in labels}
    split = {lab: {"layers": 0.0, "other_ops": 0.0} for lab in labels + ["(outside labels)"]}
    ops_by_name = {}
    for e in evs:
        if e.name in label_total and (e.cpu_parent is None or e.cpu_parent.name not in label_total):
            label_total[e.name] += e.cpu_time_total / 1e6
    for e in evs:
        if e.name in label_total or getattr(e, "is_user_annotation", False):
            continue
        p = e.cpu_parent
        inner = None
        top = True
        while p is not None:
            if p.name in label_total:
                inner = inner or p.name
            elif not getattr(p, "is_user_annotation", False):
                top = False
                break
            p = p.cpu_parent
        if not top:
            continue
        lab = inner or "(outside labels)"
        kind = "layers" if _is_layer(e.name) else "other_ops"
        split[lab][kind] += e.cpu_time_total / 1e6
        ops_by_name[e.name] = ops_by_name.get(e.name, 0.0) + e.cpu_time_total / 1e6
    top_ops = sorted(ops_by_name.items(), key=lambda kv: -kv[1])[:15]
    return {"wall": wall, "label_total": label_total, "split": split, "top_ops": top_ops}


class _Labelled:
    """Wrap module-level functions in ``torch.profiler.record_function`` ranges (bench only)."""

    def __init__(self, targets):
        self.targets = targets  # [(owner, attr, label)]
        self.saved = []

    def __enter__(self):
        import torch

        for owner, attr, label in self.targets:
            orig = getattr(owner, attr)

            def wrapped(*a, _orig=orig, _label=label, **k):
                with torch.profiler.record_function(_label):
                    return _orig(*a, **k)

            self.saved.append((owner, attr, orig))
            setattr(owner, attr, wrapped)
        return self

    def __exit__(self, *exc):
        for owner, attr, orig in reversed(self.saved):
            setattr(owner, attr, orig)
        return False


def _cprofile_top(fn, n=25):
    pr = cProfile.Profile()
    pr.enable()
    fn()
    pr.disable()
    st = pstats.Stats(pr)
    rows = []
    for (file, line, name), (cc, nc, tt, ct, _callers) in st.stats.items():
        rows.append({"func": f"{Path(file).name}:{line}({name})" if file != "~" else name, "calls": nc,
                     "tottime": tt, "cumtime": ct})
    by_cum = sorted(rows, key=lambda r: -r["cumtime"])[:n]
    by_tot = sorted(rows, key=lambda r: -r["tottime"])[:n]
    return {"by_cumtime": by_cum, "by_tottime": by_tot}


def w_profile(c):
    """torch.profiler split (labelled engine stages) and cProfile of one subdivide and one walk run."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from _common import build_network
    import pipeline.linearize as L
    import pipeline.subdivide as S
    import pipeline.walk as W

    net = build_network(c["net"])
    x0, x1 = segments(c["batch"], c["frac"])
    wa, wb = segments(c["batch"], c["frac"] / 16, offset=32)
    out = {}
    for variant in ("subdivide", "walk"):
        kw = _discover_kw(variant, c["batch"], "float64")
        run_discover(net, wa, wb, kw)
        timing, (res, _) = measured(lambda: run_discover(net, x0, x1, kw))
        if variant == "subdivide":
            targets = [(S, "_run", "subdivide: graph interpretation + splitting"),
                       (S, "_insert", "subdivide: insert vertices + interpolate live tensors"),
                       (S, "_regions", "subdivide: region maps + midpoint certificate")]
            if hasattr(S.pwl, "relu_crossings"):
                targets.append((S.pwl, "relu_crossings", "subdivide: find sign changes"))
        else:
            targets = [(W, "linearize", "walk: linearising pass"),
                       (L._Stacked, "relu", "walk: ReLU pattern + next kink (stacked)"),
                       (W, "_emit", "walk: emit chunk (endpoints, measures)")]
        targets = [t for t in targets if hasattr(t[0], t[1])]
        labels = [t[2] for t in targets]
        with _Labelled(targets):
            t0 = time.perf_counter()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                res2, _ = run_discover(net, x0, x1, kw)
            wall = time.perf_counter() - t0
        split = _profile_split(prof, labels, wall)
        cp = _cprofile_top(lambda: run_discover(net, x0, x1, kw))
        out[variant] = {"timing": summary_of(res, None, timing), "profiler": split, "cprofile": cp}
        print(f"    profiled {variant}: {timing['seconds']:.2f}s plain, {wall:.2f}s under the profiler",
              file=sys.stderr, flush=True)
    return out


def w_precision(c):
    """float32 against float64, both methods, interleaved; plus the conv kernel each dtype uses."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from _common import build_network
    from pipeline.linearize import bare_pass

    net = build_network(c["net"])
    x0, x1 = segments(c["batch"], c["frac"])
    wa, wb = segments(c["batch"], c["frac"] / 16, offset=32)
    variants = [(m, d) for m in ("walk", "subdivide") for d in ("float64", "float32")]
    for m, d in variants:
        run_discover(net, wa, wb, _discover_kw(m, c["batch"], d))
    samples = {f"{m}/{d}": [] for m, d in variants}
    for r in range(c["reps"]):
        order = variants if r % 2 == 0 else variants[::-1]
        for m, d in order:
            kw = _discover_kw(m, c["batch"], d)
            timing, (res, sc) = measured(lambda: run_discover(net, x0, x1, kw))
            s = summary_of(res, sc, timing)
            s["density"] = res.density.tolist()
            samples[f"{m}/{d}"].append(s)
            print(f"    {m}/{d}: {timing['seconds']:.2f}s {res.n_regions} regions", file=sys.stderr, flush=True)
    kernels = {}
    for d in ("float64", "float32"):
        dtype = getattr(torch, d)
        model = prepared(net, dtype)
        x, dd = x0.to(dtype), (x1 - x0).to(dtype)
        bare_pass(model, x, dd)
        t = sorted(per_call(lambda: bare_pass(model, x, dd), target=0.1) for _ in range(5))[2]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            bare_pass(model, x, dd)
        conv = sorted({e.key for e in prof.key_averages() if "conv" in e.key or "addmm" in e.key or e.key == "aten::mm"})
        top = sorted(((e.key, e.self_cpu_time_total / 1e3) for e in prof.key_averages()), key=lambda kv: -kv[1])[:6]
        kernels[d] = {"bare_pass_s": t, "conv_linear_ops": conv, "top_self_ms": top}
    return {"samples": samples, "kernels": kernels}


def w_naive(c):
    """Novak et al. (2018): activation patterns at dyadic grid points, counted consecutively."""
    import numpy as np
    import torch
    from _common import build_network
    from pipeline.regions import discover

    net = build_network(c["net"])
    x0, x1 = segments(1, c["frac"], offset=c.get("offset", 0))
    out = {}
    # the engine on the same segment (B = 1), both methods
    for method in ("walk", "subdivide"):
        discover(net, *segments(1, c["frac"] / 16, offset=32), method=method, batch_size=1)
        timing, res = measured(lambda: discover(net, x0, x1, method=method, batch_size=1))
        out[f"engine_{method}"] = {"regions": int(res.n_regions), **timing}
    target = out["engine_walk"]["regions"]
    model = prepared(net, torch.float64)
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    store = []
    hooks = [r.register_forward_hook(lambda mod, i, o: store.append(o.flatten(1) > 0)) for r in relus]
    n_units = None
    g = torch.Generator().manual_seed(1)
    weights = None
    d = (x1 - x0)[0]
    x_start = x0[0]

    def pattern_ids(t):
        """int64 hash of the full ReLU pattern at x0 + t d, per t (two independent hashes)."""
        nonlocal weights, n_units
        ids = []
        for i in range(0, t.numel(), 256):
            tt = t[i:i + 256]
            store.clear()
            with torch.no_grad():
                model(x_start + tt.view(-1, 1, 1, 1) * d)
            pat = torch.cat(store, 1)
            if weights is None:
                n_units = pat.shape[1]
                weights = torch.randint(0, 2**40, (n_units, 2), generator=g, dtype=torch.int64)
            h = torch.stack([(pat * weights[:, 0]).sum(1), (pat * weights[:, 1]).sum(1)], 1)
            ids.append(h)
        return torch.cat(ids)

    levels = []
    ids = None  # hashes on the grid j / 2^k, j = 0..2^k
    t_total = 0.0
    k = 8
    base_t = torch.linspace(0, 1, 2**k + 1, dtype=torch.float64)
    t0 = time.perf_counter()
    ids = pattern_ids(base_t)
    t_total += time.perf_counter() - t0
    while True:
        changes = (ids[1:] != ids[:-1]).any(1).sum().item()
        found = 1 + changes
        levels.append({"N": 2**k + 1, "forward_passes": 2**k + 1, "seconds": t_total, "regions": int(found),
                       "fraction": found / target})
        print(f"    naive N=2^{k}+1: {found} / {target} regions, {t_total:.1f}s", file=sys.stderr, flush=True)
        if found >= 0.99 * target or k >= c["max_level"] or t_total > c["time_cap"]:
            break
        # refine: the midpoints of the current grid
        k += 1
        mids = (torch.arange(2**(k - 1), dtype=torch.float64) * 2 + 1) / 2**k
        t0 = time.perf_counter()
        new = pattern_ids(mids)
        t_total += time.perf_counter() - t0
        merged = torch.empty((2**k + 1, 2), dtype=torch.int64)
        merged[0::2] = ids
        merged[1::2] = new
        ids = merged
    for h in hooks:
        h.remove()
    out.update(levels=levels, target=target, relu_units=n_units, reached=levels[-1]["fraction"] >= 0.99)
    return out


def w_published(c):
    """Our walk against the published cost model (two stacked passes per step), interleaved."""
    from _common import build_network
    from pipeline.linearize import bare_pass

    net = build_network(c["net"])
    b = c["batch"]
    n = max(b, 4)
    x0, x1 = segments(n, c["frac"])
    wa, wb = segments(min(n, b), c["frac"] / 16, offset=32)
    kw = _discover_kw("walk", b, "float64")

    def extra_pass(model, x, d, **k):  # the pattern pass the published walk spends per step
        bare_pass(model, x, d, jvp=k.get("jvp", "stacked"))

    variants = {"ours": None, "published_cost_model": extra_pass}
    for v, ex in variants.items():
        run_discover(net, wa, wb, kw, extra=ex)
    samples = {v: [] for v in variants}
    for r in range(c["reps"]):
        order = list(variants) if r % 2 == 0 else list(variants)[::-1]
        for v in order:
            timing, (res, sc) = measured(lambda: run_discover(net, x0, x1, kw, extra=variants[v]))
            samples[v].append(summary_of(res, sc, timing))
            print(f"    B={b} {v}: {timing['seconds']:.2f}s {res.n_regions / timing['seconds']:.0f} r/s",
                  file=sys.stderr, flush=True)
    return {"samples": samples}


def w_census(c):
    from _common import build_network
    from pipeline.regions import discover

    net = build_network(c["net"])
    x0, x1 = segments(c["n_seg"], 1.0)
    discover(net, *segments(1, 1 / 64, offset=32), batch_size=1)
    timing, res = measured(lambda: discover(net, x0, x1, batch_size=c["batch"], keep_affine=False), retries=0)
    import numpy as np

    return {**timing, "density": res.density.tolist(), "regions": int(res.n_regions),
            "density_median": float(np.median(res.density)), "gap_max": float(res.continuity_gap.max()),
            "length": res.length.tolist()}


WORKERS = {"throughput": w_throughput, "passlevel": w_passlevel, "scheduling": w_scheduling,
           "profile": w_profile, "precision": w_precision, "naive": w_naive, "published": w_published,
           "census": w_census}


def worker_main(cfg_json: str):
    import torch

    c = json.loads(cfg_json)
    if c.get("threads"):
        torch.set_num_threads(int(c["threads"]))
    try:
        out = WORKERS[c["task"]](c)
        out["threads"] = torch.get_num_threads()
        print("RESULT " + json.dumps(out))
    except Exception:
        print("RESULT " + json.dumps({"error": traceback.format_exc()[-3000:]}))


# ---------------------------------------------------------------------------- parent side


class Runner:
    def __init__(self, env, threads, log):
        self.env = env
        self.threads = threads
        self.log = log
        self.t_start = time.perf_counter()

    def stamp(self):
        s = int(time.perf_counter() - self.t_start)
        return f"[{s // 60:02d}:{s % 60:02d}]"

    def __call__(self, task, **cfg):
        cfg = dict(cfg, task=task, threads=self.threads)
        t0 = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)],
                               env=self.env, capture_output=True, text=True, timeout=3600)
            line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
            out = json.loads(line[-1][7:]) if line else {"error": (p.stderr or p.stdout)[-3000:]}
            if p.stderr and "error" not in out:
                for l in p.stderr.splitlines():
                    if l.startswith("    "):
                        print(l, flush=True)
        except subprocess.TimeoutExpired:
            out = {"error": "timeout (3600 s)"}
        out["wall_with_startup"] = time.perf_counter() - t0
        if "error" in out:
            print(f"{self.stamp()} {task} {cfg} FAILED:\n{out['error']}", flush=True)
        return out


def med(xs):
    xs = sorted(x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x)))
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def sec_census(run, plan):
    rows = []
    for c in plan["census"]:
        r = run("census", **c)
        r.update(c)
        rows.append(r)
        if "error" not in r:
            print(f"{run.stamp()} census {c['net']}: {r['regions']} regions on {c['n_seg']} full segments, "
                  f"median {r['density_median']:.0f}/segment ({r['seconds']:.1f}s)", flush=True)
    return {"rows": rows}


def sec_throughput(run, plan):
    tp = plan["throughput"]
    configs = []
    for net in NETS:
        for v in tp["variants"]:
            for b in tp["batches"]:
                configs.append((net, v, b))
    samples = {f"{n}|{v}|{b}": [] for n, v, b in configs}
    for rnd in range(tp["rounds"]):
        order = configs if rnd % 2 == 0 else configs[::-1]
        for net, v, b in order:
            if rnd >= tp["reps"].get((net, v, b), tp["rounds"]):
                continue
            r = run("throughput", net=net, variant=v, batch=b, n_seg=max(b, 4), frac=plan["frac"][net])
            samples[f"{net}|{v}|{b}"].append(r)
            if "error" not in r:
                eff = f", eff(full-batch) {r['eff_full_batch']:.2f}" if "eff_full_batch" in r else ""
                print(f"{run.stamp()} round {rnd + 1} {net:10s} {v:9s} B={b:2d}: {r['regions']:6d} regions "
                      f"{r['seconds']:6.2f}s {r['regions_per_s']:7.0f} r/s, peak RSS {r['peak_rss_mib']:.0f} MiB, "
                      f"foreign load {r['foreign_cores']:.2f}{eff}", flush=True)
    rows = []
    for net, v, b in configs:
        ss = [s for s in samples[f"{net}|{v}|{b}"] if "error" not in s]
        row = {"net": net, "variant": v, "batch": b, "n_seg": max(b, 4), "frac": plan["frac"][net], "n": len(ss)}
        if ss:
            row.update(regions=ss[0]["regions"], regions_per_s=med([s["regions_per_s"] for s in ss]),
                       seconds=med([s["seconds"] for s in ss]), peak_rss_mib=max(s["peak_rss_mib"] for s in ss),
                       rss_before_mib=med([s["rss_before_mib"] for s in ss]),
                       foreign_cores=med([s["foreign_cores"] for s in ss]), gap_max=max(s["gap_max"] for s in ss),
                       density_mean=ss[0]["density_mean"])
            if "eff_full_batch" in ss[0]:
                row.update(eff_full_batch=med([s["eff_full_batch"] for s in ss]),
                           bare_pass_s=med([s["bare_pass_s"] for s in ss]),
                           s_per_step=med([s.get("s_per_step") for s in ss]),
                           mean_rows_per_step=med([s.get("mean_rows_per_step") for s in ss]))
        else:
            row["error"] = samples[f"{net}|{v}|{b}"][0].get("error") if samples[f"{net}|{v}|{b}"] else "not run"
        rows.append(row)
    return {"rows": rows, "samples": samples}


def sec_efficiency(run, plan):
    out = {"passlevel": {}}
    for net in NETS:
        r = run("passlevel", net=net, frac=plan["frac"][net], batches=list(plan["passlevel"]["batches"]),
                reps=plan["passlevel"]["reps"])
        out["passlevel"][net] = r
        print(f"{run.stamp()} pass-level efficiency {net} done", flush=True)
    return out


def sec_scheduling(run, plan):
    rows = []
    for c in plan["scheduling"]:
        r = run("scheduling", frac=None, **c)
        r.update(c)
        if "error" not in r:
            tc = med([s["seconds"] for s in r["samples"]["continuous"]])
            ts = med([s["seconds"] for s in r["samples"]["static"]])
            r.update(continuous_s=tc, static_s=ts, speedup=ts / tc,
                     regions=r["samples"]["continuous"][0]["regions"])
            print(f"{run.stamp()} scheduling {c['net']} B={c['batch']}: continuous {tc:.2f}s, static {ts:.2f}s, "
                  f"speed-up {ts / tc:.2f}", flush=True)
        rows.append(r)
    return {"rows": rows}


def sec_subdivide(run, plan):
    mv = plan["maxvert"]
    net = mv["net"]
    samples = {v: [] for v in mv["values"]}
    for rnd in range(mv["rounds"]):
        order = list(mv["values"]) if rnd % 2 == 0 else list(mv["values"])[::-1]
        for v in order:
            r = run("throughput", net=net, variant="subdivide", batch=mv["batch"], n_seg=mv["batch"],
                    frac=plan["frac"][net], max_vertices=v)
            samples[v].append(r)
            if "error" not in r:
                print(f"{run.stamp()} max_vertices={v}: {r['regions_per_s']:.0f} r/s, peak RSS "
                      f"{r['peak_rss_mib']:.0f} MiB", flush=True)
    rows = []
    for v in mv["values"]:
        ss = [s for s in samples[v] if "error" not in s]
        if ss:
            rows.append({"max_vertices": v, "n": len(ss), "regions": ss[0]["regions"],
                         "regions_per_s": med([s["regions_per_s"] for s in ss]),
                         "peak_rss_mib": max(s["peak_rss_mib"] for s in ss),
                         "foreign_cores": med([s["foreign_cores"] for s in ss])})
    sp = plan["sub_profile"]
    prof = run("profile", net=sp["net"], batch=sp["batch"], frac=plan["frac"][sp["net"]])
    print(f"{run.stamp()} profiles done", flush=True)
    return {"maxvert": {"net": net, "batch": mv["batch"], "rows": rows,
                        "samples": {str(k): v for k, v in samples.items()}}, "profile": prof,
            "profile_config": sp}


def sec_precision(run, plan):
    pc = plan["precision"]
    out = {}
    for net in pc["nets"]:
        r = run("precision", net=net, batch=pc["batch"], frac=plan["frac"][net], reps=pc["reps"])
        out[net] = r
        print(f"{run.stamp()} precision {net} done", flush=True)
    return {"batch": pc["batch"], "nets": out}


def sec_naive(run, plan):
    c = plan["naive"]
    r = run("naive", **c)
    r["config"] = c
    if "error" not in r:
        last = r["levels"][-1]
        print(f"{run.stamp()} naive: {last['regions']}/{r['target']} regions with N={last['N']} "
              f"({last['seconds']:.1f}s)", flush=True)
    return r


def sec_published(run, plan):
    c = plan["published"]
    rows = []
    for b in c["batches"]:
        r = run("published", net=c["net"], batch=b, frac=plan["frac"][c["net"]], reps=c["reps"])
        r.update(batch=b, net=c["net"])
        if "error" not in r:
            ours = med([s["regions_per_s"] for s in r["samples"]["ours"]])
            pub = med([s["regions_per_s"] for s in r["samples"]["published_cost_model"]])
            r.update(ours_rps=ours, published_rps=pub, ratio=ours / pub,
                     regions=r["samples"]["ours"][0]["regions"])
            print(f"{run.stamp()} published cost model B={b}: ours {ours:.0f} r/s, cost model {pub:.0f} r/s, "
                  f"ratio {ours / pub:.2f}", flush=True)
        rows.append(r)
    return {"rows": rows}


SECTION_FUNCS = {"census": sec_census, "throughput": sec_throughput, "efficiency": sec_efficiency,
                 "scheduling": sec_scheduling, "subdivide": sec_subdivide, "precision": sec_precision,
                 "naive": sec_naive, "published": sec_published}


def engine_source(rev):
    """Export ``pipeline/`` at ``rev`` to a temporary directory (or use the working tree)."""
    info = {}
    try:
        info["head"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                                      text=True).stdout.strip()
    except Exception:
        pass
    if rev:
        tmp = Path(tempfile.mkdtemp(prefix="engine-snapshot-"))
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", rev], capture_output=True, text=True,
                                check=True).stdout.strip()
        arch = subprocess.run(["git", "-C", str(REPO), "archive", commit, "pipeline"], capture_output=True,
                              check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=arch, check=True)
        info.update(source=f"git archive {rev} ({commit[:10]}) pipeline/", commit=commit, path=str(tmp))
    else:
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "pipeline"], capture_output=True,
                               text=True).stdout.strip()
        info.update(source="working tree" + (" (pipeline/ has uncommitted changes)" if dirty else ""),
                    commit=info.get("head"), path=str(REPO), dirty=bool(dirty))
    h = hashlib.sha256()
    for f in sorted(Path(info["path"], "pipeline").rglob("*.py")):
        h.update(f.read_bytes())
    info["pipeline_sha256"] = h.hexdigest()[:16]
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: fewer configurations, small counts")
    ap.add_argument("--only", default="", help=f"comma-separated sections among {', '.join(SECTIONS)}")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the workers (default: torch's)")
    ap.add_argument("--engine-rev", default="", help="benchmark pipeline/ as committed at this git revision")
    ap.add_argument("--out", default="", help="JSON path (default bench/results/engine-<date>[-quick].json)")
    ap.add_argument("--docs", default=str(REPO / "docs" / "benchmarks.md"))
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)

    from _common import machine_info

    only = [s.strip() for s in args.only.split(",") if s.strip()]
    for s in only:
        if s not in SECTIONS:
            ap.error(f"unknown section {s!r}; choose among {', '.join(SECTIONS)}")
    sections = only or list(SECTIONS)
    plan = make_plan(args.quick)
    src = engine_source(args.engine_rev)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([src["path"], str(REPO), str(HERE)] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    sys.path[:0] = [src["path"], str(REPO)]
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cmd_argv = ["bench/engine.py"] + (argv if argv is not None else sys.argv[1:])
    machine = machine_info(cmd_argv)
    machine["threads"] = args.threads or torch.get_num_threads()
    machine["loadavg_start"] = open("/proc/loadavg").read().split()[:3]
    date = dt.date.today().isoformat()
    out_path = Path(args.out) if args.out else HERE / "results" / f"engine-{date}{'-quick' if args.quick else ''}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    data = {}
    if only and out_path.exists():
        data = json.loads(out_path.read_text())
    data.setdefault("sections", {})
    data["machine"] = machine
    data["engine"] = src
    data["plan"] = {k: (v if not isinstance(v, dict) else {str(kk): vv for kk, vv in v.items()})
                    for k, v in plan.items()}
    data["networks"] = __import__("_common").NETWORKS
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
          f"{machine['threads']} threads; engine: {src['source']}", flush=True)
    run = Runner(env, args.threads, print)
    t0 = time.perf_counter()
    try:
        for s in sections:
            print(f"{run.stamp()} == {s}", flush=True)
            ts = time.perf_counter()
            res = SECTION_FUNCS[s](run, plan)
            res["command"] = machine["command"]
            res["date"] = machine["date"]
            res["minutes"] = (time.perf_counter() - ts) / 60
            data["sections"][s] = res
            out_path.write_text(json.dumps(data, indent=1, default=str))
    finally:
        data["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
        data["wall_minutes"] = (time.perf_counter() - t0) / 60
        out_path.write_text(json.dumps(data, indent=1, default=str))
        if src["path"] != str(REPO) and src["path"].startswith(tempfile.gettempdir()):
            shutil.rmtree(src["path"], ignore_errors=True)
    print(f"{run.stamp()} wrote {out_path}", flush=True)
    if not args.no_docs:
        write_docs(data, out_path, Path(args.docs))
        print(f"{run.stamp()} wrote {args.docs}", flush=True)


def write_docs(data, json_path, docs_path):
    raise NotImplementedError


if __name__ == "__main__":
    main()
