"""The section "Region engine (bench/engine.py)" of ``docs/benchmarks.md``, rendered from the JSON
of a run (``render``), and written between its markers (``write_docs``), leaving any other
section alone. The closing list of findings is ``engine_findings._conclusions``."""

from __future__ import annotations

import math
from pathlib import Path

from engine_findings import _conclusions
from engine_plan import NET_TITLE, NETS, PUBLISHED, SECTIONS
from engine_sections import resummarise
from engine_workers import _use, med

REPO = Path(__file__).resolve().parent.parent


def _markers(tag=""):
    t = f" {tag}" if tag else ""
    return f"<!-- BEGIN bench/engine.py{t} -->", f"<!-- END bench/engine.py{t} -->"


def _n(x, nd=0):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:,.{nd}f}"


def _ms(x):
    return "–" if x is None else (f"{x * 1e3:.2f}" if x < 0.1 else f"{x * 1e3:.0f}")


def _table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _delta(r):
    return r["peak_rss_mib"] - r["rss_setup_mib"] if r.get("peak_rss_mib") and r.get("rss_setup_mib") else None


def _frac(f):
    return "1" if f == 1 else f"1/{round(1 / f)}"


def render(data, json_path) -> str:
    m, src, secs = data["machine"], data["engine"], data["sections"]
    plan = data["plan"]
    tag = data.get("tag", "")
    BEGIN, END = _markers(tag)
    L = [BEGIN, "## Region engine (bench/engine.py)" + (f": {tag}" if tag else ""), ""]
    runs = data.get("runs") or [{"command": m["command"], "date": m["date"], "engine": src["source"],
                                  "sections": list(secs), "wall_minutes": data.get("wall_minutes", 0),
                                  "gate_waited_s": data.get("gate_waited_s", 0)}]
    latest = {}
    for s_name, v in secs.items():  # which run produced each section (the latest one that ran it)
        latest.setdefault((v.get("command"), v.get("date")), []).append(s_name)
    run_lines = []
    for r in runs:
        kept = latest.get((r["command"], r["date"]), [])
        if not kept:
            continue
        run_lines.append(f"`{r['command']}` ({r['date'][:16].replace('T', ' ')}, {r['wall_minutes']:.1f} min wall, "
                         f"engine {r['engine']}; waited {r.get('gate_waited_s', 0):.0f} s for a quiet machine): "
                         + ("all sections" if len(kept) == len(SECTIONS) else "sections " + ", ".join(kept))
                         + (f" ({', '.join(x for x in r['sections'] if x not in kept)}: re-run later, see below)"
                            if set(r["sections"]) - set(kept) else ""))
    jp = json_path.relative_to(REPO) if json_path.is_absolute() and REPO in json_path.parents else json_path
    L += [f"Machine: **{m['cpu']}**, {m['cores']} cores, torch {m['torch']}, Python {m['python']}, "
          f"numpy {m['numpy']}. Engine: {src['source']} (sha256 of `pipeline/*.py` {src['pipeline_sha256']}). "
          f"Every sample: `{jp}`.", "", "Run" + ("s" if len(run_lines) > 1 else "") + ":", ""]
    L += [f"- {x}" for x in run_lines] + [""]
    defaults = None
    for sec in ("throughput", "census"):
        for v in (secs.get(sec, {}).get("samples", {}) or {}).values():
            for smp in v:
                defaults = defaults or smp.get("engine_defaults")
        for r in secs.get(sec, {}).get("rows", []) or []:
            defaults = defaults or r.get("engine_defaults")
    if defaults:
        keep = ("eps", "batch_size", "chunk_segments", "max_vertices", "jvp", "scheduling", "method",
                "row_block (cpu, float64 / float32)")
        L += ["`discover` options left at the engine's defaults unless a table says otherwise: " +
              ", ".join(f"`{k}={defaults[k]}`" for k in keep if k in defaults) + ".", ""]
    thr = sorted({v.get("threads") for v in secs.values() if v.get("threads")})
    if thr and max(thr) < (m.get("cores") or 0):
        L += [f"**Threads: {', '.join(map(str, thr))}** (`--threads`). On this shared machine other jobs (test suites) "
              "kept one of the two cores busy for long stretches; a two-thread OpenMP pass then waits at every "
              "barrier for its descheduled thread, and disturbed samples came out 5–20× slower. One thread per "
              "run stayed stable under that load, so the comparisons below are one-core figures, side by side.", ""]
    if data.get("quick"):
        L += ["**Quick run (`--quick`): tiny workloads, one repeat. Smoke test only; do not quote.**", ""]
    thr_c = data.get("clean_threshold", 0.3)
    L += ["The machine is shared: every sample records the cores other processes kept busy while it ran "
          f"(\"foreign load\"). A sample with a foreign load above {thr_c:.1f} cores counts as disturbed: before "
          "each sample the worker waits (bounded) for the load to drop below that, short disturbed samples are "
          "retried, and variants short of undisturbed samples get a top-up round. Medians are over the "
          "undisturbed samples (over all of them when none is; the \"max foreign load\" columns show the "
          "largest load among the samples used).", ""]
    fr = plan["frac"]
    L += ["**Workload.** Networks, random init, float64 unless stated: " +
          "; ".join(f"{NET_TITLE[k]}: {v}" for k, v in data["networks"].items()) + ". "
          "Segments: closed circular translation paths (bench-only helper in `bench/_common.py`): a scikit-learn "
          "`load_digits` image upsampled to 32x32 (bilinear), repeated over 3 channels, standardised; M = 8 "
          "copies translated by (r cos θ_j, r sin θ_j), r = 4 px, θ_j = 2πj/8 (replicate padding, bilinear "
          "`grid_sample`, crop back); consecutive anchors joined, the last back to the first. 8 seeded digits, "
          "64 segments. Timed workloads use the first fraction of each segment (" +
          ", ".join(f"{NET_TITLE[k]} {_frac(v)}" for k, v in fr.items()) +
          ") so that each piece crosses a few hundred regions; B segments in flight use max(B, 4) segments.", ""]

    if "census" in secs:
        rows = []
        for r in secs["census"]["rows"]:
            if "error" in r:
                rows.append([NET_TITLE[r["net"]], r["n_seg"], "failed", "", "", ""])
                continue
            d = r["density"]
            rows.append([NET_TITLE[r["net"]], r["n_seg"], _n(r["density_median"]), f"{min(d):,}–{max(d):,}",
                         f"{min(r['length']):.1f}–{max(r['length']):.1f}", f"{r['seconds']:.1f}"])
        meths = sorted({r.get("method", "walk") for r in secs["census"]["rows"] if "error" not in r})
        L += [f"### Regions per full path segment (census: `discover` with method {', '.join(meths)}, "
              "B = segments, other options at their defaults)", "",
              _table(["network", "segments", "regions / segment (median)", "range", "‖x1 − x0‖", "seconds"], rows),
              ""]
        v = [r for r in secs["census"]["rows"] if r.get("net") == "vgg8" and "error" not in r]
        if v:
            L += [f"VGG8 crosses {_n(v[0]['density_median'])} regions per full segment here (median); the design "
                  "measured about 9,000–10,000 on its paths. These smooth upsampled digits are not CIFAR images, so "
                  "the count is of the same order but lower.", ""]

    if "throughput" in secs:
        rows_all = secs["throughput"]["rows"]
        idx = {(r["net"], r["variant"], r["batch"]): r for r in rows_all}
        L += ["### 1. Throughput (regions/s) and peak memory", "",
              "One fresh process per configuration (peak RSS = its `ru_maxrss`; the process holds torch, the "
              "network and the workload before the engine starts, \"RSS before\", median "
              f"{_n(med([r.get('rss_setup_mib') for r in rows_all]))} MiB, most of it torch itself). Walk and subdivide workers of "
              "the same (network, B) run side by side in interleaved rounds. Medians over the rounds (n). "
              "\"rows/step\" is the mean batch fill of the walk (the batch drains at the end, when no segment "
              "is left to refill it).", ""]
        rows = []
        for net in NETS:
            for b in sorted({r["batch"] for r in rows_all if r["net"] == net}):
                w, s, dd = idx.get((net, "walk", b), {}), idx.get((net, "subdivide", b), {}), idx.get((net, "walk-dual", b), {})
                faster = ""
                if w.get("regions_per_s") and s.get("regions_per_s"):
                    faster = "walk" if w["regions_per_s"] > s["regions_per_s"] else "subdivide"
                    faster += f" ×{max(w['regions_per_s'], s['regions_per_s']) / min(w['regions_per_s'], s['regions_per_s']):.2f}"
                rows.append([NET_TITLE[net], b, w.get("n_seg", s.get("n_seg", "")), _n(w.get("regions", s.get("regions"))),
                             _n(w.get("regions_per_s")), _n(dd.get("regions_per_s")) if dd else "",
                             _n(s.get("regions_per_s")), faster,
                             f"{_n(w.get('peak_rss_mib'))} / {_n(s.get('peak_rss_mib'))}",
                             f"{_n(_delta(w))} / {_n(_delta(s))}",
                             _n(w.get("mean_rows_per_step"), 1),
                             f"{w.get('n', 0)}/{s.get('n', 0)}",
                             f"{max(w.get('foreign_cores', 0) or 0, s.get('foreign_cores', 0) or 0, dd.get('foreign_cores', 0) or 0):.2f}"])
        L += [_table(["network", "B", "segments", "regions", "walk r/s", "walk (jvp=dual) r/s", "subdivide r/s",
                      "faster", "peak RSS walk / subdivide (MiB)", "peak − RSS before, walk / subdivide (MiB)", "walk rows/step",
                      "n walk/subdivide", "max foreign load"], rows), ""]
        errs = [r for r in rows_all if "error" in r]
        if errs:
            L += ["Missing rows: " + "; ".join(f"{r['net']} {r['variant']} B={r['batch']}: {r['error'].splitlines()[-1][:120]}"
                                               for r in errs), ""]

    if "efficiency" in secs or "throughput" in secs:
        L += ["### 2. Walk efficiency = (one bare pass at batch B) / (one walk step at batch B)", "",
              "*Pass level*: `bare_pass` (the stacked `[x; x + d]` forward, or the forward-mode dual forward, "
              "with no interception) against `linearize` (the same pass with the piecewise-linear ops "
              "intercepted, the pattern frozen and the next kink tracked), and `linearize(track=False)` "
              "(interception without kink tracking), timed interleaved at each B, median of the repeats. "
              "*In situ*: the bare pass at B against the mean time of one walk iteration while B rows are in "
              "flight, timed from pass to pass inside the full walks of section 1 (walk bookkeeping and chunk "
              "emission included); and, cruder, the whole walk as if every step were full (regions / B steps).", ""]
        if "efficiency" in secs:
            rows = []
            for net, r in secs["efficiency"]["passlevel"].items():
                if "error" in r:
                    rows.append([NET_TITLE[net], "failed", "", "", "", "", ""])
                    continue
                for q in r["rows"]:
                    rows.append([NET_TITLE[net], q["batch"], q["jvp"], _ms(q["bare_s"]), _ms(q["notrack_s"]),
                                 _ms(q["linearize_s"]), f"**{q['efficiency']:.2f}**", f"{q['foreign_cores_median']:.2f}"])
            L += ["Pass level (ms per pass):", "",
                  _table(["network", "B", "jvp", "bare pass", "linearize, no tracking", "linearize", "efficiency",
                          "foreign load"], rows), ""]
        if "throughput" in secs:
            rows = []
            for r in secs["throughput"]["rows"]:
                if r["variant"].startswith("walk") and r.get("bare_pass_s"):
                    rows.append([NET_TITLE[r["net"]], r["batch"], "dual" if r["variant"] == "walk-dual" else "stacked",
                                 _ms(r["bare_pass_s"]), _ms(r.get("full_step_s")),
                                 f"**{r['eff_in_situ']:.2f}**" if r.get("eff_in_situ") else "–",
                                 f"{r['eff_full_batch']:.2f}", _n(r.get("mean_rows_per_step"), 1)])
            L += ["In situ (ms):", "",
                  _table(["network", "B", "jvp", "bare pass", "walk step (batch full)", "efficiency in situ",
                          "whole walk as full steps", "rows/step"], rows), ""]

    if "scheduling" in secs:
        rows = []
        for r in secs["scheduling"]["rows"]:
            if "error" in r:
                rows.append([NET_TITLE[r["net"]], r["batch"], "failed", "", "", "", "", ""])
                continue
            fm = r["fmax"]
            rows.append([NET_TITLE[r["net"]], r["batch"], r["n_seg"],
                         f"{_frac(fm)}, {_frac(fm / 2)}, {_frac(fm / 4)}, {_frac(fm / 8)} of a segment (seeded mix)",
                         _n(r["regions"]), f"{r['continuous_s']:.2f} ({r['rows_continuous']:.1f})",
                         f"{r['static_s']:.2f} ({r['rows_static']:.1f})", f"**{r['speedup']:.2f}**",
                         f"{r['foreign_cores']:.2f}"])
        L += ["### 3. Walk scheduling: continuous against static", "",
              "Same segments, same B, interleaved. The segments have unequal lengths on purpose: each is the first "
              "1, 1/2, 1/4 or 1/8 of `fmax` of a path segment, drawn at random (seeded). Static batching loads B "
              "segments and waits for the longest; continuous refills a slot as soon as its segment ends.", "",
              _table(["network", "B", "segments", "lengths", "regions", "continuous s (rows/step)",
                      "static s (rows/step)", "speed-up", "max foreign load"], rows), ""]

    if "subdivide" in secs:
        sd = secs["subdivide"]
        pc = sd.get("profile_config", {})
        L += ["### 4. Subdivide: where the time goes, and max_vertices", ""]
        prof = sd.get("profile", {})
        L += [f"Profiled on {NET_TITLE[pc.get('net', 'vgg8')]}, B = {pc.get('batch')}, {pc.get('batch')} segments of "
              f"{_frac(pc.get('frac', 1))} (the section-1 workload). Engine functions are wrapped with wall-clock "
              "timers for one run (stages nest: an indented stage is part of the one above) and the network's "
              "conv / linear / pooling modules carry forward hooks, so their time is charged to the innermost "
              "running stage; \"rest\" is everything else in the stage (other torch ops, Python, the "
              "`TorchFunctionMode` dispatch). Then cProfile on a third run.", ""]
        for variant in ("subdivide", "walk"):
            p = prof.get(variant)
            if not p or "stages" not in p:
                continue
            stg = p["stages"]
            wall = stg["wall"]
            rows = []
            for r in stg["rows"]:
                if r["calls"] == 0:
                    continue
                name = ("&nbsp;&nbsp;&nbsp;&nbsp;" if r["parent"] else "") + r["stage"]
                rows.append([name, _n(r["calls"]), _n(r["inclusive_s"], 2), _n(r["layers_s"], 2),
                             f"{100 * r['layers_s'] / wall:.0f} %", _n(r["rest_s"], 2), f"{100 * r['rest_s'] / wall:.0f} %"])
            lt = stg["layers_total_s"]
            rows.append(["**whole run**", "", _n(wall, 2), f"**{_n(lt, 2)}**", f"**{100 * lt / wall:.0f} %**",
                         f"**{_n(wall - lt, 2)}**", f"**{100 * (wall - lt) / wall:.0f} %**"])
            L += [f"`{variant}`: {p['timing']['seconds']:.2f} s plain ({_n(p['timing']['regions_per_s'])} regions/s), "
                  f"{wall:.2f} s with the timers.", "",
                  _table(["stage", "calls", "inclusive s", "conv/linear/pool s", "% of run", "rest s", "% of run"], rows), ""]
            cp = p.get("cprofile", {}).get("by_tottime", [])[:8]
            if cp:
                L += [f"cProfile ({p['cprofile']['wall']:.2f} s), own time: " +
                      ", ".join(f"`{r['func']}` {r['tottime']:.2f} s ({r['calls']:,} calls)" for r in cp) + ".", ""]
        mv = sd.get("maxvert", {})
        if mv.get("rows"):
            rows = [[r["max_vertices"], _n(r["regions"]), _n(r["regions_per_s"]), _n(r["peak_rss_mib"]),
                     _n(r["peak_rss_mib"] - r["rss_setup_mib"]), r["n"], f"{r['foreign_cores']:.2f}"] for r in mv["rows"]]
            L += [f"Throughput against `max_vertices` ({NET_TITLE[mv['net']]}, B = {mv['batch']}, {mv['batch']} segments "
                  f"of {_frac(mv['frac'])}, so one chain holds up to about {mv['rows'][0]['regions'] + mv['batch']:,} vertices; "
                  "a fresh process per value, interleaved rounds):", "",
                  _table(["max_vertices", "regions", "regions/s", "peak RSS (MiB)", "peak − RSS before (MiB)", "n",
                          "max foreign load"], rows), ""]

    if "precision" in secs:
        pr = secs["precision"]
        rows, krows = [], []
        for net, r in pr["nets"].items():
            if "error" in r:
                rows.append([NET_TITLE[net], "failed", "", "", "", ""])
                continue
            for key, ss in r["samples"].items():
                ok = _use(ss)
                if not ok:
                    continue
                rows.append([NET_TITLE[net], key.split("/")[0], key.split("/")[1], _n(ok[0]["regions"]),
                             _n(ok[0].get("thin_regions")),
                             _n(med([s["regions_per_s"] for s in ok])), f"{max(s['gap_max'] for s in ok):.1e}",
                             f"{max(s['foreign_cores'] for s in ok):.2f}"])
            for d, k in r.get("kernels", {}).items():
                krows.append([NET_TITLE[net], d, _ms(k["bare_pass_s"]), ", ".join(f"`{o}`" for o in k["conv_linear_ops"]),
                              ", ".join(f"`{n}` {t:.2f}" for n, t in k["top_self_ms_per_pass"][:3])])
        L += ["### 5. float32 against float64", "",
              f"B = {pr['batch']}, the section-1 workload, interleaved; \"regions\" is what each precision finds "
              "(float32 works in a coarser `t`; the certificate `continuity_gap` grows accordingly).", "",
              _table(["network", "method", "dtype", "regions", "of which narrower than 1e-5 in t", "regions/s",
                      "max continuity gap", "max foreign load"], rows),
              "", f"Which kernels a bare stacked pass runs at B = {pr['batch']} (torch.profiler):", "",
              _table(["network", "dtype", "bare pass ms", "conv / linear ops", "top self time, ms per pass"], krows), ""]

    if "naive" in secs:
        nv = secs["naive"]
        if "error" in nv:
            L += ["### 6. Naive sampling baseline (Novak et al. 2018)", "", "Failed: " + nv["error"].splitlines()[-1], ""]
        else:
            c = nv["config"]
            rows = [[_n(l["N"]), _n(l["forward_passes"]), _n(l["seconds"], 2), _n(l["regions"]),
                     f"{100 * l['fraction']:.1f} %"] for l in nv["levels"]]
            ew, es = nv["engine_walk"], nv["engine_subdivide"]
            last = nv["levels"][-1]
            L += ["### 6. Naive sampling baseline (Novak et al. 2018)", "",
                  f"{NET_TITLE[c['net']]}, one segment (the first {_frac(c['frac'])} of path segment 0), float64. "
                  f"The ReLU pattern ({nv['relu_units']:,} units) is computed with plain forward passes (batches of "
                  f"{c.get('batch', 64)}, a fast size for float64 convolutions on this CPU) at the points j/N of a dyadic grid refined level by level (each point computed once; the "
                  "seconds are those of the N points of that level); regions found = 1 + changes of pattern between "
                  f"consecutive samples. The engine finds {_n(ew['regions'])} regions (walk, B = 1, "
                  f"{ew['seconds']:.2f} s; subdivide {_n(es['regions'])} in {es['seconds']:.2f} s).", "",
                  _table(["N", "forward passes", "seconds", "regions found", "of the engine's"], rows), "",
                  (f"99 % reached with N = {last['N']:,} forward passes in {last['seconds']:.1f} s, "
                   f"{last['seconds'] / ew['seconds']:.0f}× the walk's time on this segment."
                   if nv["reached"] else
                   f"99 % not reached within the cap (N ≤ 2^{c['max_level']}, {c['time_cap']:.0f} s): "
                   f"{100 * last['fraction']:.1f} % after {last['seconds']:.1f} s, "
                   f"{last['seconds'] / ew['seconds']:.0f}× the walk's time."), ""]

    if "published" in secs:
        rows = []
        for r in secs["published"]["rows"]:
            if "error" in r:
                rows.append([r["batch"], "failed", "", "", ""])
                continue
            rows.append([r["batch"], r["n_seg"], _n(r["regions"]), _n(r["ours_rps"]), _n(r["published_rps"]),
                         f"**{r['ratio']:.2f}**", f"{r['foreign_cores']:.2f}"])
        L += ["### 7. Against the published implementation's cost model", "",
              "The published walk spends two stacked forward passes per region: an ordinary forward to get the "
              "pattern, then a second one for the derivatives. Re-implemented faithfully here as our own walk with "
              "one extra `bare_pass` (the stacked `[x; x + d]` forward, no interception) before each linearising "
              "pass: the same exit computation, regions, scheduling and batch, so the ratio isolates the per-region "
              f"pass count. VGG8, float64, section-1 workload, interleaved. The published figure on these 2 cores: "
              f"{PUBLISHED[0]}–{PUBLISHED[1]} regions/s.", "",
              _table(["B", "segments", "regions", "ours r/s", "cost model r/s", "ratio", "max foreign load"], rows), ""]

    L += ["### What the numbers say", ""] + [f"- {t}" for t in _conclusions(data)] + ["", END]
    return "\n".join(L) + "\n"


def write_docs(data, json_path, docs_path):
    """Replace (or append) the engine section of ``docs_path``, leaving any other section alone."""
    block = render(resummarise(data), Path(json_path).resolve())
    docs_path.parent.mkdir(parents=True, exist_ok=True)
    old = docs_path.read_text() if docs_path.exists() else "# Benchmarks\n\n"
    BEGIN, END = _markers(data.get("tag", ""))
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + block.rstrip("\n") + old[old.index(END) + len(END):]
    else:
        new = old.rstrip("\n") + "\n\n" + block
    docs_path.write_text(new)
