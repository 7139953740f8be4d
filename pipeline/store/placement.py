"""Does a store belong where it sits? Its recorded run and checkpoint against the run folder.

A store written by the discovery stage sits at ``<run>/regions/<checkpoint>-<path set id>.zarr``
(planes: ``<checkpoint>-planes-<plane set id>.zarr``) and records, in its attributes, its run
folder, its checkpoint's name and sha256 and its path set's id. A store copied over another's
(another run's, another checkpoint's) keeps its own record, so comparing the record with the
place finds it, before its numbers are read as this network's::

    from pipeline.store.placement import check_placement
    check_placement("runs/vgg8-1a2b/regions/final-7a4d5318.zarr")   # StoreError naming both

A store inside a sweep folder (``<root>/runs/<run>/regions/``) is also compared with the
discovery config the sweep asked for, which the sweep records in ``<root>/discovery.json``
(:data:`SWEEP_RECORD`): another sweep's store, from the same training recipe (so the same run
id and checkpoint) but discovered with another ``eps``, method or path set, is not this sweep's.

The run is compared by its folder's name (the run id), not its full path, so a sweep moved or
copied whole stays readable. A store with no recorded run (written by hand, outside a sweep) is
not checked; a checkpoint file that is gone cannot be compared, and is not an error here; a
sweep folder with no record (written before it existed) is compared by run and checkpoint only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.store.identity import StoreError, store_attrs, store_geometry

__all__ = ["file_sha256", "placement_problems", "check_placement", "SWEEP_RECORD", "sweep_discovery",
           "config_differences"]

# in a sweep folder: the identity of the discovery config its stores were asked for, less the
# checkpoint (a sweep discovers several; the store's name and checkpoint sha256 check that)
SWEEP_RECORD = "discovery.json"


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def expected_name(attrs: dict) -> str:
    planes = "planes-" if store_geometry(attrs) == "plane" else ""
    return f"{attrs['checkpoint']}-{planes}{attrs['path_set']}.zarr"


def sweep_discovery(run_dir) -> dict | None:
    """The discovery config recorded by the sweep that ``run_dir`` belongs to (``None``: not in
    a sweep folder, or a sweep folder with no record)."""
    run_dir = Path(run_dir)
    if run_dir.parent.name != "runs":
        return None
    record = run_dir.parent.parent / SWEEP_RECORD
    try:
        return json.loads(record.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise StoreError(f"{record}, the sweep's record of its discovery config, cannot be read ({err}); "
                         "submit the sweep again (python -m jobs sweep resume SWEEP.yaml) to rewrite it") from err


def config_differences(want: dict, have: dict, where: str = "") -> list[str]:
    """The fields of ``want`` that ``have`` holds otherwise, as ``field: want vs have``; keys
    only ``have`` holds are ignored (``want`` is an identity, ``have`` may hold local fields)."""
    out = []
    for key, value in want.items():
        got = have.get(key) if isinstance(have, dict) else None
        if isinstance(value, dict) and isinstance(got, dict):
            out += config_differences(value, got, f"{where}{key}.")
        elif json.dumps(value, sort_keys=True) != json.dumps(got, sort_keys=True):
            out.append(f"{where}{key}: {value!r} vs {got!r}")
    return out


def placement_problems(path, attrs: dict | None = None, hashes: dict | None = None) -> list[str]:
    """What in ``path``'s record disagrees with where it sits, one sentence each (empty: it
    belongs there). ``hashes``: a dict the caller keeps across calls, checkpoint file -> sha256,
    so a run's segment and plane stores hash their checkpoint once."""
    path = Path(path)
    attrs = store_attrs(path) if attrs is None else attrs
    if "run" not in attrs or path.parent.name != "regions":
        return []
    run_dir = path.parent.parent
    problems = []
    recorded = Path(str(attrs["run"])).name
    if recorded != run_dir.name:
        problems.append(f"it records run {recorded!r} but sits in run {run_dir.name!r}")
    if "checkpoint" in attrs and "path_set" in attrs and path.name != expected_name(attrs):
        problems.append(f"it records checkpoint {attrs['checkpoint']!r} and path set {attrs['path_set']!r}, "
                        f"so it would be named {expected_name(attrs)}, not {path.name}")
    ckpt = run_dir / "checkpoints" / f"{attrs.get('checkpoint')}.pt"
    want = attrs.get("checkpoint_sha256")
    if want and ckpt.is_file():
        hashes = {} if hashes is None else hashes
        have = hashes[ckpt] = hashes.get(ckpt) or file_sha256(ckpt)
        if have != want:
            problems.append(f"it was discovered from a checkpoint with sha256 {want[:12]}..., "
                            f"but {ckpt} has sha256 {have[:12]}...")
    asked = sweep_discovery(run_dir)
    if asked is not None:
        differ = config_differences(asked, attrs.get("discover_config") or {})
        if differ:
            problems.append(f"it was discovered with another config than this sweep's "
                            f"({run_dir.parent.parent / SWEEP_RECORD}; sweep vs store: {'; '.join(differ)}), "
                            "so it comes from another sweep")
    return problems


def check_placement(path, attrs: dict | None = None, hashes: dict | None = None) -> None:
    """Raise :class:`StoreError` if the store at ``path`` does not belong where it sits."""
    problems = placement_problems(path, attrs, hashes)
    if problems:
        raise StoreError(f"{path} is not this run's store: " + "; ".join(problems)
                         + ". Its numbers are not this run's (another network, checkpoint or discovery config): "
                         "remove it (or put it back where it came from) and rerun discovery for this run")
