"""A damaged store is never read as data: manifests, verification, rewriting, concurrent commits.

Each kind of damage a user met (a deleted or truncated chunk, flipped bytes, a lost metadata
file) is found, named (store, shard, array, file, the command that rewrites it), listed by
``shard_status``, rewritten by the next discovery run to the same store, and invalidates the
aggregation's cache. Two processes committing one shard at the same moment publish one copy.
"""

import multiprocessing as mp
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from analysis import AnalysisConfig, AnalysisError
from analysis.collect import collect, store_fingerprint
from analysis.synthetic import SyntheticRun, make_paths, make_sweep
from pipeline.stages.discovery import DiscoverConfig, shard_paths, write_shards
from pipeline.store.identity import DamagedShardError, StoreConfig, StoreError
from pipeline.store.verify import shard_status, verify_shard
from pipeline.store.lines import REGION_ARRAYS, SEGMENT_SCALARS, SEGMENT_VECTORS, ShardWriter, open_store

CFG = DiscoverConfig(n_shards=2, batch_size=8, chunk_segments=4, device="cpu", store=StoreConfig(region_chunk=16))
RUN = "/runs/mlp-0"
SYNC = AnalysisConfig(scheduler="synchronous", figures=False)
N_PATHS, ANCHORS = 6, 4


def _net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.ReLU(),
                              torch.nn.Linear(8, 3))
    return net.double().eval()


def _write(store, shards=None, deep=False):
    """Write (or resume) the test store: 6 closed paths of 4 segments, 2 shards, region chunks of
    16 rows (so region arrays have several chunk files)."""
    x0, x1, pid, sidx, paths = make_paths(N_PATHS, ANCHORS)
    attrs = {"checkpoint_sha256": "abc", "model": {"name": "mlp"}, "dataset": {"name": "synthetic"}, "split": "train",
             "paths": paths, "run": RUN, "discover_config": {"n_shards": 2}}
    return write_shards(store, _net(), x0, x1, pid, sidx, CFG, attrs, path_config=paths, shards=shards, deep=deep)


def _contents(store) -> dict:
    """Every array of a complete store, read after a deep check."""
    r = open_store(store, deep=True)
    out = {name: r.segment_array(name) for name in (*SEGMENT_SCALARS, *SEGMENT_VECTORS, "region_offset")}
    out.update({name: r.regions(name).compute() for name in REGION_ARRAYS})
    return out


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _flip(path: Path):
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))


