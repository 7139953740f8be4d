"""Bit-level fingerprint of the engine's results on a fixed set of networks.

A refactor that claims "behaviour unchanged" runs this before and after and compares:

    python bench/fingerprint.py --out /tmp/before.json        # on the old tree
    python bench/fingerprint.py --out /tmp/after.json         # on the new tree
    python bench/fingerprint.py --compare /tmp/before.json /tmp/after.json

Every array of every result (segments: subdivide and walk, float64 and float32, two batch
sizes; planes: both domains) is hashed with sha256 over its raw bytes, so "equal" means
bitwise equal. Needs torch and numpy only; runs in about a minute on one core.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.nets import zoo  # noqa: E402


def _engine():
    """The engine's entry points, from the public API (or the flat layout it replaced)."""
    try:
        from pipeline import discover, discover_plane
        from pipeline.inputs.models import build
    except ImportError:
        from pipeline.models import build
        from pipeline.planes import discover_plane
        from pipeline.regions import discover
    return discover, discover_plane, build


def _digest(value) -> str:
    a = np.ascontiguousarray(np.asarray(value))
    return hashlib.sha256(str((a.dtype.str, a.shape)).encode() + a.tobytes()).hexdigest()[:16]


def _arrays(result) -> dict:
    out = {}
    for name, value in sorted(vars(result).items()):
        if isinstance(value, (np.ndarray, torch.Tensor)):
            out[name] = _digest(value.cpu().numpy() if isinstance(value, torch.Tensor) else value)
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[name] = repr(value)
    return out


def networks(build):
    torch.manual_seed(0)
    nets = [(name, model, shape) for name, model, shape in zoo()]
    nets.append(("vgg8", build("vgg8", num_classes=10, in_channels=1, input_size=8, widths=(8, 16)).eval(),
                 (1, 8, 8)))
    nets.append(("resnet18", build("resnet18", num_classes=10, in_channels=1, k=4, input_size=8).eval(),
                 (1, 8, 8)))
    return nets


def fingerprint() -> dict:
    discover, discover_plane, build = _engine()
    out = {}
    for name, model, shape in networks(build):
        g = torch.Generator().manual_seed(1)
        x0, x1, x2 = (torch.randn(6, *shape, generator=g) for _ in range(3))
        for method in ("subdivide", "walk"):
            for dtype in (torch.float64, torch.float32):
                for batch in (2, 64):
                    res = discover(model, x0, x1, method=method, dtype=dtype, batch_size=batch)
                    out[f"{name}/{method}/{str(dtype)[6:]}/b{batch}"] = _arrays(res)
        for domain in ("triangle", "parallelogram"):
            res = discover_plane(model, x0[:2], x0[:2] + 0.2 * x1[:2], x0[:2] + 0.2 * x2[:2], domain=domain)
            out[f"{name}/plane/{domain}"] = _arrays(res)
    return out


def compare(a: dict, b: dict) -> list[str]:
    diffs = []
    for case in sorted(set(a) | set(b)):
        if case not in a or case not in b:
            diffs.append(f"{case}: only in {'the first' if case in a else 'the second'}")
            continue
        for key in sorted(set(a[case]) | set(b[case])):
            if a[case].get(key) != b[case].get(key):
                diffs.append(f"{case}: {key} differs ({a[case].get(key)} != {b[case].get(key)})")
    return diffs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="example: python bench/fingerprint.py --out /tmp/before.json")
    p.add_argument("--out", type=Path, help="write the fingerprint (JSON) here")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="compare two fingerprints")
    args = p.parse_args(argv)
    if args.compare:
        a, b = (json.loads(f.read_text()) for f in args.compare)
        diffs = compare(a, b)
        print("\n".join(diffs) if diffs else f"bitwise equal: {len(a)} cases, "
              f"{sum(len(v) for v in a.values())} arrays and fields")
        return 1 if diffs else 0
    torch.set_num_threads(1)
    fp = fingerprint()
    text = json.dumps(fp, indent=1, sort_keys=True)
    if args.out:
        args.out.write_text(text)
        print(f"{len(fp)} cases -> {args.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
