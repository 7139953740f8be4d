"""bench/gpu.py (the GPU check, issue 20) on the CPU, so that it cannot rot where no GPU is."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# what a GPU node may lack: gpu.py must run without any of them
FORBIDDEN = ("sklearn", "pandas", "zarr", "yaml", "tqdm", "scipy", "dask", "matplotlib", "submitit",
             "pyarrow", "hypothesis", "psutil")


def _gpu_module():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_segments_are_bench_compares():
    pytest.importorskip("sklearn")
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from _common import path_segments
    finally:
        sys.path.remove(str(ROOT / "bench"))
    ref0, ref1 = path_segments(1)
    x0, x1 = _gpu_module().path_segments()
    assert x0.dtype == torch.float64 and x0.shape == ref0.shape == (8, 3, 32, 32)
    torch.testing.assert_close(x0[:4], ref0[:4], rtol=0, atol=1e-15)
    torch.testing.assert_close(x1[:4], ref1[:4], rtol=0, atol=1e-15)


def test_work_sizes():
    gpu = _gpu_module()
    assert gpu.parse_work_sizes("64x256, 1024x65536") == [(64, 256), (1024, 65536)]
    for bad in ("64", "64x", "x256", "0x256", "64x256x2"):
        with pytest.raises(Exception, match="BATCHxVERTICES"):
            gpu.parse_work_sizes(bad)


# The imports of FORBIDDEN fail in the child, as on a node that has only torch and numpy; pytest
# may be looked for (to run the CUDA tests in a subprocess of their own), never imported.
_BLOCK = f"""
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {FORBIDDEN!r}:
            raise ImportError("blocked: a GPU node may not have " + name)
sys.meta_path.insert(0, Block())
sys.argv = ["bench/gpu.py"] + sys.argv[1:]
try:
    runpy.run_path("bench/gpu.py", run_name="__main__")
finally:
    assert "pytest" not in sys.modules, "bench/gpu.py imported pytest"
"""


def test_gpu_check_runs_on_the_cpu(tmp_path):
    out = tmp_path / "gpu-check"
    # one thread: on a busy 2-core machine two OpenMP threads made this run 10 times slower (77 s, not 8 s)
    proc = subprocess.run([sys.executable, "-c", _BLOCK, "--device", "cpu", "--quick", "--threads", "1",
                           "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    assert {"machine", "settings", "cuda_tests", "checks", "rates", "float32", "passed", "wall_s"} <= set(report)
    assert report["passed"] and report["machine"]["device"] == "cpu"
    # pytest is importable here (not in the child: find_spec does not import it), so the CUDA tests ran
    assert report["cuda_tests"]["status"] == "ok", report["cuda_tests"]
    if not torch.cuda.is_available():
        assert report["cuda_tests"]["skipped"] == report["cuda_tests"]["tests"] > 0
    checks = {c["check"].split(",")[0] for c in report["checks"]}
    assert {"subdivide vgg8", "subdivide resnet18k8", "walk vgg8", "plane vgg8"} <= checks
    assert all(c["equal"] and c["largest"] <= 1e-9 for c in report["checks"])
    rates = report["rates"]
    assert {(r["network"], r["dtype"]) for r in rates} == {(n, d) for n in ("vgg8", "resnet18k8")
                                                           for d in ("float64", "float32")}
    assert all(r["regions_per_s"] > 0 and r["regions"] > 0 and r["host_waits"]["total"] > 0 for r in rates)
    assert len(report["float32"]) == len(rates) // 2
    md = (out / "gpu-check.md").read_text()
    assert md.startswith("# GPU check") and "**PASS**" in md and md in proc.stdout
