"""Section drivers of ``bench/engine.py`` (``sec_*``, run in the parent: each starts workers and
sends them the ops of ``engine_ops``), the summaries of their samples, and ``resummarise``, which
recomputes every summary from the stored samples."""

from __future__ import annotations

import engine_workers
from engine_plan import NETS
from engine_workers import Worker, _clean, _ok, _use, med


def sec_census(run, plan):
    rows = []
    for c in plan["census"]:
        r = run.once("census", **c)
        r.update(c)
        rows.append(r)
        if "error" not in r:
            print(f"{run.stamp()} census {c['net']}: {r['regions']} regions on {c['n_seg']} full segments, "
                  f"median {r['density_median']:.0f} per segment ({r['seconds']:.1f}s)", flush=True)
    return {"rows": rows}


def _summarise_throughput(net, v, b, n_seg, frac, ss):
    row = {"net": net, "variant": v, "batch": b, "n_seg": n_seg, "frac": frac, "n": len(_use(ss)),
           "n_all": len(_ok(ss)), "n_clean": len(_clean(ss))}
    ok = _use(ss)
    if not ok:
        row["error"] = ss[0].get("error", "not run") if ss else "not run"
        return row
    row.update(regions=ok[0]["regions"], density_mean=ok[0]["density_mean"],
               regions_per_s=med([s["regions_per_s"] for s in ok]), seconds=med([s["seconds"] for s in ok]),
               peak_rss_mib=max(s["peak_rss_mib"] for s in ok), rss_setup_mib=med([s["rss_setup_mib"] for s in ok]),
               foreign_cores=max(s["foreign_cores"] for s in ok), gap_max=max(s["gap_max"] for s in ok))
    if "bare_pass_s" in ok[0]:
        row.update(bare_pass_s=med([s["bare_pass_s"] for s in ok]),
                   full_step_s=med([s.get("full_step_s") for s in ok]),
                   eff_in_situ=med([s.get("eff_in_situ") for s in ok]),
                   eff_full_batch=med([s["eff_full_batch"] for s in ok]),
                   mean_rows_per_step=med([s.get("mean_rows_per_step") for s in ok]))
    return row


def sec_throughput(run, plan):
    tp = plan["throughput"]
    samples, rows = {}, []
    for net in plan.get("nets", NETS):
        frac = plan["frac"][net]
        for b in tp["batches"]:
            variants = ["walk", "subdivide"] + (["walk-dual"] if b in tp["dual_batches"] else [])
            n_seg = max(b, 4)
            workers = {v: Worker(run) for v in variants}
            try:
                for v, w in workers.items():
                    w("setup", net=net, variant=v, batch=b, n_seg=n_seg, frac=frac)
                rounds = tp["rounds_for"].get(f"{net}|{b}", tp["rounds"])
                need = min(2, rounds)
                for rnd in range(rounds + tp.get("extra_rounds", 0)):
                    for v in (variants if rnd % 2 == 0 else variants[::-1]):
                        if rnd >= rounds and len(_clean(samples.get(f"{net}|{v}|{b}", []))) >= need:
                            continue  # top-up rounds only for variants short of undisturbed samples
                        r = workers[v]("run")
                        samples.setdefault(f"{net}|{v}|{b}", []).append(r)
                        if "error" not in r:
                            eff = (f", efficiency in situ {r['eff_in_situ']:.2f}" if r.get("eff_in_situ") else "")
                            print(f"{run.stamp()} {rnd + 1}/{rounds}{'+' if rnd >= rounds else ''} {net:10s} {v:9s} B={b:2d}: {r['regions']:6d} "
                                  f"regions {r['seconds']:6.2f}s {r['regions_per_s']:6.0f} r/s, peak RSS "
                                  f"{r['peak_rss_mib']:.0f} MiB, foreign load {r['foreign_cores']:.2f}{eff}", flush=True)
            finally:
                for w in workers.values():
                    w.close()
            for v in variants:
                rows.append(_summarise_throughput(net, v, b, n_seg, frac, samples.get(f"{net}|{v}|{b}", [])))
    return {"rows": rows, "samples": samples}


def sec_efficiency(run, plan):
    out = {}
    for net in plan.get("nets", NETS):
        out[net] = run.once("passlevel", net=net, frac=plan["frac"][net], batches=list(plan["passlevel"]["batches"]),
                            reps=plan["passlevel"]["reps"])
        print(f"{run.stamp()} pass-level efficiency {net} done", flush=True)
    return {"passlevel": out}


def sec_scheduling(run, plan):
    rows = []
    for c in plan["scheduling"]:
        r = run.once("scheduling", extra=plan.get("extra_reps", 0), **c)
        r.update(c)
        if "error" not in r:
            _summarise_scheduling(r)
            tc, ts = r["continuous_s"], r["static_s"]
            print(f"{run.stamp()} scheduling {c['net']} B={c['batch']}: continuous {tc:.2f}s, static {ts:.2f}s, "
                  f"speed-up {ts / tc:.2f}", flush=True)
        rows.append(r)
    return {"rows": rows}


