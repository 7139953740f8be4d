"""The Zarr store: round trip, per-path table, lazy regions, bad input, concurrent writers."""

import numpy as np
import pytest
import torch
import zarr

from pipeline.engine.lines import discover_iter
from pipeline.store.identity import SCHEMA_VERSION, StoreConfig, StoreError, open_or_create
from pipeline.store.verify import shard_status
from pipeline.store.lines import ShardWriter, open_store, open_stores
from tests.conftest import segments
from tests.nets import MaxCNN

ATTRS = {"checkpoint_sha256": "abc", "model": {"name": "maxcnn"}, "dataset": "digits", "split": "train",
         "paths": {"kind": "circle", "n_paths": 3}, "eps": 1e-6, "dtype": "float64", "n_shards": 2,
         "keep_affine": True, "affine_dtype": "float64"}


def _shard_inputs(shard):
    x0, x1 = segments((2, 6, 6), 6, seed=10 + shard)
    path_id = np.repeat(np.arange(3) + 3 * shard, 2)  # 3 paths of 2 segments per shard
    return x0, x1, path_id, np.tile(np.arange(2), 3)


def _write(store, shard, cfg=StoreConfig(), commit=True, chunk=4):
    x0, x1, pid, sidx = _shard_inputs(shard)
    net = MaxCNN().eval()
    w = ShardWriter(store, shard, pid, sidx, k=3, cfg=cfg)
    results = []
    for res in discover_iter(net, x0, x1, chunk_segments=chunk, batch_size=2):
        w.write(res)
        results.append(res)
    if commit:
        w.commit()
    return w, results


@pytest.fixture
def store(tmp_path):
    torch.manual_seed(0)
    return open_or_create(tmp_path / "s.zarr", ATTRS)


def test_round_trip_and_tables(store):
    _, parts = _write(store, 0)
    _write(store, 1)
    r = open_store(store)
    assert r.shards == [0, 1] and r.attrs["schema"] == SCHEMA_VERSION
    seg = r.segments()
    assert len(seg) == 12 and list(seg.shard) == [0] * 6 + [1] * 6
    first = parts[0]
    np.testing.assert_array_equal(seg.density[:4], first.density)
    np.testing.assert_array_equal(r.segment_array("deviation")[:4], first.deviation)
    t0 = r.regions("t_start")
    assert t0.shape[0] == seg.density.sum()
    np.testing.assert_array_equal(t0[: first.n_regions].compute(), first.t_start)
    np.testing.assert_array_equal(r.regions("slope")[: first.n_regions].compute(), first.slope)
    # region_offset is a CSR over the shard's regions
    off = zarr.open_group(str(store / "shard-00000"), mode="r")["segments/region_offset"][:]
    np.testing.assert_array_equal(np.diff(off), seg.density[:6])
    # per-path table = per-logit sums over the path's segments by hand, then L2 over logits
    paths = r.paths()
    dev = r.segment_array("deviation")
    for _, row in paths.iterrows():
        mine = seg.path_id == row.path_id
        assert row.density == seg.density[mine].sum() and row.n_segments == 2
        np.testing.assert_allclose(row.deviation, np.linalg.norm(dev[mine.to_numpy()].sum(0)))
        np.testing.assert_allclose(row.length, seg.length[mine].sum())
    both = open_stores([store, store])
    assert len(both) == 2 * len(paths) and set(both.store) == {str(store)}


def test_float32_maps_and_dropped_maps(tmp_path):
    a = open_or_create(tmp_path / "a.zarr", {**ATTRS, "n_shards": 1, "affine_dtype": "float32"})
    _write(a, 0, StoreConfig(affine_dtype="float32"))
    assert open_store(a).regions("slope").dtype == np.float32
    b = open_or_create(tmp_path / "b.zarr", {**ATTRS, "n_shards": 1, "keep_affine": False})
    _write(b, 0, StoreConfig(keep_affine=False, compressor="blosc"))
    g = zarr.open_group(str(b / "shard-00000/regions"), mode="r")
    assert set(g.array_keys()) == {"t_start", "t_end"}
    assert len(open_store(b).paths()) == 3  # measures are always kept


def test_half_written_shard_is_not_read_and_is_rewritten(store):
    _write(store, 0)
    w, _ = _write(store, 1, commit=False)  # a job killed before commit leaves only its temporary
    st = shard_status(store)
    assert st["complete"] == [0] and st["missing"] == [1] and len(st["leftovers"]) == 1
    with pytest.raises(StoreError, match=r"shards \[1\] of 2 are not complete"):
        open_store(store)
    assert open_store(store, allow_incomplete=True).shards == [0]
    _write(store, 1)  # resume: the shard is written again from scratch
    assert shard_status(store)["missing"] == []
    assert len(open_store(store).segments()) == 12


def test_two_writers_on_one_shard(store):
    a, _ = _write(store, 0, commit=False)
    b, _ = _write(store, 0, commit=False)
    assert a.commit() is True
    assert b.commit() is False  # the second finds a complete shard and discards its copy
    assert shard_status(store)["leftovers"] == []
    assert len(open_store(store, allow_incomplete=True).segments()) == 6


def test_writer_refuses_out_of_order_and_short_shards(store):
    x0, x1, pid, sidx = _shard_inputs(0)
    chunks = list(discover_iter(MaxCNN().eval(), x0, x1, chunk_segments=3))
    w = ShardWriter(store, 0, pid, sidx, k=3)
    with pytest.raises(ValueError, match="in order"):
        w.write(chunks[1])
    w.write(chunks[0])
    with pytest.raises(ValueError, match="3 of 6 segments"):
        w.commit()
    w.abort()
    assert shard_status(store)["leftovers"] == []


@pytest.mark.parametrize("change,match", [({"checkpoint_sha256": "def"}, "checkpoint_sha256"), ({"eps": 1e-7}, "eps"),
                                          ({"paths": {"kind": "circle", "n_paths": 4}}, "paths")])
def test_other_settings_are_refused(store, change, match):
    _write(store, 0)
    with pytest.raises(StoreError, match=match):
        open_or_create(store, {**ATTRS, **change})
    assert shard_status(store)["complete"] == [0]  # nothing overwritten


def test_other_schema_and_not_a_store(tmp_path, store):
    g = zarr.open_group(str(store), mode="a")
    g.attrs["schema"] = SCHEMA_VERSION + 1
    with pytest.raises(StoreError, match="schema version"):
        open_or_create(store, ATTRS)
    with pytest.raises(StoreError, match="schema version"):
        open_store(store, allow_incomplete=True)
    with pytest.raises(StoreError, match="not a store"):
        shard_status(tmp_path / "nothing.zarr")
