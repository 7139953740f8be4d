"""The main job on the embedded dataset: ``python -m jobs run configs/demo.yaml``.

    python -m jobs demo                      # this machine
    python -m jobs demo --executor slurm     # a SLURM cluster

Trains small VGG8 and ResNet18 networks on scikit-learn's 8x8 digits (shipped with the
package: no download) under clean labels, augmentation and three label-noise levels, two
seeds each; finds the linear regions of their initial and final checkpoints along a fixed set
of closed paths; aggregates; and writes ``sweeps/demo/report/index.html``. Run it again and
it resumes (finished work is skipped).
"""

from __future__ import annotations

from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m jobs demo", description=__doc__.splitlines()[0],
        epilog="example: python -m jobs demo --workers 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--executor", choices=("local", "slurm", "debug"), default=None,
                   help="where the jobs run (default: the config's, local)")
    p.add_argument("--workers", type=int, default=None, help="local executor: processes at once (default: cores)")
    a = p.parse_args(argv)
    from .run import main as run_main

    return run_main([str(DEMO), "--base", str(DEMO.parents[1])] + (["--executor", a.executor] if a.executor else [])
                    + (["--workers", str(a.workers)] if a.workers else []))
