"""A store belongs to the run it sits in: another run's or another checkpoint's store, copied
into place, is refused by every reader (issue 22's first probe: its numbers used to reach
``paths.parquet`` as this network's)."""

import io
import json
import shutil
from dataclasses import replace

import pytest

from analysis.collect import stores_info
from analysis.config import AnalysisError
from jobs.verify import verify
from pipeline import open_store
from pipeline.config import identity_dict
from pipeline.inputs.paths import PathConfig
from pipeline.stages.discovery import DiscoverConfig, discover_run, store_path
from pipeline.store.identity import StoreError
from pipeline.store.placement import SWEEP_RECORD, check_placement, placement_problems

CFG = DiscoverConfig(paths=PathConfig(kind="circle", n_paths=2, anchors=3, seed=1), n_shards=1, batch_size=8)


@pytest.fixture
def sweep(tmp_path, digits_run):
    """Two runs of one sweep (copies of conftest's trained VGG8), run ``a`` discovered at both
    checkpoints into its own regions/ folder."""
    root = tmp_path / "sweep"
    for name in ("a", "b"):
        shutil.copytree(digits_run, root / "runs" / name)
    for checkpoint in ("init", "final"):
        cfg = DiscoverConfig(**{**CFG.__dict__, "checkpoint": checkpoint})
        discover_run(root / "runs" / "a", cfg, progress=False)
    return root


def _record(root, cfg=CFG):
    """What a sweep folder records of its discovery config (jobs.sweepconfig.claim_root)."""
    ident = identity_dict(cfg)
    ident.pop("checkpoint")
    (root / SWEEP_RECORD).write_text(json.dumps(ident))


def _store(root, run, checkpoint="final"):
    cfg = DiscoverConfig(**{**CFG.__dict__, "checkpoint": checkpoint})
    return store_path(root / "runs" / run, cfg)


def test_a_store_in_its_run_is_read_and_a_moved_sweep_still_is(sweep, tmp_path):
    store = _store(sweep, "a")
    assert placement_problems(store) == []
    assert len(open_store(store).paths()) == 2
    moved = tmp_path / "elsewhere"
    shutil.copytree(sweep, moved)  # the recorded run is an absolute path: only its name is compared
    assert placement_problems(_store(moved, "a")) == []
    assert len(open_store(_store(moved, "a")).paths()) == 2


def test_another_run_s_store_is_refused_by_every_reader(sweep):
    theirs, ours = _store(sweep, "a"), _store(sweep, "b")
    shutil.copytree(theirs, ours)  # b's store, by name, holds a's numbers
    with pytest.raises(StoreError, match=r"records run 'a' but sits in run 'b'"):
        check_placement(ours)
    with pytest.raises(StoreError, match="not this run's store"):
        open_store(ours)
    with pytest.raises(AnalysisError, match="records run 'a' but sits in run 'b'"):
        stores_info(sweep, [ours])
    out = io.StringIO()
    assert verify([ours], sweep, deep=True, out=out) == 1
    assert "NOT THIS RUN'S STORE" in out.getvalue() and "run 'b'" in out.getvalue()
    # a's own store is still read
    assert len(open_store(theirs).paths()) == 2


def test_another_checkpoint_s_store_is_refused(sweep):
    init, final = _store(sweep, "a", "init"), _store(sweep, "a", "final")
    shutil.rmtree(final)
    shutil.copytree(init, final)  # the final checkpoint's store holds the initialisation's regions
    problems = placement_problems(final)
    assert any("checkpoint 'init'" in p and final.name in p for p in problems), problems
    assert len(problems) == 1  # it does agree with init.pt, the checkpoint it records
    with pytest.raises(StoreError, match="not this run's store"):
        open_store(final)


def test_a_checkpoint_replaced_after_discovery_is_found(sweep):
    """The store was discovered from a checkpoint file that has since changed (training rerun
    with other settings into the same folder): its regions are not this checkpoint's."""
    store = _store(sweep, "a")
    ckpt = sweep / "runs" / "a" / "checkpoints" / "final.pt"
    ckpt.write_bytes(ckpt.read_bytes() + b"\0")
    with pytest.raises(StoreError, match=r"sha256 .* but .*final\.pt has sha256"):
        open_store(store)
    out = io.StringIO()
    assert verify([store], sweep, out=out) == 1 and "NOT THIS RUN'S STORE" in out.getvalue()


def test_another_sweep_s_store_is_refused(sweep, tmp_path):
    """Same training recipe, so the same run id and checkpoint, but discovered by a sweep with
    another eps: the store's name and checkpoint agree, its discovery config does not."""
    _record(sweep)
    ours = _store(sweep, "a")
    assert placement_problems(ours) == []
    other = tmp_path / "other"
    shutil.copytree(sweep / "runs" / "a", other / "runs" / "a", ignore=shutil.ignore_patterns("regions"))
    discover_run(other / "runs" / "a", replace(CFG, eps=1e-5), progress=False)
    theirs = _store(other, "a")
    assert theirs.name == ours.name
    shutil.rmtree(ours)
    shutil.copytree(theirs, ours)
    with pytest.raises(StoreError, match=r"another config than this sweep's .*eps: 1e-06 vs 1e-05"):
        open_store(ours)
    with pytest.raises(AnalysisError, match="comes from another sweep"):
        stores_info(sweep, [ours])
    out = io.StringIO()
    assert verify([ours], sweep, out=out) == 1 and "another sweep" in out.getvalue()
    # a field that changes no result (batch_size) is not a difference
    _record(sweep, replace(CFG, batch_size=64, eps=1e-5))
    assert placement_problems(ours) == []