def _truncate(path: Path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A complete store and its contents, written once; tests damage copies of it."""
    store = tmp_path_factory.mktemp("pristine") / "s.zarr"
    _write(store)
    return store, _contents(store)


@pytest.fixture
def store(pristine, tmp_path):
    dst = tmp_path / "s.zarr"
    shutil.copytree(pristine[0], dst)
    return dst


# kind: (file in shard 1, how it is damaged, the array named, only the deep check sees it)
DAMAGE = {
    "missing chunk": ("segments/deviation/c/0/0", Path.unlink, "segments/deviation", False),
    "truncated chunk": ("regions/intercept/c/1/0", _truncate, "regions/intercept", False),
    "missing array metadata": ("regions/slope/zarr.json", Path.unlink, "regions/slope", False),
    "missing shard metadata": ("zarr.json", Path.unlink, None, False),
    "flipped bytes": ("segments/deviation/c/0/0", _flip, "segments/deviation", True),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damage_is_found_named_and_rewritten(pristine, store, kind):
    file, damage, array, deep = DAMAGE[kind]
    damage(store / "shard-00001" / file)

    st = shard_status(store, deep=deep)
    assert st["damaged"] == [1] and st["complete"] == [0] and st["missing"] == [1] and st["incomplete"] == []
    if deep:
        assert shard_status(store)["damaged"] == []  # sizes unchanged: only the checksums see it
    with pytest.raises(DamagedShardError) as err:
        open_store(store).paths()  # opening checks cheaply; the per-path sums check what they read deeply
    msg = str(err.value)
    assert msg.startswith(f"{store}: shard shard-00001 is damaged: ")
    assert (array is None or f"array {array}, file {file}" in msg) and file in msg
    assert f"python -m jobs discover {RUN} --from-store {store} --shard 1/2{' --deep' if deep else ''}`" in msg
    assert ("`python -m jobs sweep resume <sweep.yaml>`" in msg) is not deep  # resume judges cheaply
    assert (err.value.store, err.value.shard, err.value.array, err.value.file) == (str(store), 1, array, file)
    assert msg == st["errors"][1]

    _write(store, deep=deep)  # the next run rewrites the damaged shard (and only it)
    st = shard_status(store, deep=True)
    assert st["complete"] == [0, 1] and st["damaged"] == [] and st["leftovers"] == []
    _assert_same(pristine[1], _contents(store))


def test_a_corrupt_chunk_of_the_right_size_is_a_named_error_when_read(store):
    """No deep check on region arrays: a chunk that fails to decode is still named, not a Zstd traceback."""
    chunk = store / "shard-00001" / "regions" / "t_start" / "c" / "0"
    chunk.write_bytes(os.urandom(chunk.stat().st_size))
    r = open_store(store)  # sizes are right: the cheap check passes
    with pytest.raises(DamagedShardError, match=r"shard-00001 is damaged: array regions/t_start, it cannot be "
                                                r"decoded \(RuntimeError: Zstd"):
        r.regions("t_start").compute()
    first = r.segments().query("shard == 1").iloc[0]  # its regions start the shard's first chunk
    with pytest.raises(DamagedShardError, match="array regions/t_start"):
        r.segment(first.path_id, first.segment_index)


def test_flipped_bytes_in_a_region_chunk_fail_their_zstd_checksum(store):
    _flip(store / "shard-00000" / "regions" / "slope" / "c" / "0" / "0")
    with pytest.raises(DamagedShardError, match="array regions/slope, it cannot be decoded.*checksum"):
        open_store(store).regions("slope").compute()
    assert shard_status(store, deep=True)["damaged"] == [0]


def test_manifest_records_every_array_and_file(store):
    attrs = dict(zarr.open_group(str(store / "shard-00000"), mode="r").attrs)
    m = attrs["manifest"]
    assert attrs["complete"] is True and m["version"] == 1 and m["checksum"] == "crc32"
    s, k = attrs["n_segments"], 3
    assert m["arrays"]["segments/deviation"] == {"shape": [s, k], "dtype": "float64", "chunks": [s, k]}
    assert m["arrays"]["segments/certificate_tol"] == {"shape": [s], "dtype": "float64", "chunks": [s]}
    assert m["arrays"]["regions/slope"] == {"shape": [attrs["n_regions"], k], "dtype": "float64", "chunks": [16, k]}
    on_disk = sorted(p.relative_to(store / "shard-00000").as_posix() for p in (store / "shard-00000").rglob("*")
                     if p.is_file())
    assert sorted(m["files"]) == [f for f in on_disk if f != "zarr.json"]
    assert all(size == (store / "shard-00000" / f).stat().st_size for f, (size, _) in m["files"].items())
    assert len([f for f in m["files"] if f.startswith("regions/t_start/c/")]) == -(-attrs["n_regions"] // 16)


def test_certificate_tol_is_stored_per_segment(pristine):
    from pipeline.engine.lines import discover_iter

    x0, x1, pid, _, _ = make_paths(N_PATHS, ANCHORS)
    ids = np.unique(pid)
    pos = np.flatnonzero(np.isin(pid, ids[shard_paths(ids.size, 2, 0)]))
    res = list(discover_iter(_net(), x0[pos], x1[pos], batch_size=8, chunk_segments=4, device="cpu"))
    seg = open_store(pristine[0]).segments()
    np.testing.assert_array_equal(seg.certificate_tol[: len(pos)], np.concatenate([r.certificate_tol for r in res]))


def test_a_complete_shard_without_manifest_is_damaged(store):
    g = zarr.open_group(str(store / "shard-00001"), mode="a")
    attrs = dict(g.attrs)
    del attrs["manifest"]
    g.attrs.clear()
    g.attrs.update(attrs)  # as the writers before manifests left it
    st = shard_status(store)
    assert st["damaged"] == [1] and "records no manifest" in st["errors"][1]


def test_an_incomplete_shard_under_the_final_name_is_replaced(pristine, store):
    """An older writer wrote under the final name and was killed (complete=false)."""
    shutil.rmtree(store / "shard-00001")
    pid, sidx, chunks = _shard_chunks(1)
    w = ShardWriter(store, 1, pid, sidx, k=3, cfg=CFG.store)
    w.write(chunks[0])
    os.rename(w.tmp, store / "shard-00001")
    st = shard_status(store)
    assert st["incomplete"] == [1] and st["missing"] == [1] and st["damaged"] == []
    with pytest.raises(StoreError, match="shard-00001 is not complete"):
        verify_shard(store, 1)
    _write(store)
    st = shard_status(store, deep=True)
    assert st["complete"] == [0, 1] and st["leftovers"] == []
    _assert_same(pristine[1], _contents(store))


def test_commit_flushes_a_marked_shard_before_publishing_it(store, monkeypatch):
    import pipeline.store.shards as store_mod

    seen = []

    def record(folder):
        attrs = dict(zarr.open_group(str(folder), mode="r").attrs)
        seen.append((Path(folder).name, attrs["complete"], "manifest" in attrs, (store / "shard-00001").exists()))

    monkeypatch.setattr(store_mod, "fsync_tree", record)
    shutil.rmtree(store / "shard-00001")
    _write(store, shards=[1])
    assert len(seen) == 1 and seen[0][0].startswith("shard-00001.tmp-") and seen[0][1:] == (True, True, False)


# ---- two processes, one shard, one moment -----------------------------------------------------------

def _shard_chunks(shard):
    """The discovery results of one shard of the test store, as write_shards computes them."""
    from pipeline.engine.lines import discover_iter

    x0, x1, pid, sidx, _ = make_paths(N_PATHS, ANCHORS)
    ids = np.unique(pid)
    pos = np.flatnonzero(np.isin(pid, ids[shard_paths(ids.size, CFG.n_shards, shard)]))
    chunks = list(discover_iter(_net(), x0[pos], x1[pos], eps=CFG.eps, dtype=torch.float64, batch_size=CFG.batch_size,
                                device="cpu", keep_affine=True, method=CFG.method, chunk_segments=CFG.chunk_segments,
                                certify=CFG.certify))
    return pid[pos], sidx[pos], chunks


def _commit_at_once(store, barrier, results):
    """A discovery job writing shard 0: everything but the commit, then the commit when the other
    job is at the same point."""
    torch.set_num_threads(1)
    pid, sidx, chunks = _shard_chunks(0)
    w = ShardWriter(store, 0, pid, sidx, k=3, cfg=CFG.store)
    for c in chunks:
        w.write(c)
    barrier.wait(timeout=300)
    results.put(w.commit())


@pytest.mark.parametrize("before", ["nothing", "a damaged shard"])
def test_two_processes_commit_one_shard_at_the_same_moment(pristine, tmp_path, before):
    store = tmp_path / "race.zarr"
    _write(store, shards=[1] if before == "nothing" else None)
    if before != "nothing":
        (store / "shard-00000" / "segments" / "density" / "c" / "0").unlink()
        assert shard_status(store)["damaged"] == [0]
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_commit_at_once, args=(str(store), barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    published = sorted(results.get(timeout=600) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert published == [False, True]  # exactly one copy published, the other discarded
    st = shard_status(store, deep=True)
    assert st["complete"] == [0, 1] and st["damaged"] == [] and st["leftovers"] == []
    assert sorted(p.name for p in store.iterdir()) == ["shard-00000", "shard-00001", "zarr.json"]  # no .tmp-, .damaged-
    _assert_same(pristine[1], _contents(store))


# ---- the aggregation and the command line ------------------------------------------------------------

def test_the_aggregation_cache_sees_damage_and_repair(tmp_path):
    root, cache = tmp_path / "sweep", tmp_path / "cache"
    runs = (SyntheticRun("vanilla", 0, checkpoints=("final",)), SyntheticRun("vanilla", 1, checkpoints=("final",)))
    make_sweep(root, runs=runs, n_paths=4, anchors=3)
    first, rep = collect(root, cache_dir=cache, config=SYNC)
    key = sorted(rep.store)[0]
    chunk = root / key / "shard-00001" / "segments" / "deviation" / "c" / "0" / "0"
    saved = chunk.read_bytes()

    chunk.unlink()  # the user's report: the missing chunk read as deviation 0.0, the cache kept the old table
    with pytest.raises(AnalysisError, match=rf"(?s)incomplete store.*{re.escape(key)}: shards \[1\] of 2 missing "
                                            r"\(damaged: \[1\]\).*shard-00001 is damaged: array segments/deviation, "
                                            r"file segments/deviation/c/0/0 is missing"):
        collect(root, cache_dir=cache, config=SYNC)
    t, rep = collect(root, cache_dir=cache, on_incomplete="report", config=SYNC)
    assert rep.set_index("store").action.to_dict() == {k: ("read" if k == key else "cached") for k in rep.store}
    assert not t[t.store == key].store_complete.any() and len(t[t.store == key]) == 2  # shard 0's paths only

    chunk.write_bytes(saved)
    _flip(chunk)  # same size: only the checksum sees it; the fingerprint sees the new mtime
    with pytest.raises(AnalysisError, match=rf"cannot be read: .*{re.escape(key)}: shard shard-00001 is damaged: "
                                            r"array segments/deviation, file segments/deviation/c/0/0 does not match"):
        collect(root, cache_dir=cache, config=SYNC)

    chunk.unlink()
    make_sweep(root, runs=runs, n_paths=4, anchors=3)  # the same writer again: rewrites the damaged shard
    again, rep = collect(root, cache_dir=cache, config=SYNC)
    assert rep.set_index("store").action.to_dict() == {k: ("read" if k == key else "cached") for k in rep.store}
    pd.testing.assert_frame_equal(first, again)


def test_fingerprint_changes_with_any_chunk(store):
    before = store_fingerprint(store)
    chunk = store / "shard-00000" / "regions" / "t_end" / "c" / "0"
    st = chunk.stat()
    os.utime(chunk, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a rewrite: same size, new time
    assert store_fingerprint(store) != before


def test_verify_command_lists_damage_and_the_command(store, capsys):
    from jobs.verify import main

    assert main([str(store)]) == 0
    assert "2 of 2 shards complete and whole" in capsys.readouterr().out
    _flip(store / "shard-00001" / "segments" / "f0" / "c" / "0" / "0")
    (store / "shard-00000" / "regions" / "t_end" / "c" / "0").unlink()
    assert main([str(store)]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED shard 0: " in out and "file regions/t_end/c/0 is missing" in out and "1 damaged shard" in out
    assert "DAMAGED shard 1" not in out
    assert main([str(store), "--deep"]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED shard 1: " in out and "segments/f0/c/0/0 does not match its checksum" in out
    assert f"--from-store {store} --shard 1/2 --deep" in out and "2 damaged shard(s)" in out
