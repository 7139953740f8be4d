"""A discovery run from a checkpoint to a complete store: sharding, resume after SIGKILL, bad input."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.stages.discovery import DiscoverConfig, store_path
from pipeline.stages.discovery import discover_run as run
from pipeline.config import to_dict
from pipeline.inputs.paths import PathConfig
from pipeline.store.identity import DamagedShardError, StoreError
from pipeline.store.verify import shard_status
from pipeline.store.lines import open_store

ROOT = Path(__file__).resolve().parents[1]
CFG = DiscoverConfig(paths=PathConfig(kind="circle", n_paths=10, anchors=4, seed=1), n_shards=2, batch_size=16,
                     chunk_segments=8)


@pytest.fixture(scope="session")
def trained(digits_run):
    """conftest's tiny VGG8 (the run this file trained for itself before, same config); these tests
    read it and write their stores under tmp_path."""
    return digits_run


def _same_store(a, b):
    ra, rb = open_store(a), open_store(b)
    for name in ("path_id", "segment_index", "density", "deviation", "total_variation", "f0", "continuity_gap"):
        np.testing.assert_array_equal(ra.segment_array(name), rb.segment_array(name), err_msg=name)
    for name in ("t_start", "t_end", "slope", "intercept"):
        np.testing.assert_array_equal(ra.regions(name).compute(), rb.regions(name).compute(), err_msg=name)


def test_discovery_writes_a_complete_store(trained, tmp_path):
    st = run(trained, CFG, progress=False, store=tmp_path / "a.zarr")
    assert st["complete"] == [0, 1] and st["missing"] == []
    r = open_store(tmp_path / "a.zarr")
    paths = r.paths()
    assert len(paths) == 10 and (paths.n_segments == 4).all()
    assert r.attrs["checkpoint"] == "final" and len(r.attrs["checkpoint_sha256"]) == 64
    assert r.attrs["paths"]["radius"] == 1.0  # resolved and recorded
    assert r.attrs["versions"]["torch"]
    # a second run writes nothing
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "a.zarr").rglob("*")}
    run(trained, CFG, progress=False, store=tmp_path / "a.zarr")
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "a.zarr").rglob("*")}
    # one shard at a time gives the same store
    for shard in (1, 0):
        run(trained, CFG, shards=[shard], progress=False, store=tmp_path / "b.zarr")
    _same_store(tmp_path / "a.zarr", tmp_path / "b.zarr")


def test_the_command_a_damaged_shard_names_rewrites_it(trained, tmp_path):
    """The error names the command; run as printed, it rewrites the shard to the same store."""
    import re
    import shlex

    from jobs.__main__ import main

    run(trained, CFG, progress=False, store=tmp_path / "clean.zarr")
    store = tmp_path / "damaged.zarr"
    run(trained, CFG, progress=False, store=store)
    (store / "shard-00001" / "segments" / "deviation" / "c" / "0" / "0").unlink()
    with pytest.raises(DamagedShardError) as err:
        open_store(store)
    command = re.search(r"`(python -m jobs discover [^`]+)`", str(err.value)).group(1)
    assert command == f"python -m jobs discover {trained.resolve()} --from-store {store} --shard 1/2"
    assert main(shlex.split(command)[3:]) == 0
    assert shard_status(store)["leftovers"] == []
    _same_store(store, tmp_path / "clean.zarr")


def test_same_paths_for_every_network(trained, tmp_path):
    run(trained, CFG, progress=False, store=tmp_path / "final.zarr")
    run(trained, replace(CFG, checkpoint="init"), progress=False, store=tmp_path / "init.zarr")
    a, b = open_store(tmp_path / "final.zarr"), open_store(tmp_path / "init.zarr")
    np.testing.assert_array_equal(a.segment_array("path_id"), b.segment_array("path_id"))
    np.testing.assert_array_equal(a.segment_array("length"), b.segment_array("length"))
    assert not np.array_equal(a.segment_array("f0"), b.segment_array("f0"))


def test_changed_settings_on_resume_are_refused(trained, tmp_path):
    store = tmp_path / "s.zarr"
    run(trained, CFG, shards=[0], progress=False, store=store)
    for change in ({"eps": 1e-7}, {"paths": replace(CFG.paths, seed=2)}, {"checkpoint": "init"}):
        with pytest.raises(StoreError, match="other settings"):
            run(trained, replace(CFG, **change), progress=False, store=store)
    assert shard_status(store)["complete"] == [0]


@pytest.mark.slow
def test_killed_discovery_resumes_to_the_same_store(trained, tmp_path):
    cfg = replace(CFG, paths=replace(CFG.paths, n_paths=30, anchors=8), n_shards=1, chunk_segments=4, batch_size=4)
    cfg_file = tmp_path / "d.yaml"
    cfg_file.write_text(yaml.safe_dump(to_dict(cfg)))
    killed = tmp_path / "killed.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "jobs", "discover", str(trained), "--config", str(cfg_file),
                             "--store", str(killed)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    written = []
    while time.time() < deadline and not written:  # wait until the shard has regions on disk
        written = list(killed.glob("shard-00000.tmp-*/regions/t_start/c/*"))
        time.sleep(0.05)
    assert written, "the discovery job never wrote a chunk"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    st = shard_status(killed)
    assert st["complete"] == [] and len(st["leftovers"]) == 1
    run(trained, cfg, progress=False, store=killed)  # resume
    run(trained, cfg, progress=False, store=tmp_path / "clean.zarr")
    _same_store(killed, tmp_path / "clean.zarr")


def test_bad_input(trained, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run(trained, replace(CFG, checkpoint="epoch-0099"), progress=False, store=tmp_path / "x.zarr")
    with pytest.raises(ValueError, match="n_shards"):
        run(trained, replace(CFG, n_shards=11), progress=False, store=tmp_path / "y.zarr")
    out = subprocess.run([sys.executable, "-m", "jobs", "discover", str(trained), "--shard", "3/2"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "0 <= i < n" in out.stderr
    assert store_path(trained, CFG).name.startswith("final-")
