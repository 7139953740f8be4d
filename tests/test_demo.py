import subprocess
import sys
from pathlib import Path

from jobs import engine

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_and_methods_agree(capsys):
    assert engine.main(["--paths", "2", "--anchors", "3"]) == 0
    out = capsys.readouterr().out
    assert "walk:" in out and "subdivide:" in out and "density_walk" in out


def test_cli_help_ends_with_example():
    from jobs.__main__ import COMMANDS

    for command in [None, *COMMANDS]:
        args = [sys.executable, "-m", "jobs"] + ([command] if command else []) + ["--help"]
        out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0 and out.stdout.strip().splitlines()[-1].startswith("example:"), command
    bad = subprocess.run([sys.executable, "-m", "jobs", "dmeo"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "Did you mean 'demo'" in bad.stderr
