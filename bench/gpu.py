"""One command that checks and measures the region engine on a GPU node (issue 20).

    python bench/gpu.py --out bench/results/gpu-check            # on a node with CUDA: ~5 min at most
    python bench/gpu.py --device cpu --quick --out /tmp/gpu-check  # the same code on the CPU (the suite's smoke test)

It writes ``OUT/gpu-check.json`` and ``OUT/gpu-check.md`` and prints the Markdown:

* the CUDA tests (``tests/test_cuda.py`` and the CUDA cases of ``tests/test_edge_cases.py``, run with
  pytest in a subprocess when pytest is installed; "pytest not installed" otherwise);
* 1-D results (subdivide on VGG8 and ResNet18 k=8, the walk on part of a VGG8 segment) and a plane
  on VGG8, each equal to the CPU's in float64 (largest difference at most 1e-9 of each array's
  largest value, and the same region counts per segment);
* regions/s of subdivide on VGG8 (the 4 segments of ``bench/compare.py``) and ResNet18 k=8 (its first
  segment), in float64 and float32, at each work size ``batch_size x max_vertices``, with peak GPU
  memory and the host-wait count (:class:`pipeline.engine.census.HostSyncCensus`, in an untimed run that
  also warms up); the same workloads on the node's CPU in the same run, and the ratio;
* the machine: device name, CUDA, torch, Python, CPU model, threads.

The exit code is 1 when a check fails (a difference from the CPU, a failed CUDA test, an error in
a measurement), 0 otherwise. It needs only torch and numpy beside ``pipeline``, so it runs under
the torch and Python a GPU node already has. A time budget (``--budget-s``) skips the rows it has
no time left for, by name in the output, rather than overrun a short allocation (the float64 rows
at the first work size, which the equality checks need, always run; a row stops timing after
``ROW_S`` seconds).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing the package
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import circular_path, closed_segments  # noqa: E402 - torch and numpy only at import
from _common import machine_info as common_machine_info  # noqa: E402
from pipeline.engine.census import HostSyncCensus  # noqa: E402
from pipeline.engine.planes import discover_plane  # noqa: E402
from pipeline.engine.prepared import prepare  # noqa: E402
from pipeline.engine.lines import discover  # noqa: E402
from pipeline.engine.worksize import work_sizes  # noqa: E402

RTOL = 1e-9  # float64 results on the device against the CPU's, relative to each array's largest value
CPU_WORK_SIZE = (64, 256)  # the engine's CPU defaults (batch_size, max_vertices)
# the device-sized work first (its rows and the equality checks run before the budget can skip
# anything); the CPU's size last on CUDA, where it is the one most likely to be slow
WORK_SIZES = {"cuda": "auto,1024x65536,64x256", "cpu": "64x256,256x4096"}
ROW_S = 30.0  # no further timed runs of a row once its runs took this long (at least one runs)
QUICK_FRACTION = 1 / 32  # --quick: the first 1/32 of one segment per network (the same code, ~1/100 of the work)
PLANE_SCALE = 0.005  # the plane: a small triangle at the path's first anchor (about 100 regions on VGG8)
WALK_FRACTION = 1 / 16  # the walk check: the first 1/16 of VGG8's first segment (about 190 regions)

# scikit-learn's digit 1528 (a "2"), the one bench/_common.digit_images(1, seed=0) picks: embedded so
# that this script needs no scikit-learn (tests/test_gpu_bench.py checks it against the real one)
DIGIT = [[0, 3, 15, 16, 8, 0, 0, 0], [0, 14, 13, 10, 16, 2, 0, 0], [0, 5, 3, 2, 16, 2, 0, 0],
         [0, 0, 0, 3, 16, 2, 0, 0], [0, 0, 0, 9, 12, 0, 0, 0], [0, 0, 1, 16, 8, 0, 2, 0],
         [0, 0, 8, 16, 14, 16, 15, 0], [0, 2, 16, 16, 15, 12, 9, 0]]


# --------------------------------------------------------------------------- workloads


def path_segments(m: int = 8, r: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The closed circular path of ``bench/compare.py``: ``x0, x1`` float64 ``(m, 3, 32, 32)``.

    The digit upsampled to 32x32, 3 channels, standardised, translated by ``r`` pixels around a
    circle (``bench/_common.path_segments(1)``, without scikit-learn).
    """
    x = torch.tensor(DIGIT, dtype=torch.float64)[None, None]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    img = ((x - x.mean(dim=(1, 2, 3), keepdim=True)) / x.std(dim=(1, 2, 3), keepdim=True))[0]
    return closed_segments(circular_path(img, m, r))


