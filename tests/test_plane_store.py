"""Planes as a discovery path set: the plane store (pipeline/store/planes.py), written by
discovery next to the segments, resumed, verified, and read back equal to the engine's result."""

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.inputs.data import DataConfig, load
from pipeline.stages.discovery import DiscoverConfig, discover_run, plane_store_path, shard_done, store_path
from pipeline.inputs.paths import PathConfig
from pipeline.inputs.plane_sets import PlaneSetConfig, bundle_planes
from pipeline.store.planes import PLANE_COLUMNS, open_plane_store
from pipeline.engine.planes import discover_plane
from pipeline.store.identity import DamagedShardError, StoreError, open_or_create, store_attrs
from pipeline.store.verify import shard_status
from pipeline.store.lines import open_store
from pipeline.stages.train import load_checkpoint

PLANES = PlaneSetConfig(kind="images", n_planes=4, scale=0.2, seed=1)
CFG = DiscoverConfig(paths=PathConfig(kind="circle", n_paths=4, anchors=4, seed=1), n_shards=2, batch_size=16,
                     chunk_segments=8, planes=PLANES, chunk_planes=1)


@pytest.fixture
def run(digits_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(digits_run, dst)
    return dst


@pytest.fixture(scope="module")
def written(digits_run, tmp_path_factory):
    """A copy of the run with both stores written, and the engine's result on the same planes."""
    dst = tmp_path_factory.mktemp("planes") / "run"
    shutil.copytree(digits_run, dst)
    status = discover_run(dst, CFG, progress=False)
    model, _ = load_checkpoint(dst, "final")
    planes = bundle_planes(load(DataConfig(name="digits")), PLANES)
    direct = discover_plane(model.double(), planes.x0, planes.x1, planes.x2, domain="triangle", chunk_planes=1)
    return dst, status, planes, direct


def test_discovery_writes_a_plane_store_equal_to_the_engine(written):
    run, status, planes, direct = written
    assert shard_done(status, 0) and shard_done(status, 1) and status["planes"]["complete"] == [0, 1]
    store = plane_store_path(run, CFG)
    assert store.name.startswith("final-planes-") and store_path(run, CFG).exists()
    attrs = store_attrs(store)
    assert attrs["geometry"] == "plane" and attrs["domain"] == "triangle" and attrs["n_planes"] == 4
    assert "method" not in attrs and attrs["plane_engine"]["min_area"] == 1e-14
    reader = open_plane_store(store)
    table = reader.planes()
    assert list(table.columns) == [*PLANE_COLUMNS, "shard"] and list(table["shard"]) == [0, 0, 1, 1]
    np.testing.assert_array_equal(table["plane_id"], planes.plane_id)
    np.testing.assert_array_equal(table["n_regions"], direct.n_regions)
    np.testing.assert_array_equal(table[["corner_1", "corner_2"]].to_numpy(), planes.corner_index[:, 1:])
    # deviation: the mean over the triangle (area 1/2), L2 over logits
    np.testing.assert_allclose(table["deviation"], np.linalg.norm(direct.deviation / 0.5, axis=1), rtol=1e-12)
    assert (table["n_regions"] > 20).all() and (table["continuity_gap"] < 1e-9).all()
    for i, pid in enumerate(planes.plane_id):
        one, want = reader.plane(pid), direct.region_slice(i)
        assert one.total_regions == direct.n_regions[i]
        for name in ("area", "centroid", "region_gap", "intercept", "grad"):  # as computed: the same chunking
            np.testing.assert_array_equal(getattr(one, name), getattr(direct, name)[want], err_msg=name)
        v = direct.vertex_offset
        np.testing.assert_array_equal(one.vertex_offset, v[want.start:want.stop + 1] - v[want.start])
        np.testing.assert_array_equal(one.uv, direct.uv[v[want.start]:v[want.stop]])
        # the stored maps reproduce the network at the region centroids
        x = planes.x0[i:i + 1] + torch.from_numpy(one.centroid[:, :1]).view(-1, 1, 1, 1) * (planes.x1 - planes.x0)[i] \
            + torch.from_numpy(one.centroid[:, 1:]).view(-1, 1, 1, 1) * (planes.x2 - planes.x0)[i]
        model, _ = load_checkpoint(run, "final")
        with torch.no_grad():
            f = model.double()(x).numpy()
        np.testing.assert_allclose(one.evaluate(0, one.centroid), f, rtol=1e-9, atol=1e-9)
    with pytest.raises(KeyError, match="plane 5 does not exist in this store"):
        reader.plane(5)


def test_shard_by_shard_equals_all_at_once_and_a_rerun_writes_nothing(written, run):
    for shard in (1, 0):
        status = discover_run(run, CFG, shards=[shard], progress=False)
        assert shard_done(status, shard)
    a, b = open_plane_store(plane_store_path(written[0], CFG)), open_plane_store(plane_store_path(run, CFG))
    np.testing.assert_array_equal(a.planes().drop(columns="shard").to_numpy(), b.planes().drop(columns="shard").to_numpy())
    for pid in a.plane_ids():
        pa, pb = a.plane(pid), b.plane(pid)
        for name in ("area", "uv", "vertex_offset", "intercept", "grad"):
            np.testing.assert_array_equal(getattr(pa, name), getattr(pb, name), err_msg=name)
    store = plane_store_path(run, CFG)
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    discover_run(run, CFG, progress=False)
    assert before == {p: p.stat().st_mtime_ns for p in store.rglob("*")}


def test_a_damaged_plane_shard_is_refused_then_rewritten(run):
    discover_run(run, CFG, progress=False)
    store = plane_store_path(run, CFG)
    want = open_plane_store(store).planes()
    chunk = store / "shard-00001" / "vertices" / "uv" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-7])  # truncated
    st = shard_status(store)
    assert st["damaged"] == [1] and "vertices/uv/c/0/0" in st["errors"][1]
    with pytest.raises(DamagedShardError, match="shard-00001 is damaged: array vertices/uv"):
        open_plane_store(store)
    assert len(open_plane_store(store, allow_incomplete=True).planes()) == 2
    status = discover_run(run, CFG, progress=False)  # resume: only the damaged shard is written again
    assert shard_done(status, 1)
    np.testing.assert_array_equal(open_plane_store(store).planes().to_numpy(), want.to_numpy())


