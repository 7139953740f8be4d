"""The timed operations of ``bench/engine.py``, run inside a worker process: ``serve`` reads one
JSON command per stdin line and answers with one ``RESULT {json}`` line, dispatching to the
``op_*`` functions (``OPS``). The parent side (``engine_workers``) starts the workers as
``bench/engine.py --serve``."""

from __future__ import annotations

import json
import sys
import time
import traceback

from engine_measure import (
    _GATE,
    StageTimer,
    _cprofile,
    discover_kw,
    engine_defaults,
    interleaved,
    measured,
    pass_kw,
    per_call,
    prepared,
    run_discover,
    segments,
    summary_of,
)
from engine_plan import SEED

# -- persistent throughput worker: "setup" once, then "run" once per round ----------------------

def op_setup(state, c):
    import torch
    from _common import build_network, current_rss_mib

    net = build_network(c["net"])
    kw = discover_kw(c["variant"], c["batch"], c.get("dtype", "float64"), c.get("max_vertices"))
    x0, x1 = segments(c["n_seg"], c["frac"])
    state.update(c=c, net=net, kw=kw, x0=x0, x1=x1, rss_setup=current_rss_mib())
    wa, wb = segments(min(c["n_seg"], c["batch"]), c["frac"] / 16, offset=32)
    run_discover(net, wa, wb, kw)  # warm-up: lazy initialisation, allocator, fx trace
    if c["variant"].startswith("walk"):
        state["model"] = prepared(net, kw["dtype"])
    return {"rss_setup_mib": state["rss_setup"]}


def op_run(state, c):
    from _common import peak_rss_mib
    from pipeline.engine.linearize import bare_pass

    net, kw, x0, x1 = state["net"], state["kw"], state["x0"], state["x1"]
    walk = state["c"]["variant"].startswith("walk")
    if walk:
        jvp, model = kw["jvp"], state["model"]
        b = min(state["c"]["batch"], state["c"]["n_seg"])
        d = (x1 - x0)[:b].to(kw["dtype"])
        x = x0[:b].to(kw["dtype"]) + 0.37 * d
        bk = pass_kw(bare_pass, kw["dtype"])
        bare_pass(model, x, d, jvp=jvp, **bk)

        def bare_time():
            return sorted(per_call(lambda: bare_pass(model, x, d, jvp=jvp, **bk)) for _ in range(5))[2]

        bare_before = bare_time()
    timing, (res, sc) = measured(lambda: run_discover(net, x0, x1, kw), retry_below=c.get("retry_below", 20.0))
    out = summary_of(res, sc, timing)
    out.update(peak_rss_mib=peak_rss_mib(), rss_setup_mib=state["rss_setup"], engine_defaults=engine_defaults())
    if walk:
        # the efficiency baseline at the same batch, in this process: a bare pass (no interception),
        # timed just before and just after the walk; the faster of the two (the conservative choice)
        bare_after = bare_time()
        out.update(bare_before_s=bare_before, bare_after_s=bare_after)
        out["bare_pass_s"] = min(bare_before, bare_after)
        # in situ, two ways: (a) the whole run as if every step were full (regions / B steps);
        # (b) the mean walk iteration while the batch is full (timed from pass to pass)
        out["eff_full_batch"] = out["bare_pass_s"] * (res.n_regions / b) / timing["seconds"]
        full_s, n_full = sc.full_step_seconds(b)
        out.update(full_step_s=full_s, full_steps=n_full)
        if full_s:
            out["eff_in_situ"] = out["bare_pass_s"] / full_s
    return out


# -- one-shot tasks ------------------------------------------------------------------------------