@dataclass(frozen=True)
class Workload:
    name: str  # "vgg8" or "resnet18k8"
    x0: torch.Tensor
    x1: torch.Tensor
    what: str  # in words, for the table


def _network(name: str) -> torch.nn.Module:
    from pipeline.inputs.models import VGG8, ResNet18

    torch.manual_seed(0)
    return (VGG8() if name == "vgg8" else ResNet18(k=8)).eval()


def workloads(quick: bool, vgg_segments: int = 4, resnet_segments: int = 1) -> list[Workload]:
    """VGG8 on ``vgg_segments`` segments and ResNet18 k=8 on ``resnet_segments`` (bench/compare.py's);
    ``quick``: the first :data:`QUICK_FRACTION` of one segment each."""
    x0, x1 = path_segments()
    out = []
    for name, n in (("vgg8", vgg_segments), ("resnet18k8", resnet_segments)):
        if quick:
            a, b = x0[:1], x0[:1] + QUICK_FRACTION * (x1[:1] - x0[:1])
            what = f"first 1/{round(1 / QUICK_FRACTION)} of 1 segment"
        else:
            a, b = x0[:n], x1[:n]
            what = f"{n} segment{'s' if n > 1 else ''}"
        out.append(Workload(name, a.contiguous(), b.contiguous(), what))
    return out


def parse_work_sizes(text: str) -> list[tuple[int, int]]:
    """``"auto,64x256,256x4096"`` -> ``[(0, 0), (64, 256), (256, 4096)]`` (batch_size x max_vertices;
    ``auto``, kept as 0 x 0: the engine's own sizes for the device, :mod:`pipeline.engine.worksize`)."""
    out = []
    for item in text.split(","):
        if item.strip() == "auto":  # sized for the device by the engine (pipeline/engine/worksize.py)
            out.append((0, 0))
            continue
        bs, _, mv = item.strip().partition("x")
        if not (bs.isdigit() and mv.isdigit()) or int(bs) < 1 or int(mv) < 2:
            raise argparse.ArgumentTypeError(f"work size {item!r} is not BATCHxVERTICES, e.g. 256x4096")
        out.append((int(bs), int(mv)))
    return out


def _size(row) -> str:
    if row["batch_size"]:
        return f"{row['batch_size']}x{row['max_vertices']}"
    auto = row.get("auto")
    return f"auto ({auto['batch_size']}x{auto['max_vertices']})" if auto else "auto"


# --------------------------------------------------------------------------- comparisons