def sec_subdivide(run, plan):
    mv = plan["maxvert"]
    net = mv["net"]
    workers = {v: Worker(run) for v in mv["values"]}
    samples = {v: [] for v in mv["values"]}
    try:
        for v, w in workers.items():
            w("setup", net=net, variant="subdivide", batch=mv["batch"], n_seg=mv["batch"], frac=mv["frac"],
              max_vertices=v)
        for rnd in range(mv["rounds"] + mv.get("extra_rounds", 0)):
            for v in (list(mv["values"]) if rnd % 2 == 0 else list(mv["values"])[::-1]):
                if rnd >= mv["rounds"] and len(_clean(samples[v])) >= min(2, mv["rounds"]):
                    continue
                r = workers[v]("run")
                samples[v].append(r)
                if "error" not in r:
                    print(f"{run.stamp()} max_vertices={v}: {r['regions_per_s']:.0f} r/s, peak RSS "
                          f"{r['peak_rss_mib']:.0f} MiB, foreign load {r['foreign_cores']:.2f}", flush=True)
    finally:
        for w in workers.values():
            w.close()
    rows = []
    for v in mv["values"]:
        ok = _use(samples[v])
        if ok:
            rows.append({"max_vertices": v, "n": len(ok), "n_all": len(_ok(samples[v])), "regions": ok[0]["regions"],
                         "regions_per_s": med([s["regions_per_s"] for s in ok]),
                         "peak_rss_mib": max(s["peak_rss_mib"] for s in ok),
                         "rss_setup_mib": med([s["rss_setup_mib"] for s in ok]),
                         "foreign_cores": max(s["foreign_cores"] for s in ok)})
    sp = plan["sub_profile"]
    prof = run.once("profile", net=sp["net"], batch=sp["batch"], frac=plan["frac"][sp["net"]])
    print(f"{run.stamp()} profiles done", flush=True)
    return {"maxvert": dict(mv, rows=rows, samples={str(k): v for k, v in samples.items()}),
            "profile": prof, "profile_config": dict(sp, frac=plan["frac"][sp["net"]])}


def sec_precision(run, plan):
    pc = plan["precision"]
    out = {}
    for net in [n for n in pc["nets"] if n in plan.get("nets", NETS)]:
        out[net] = run.once("precision", net=net, batch=pc["batch"], frac=plan["frac"][net], reps=pc["reps"][net],
                            extra=plan.get("extra_reps", 0))
        print(f"{run.stamp()} precision {net} done", flush=True)
    return {"batch": pc["batch"], "nets": out}


def sec_naive(run, plan):
    c = plan["naive"]
    r = run.once("naive", **c)
    r["config"] = c
    if "error" not in r:
        last = r["levels"][-1]
        print(f"{run.stamp()} naive: {last['regions']} of {r['target']} regions with N = {last['N']} "
              f"({last['seconds']:.1f}s)", flush=True)
    return r


def sec_published(run, plan):
    c = plan["published"]
    rows = []
    for b in c["batches"]:
        r = run.once("published", net=c["net"], batch=b, frac=plan["frac"][c["net"]], reps=c["reps"][b],
                     extra=plan.get("extra_reps", 0))
        r.update(batch=b, net=c["net"], n_seg=max(b, 4))
        if "error" not in r:
            _summarise_published(r)
            ours, pub = r["ours_rps"], r["published_rps"]
            print(f"{run.stamp()} published cost model B={b}: ours {ours:.0f} r/s, cost model {pub:.0f} r/s, "
                  f"ratio {ours / pub:.2f}", flush=True)
        rows.append(r)
    return {"rows": rows}


def _summarise_scheduling(r):
    ss = r["samples"]
    c, s = _use(ss["continuous"]), _use(ss["static"])
    tc, ts = med([x["seconds"] for x in c]), med([x["seconds"] for x in s])
    r.update(continuous_s=tc, static_s=ts, speedup=ts / tc, regions=c[0]["regions"], n=(len(c), len(s)),
             rows_continuous=med([x["mean_rows_per_step"] for x in c]),
             rows_static=med([x["mean_rows_per_step"] for x in s]),
             foreign_cores=max(x["foreign_cores"] for x in c + s))


def _summarise_published(r):
    o, p = _use(r["samples"]["ours"]), _use(r["samples"]["published_cost_model"])
    ours, pub = med([s["regions_per_s"] for s in o]), med([s["regions_per_s"] for s in p])
    r.update(ours_rps=ours, published_rps=pub, ratio=ours / pub, regions=o[0]["regions"], n=(len(o), len(p)),
             foreign_cores=max(s["foreign_cores"] for s in o + p))


def resummarise(data):
    """Recompute every summary from the stored samples (so the docs follow the current rules)."""
    engine_workers.CLEAN = data.get("clean_threshold", engine_workers.CLEAN)
    secs = data.get("sections", {})
    tp = secs.get("throughput")
    if tp and tp.get("samples"):
        rows = []
        for r in tp["rows"]:
            rows.append(_summarise_throughput(r["net"], r["variant"], r["batch"], r["n_seg"], r["frac"],
                                              tp["samples"].get(f"{r['net']}|{r['variant']}|{r['batch']}", [])))
        tp["rows"] = rows
    for r in secs.get("scheduling", {}).get("rows", []):
        if "error" not in r:
            _summarise_scheduling(r)
    for r in secs.get("published", {}).get("rows", []):
        if "error" not in r:
            _summarise_published(r)
    mv = secs.get("subdivide", {}).get("maxvert")
    if mv and mv.get("samples"):
        rows = []
        for v, ss in mv["samples"].items():
            ok = _use(ss)
            if ok:
                rows.append({"max_vertices": int(v), "n": len(ok), "n_all": len(_ok(ss)), "regions": ok[0]["regions"],
                             "regions_per_s": med([s["regions_per_s"] for s in ok]),
                             "peak_rss_mib": max(s["peak_rss_mib"] for s in _ok(ss)),
                             "rss_setup_mib": med([s["rss_setup_mib"] for s in ok]),
                             "foreign_cores": max(s["foreign_cores"] for s in ok)})
        mv["rows"] = rows
    return data


SECTION_FUNCS = {"census": sec_census, "throughput": sec_throughput, "efficiency": sec_efficiency,
                 "scheduling": sec_scheduling, "subdivide": sec_subdivide, "precision": sec_precision,
                 "naive": sec_naive, "published": sec_published}
