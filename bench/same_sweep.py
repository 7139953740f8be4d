"""Are two sweeps' results the same, array for array? (For refactors that claim no change.)

    python bench/same_sweep.py sweeps/demo /tmp/before/sweeps/demo

Reads every Zarr store under ``runs/*/regions/`` with zarr directly (not through the
project's readers, whose code is what changed) and compares every array bitwise, and every
attribute except the ones that name the machine or the time; then the analysis tables
(``analysis/*.parquet``, ``analysis/tables/*.csv``). Exits 1 on the first kind of difference
with a list of what differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

# attributes that record where and when, not what
VOLATILE = {"created", "written", "host", "hostname", "time", "seconds", "elapsed", "versions", "wall_s",
            "started", "finished", "pid", "user"}


def _walk(group, prefix=""):
    for name, item in sorted(group.members()):
        key = f"{prefix}/{name}"
        if isinstance(item, zarr.Group):
            yield key, "attrs", dict(item.attrs)
            yield from _walk(item, key)
        else:
            yield key, "array", item[...]
            yield key, "attrs", dict(item.attrs)


def _clean(attrs, root: str = ""):
    """Attributes without the volatile ones, and with paths inside the sweep written relative to
    it (a run records its folder, which differs between two copies of one sweep)."""
    if isinstance(attrs, dict):
        return {k: _clean(v, root) for k, v in attrs.items() if k not in VOLATILE}
    if isinstance(attrs, list):
        return [_clean(v, root) for v in attrs]
    if root and isinstance(attrs, str) and attrs.startswith(root):
        return "<sweep>" + attrs[len(root):]
    return attrs


def compare_store(a: Path, b: Path, root_a: Path, root_b: Path) -> tuple[list[str], int]:
    """What differs between stores ``a`` and ``b``, and how many arrays were compared."""
    diffs = []
    ra, rb = str(root_a.resolve()), str(root_b.resolve())
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    if _clean(dict(ga.attrs), ra) != _clean(dict(gb.attrs), rb):
        diffs.append(f"{a.name}: store attributes differ")
    ia, ib = list(_walk(ga)), list(_walk(gb))
    if [(k, t) for k, t, _ in ia] != [(k, t) for k, t, _ in ib]:
        return diffs + [f"{a.name}: different arrays or groups"], 0
    for (key, kind, va), (_, _, vb) in zip(ia, ib):
        same = (np.array_equal(va, vb, equal_nan=va.dtype.kind == "f") and va.dtype == vb.dtype
                if kind == "array" else _clean(va, ra) == _clean(vb, rb))
        if not same:
            diffs.append(f"{a.name}{key}: {kind} differs")
    return diffs, sum(kind == "array" for _, kind, _ in ia)


def compare_tables(a: Path, b: Path) -> list[str]:
    diffs = []
    for pattern in ("analysis/*.parquet", "analysis/tables/*.csv"):
        fa = sorted(p.relative_to(a) for p in a.glob(pattern))
        fb = sorted(p.relative_to(b) for p in b.glob(pattern))
        if fa != fb:
            diffs.append(f"{pattern}: different files ({sorted(set(fa) ^ set(fb))})")
        for rel in sorted(set(fa) & set(fb)):
            read = pd.read_parquet if rel.suffix == ".parquet" else pd.read_csv
            try:
                pd.testing.assert_frame_equal(read(a / rel), read(b / rel), check_exact=True)
            except AssertionError as err:
                diffs.append(f"{rel}: {str(err).splitlines()[0]}")
    return diffs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="example: python bench/same_sweep.py sweeps/demo /tmp/before/sweeps/demo")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    args = p.parse_args(argv)
    stores_a = sorted(s.relative_to(args.a) for s in args.a.glob("runs/*/regions/*.zarr"))
    stores_b = sorted(s.relative_to(args.b) for s in args.b.glob("runs/*/regions/*.zarr"))
    diffs = [] if stores_a == stores_b else [f"different stores: {sorted(set(stores_a) ^ set(stores_b))}"]
    n_arrays = 0
    for rel in sorted(set(stores_a) & set(stores_b)):
        found, compared = compare_store(args.a / rel, args.b / rel, args.a, args.b)
        diffs += found
        n_arrays += compared
    diffs += compare_tables(args.a, args.b)
    if diffs:
        print("\n".join(diffs))
        return 1
    print(f"equal: {len(stores_a)} stores ({n_arrays} arrays, bitwise) and the analysis tables")
    return 0


if __name__ == "__main__":
    sys.exit(main())