def _largest_rel(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a - b| / max |a|`` (0 for empty or all-zero arrays that are equal)."""
    if a.size == 0:
        return 0.0
    scale = float(np.abs(a).max())
    diff = float(np.abs(a - b).max())
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


# The affine maps are judged by their values at each region's corners, not by their coefficients:
# a slope is (f(t_end) - f(t_start)) / (t_end - t_start), so on a region 1e-7 wide the rounding of
# f is magnified 1e7 times in it. Equal maps computed in another order (another work size, another
# device) differ there by more than 1e-9 of the largest slope (2.8e-9 measured on VGG8, CPU against
# CPU) while their values agree to 1e-15. The coefficients' differences are reported beside.


def compare_lines(ref, got) -> dict:
    """Two :class:`pipeline.engine.result.RegionResult` of the same segments: equal region counts per
    segment, and the largest difference of each array (the maps: their values at both ends of
    each region) relative to its largest value."""
    out = {"regions": [ref.n_regions, got.n_regions], "diff": {}}
    if not np.array_equal(ref.density, got.density):
        out.update(equal=False, why="region counts per segment differ")
        return out
    for f in ("t_start", "t_end", "f0", "f1", "deviation"):
        out["diff"][f] = _largest_rel(np.asarray(getattr(ref, f)), np.asarray(getattr(got, f)))
    if ref.intercept is not None and got.intercept is not None:
        for name, t in (("map at t_start", ref.t_start), ("map at t_end", ref.t_end)):
            out["diff"][name] = _largest_rel(ref.intercept + ref.slope * t[:, None],
                                             got.intercept + got.slope * t[:, None])
        out["coefficients"] = {f: _largest_rel(getattr(ref, f), getattr(got, f)) for f in ("intercept", "slope")}
    out["largest"] = max(out["diff"].values(), default=0.0)
    out["equal"] = out["largest"] <= RTOL
    return out


def compare_planes(ref, got) -> dict:
    """Two :class:`pipeline.engine.planes.PlaneResult` of the same planes, as :func:`compare_lines`."""
    out = {"regions": [int(ref.n_regions.sum()), int(got.n_regions.sum())], "diff": {}}
    if not np.array_equal(ref.n_regions, got.n_regions):
        out.update(equal=False, why="region counts per plane differ")
        return out
    for f in ("area", "centroid", "deviation"):
        out["diff"][f] = _largest_rel(np.asarray(getattr(ref, f)), np.asarray(getattr(got, f)))
    if ref.intercept is not None and got.intercept is not None:  # the maps at the regions' vertices
        region = np.repeat(np.arange(len(ref.area)), np.diff(ref.vertex_offset))
        u, v = ref.uv[:, :1], ref.uv[:, 1:]

        def at(r):
            return r.intercept[region] + u * r.grad[region, 0] + v * r.grad[region, 1]

        out["diff"]["map at vertices"] = _largest_rel(at(ref), at(got))
        out["coefficients"] = {f: _largest_rel(getattr(ref, f), getattr(got, f)) for f in ("intercept", "grad")}
    out["largest"] = max(out["diff"].values(), default=0.0)
    out["equal"] = out["largest"] <= RTOL
    return out


# --------------------------------------------------------------------------- measuring


class Budget:
    """Wall-clock budget of the run: rows are skipped, by name, once it would be overrun."""

    def __init__(self, seconds: float):
        self.start = time.perf_counter()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, estimate: float) -> bool:
        return self.elapsed() + estimate <= self.seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def measure(prepared, load: Workload, device: torch.device, dtype, work: tuple[int, int], reps: int,
            census: bool, row_s: float = ROW_S) -> tuple[dict, object]:
    """Time ``discover`` (subdivide) ``reps`` times, fewer once the runs took ``row_s`` seconds;
    with ``census``, one untimed run first under :class:`HostSyncCensus` (it is also the
    warm-up). Returns the row and the last result."""
    bs, mv = work
    row = {"network": load.name, "workload": load.what, "segments": int(load.x0.shape[0]),
           "dtype": _dtype_name(dtype), "device": device.type, "batch_size": bs, "max_vertices": mv}
    if not bs:  # auto: what the engine picks on this device for this network
        sizes = work_sizes(prepared, load.x0[:1], "subdivide")
        bs, mv = sizes.batch_size, sizes.max_vertices
        row["auto"] = {"batch_size": bs, "max_vertices": mv, "why": sizes.why}
    kw = dict(method="subdivide", dtype=dtype, device=device, batch_size=bs, max_vertices=mv)
    res = None
    try:
        if census:
            with HostSyncCensus() as c:
                discover(prepared, load.x0, load.x1, **kw)
            _sync(device)
            row["host_waits"] = c.as_dict()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        secs = []
        while len(secs) < reps and sum(secs) < row_s:
            _sync(device)
            t = time.perf_counter()
            res = discover(prepared, load.x0, load.x1, **kw)
            _sync(device)
            secs.append(time.perf_counter() - t)
        row["seconds"] = secs
        row["regions"] = res.n_regions
        row["regions_per_s"] = res.n_regions / statistics.median(secs)
        if device.type == "cuda":
            row["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    except Exception as e:  # one failed measurement is reported, not fatal to the rest
        row["error"] = f"{type(e).__name__}: {e}"[:2000]
        res = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row, res


def run_cuda_tests(timeout_s: float) -> dict:
    """The CUDA tests with pytest in a subprocess, counted from its JUnit XML."""
    if importlib.util.find_spec("pytest") is None:
        return {"status": "pytest not installed"}
    import xml.etree.ElementTree as ET

    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
               "tests/test_cuda.py", "tests/test_edge_cases.py", "-k", "cuda"]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"status": f"timed out after {timeout_s:.0f} s", "command": " ".join(cmd[2:])}
        shown = [c for c in cmd[1:] if not c.startswith("--junitxml")]
        out = {"command": "python " + " ".join(shown), "returncode": proc.returncode,
               "seconds": time.perf_counter() - t}
        if not xml.exists():
            return {**out, "status": "no report", "tail": (proc.stdout + proc.stderr)[-3000:]}
        suite = ET.parse(xml).getroot()
        suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
        n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    n["passed"] = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    bad = n["failures"] + n["errors"] or proc.returncode not in (0, 5)  # 5: nothing collected
    out.update(n, status="failed" if bad else "ok")
    if bad:
        out["tail"] = (proc.stdout + proc.stderr)[-3000:]
    return out


def machine_info(device: torch.device) -> dict:
    """bench/_common.machine_info (CPU model and cores, torch, threads, Python, numpy, date), with
    the device's name, memory, capability and TF32 flags, and the host."""
    info = {k: v for k, v in common_machine_info([]).items() if k != "command"}  # the report has its own
    info.update(device=device.type, device_name=info["cpu"], cuda=torch.version.cuda, host=platform.node())
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(device_name=p.name, device_memory_gib=p.total_memory / 2 ** 30,
                    capability=f"{p.major}.{p.minor}", cudnn=torch.backends.cudnn.version(),
                    # float32 convolutions run in TF32 on Ampere and later unless this is False
                    cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                    matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    return info


# --------------------------------------------------------------------------- the run


def run(device: torch.device, quick: bool, work_sizes, reps: int, cpu_reps: int, budget_s: float,
        cuda_tests: bool, vgg_segments: int = 4, resnet_segments: int = 1) -> dict:
    """Every check and measurement; returns the report (see :func:`to_markdown`)."""
    budget = Budget(budget_s)
    cpu = torch.device("cpu")
    report = {"machine": machine_info(device), "rtol": RTOL, "checks": [], "rates": [],
              "settings": {"quick": quick, "work_sizes": [list(w) for w in work_sizes], "reps": reps,
                           "cpu_reps": cpu_reps, "cpu_work_size": list(CPU_WORK_SIZE), "budget_s": budget_s}}
    report["cuda_tests"] = (run_cuda_tests(max(30.0, min(180.0, budget_s / 3))) if cuda_tests
                            else {"status": "not run (--no-tests)"})
    loads = workloads(quick, vgg_segments, resnet_segments)
    nets = {load.name: _network(load.name) for load in loads}
    ready = {}  # (network, dtype, device) -> prepared once: copies, tracing and preflight are not timed

    def prepared(name, dtype, dev):
        if (name, dtype, dev) not in ready:
            ready[name, dtype, dev] = prepare(nets[name], dtype, dev)
        return ready[name, dtype, dev]

    rows, cpu_ref = report["rates"], {}
    for load in loads:  # the CPU baseline: reference results and rates
        for dtype in (torch.float64, torch.float32):
            net = prepared(load.name, dtype, cpu)
            discover(net, load.x0, load.x0 + 1e-3 * (load.x1 - load.x0), dtype=dtype, device=cpu)  # warm-up
            row, res = measure(net, load, cpu, dtype, CPU_WORK_SIZE, cpu_reps, census=device.type == "cpu")
            row["role"] = "cpu baseline"
            rows.append(row)
            cpu_ref[load.name, dtype] = (row, res)
            _log(row)
    last = {}  # (network, dtype) -> median seconds at the previous work size: the estimate for the next
    for i, work in enumerate(work_sizes):  # all networks at one work size, then the next
        for load in loads:
            for dtype in (torch.float64, torch.float32):
                base_row, base = cpu_ref[load.name, dtype]
                if device.type == "cpu" and work == CPU_WORK_SIZE:
                    row, res = base_row, base  # measured already, with its census
                else:
                    est = last.get((load.name, dtype), 0.0) * (reps + 1)
                    first = i == 0 and dtype == torch.float64  # the equality check: always measured
                    if not first and not budget.allows(est):
                        rows.append({"network": load.name, "workload": load.what, "dtype": _dtype_name(dtype),
                                     "device": device.type, "batch_size": work[0], "max_vertices": work[1],
                                     "skipped": f"time budget ({budget.elapsed():.0f} of {budget_s:.0f} s spent, "
                                                f"about {est:.0f} s more needed)"})
                        continue
                    row, res = measure(prepared(load.name, dtype, device), load, device, dtype, work, reps,
                                       census=True)
                    row["role"] = "device"
                    rows.append(row)
                    _log(row)
                if "seconds" in row:
                    last[load.name, dtype] = statistics.median(row["seconds"])
                if "regions_per_s" in row and "regions_per_s" in base_row:
                    row["vs_cpu"] = row["regions_per_s"] / base_row["regions_per_s"]
                if dtype == torch.float64 and row is not base_row:
                    check = {"check": f"subdivide {load.name}, {load.what}, {_size(row)}"}
                    if res is None or base is None:
                        check.update(equal=False, why=row.get("error") or base_row.get("error"))
                    else:
                        check.update(compare_lines(base, res))
                    report["checks"].append(check)
        if i == 0:  # correctness first: the walk and the plane before the other work sizes
            report["checks"].extend(_other_checks(nets.get("vgg8") or _network("vgg8"), device))
    report["float32"] = _float32_counts(rows)
    report["wall_s"] = budget.elapsed()
    report["passed"] = _passed(report)
    return report


def _other_checks(net, device: torch.device) -> list[dict]:
    """The walk on part of a VGG8 segment, and a plane on VGG8 (``net``), on the device against the CPU."""
    x0, x1 = path_segments()
    out = []
    a, b = x0[:1], x0[:1] + WALK_FRACTION * (x1[:1] - x0[:1])
    name = f"walk vgg8, first 1/{round(1 / WALK_FRACTION)} of 1 segment"
    try:
        out.append({"check": name, **compare_lines(discover(net, a, b, method="walk", device="cpu"),
                                                   discover(net, a, b, method="walk", device=device))})
    except Exception as e:
        out.append({"check": name, "equal": False, "why": f"{type(e).__name__}: {e}"[:2000]})
    c0 = x0[:1]
    c1, c2 = c0 + PLANE_SCALE * (x0[1:2] - c0), c0 + PLANE_SCALE * (x0[2:3] - c0)
    name = f"plane vgg8, triangle of {PLANE_SCALE} x the first two segments' anchors"
    try:
        out.append({"check": name, **compare_planes(discover_plane(net, c0, c1, c2, device="cpu"),
                                                    discover_plane(net, c0, c1, c2, device=device))})
    except Exception as e:
        out.append({"check": name, "equal": False, "why": f"{type(e).__name__}: {e}"[:2000]})
    for c in out:
        _log({"check": c["check"], "equal": c["equal"]})
    return out


def _float32_counts(rows: list[dict]) -> list[dict]:
    """Region counts in float32 against float64, same network, device and work size."""
    by = {(r["network"], r["device"], r.get("role"), r["batch_size"], r["max_vertices"], r["dtype"]): r
          for r in rows if "regions" in r}
    out = []
    for (net, dev, role, bs, mv, dt), r32 in by.items():
        r64 = by.get((net, dev, role, bs, mv, "float64"))
        if dt == "float32" and r64 is not None:
            out.append({"network": net, "device": dev, "batch_size": bs, "max_vertices": mv,
                        "float64": r64["regions"], "float32": r32["regions"],
                        "rel_diff": (r32["regions"] - r64["regions"]) / r64["regions"]})
    return out


def _passed(report: dict) -> bool:
    tests_ok = report["cuda_tests"].get("status") in ("ok", "pytest not installed", "not run (--no-tests)")
    return (tests_ok and all(c["equal"] for c in report["checks"])
            and not any("error" in r for r in report["rates"]))


def _log(obj) -> None:
    print(json.dumps(obj, default=str), file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- output


def _fmt(x, spec=",.0f") -> str:
    return "" if x is None else format(x, spec)


def to_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# GPU check: {m['device_name']}", "",
             f"**{'PASS' if report['passed'] else 'FAIL'}** in {report['wall_s']:.0f} s "
             f"({'--quick, ' if report['settings']['quick'] else ''}device {m['device']}).", "",
             "| machine | |", "|---|---|"]
    for k in ("device_name", "device_memory_gib", "capability", "cuda", "cudnn", "cudnn_allow_tf32",
              "matmul_allow_tf32", "torch", "python", "numpy", "cpu", "cores", "threads", "host", "date"):
        if k in m:
            v = m[k]
            lines.append(f"| {k} | {v:.1f} |" if isinstance(v, float) else f"| {k} | {v} |")
    t = report["cuda_tests"]
    lines += ["", "## CUDA tests", ""]
    if "tests" in t:
        lines.append(f"{t['status']}: {t['passed']} passed, {t['failures']} failed, {t['errors']} errors, "
                     f"{t['skipped']} skipped ({t['seconds']:.0f} s): `{t['command']}`")
        if "tail" in t:
            lines += ["", "```", t["tail"], "```"]
    else:
        lines.append(t["status"])
    lines += ["", f"## Equal to the CPU (float64; largest difference / largest value <= {report['rtol']:g})", "",
              "The maps are compared by their values at the regions' corners; the largest difference of their "
              "coefficients (slope, intercept, grad), which thin regions magnify, is shown beside, not judged.", "",
              "| check | regions (CPU, device) | largest difference | equal | coefficients |", "|---|---|---:|---|---:|"]
    for c in report["checks"]:
        diff = f"{c['largest']:.1e}" if "largest" in c else c.get("why", "")
        regions = ", ".join(f"{n:,}" for n in c.get("regions", []))
        coef = max(c.get("coefficients", {}).values(), default=None)
        lines.append(f"| {c['check']} | {regions} | {diff} | {'yes' if c['equal'] else '**NO**'} "
                     f"| {_fmt(coef, '.1e')} |")
    lines += ["", "## Regions per second (subdivide)", "",
              "regions/s: regions / median wall seconds of the timed runs; vs CPU: against the CPU baseline "
              f"(work size {CPU_WORK_SIZE[0]}x{CPU_WORK_SIZE[1]}, {m['threads']} threads) of the same "
              "network and dtype; host waits: calls that make the host wait for the device, counted in a "
              "separate untimed run.", "",
              "| network | workload | dtype | device | work size | regions | seconds | regions/s | vs CPU "
              "| peak GPU MiB | host waits |", "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["rates"]:
        head = (f"| {r['network']} | {r['workload']} | {r['dtype']} | {r['device']}"
                f"{' (baseline)' if r.get('role') == 'cpu baseline' else ''} | {_size(r)} ")
        if "skipped" in r or "error" in r:
            lines.append(head + f"| {'skipped: ' + r['skipped'] if 'skipped' in r else '**error**: ' + r['error']}"
                         " | | | | | |")
            continue
        secs = statistics.median(r["seconds"])
        lines.append(head + f"| {r['regions']:,} | {secs:.2f} (n={len(r['seconds'])}) | {r['regions_per_s']:,.0f} "
                     f"| {_fmt(r.get('vs_cpu'), '.2f')} | {_fmt(r.get('peak_gpu_mib'))} "
                     f"| {_fmt(r.get('host_waits', {}).get('total'))} |")
    lines += ["", "## Float32 against float64 (region counts)", "",
              "| network | device | work size | float64 | float32 | difference |", "|---|---|---|---:|---:|---:|"]
    for f in report["float32"]:
        lines.append(f"| {f['network']} | {f['device']} | {_size(f)} | {f['float64']:,} "
                     f"| {f['float32']:,} | {100 * f['rel_diff']:+.2f}% |")
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  python bench/gpu.py --out bench/results/gpu-check\n"
               "  python bench/gpu.py --device cpu --quick --out /tmp/gpu-check")
    p.add_argument("--out", required=True, type=Path, help="folder for gpu-check.json and gpu-check.md")
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--quick", action="store_true",
                   help=f"1/{round(1 / QUICK_FRACTION)} of one segment per network, one rep: a smoke test")
    p.add_argument("--work-sizes", type=parse_work_sizes, default=None,
                   help=f"BATCHxVERTICES,... (batch_size x max_vertices); default {WORK_SIZES['cuda']} on CUDA, "
                        f"{WORK_SIZES['cpu']} on the CPU")
    p.add_argument("--reps", type=int, default=None, help="timed runs per row on the device (3; --quick 1)")
    p.add_argument("--cpu-reps", type=int, default=1, help="timed runs of the CPU baseline")
    p.add_argument("--budget-s", type=float, default=240.0,
                   help="rows are skipped once this much wall time would be spent (except the float64 rows "
                        "at the first work size: the equality checks)")
    p.add_argument("--no-tests", action="store_true", help="do not run the CUDA tests")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no CUDA device (torch.cuda.is_available() is False)")
    work = a.work_sizes or parse_work_sizes(WORK_SIZES["cuda" if device.type == "cuda" else "cpu"])
    reps = a.reps or (1 if a.quick else 3)
    report = run(device, a.quick, work, reps, a.cpu_reps, a.budget_s, not a.no_tests)
    report["command"] = " ".join(["python", "bench/gpu.py"] + list(sys.argv[1:] if argv is None else argv))
    md = to_markdown(report)
    a.out.mkdir(parents=True, exist_ok=True)
    _write(a.out / "gpu-check.json", json.dumps(report, indent=1, default=str) + "\n")
    _write(a.out / "gpu-check.md", md)
    print(md)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
