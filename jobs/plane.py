"""Every linear region of a trained run on the plane through three of its images, as a picture.

    python -m jobs plane runs/digits-vgg8                               # three classes, seed 0
    python -m jobs plane runs/digits-vgg8 --images 3,17,40 --scale 0.5 --color logit --out plane.png
    python -m jobs plane --store runs/digits-vgg8/regions/final-planes-1c2d3e4f.zarr --plane 234   # as stored

Loads the run's checkpoint and its data, takes three images of ``--split`` (default: three of
different classes chosen by ``--seed``), optionally shrinks the triangle towards the first one
(``--scale``), finds every linear region exactly (``pipeline/engine/planes/``) and draws them
(``analysis.figures.plane_figure``). A full triangle on the demo's networks takes a minute or
more (about 10^5 regions); ``--scale 0.25`` takes seconds. ``--store`` draws a plane a sweep's
discovery already stored (``planes:`` in its discovery config), without discovering it again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _indices(text: str):
    try:
        idx = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--images takes three comma-separated indices (e.g. 3,17,40), got {text!r}")
    if len(idx) != 3:
        raise argparse.ArgumentTypeError(f"--images takes exactly three indices, got {len(idx)}")
    return idx


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jobs plane", description=__doc__.splitlines()[0],
        epilog="example: python -m jobs plane runs/digits-vgg8 --scale 0.25 --out plane.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", type=Path, nargs="?", help="a training run folder (with checkpoints/)")
    p.add_argument("--store", type=Path, default=None, help="a plane store: draw its --plane as stored (no run)")
    p.add_argument("--plane", type=int, default=None, help="with --store: the plane's id (its base image's index)")
    p.add_argument("--checkpoint", default="final", help="init, final, last or epoch-NNNN (default: final)")
    p.add_argument("--images", type=_indices, default=None,
                   help="i,j,k: the three images of the split (default: three classes chosen by --seed)")
    p.add_argument("--split", choices=("train", "val", "test"), default="train", help="where the images come from")
    p.add_argument("--seed", type=int, default=0, help="choice of the default images")
    p.add_argument("--domain", choices=("triangle", "parallelogram"), default="triangle")
    p.add_argument("--scale", type=float, default=1.0, help="shrink the domain towards the first image, in (0, 1]")
    p.add_argument("--color", choices=("class", "logit"), default="class",
                   help="fill regions by the predicted class or by one logit's value")
    p.add_argument("--logit", type=int, default=None, help="with --color logit: which (default: class at x0)")
    p.add_argument("--out", type=Path, default=None, help="the PNG (default: <run>/planes/<checkpoint>-i-j-k.png)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the discovery (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if a.store is not None:
        if a.run is not None or a.images is not None:
            p.error("--store draws a stored plane: leave out the run and --images")
        return _stored(a, p)
    if a.run is None:
        p.error("a run folder is needed (or --store STORE --plane ID)")
    if not 0.0 < a.scale <= 1.0:
        p.error(f"--scale must be in (0, 1], got {a.scale}")

    from analysis.figures import plane_caption, plane_figure, plane_labels
    from pipeline.stages.plane_run import run_plane

    try:
        out = run_plane(a.run, a.checkpoint, a.images, split=a.split, domain=a.domain, scale=a.scale, seed=a.seed,
                        progress=not a.no_progress, threads=a.threads)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    res, idx = out["result"], out["indices"]
    fig = plane_figure(res, images=out["corners"], color=a.color, logit=a.logit, labels=plane_labels(out),
                       title=f"{a.run.name} · {a.checkpoint} · {a.split} images {', '.join(map(str, idx))}")
    path = a.out or a.run / "planes" / f"{a.checkpoint}-{'-'.join(map(str, idx))}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    print(plane_caption(out))
    print(f"absolute deviation per logit (integral of |f - g| over the domain, (u, v) units): "
          f"{', '.join(f'{d:.3g}' for d in res.deviation[0])}; sum {float(res.deviation[0].sum()):.4g}")
    print(f"certificate: continuity gap {float(res.continuity_gap[0]):.2g}, dropped slivers "
          f"{int(res.dropped_pieces[0])}")
    print(f"figure: {path}")
    return 0


def _stored(a, p) -> int:
    """Draw plane ``a.plane`` of the plane store ``a.store``: its regions as stored, its corners
    rebuilt from the store's plane set and the run's data."""
    from analysis.figures import plane_figure
    from pipeline.stages.plane_run import stored_plane
    from pipeline.store.identity import StoreError

    try:
        out = stored_plane(a.store, a.plane)
    except (StoreError, KeyError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    res = out["result"]
    fig = plane_figure(res, images=out["corners"], color=a.color, logit=a.logit, labels=out["labels"],
                       title=f"{Path(out['run']).name} · {out['checkpoint']} · plane {a.plane} ({out['kind']})")
    path = a.out or a.store.parent.parent / "planes" / f"{out['checkpoint']}-{out['kind']}-{a.plane}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    print(f"{int(res.n_regions[0]):,} linear regions on plane {a.plane} of {a.store} "
          f"(continuity gap {float(res.continuity_gap[0]):.2g})")
    print(f"figure: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