def op_passlevel(state, c):
    """bare_pass vs linearize(track=False) vs linearize(track=True), interleaved, per batch and jvp."""
    import torch
    from _common import Meter, build_network
    from pipeline.engine.linearize import bare_pass, linearize

    model = prepared(build_network(c["net"]), torch.float64)
    x0, x1 = segments(64, c["frac"])
    bk, lk = pass_kw(bare_pass, torch.float64), pass_kw(linearize, torch.float64)
    rows = []
    for b in c["batches"]:
        d = (x1 - x0)[:b]
        x = x0[:b] + 0.37 * d
        for jvp in ("stacked", "dual"):
            fns = {"bare": lambda: bare_pass(model, x, d, jvp=jvp, **bk),
                   "notrack": lambda: linearize(model, x, d, jvp=jvp, track=False, **lk),
                   "linearize": lambda: linearize(model, x, d, jvp=jvp, track=True, **lk)}
            for f in fns.values():
                f()
            samples = {k: [] for k in fns}
            foreign = []
            for r in range(c["reps"]):
                from _common import wait_quiet

                budget = max(0.0, _GATE["max"] - _GATE["waited"])
                if budget:
                    _GATE["waited"] += wait_quiet(min(budget, 10.0), threshold=_GATE["clean"])
                order = list(fns) if r % 2 == 0 else list(fns)[::-1]
                with Meter() as m:
                    for k in order:
                        samples[k].append(per_call(fns[k]))
                foreign.append(m.foreign)
            keep = [i for i, f in enumerate(foreign) if f <= _GATE["clean"]] or list(range(len(foreign)))
            md = {k: sorted(v[i] for i in keep)[len(keep) // 2] for k, v in samples.items()}
            rows.append({"batch": b, "jvp": jvp, "bare_s": md["bare"], "notrack_s": md["notrack"],
                         "linearize_s": md["linearize"], "efficiency": md["bare"] / md["linearize"],
                         "foreign_cores_median": sorted(foreign)[len(foreign) // 2], "reps_used": len(keep),
                         "foreign": foreign, "samples": samples})
            print(f"    pass {c['net']} B={b} {jvp}: bare {md['bare'] * 1e3:.2f} ms, linearize "
                  f"{md['linearize'] * 1e3:.2f} ms, efficiency {md['bare'] / md['linearize']:.2f}",
                  file=sys.stderr, flush=True)
    return {"rows": rows, "row_block": bk.get("row_block")}


def op_scheduling(state, c):
    import numpy as np
    from _common import build_network

    net = build_network(c["net"])
    rng = np.random.default_rng(SEED)
    fracs = c["fmax"] * 2.0 ** -rng.integers(0, 4, c["n_seg"])
    x0, x1 = segments(c["n_seg"], fracs=fracs)
    wa, wb = segments(c["batch"], c["fmax"] / 64, offset=32)
    for sched in ("continuous", "static"):
        run_discover(net, wa, wb, discover_kw("walk", c["batch"], scheduling=sched))

    def one(sched):
        kw = discover_kw("walk", c["batch"], scheduling=sched)
        timing, (res, sc) = measured(lambda: run_discover(net, x0, x1, kw))
        print(f"    {c['net']} {sched}: {timing['seconds']:.2f}s, {res.n_regions} regions, "
              f"{sum(sc.r) / sc.steps:.1f} rows/step, foreign load {timing['foreign_cores']:.2f}",
              file=sys.stderr, flush=True)
        return summary_of(res, sc, timing)

    samples = interleaved(["continuous", "static"], c["reps"], c.get("extra", 0), one)
    return {"fracs": fracs.tolist(), "samples": samples}



def op_profile(state, c):
    """Where the time goes in one subdivide and one walk run: stage timers + layer hooks, cProfile."""
    from _common import build_network
    import pipeline.engine.linearize as L
    import pipeline.engine.kinks as K
    import pipeline.engine.subdivide as S
    import pipeline.engine.subdivide_mode as M
    import pipeline.engine.walk as W

    net = build_network(c["net"])
    x0, x1 = segments(c["batch"], c["frac"])
    wa, wb = segments(c["batch"], c["frac"] / 16, offset=32)
    out = {}
    for variant in ("subdivide", "walk"):
        kw = discover_kw(variant, c["batch"])
        run_discover(net, wa, wb, kw)
        timing, (res, sc) = measured(lambda: run_discover(net, x0, x1, kw))
        if variant == "subdivide":
            run = "subdivide: graph interpretation and splitting (run_graph)"
            stages = [(S, "run_graph", run, None),
                      (M, "_insert", "subdivide: insert vertices, interpolate live tensors (_insert)", run),
                      (K, "relu_crossings", "subdivide: find ReLU sign changes (relu_crossings)", run),
                      (K, "maxpool_crossings", "subdivide: find max-pool argmax changes", run),
                      (S, "_regions", "subdivide: region maps, midpoint certificate, measures (_regions)", None)]
        else:
            lin = "walk: linearising pass (linearize)"
            stages = [(W, "linearize", lin, None),
                      (L._Stacked, "relu", "walk: ReLU pattern and next kink (_Stacked.relu)", lin),
                      (L._Stacked, "pool", "walk: max-pool pattern and next kink", lin),
                      (W, "_emit", "walk: emit chunk: endpoint values, measures (_emit)", None)]
        with StageTimer(net, stages) as st:
            t0 = time.perf_counter()
            run_discover(net, x0, x1, kw)
            wall = time.perf_counter() - t0
        cp = _cprofile(lambda: run_discover(net, x0, x1, kw))
        out[variant] = {"timing": summary_of(res, sc, timing), "stages": st.table(wall), "cprofile": cp}
        print(f"    profiled {variant}: {timing['seconds']:.2f}s plain, {wall:.2f}s with stage timers, "
              f"{cp['wall']:.2f}s under cProfile", file=sys.stderr, flush=True)
    return out


def op_precision(state, c):
    """float32 against float64, both methods, interleaved; and the conv kernel each dtype runs."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from _common import build_network
    from pipeline.engine.linearize import bare_pass

    net = build_network(c["net"])
    x0, x1 = segments(c["batch"], c["frac"])
    wa, wb = segments(c["batch"], c["frac"] / 16, offset=32)
    variants = [(m, d) for m in ("walk", "subdivide") for d in ("float64", "float32")]
    for m, d in variants:
        run_discover(net, wa, wb, discover_kw(m, c["batch"], d))

    def one(key):
        m, d = key.split("/")
        kw = discover_kw(m, c["batch"], d)
        timing, (res, sc) = measured(lambda: run_discover(net, x0, x1, kw))
        s = summary_of(res, sc, timing)
        s["density"] = res.density.tolist()
        print(f"    {c['net']} {key}: {timing['seconds']:.2f}s {res.n_regions} regions, foreign load "
              f"{timing['foreign_cores']:.2f}", file=sys.stderr, flush=True)
        return s

    samples = interleaved([f"{m}/{d}" for m, d in variants], c["reps"], c.get("extra", 0), one)
    kernels = {}
    for d in ("float64", "float32"):
        dtype = getattr(torch, d)
        model = prepared(net, dtype)
        dd = (x1 - x0).to(dtype)
        x = x0.to(dtype) + 0.37 * dd
        bk = pass_kw(bare_pass, dtype)
        bare_pass(model, x, dd, **bk)
        t = sorted(per_call(lambda: bare_pass(model, x, dd, **bk)) for _ in range(5))[2]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                bare_pass(model, x, dd, **bk)
        ka = prof.key_averages()
        generic = {"aten::conv1d", "aten::conv2d", "aten::convolution", "aten::_convolution", "aten::linear",
                   "aten::thnn_conv2d"}
        heavy = sorted({e.key for e in ka if ("conv" in e.key or "addmm" in e.key or e.key == "aten::mm")
                        and e.key not in generic})
        top = sorted(((e.key, e.self_cpu_time_total / 3e3) for e in ka), key=lambda kv: -kv[1])[:6]
        kernels[d] = {"bare_pass_s": t, "conv_linear_ops": heavy, "top_self_ms_per_pass": top, **bk}
    return {"samples": samples, "kernels": kernels}


def op_naive(state, c):
    """Novak et al. (2018): ReLU patterns at the points j / 2^k of a dyadic grid (refined level by
    level, each point computed once), regions = 1 + changes between consecutive samples."""
    import torch
    from _common import build_network

    net = build_network(c["net"])
    x0, x1 = segments(1, c["frac"])
    out = {}
    for variant in ("walk", "subdivide"):  # the engine on the same segment, one in flight
        kw = discover_kw(variant, 1)
        run_discover(net, *segments(1, c["frac"] / 16, offset=32), kw)
        timing, (res, _) = measured(lambda: run_discover(net, x0, x1, kw))
        out[f"engine_{variant}"] = {"regions": int(res.n_regions), **timing}
    target = out["engine_walk"]["regions"]
    model = prepared(net, torch.float64)
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    store = []
    hooks = [r.register_forward_hook(lambda mod, i, o: store.append(o.flatten(1) > 0)) for r in relus]
    g = torch.Generator().manual_seed(1)
    state_w = {}
    d, xa = (x1 - x0)[0], x0[0]

    def pattern_ids(t):
        """Two independent int64 hashes of the whole ReLU pattern at x0 + t d, per t."""
        ids = []
        for i in range(0, t.numel(), c.get("batch", 64)):
            tt = t[i:i + c.get("batch", 64)]
            store.clear()
            with torch.no_grad():
                model(xa + tt.view(-1, 1, 1, 1) * d)
            pat = torch.cat(store, 1).to(torch.int64)
            if "w" not in state_w:
                state_w["w"] = torch.randint(0, 2**40, (pat.shape[1], 2), generator=g, dtype=torch.int64)
            w = state_w["w"]
            ids.append(torch.stack([(pat * w[:, 0]).sum(1), (pat * w[:, 1]).sum(1)], 1))
        return torch.cat(ids)

    levels, k = [], 8
    t0 = time.perf_counter()
    ids = pattern_ids(torch.linspace(0, 1, 2**k + 1, dtype=torch.float64))
    spent = time.perf_counter() - t0
    while True:
        found = 1 + int((ids[1:] != ids[:-1]).any(1).sum())
        levels.append({"N": 2**k + 1, "forward_passes": 2**k + 1, "seconds": spent, "regions": found,
                       "fraction": found / target})
        print(f"    naive N=2^{k}+1: {found} / {target} regions, {spent:.1f}s", file=sys.stderr, flush=True)
        if found >= 0.99 * target or k >= c["max_level"] or spent > c["time_cap"]:
            break
        k += 1
        t0 = time.perf_counter()
        new = pattern_ids((torch.arange(2**(k - 1), dtype=torch.float64) * 2 + 1) / 2**k)
        spent += time.perf_counter() - t0
        merged = torch.empty((2**k + 1, 2), dtype=torch.int64)
        merged[0::2], merged[1::2] = ids, new
        ids = merged
    for h in hooks:
        h.remove()
    out.update(levels=levels, target=target, relu_units=int(state_w["w"].shape[0]),
               reached=levels[-1]["fraction"] >= 0.99)
    return out


def op_published(state, c):
    """Our walk against the published cost model (two stacked passes per step), interleaved.

    The cost model is our own walk with one extra ``bare_pass`` (an ordinary forward of the
    stacked ``[x; x + d]`` batch, the pattern pass) before every linearising pass: two stacked
    forwards per step plus the same exit computation, same regions, same scheduling."""
    from _common import build_network
    from pipeline.engine.linearize import bare_pass

    net = build_network(c["net"])
    b = c["batch"]
    n = max(b, 4)
    x0, x1 = segments(n, c["frac"])
    wa, wb = segments(min(n, b), c["frac"] / 16, offset=32)
    kw = discover_kw("walk", b)

    def pattern_pass(model, x, d, **k):
        bare_pass(model, x, d, jvp=k.get("jvp", "stacked"), **({"row_block": k["row_block"]} if "row_block" in k else {}))

    variants = {"ours": None, "published_cost_model": pattern_pass}
    for v, ex in variants.items():
        run_discover(net, wa, wb, kw, extra=ex)

    def one(v):
        timing, (res, sc) = measured(lambda: run_discover(net, x0, x1, kw, extra=variants[v]))
        print(f"    B={b} {v}: {timing['seconds']:.2f}s, {res.n_regions / timing['seconds']:.0f} regions/s, "
              f"foreign load {timing['foreign_cores']:.2f}", file=sys.stderr, flush=True)
        return summary_of(res, sc, timing)

    return {"samples": interleaved(list(variants), c["reps"], c.get("extra", 0), one)}


def op_census(state, c):
    import numpy as np
    from _common import build_network
    from pipeline.engine.lines import discover, DEFAULT_METHOD

    net = build_network(c["net"])
    method = c.get("method") or DEFAULT_METHOD
    x0, x1 = segments(c["n_seg"], 1.0, spread=c.get("spread", False))
    discover(net, *segments(1, 1 / 256, offset=32), batch_size=1, method=method)
    timing, res = measured(lambda: discover(net, x0, x1, batch_size=c["batch"], keep_affine=False, method=method),
                           retries=0)
    return {**timing, "method": method, "engine_defaults": engine_defaults(), "density": res.density.tolist(), "regions": int(res.n_regions),
            "density_median": float(np.median(res.density)), "gap_max": float(res.continuity_gap.max()),
            "length": res.length.tolist()}


OPS = {"setup": op_setup, "run": op_run, "passlevel": op_passlevel, "scheduling": op_scheduling,
       "profile": op_profile, "precision": op_precision, "naive": op_naive, "published": op_published,
       "census": op_census}


def serve(threads: int):
    """Worker loop: one JSON command per stdin line, one ``RESULT {json}`` line per command."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    state = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        c = json.loads(line)
        _GATE.update(max=float(c.get("gate_max", 0.0)), waited=0.0, clean=float(c.get("clean", 0.3)))
        try:
            out = OPS[c["op"]](state, c)
        except Exception:
            out = {"error": traceback.format_exc()[-3000:]}
        out["threads"] = torch.get_num_threads()
        out["gate_waited_s"] = _GATE["waited"]
        if "pipeline" in sys.modules:
            out["pipeline_file"] = sys.modules["pipeline"].__file__
        print("RESULT " + json.dumps(out, default=float), flush=True)