def test_segment_and_plane_stores_are_never_mixed(written, tmp_path):
    run = written[0]
    planes, lines = plane_store_path(run, CFG), store_path(run, CFG)
    with pytest.raises(StoreError, match="not of segments: read it with pipeline.store.planes"):
        open_store(planes)
    with pytest.raises(StoreError, match="not of planes"):
        open_plane_store(lines)
    with pytest.raises(StoreError, match="holds lines, this job writes planes"):
        open_or_create(lines, {**store_attrs(planes), "schema": None})
    with pytest.raises(ValueError, match="n_shards \\(5\\) is larger than the number of planes \\(4\\)"):
        discover_run(run, DiscoverConfig(paths=PathConfig(n_paths=6, anchors=2), n_shards=5, planes=PLANES),
                     progress=False, store=tmp_path / "other.zarr")


def test_jobs_plane_draws_a_stored_plane(written, tmp_path, capsys):
    from jobs.plane import main

    run, _, planes, direct = written
    store, pid = plane_store_path(run, CFG), int(planes.plane_id[2])
    out = tmp_path / "p.png"
    assert main(["--store", str(store), "--plane", str(pid), "--out", str(out), "--color", "logit"]) == 0
    assert out.stat().st_size > 10_000
    assert f"{int(direct.n_regions[2]):,} linear regions on plane {pid}" in capsys.readouterr().out
    assert main(["--store", str(store), "--plane", "5"]) == 2
    assert "plane 5 does not exist in this store" in capsys.readouterr().err
    assert main(["--store", str(store_path(run, CFG)), "--plane", str(pid)]) == 2
    assert "not of planes" in capsys.readouterr().err


def test_partition_statistics_from_the_store_equal_the_engines(written):
    from pipeline.engine.planes.stats import STATS_COLUMNS, plane_stats
    from pipeline.store.planes import plane_stats_table

    run, _, planes, direct = written
    store = plane_store_path(run, CFG)
    reader = open_plane_store(store)
    table = pd.concat([plane_stats_table(store, s) for s in reader.shards], ignore_index=True)
    assert list(table.columns) == ["plane_id", *STATS_COLUMNS]
    np.testing.assert_array_equal(table["plane_id"], planes.plane_id)
    for row, pid in enumerate(planes.plane_id):
        one = reader.plane(int(pid))
        d1 = (planes.x1[row] - planes.x0[row]).double().flatten().numpy()
        d2 = (planes.x2[row] - planes.x0[row]).double().flatten().numpy()
        np.testing.assert_allclose(one.gram[0], [d1 @ d1, d1 @ d2, d2 @ d2], rtol=1e-12)
        np.testing.assert_allclose(direct.gram[row], one.gram[0], rtol=1e-12)
        st = plane_stats(one, 0)
        assert np.isfinite(st["boundary_length_input"]) and np.isfinite(st["grad_jump_per_length"])
        np.testing.assert_allclose(table.loc[row, list(STATS_COLUMNS)].to_numpy(float),
                                   [st[c] for c in STATS_COLUMNS], rtol=1e-12)
        ref = plane_stats(direct, row)  # the engine's float64 maps: the same partition
        for c in ("area_median", "vertices_mean", "mean_degree", "boundary_pieces"):
            assert table.loc[row, c] == pytest.approx(ref[c], rel=1e-9), c
        assert table.loc[row, "boundary_length"] == pytest.approx(ref["boundary_length"], rel=1e-4)
