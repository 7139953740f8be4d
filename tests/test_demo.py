import subprocess
import sys
from pathlib import Path

import numpy as np

from jobs import engine

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_and_methods_agree(capsys):
    cfg = engine.DemoConfig(paths=2, anchors=3)
    found = engine.discover_loops(cfg)
    assert list(found) == ["walk", "subdivide"]
    (walk, walk_paths), (sub, sub_paths) = found["walk"], found["subdivide"]
    assert walk.n_segments == sub.n_segments == 6
    assert walk_paths["density"].min() > cfg.anchors  # a random VGG8 splits these loops: something to compare
    np.testing.assert_array_equal(walk.density, sub.density)  # per segment
    for i in range(walk.n_segments):
        np.testing.assert_allclose(walk.breakpoints(i), sub.breakpoints(i), rtol=0, atol=1e-9)
    np.testing.assert_allclose(walk.deviation, sub.deviation, rtol=1e-6)
    np.testing.assert_allclose(walk.total_variation, sub.total_variation, rtol=1e-6)
    np.testing.assert_array_equal(walk_paths["density"], sub_paths["density"])
    for key in ("deviation", "total_variation"):
        np.testing.assert_allclose(walk_paths[key], sub_paths[key], rtol=1e-6)
    capsys.readouterr()

    # the command prints one row per loop with both methods' densities, and they are equal
    assert engine.main(["--paths", "2", "--anchors", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header = lines[-3].split()
    assert header == ["path", "density_walk", "density_subdivide", "deviation", "total_variation"]
    table = [dict(zip(header, line.split())) for line in lines[-2:]]
    assert [int(r["density_walk"]) for r in table] == [int(r["density_subdivide"]) for r in table] \
        == [int(d) for d in walk_paths["density"]]


def test_cli_help_ends_with_example():
    from jobs.__main__ import COMMANDS

    for command in [None, *COMMANDS]:
        args = [sys.executable, "-m", "jobs"] + ([command] if command else []) + ["--help"]
        out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0 and out.stdout.strip().splitlines()[-1].startswith("example:"), command
    bad = subprocess.run([sys.executable, "-m", "jobs", "dmeo"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "Did you mean 'demo'" in bad.stderr
