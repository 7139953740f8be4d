"""Command line of the pipeline: ``python -m jobs <command> --help``.

    python -m jobs demo                            # the main job on the embedded dataset
    python -m jobs run configs/demo.yaml --executor slurm
    python -m jobs train configs/train/digits-vgg8.yaml --out runs/digits-vgg8
"""

from __future__ import annotations

import sys

COMMANDS = {
    "demo": ("jobs.demo", "the main job: `run configs/demo.yaml` (embedded digits, about 6 min on 2 cores)"),
    "run": ("jobs.run", "a sweep from start to report: train, discover, aggregate, report (resumes)"),
    "train": ("jobs.train", "train one network from a recipe file (resumes)"),
    "discover": ("jobs.discover", "regions along the path set of a trained run, into a sharded Zarr store"),
    "aggregate": ("jobs.aggregate", "a sweep's stores -> per-path table, summary tables, figures (Dask)"),
    "report": ("jobs.report", "a sweep's report: findings in plain words, tables, figures (HTML, Markdown)"),
    "plane": ("jobs.plane", "every linear region on the plane through three images of a run, as a picture"),
    "sweep": ("jobs.sweep", "submit | resume | status of a sweep (SLURM, local or debug executor)"),
    "verify": ("jobs.verify", "check stores against their shards' manifests: damaged shards, how to rewrite them"),
    "engine": ("jobs.engine", "the region engine alone on an untrained VGG8, both methods (seconds)"),
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m jobs <command> [options]\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<10} {text}")
        print("\nexample: python -m jobs run configs/demo.yaml --executor local")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        print(f"unknown command '{name}'.{hint} Known: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = __import__(COMMANDS[name][0], fromlist=["main"])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
