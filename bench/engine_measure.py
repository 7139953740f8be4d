"""Worker-side measurement helpers of ``bench/engine.py``: the benchmark segments, the timed-sample
rule (``measured``: wait for a quiet machine, meter the foreign load, retry disturbed short runs),
interleaved rounds, ``discover`` options per variant, and the bench-side instrumentation of the
engine (pass counter, stage timers, cProfile; the engine is not edited). Everything here runs
inside a worker process (``bench/engine.py --serve``, see ``engine_ops.serve``)."""

from __future__ import annotations

import copy
import cProfile
import pstats
import time
from pathlib import Path

from engine_plan import N_PATHS, SEED

# the current command's quiet-machine budget (s), time waited so far, and clean threshold (cores);
# set by engine_ops.serve from each command
_GATE = {"max": 0.0, "waited": 0.0, "clean": 0.3}
_PATHS = {}


def all_segments():
    from _common import path_segments

    if "x" not in _PATHS:
        _PATHS["x"] = path_segments(N_PATHS, m=8, r=4.0, seed=SEED)
    return _PATHS["x"]


def segments(n: int, frac: float = 1.0, offset: int = 0, fracs=None, spread: bool = False):
    """``n`` of the 64 segments (the first ones, cycling; or with ``spread`` the j-th segment of
    path j, so directions and digits differ), each cut to its first ``frac`` (or ``fracs[i]``)."""
    import torch

    x0, x1 = all_segments()
    i = torch.arange(n)
    idx = ((i % N_PATHS) * 8 + (i % 8) + (i // N_PATHS)) if spread else (i + offset)
    idx = idx % x0.shape[0]
    a, b = x0[idx].clone(), x1[idx].clone()
    f = torch.full((n,), float(frac), dtype=torch.float64) if fracs is None else torch.as_tensor(fracs).double()
    b = a + f.view(-1, 1, 1, 1) * (b - a)
    return a.contiguous(), b.contiguous()


def prepared(net, dtype):
    """The network as the engine runs it: a private copy in ``dtype``, eval, no grad."""
    from pipeline.engine.fastops import with_fast_layers

    m = with_fast_layers(copy.deepcopy(net).to(dtype).eval(), "cpu")
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def measured(fn, *, max_foreign=None, retries=2, retry_below=30.0):
    """Run ``fn`` under a Meter, after waiting (bounded) for a quiet machine; retry (up to
    ``retries``) runs shorter than ``retry_below`` s that other processes disturbed by more than
    ``max_foreign`` cores. Keeps the least disturbed attempt."""
    from _common import Meter, wait_quiet

    if max_foreign is None:
        max_foreign = _GATE["clean"]
    best, attempts, waited = None, 0, 0.0
    while True:
        attempts += 1
        budget = max(0.0, _GATE["max"] - _GATE["waited"])
        if budget > 0:
            w = wait_quiet(min(budget, 20.0), threshold=max_foreign)
            _GATE["waited"] += w
            waited += w
        with Meter() as m:
            out = fn()
        if best is None or m.foreign < best[0].foreign:
            best = (m, out)
        if m.foreign <= max_foreign or attempts > retries or m.wall > retry_below:
            break
    m, out = best
    return {"seconds": m.wall, "foreign_cores": round(m.foreign, 3), "own_cores": round(m.own_cores, 3),
            "attempts": attempts, "gate_wait_s": round(waited, 1)}, out


def per_call(fn, *, target=0.05, min_calls=2):
    """Seconds per call of ``fn``, from a block of calls lasting about ``target`` seconds."""
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-6)
    k = max(min_calls, int(target / one))
    t0 = time.perf_counter()
    for _ in range(k):
        fn()
    return (time.perf_counter() - t0) / k


class StepCounter:
    """Counts and times the walk's linearising passes by wrapping ``pipeline.engine.walk.linearize``
    (bench-side instrumentation, the engine is not edited). ``extra`` runs before each pass."""

    def __init__(self, extra=None):
        import pipeline.engine.walk as W

        self.W = W
        self.orig = getattr(W, "linearize", None)
        self.extra = extra
        self.t, self.r = [], []  # start time and rows of each pass

    def __enter__(self):
        if self.orig is None:
            return self
        orig, extra, t, r = self.orig, self.extra, self.t, self.r

        def counting(model, x, d, **kw):
            t.append(time.perf_counter())
            r.append(x.shape[0])
            if extra is not None:
                extra(model, x, d, **kw)
            return orig(model, x, d, **kw)

        self.W.linearize = counting
        return self

    def __exit__(self, *exc):
        if self.orig is not None:
            self.W.linearize = self.orig
        return False

    @property
    def steps(self):
        return len(self.t)

    def full_step_seconds(self, batch):
        """Mean time from one pass to the next (one whole walk iteration) while ``batch`` rows
        are in flight, and the number of such steps."""
        iv = [self.t[i + 1] - self.t[i] for i in range(len(self.t) - 1) if self.r[i] == batch]
        return (sum(iv) / len(iv) if iv else None), len(iv)


def discover_kw(variant, batch, dtype="float64", max_vertices=None, scheduling="continuous"):
    """``discover`` options of a variant; everything not named here keeps the engine's default."""
    import torch

    method = "subdivide" if variant == "subdivide" else "walk"
    kw = {"method": method, "batch_size": batch, "dtype": getattr(torch, dtype)}
    if method == "walk":
        kw["jvp"] = "dual" if variant == "walk-dual" else "stacked"
        kw["scheduling"] = scheduling
    elif max_vertices:
        kw["max_vertices"] = max_vertices
    return kw


def pass_kw(fn, dtype):
    """The row blocking the engine applies by default (if this engine version has it), so a bare
    pass is timed with the same kernels as the engine's own pass."""
    import inspect

    try:
        from pipeline.engine.rowblock import default_row_block

        if "row_block" in inspect.signature(fn).parameters:
            return {"row_block": default_row_block("cpu", dtype)}
    except ImportError:
        pass
    return {}


def engine_defaults():
    import inspect

    from pipeline.engine.lines import discover_iter

    out = {k: (v.default if isinstance(v.default, (int, float, str, type(None))) else str(v.default))
           for k, v in inspect.signature(discover_iter).parameters.items() if v.default is not inspect._empty}
    try:
        import torch
        from pipeline.engine.rowblock import default_row_block

        out["row_block (cpu, float64 / float32)"] = [default_row_block("cpu", torch.float64),
                                                    default_row_block("cpu", torch.float32)]
    except ImportError:
        pass
    return out


def run_discover(net, x0, x1, kw, extra=None):
    from pipeline.engine.lines import discover

    with StepCounter(extra) as sc:
        res = discover(net, x0, x1, **kw)
    return res, sc


def summary_of(res, sc, timing):
    out = dict(timing)
    out.update(regions=int(res.n_regions), segments=int(res.n_segments),
               regions_per_s=res.n_regions / timing["seconds"],
               density_mean=float(res.density.mean()), density_min=int(res.density.min()),
               density_max=int(res.density.max()), gap_max=float(res.continuity_gap.max()),
               thin_regions=int(((res.t_end - res.t_start) < 1e-5).sum()))
    if sc is not None and sc.steps:
        out.update(steps=sc.steps, mean_rows_per_step=sum(sc.r) / sc.steps)
    return out


def interleaved(variants, reps, extra, run_one):
    """``reps`` rounds over ``variants`` in alternating order, then up to ``extra`` top-up rounds
    for the variants with fewer than min(2, reps) undisturbed samples."""
    samples = {v: [] for v in variants}
    need = min(2, reps)
    for r in range(reps + extra):
        for v in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            if r >= reps and sum(s["foreign_cores"] <= _GATE["clean"] for s in samples[v]) >= need:
                continue
            samples[v].append(run_one(v))
    return samples


class StageTimer:
    """Inclusive wall time of labelled engine functions (wrapped for one run, the engine is not
    edited) and the time spent in the network's conv / linear / pooling modules (forward hooks),
    attributed to the innermost active stage."""

    LAYERS = ("Conv1d", "Conv2d", "Linear", "AvgPool1d", "AvgPool2d", "MaxPool1d", "MaxPool2d",
              "AdaptiveAvgPool2d", "BatchNorm2d")

    def __init__(self, net, stages):
        self.stages = [st for st in stages if hasattr(st[0], st[1])]  # (owner, attr, label, parent)
        self.active, self.t_layer = [], []
        self.total = {st[2]: 0.0 for st in self.stages}
        self.calls = {st[2]: 0 for st in self.stages}
        self.layers = {}
        self.saved, self.hooks = [], []
        t_layer, active, layers = self.t_layer, self.active, self.layers

        # plain closures, not bound methods: the engine deep-copies the model, hooks included
        def pre(mod, inp):
            t_layer.append(time.perf_counter())

        def post(mod, inp, out):
            dt = time.perf_counter() - t_layer.pop()
            lab = active[-1] if active else "(outside stages)"
            layers[lab] = layers.get(lab, 0.0) + dt

        for mod in net.modules():
            if type(mod).__name__ in self.LAYERS:
                self.hooks.append(mod.register_forward_pre_hook(pre))
                self.hooks.append(mod.register_forward_hook(post))

    def __enter__(self):
        for owner, attr, label, _parent in self.stages:
            orig = getattr(owner, attr)

            def wrapped(*a, _orig=orig, _label=label, **k):
                self.active.append(_label)
                t0 = time.perf_counter()
                try:
                    return _orig(*a, **k)
                finally:
                    self.active.pop()
                    if _label not in self.active:
                        self.total[_label] += time.perf_counter() - t0
                        self.calls[_label] += 1

            self.saved.append((owner, attr, orig))
            setattr(owner, attr, wrapped)
        return self

    def __exit__(self, *exc):
        for owner, attr, orig in reversed(self.saved):
            setattr(owner, attr, orig)
        for h in self.hooks:
            h.remove()
        return False

    def table(self, wall):
        """Rows (stage, parent, inclusive s, conv/linear/pool s inside it directly, the rest s)."""
        rows = []
        for _o, _a, label, parent in self.stages:
            nested = sum(self.total[l] for *_x, l, p in self.stages if p == label)
            lay = self.layers.get(label, 0.0)
            rows.append({"stage": label, "parent": parent, "calls": self.calls[label], "inclusive_s": self.total[label],
                         "layers_s": lay, "rest_s": self.total[label] - nested - lay})
        top = sum(self.total[l] for *_x, l, p in self.stages if p is None)
        lay = self.layers.get("(outside stages)", 0.0)
        rows.append({"stage": "outside the stages: model copy, fx trace, walk loop", "parent": None,
                     "calls": 1, "inclusive_s": wall - top, "layers_s": lay, "rest_s": wall - top - lay})
        return {"wall": wall, "rows": rows, "layers_total_s": sum(self.layers.values())}


def _cprofile(fn, n=20):
    pr = cProfile.Profile()
    t0 = time.perf_counter()
    pr.enable()
    fn()
    pr.disable()
    wall = time.perf_counter() - t0
    rows = []
    for (file, line, name), (_cc, nc, tt, ct, _callers) in pstats.Stats(pr).stats.items():
        rows.append({"func": name if file == "~" else f"{Path(file).parent.name}/{Path(file).name}:{line}({name})",
                     "calls": nc, "tottime": tt, "cumtime": ct})
    return {"wall": wall, "by_cumtime": sorted(rows, key=lambda r: -r["cumtime"])[:n],
            "by_tottime": sorted(rows, key=lambda r: -r["tottime"])[:n]}
