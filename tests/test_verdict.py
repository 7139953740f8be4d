"""One verdict on damage: verify, the readers and the aggregation apply one check, and the
aggregation's own verdict (failed, or older than the stores) reaches ``sweep status`` and the report.

The user's probe: a shard's manifest (or an array's own ``zarr.json``) edited; ``verify --deep``
called the shard whole, the aggregation refused it after a Dask traceback, ``sweep status``
called the aggregation done and ``report`` built from the stale folder without a word.
"""

import json
import logging
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from analysis import AnalysisConfig, AnalysisError, aggregate
from analysis.collect import collect
from analysis.report import write_report
from analysis.status import read_status, stale_reason
from analysis.synthetic import SyntheticRun, make_sweep
from pipeline.store.identity import DamagedShardError
from pipeline.store.lines import open_store
from pipeline.store.verify import rewrite_command, shard_status, verify_shard
from tests.test_store_integrity import RUN, _flip, pristine, store  # noqa: F401 - fixtures

SYNC = AnalysisConfig(scheduler="synchronous", figures=False)


def _edit_json(path: Path, edit):
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta, indent=2))


def _manifest_entry(key, field, change):
    def edit(meta):
        entry = meta["attributes"]["manifest"]["arrays"][key]
        entry[field] = change(entry[field])
    return edit


def _shrink_array_metadata(by):
    def edit(meta):
        meta["shape"][0] -= by
    return edit


def _shrink_both(shard: Path, key: str):
    """The manifest and the array's zarr.json agree on a shape a chunk shorter than the data:
    only the chunk files beyond the grid show it."""
    n = json.loads((shard / key / "zarr.json").read_text())["shape"][0]
    _edit_json(shard / "zarr.json", _manifest_entry(key, "shape", lambda s: [n - 16, *s[1:]]))
    _edit_json(shard / key / "zarr.json", _shrink_array_metadata(16))


# kind: (how shard 1 is damaged, the array named, words of the message)
EDITS = {
    "manifest shape": (lambda sh: _edit_json(sh / "zarr.json", _manifest_entry("segments/density", "shape",
                                                                                lambda s: [s[0] - 1])),
                       "segments/density", "where the manifest records"),
    "manifest dtype": (lambda sh: _edit_json(sh / "zarr.json", _manifest_entry("segments/length", "dtype",
                                                                                lambda d: "float32")),
                       "segments/length", "dtype float64 where the manifest records float32"),
    "manifest chunks": (lambda sh: _edit_json(sh / "zarr.json", _manifest_entry("regions/t_start", "chunks",
                                                                                 lambda c: [8])),
                        "regions/t_start", "chunks [16] where the manifest records [8]"),
    "array zarr.json shape": (lambda sh: _edit_json(sh / "segments" / "density" / "zarr.json",
                                                    _shrink_array_metadata(1)),
                              "segments/density", "where the manifest records"),
    "both shapes, a chunk shorter": (lambda sh: _shrink_both(sh, "regions/t_start"), "regions/t_start",
                                     "lies outside the array's shape"),
}


@pytest.mark.parametrize("kind", list(EDITS))
def test_edited_metadata_is_damage_to_every_check(store, kind, capsys):  # noqa: F811 - the fixture
    edit, array, words = EDITS[kind]
    shard = store / "shard-00001"
    # the array's zarr.json rewritten with the same number of bytes, so file sizes alone see nothing
    before = {p: p.stat().st_size for p in shard.rglob("zarr.json") if p.parent != shard}
    edit(shard)
    for p, size in before.items():
        if p.stat().st_size != size:  # pad to the recorded size: the damage must not be a size change
            text = p.read_text().rstrip("\n")
            p.write_text(text[: size] if len(text) > size else text + " " * (size - len(text)))
    assert all(p.stat().st_size == size for p, size in before.items())

    for deep in (False, True):
        st = shard_status(store, deep=deep)
        assert st["damaged"] == [1] and st["complete"] == [0], (deep, st)
        assert f"array {array}, " in st["errors"][1] and words in st["errors"][1]
    with pytest.raises(DamagedShardError) as err:
        verify_shard(store, 1)
    assert err.value.array == array and err.value.shard == 1
    with pytest.raises(DamagedShardError, match=f"array {array}"):
        open_store(store)
    from jobs.verify import main

    assert main([str(store), "--deep"]) == 1
    out = capsys.readouterr().out
    assert "0 of 2 shards" not in out and "1 of 2 shards complete and whole" in out and "DAMAGED shard 1" in out


def test_a_read_that_disagrees_with_the_manifest_is_refused(store):  # noqa: F811
    """The reader's own checks come from the same function: a manifest edited after the store was
    opened (so after the opening check) is refused at the read."""
    r = open_store(store)
    _edit_json(store / "shard-00000" / "zarr.json", _manifest_entry("segments/density", "shape", lambda s: [s[0] + 1]))
    r._meta[0] = json.loads((store / "shard-00000" / "zarr.json").read_text())["attributes"]
    with pytest.raises(DamagedShardError, match="array segments/density, its metadata .* says shape"):
        r.segment_array("density")


def _sweep(tmp_path):
    root = tmp_path / "sweep"
    runs = (SyntheticRun("vanilla", 0, checkpoints=("final",)), SyntheticRun("vanilla", 1, checkpoints=("final",)))
    make_sweep(root, runs=runs, n_paths=4, anchors=3)
    return root


def test_damage_found_while_aggregating_is_one_clean_error(tmp_path, capfd, caplog):
    """Damage only the deep check of a task sees (flipped bytes) is found inside a Dask task: a
    one-paragraph AnalysisError naming store, shard, array and what rewrites it, no worker traceback."""
    root = _sweep(tmp_path)
    key = sorted(p.relative_to(root).as_posix() for p in root.glob("runs/*/regions/*.zarr"))[0]
    _flip(root / key / "shard-00001" / "segments" / "deviation" / "c" / "0" / "0")
    capfd.readouterr()
    with pytest.raises(AnalysisError) as err:
        collect(root, config=AnalysisConfig(figures=False))  # a real LocalCluster, whose workers log errors
    printed = capfd.readouterr()
    assert "Traceback" not in printed.err + printed.out and "Compute Failed" not in printed.err + printed.out
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]  # the worker logs a failed task's traceback
    assert not logged, [r.getMessage()[:200] for r in logged]
    msg = str(err.value)
    assert f"{root / key}: shard shard-00001 is damaged: array segments/deviation" in msg
    assert "run what wrote it again" in msg and f"python -m jobs verify {root} --deep" in msg and "\n" not in msg


def test_hints_name_the_flag_and_the_keyword(tmp_path):
    root = _sweep(tmp_path)
    shutil.rmtree(next(root.glob("runs/*/regions/*.zarr")) / "shard-00001")
    with pytest.raises(AnalysisError) as err:
        collect(root, config=SYNC)
    assert "`--on-incomplete skip` on the command line, on_incomplete='skip' in Python" in str(err.value)


def test_a_moved_stores_rewrite_command_names_where_it_sits(store, tmp_path):  # noqa: F811
    """The store was written in run /runs/mlp-0; the sweep moved, it now sits in <tmp>/moved/mlp-0."""
    moved = tmp_path / "moved" / "mlp-0" / "regions" / "s.zarr"
    shutil.copytree(store, moved)
    (moved / "shard-00001" / "segments" / "density" / "c" / "0").unlink()
    msg = shard_status(moved)["errors"][1]
    assert f"python -m jobs discover {tmp_path / 'moved' / 'mlp-0'} --from-store {moved} --shard 1/2`" in msg
    assert RUN not in rewrite_command(moved, 1)


def test_a_path_id_that_does_not_exist_is_not_called_damage(store):  # noqa: F811
    r = open_store(store)
    ids = r.path_ids()
    with pytest.raises(KeyError, match=rf"path 999 does not exist in this store .* it holds 6 ids: "
                                       rf"{', '.join(map(str, ids))}'"):
        r.segment(999, 0)
    with pytest.raises(KeyError, match=rf"segment 9 of path {ids[0]} does not exist in this store .* ids 0 to 3"):
        r.segment(ids[0], 9)
    shutil.rmtree(store / "shard-00001")
    r = open_store(store, allow_incomplete=True)
    with pytest.raises(KeyError, match=r"path 999 is not in the complete shards .* shards \[1\] of 2 are not complete"):
        r.segment(999, 0)


def test_the_aggregation_records_its_verdict_and_the_report_follows_it(tmp_path):
    root, out = _sweep(tmp_path), tmp_path / "analysis"
    key = sorted(p.relative_to(root).as_posix() for p in root.glob("runs/*/regions/*.zarr"))[0]
    aggregate(root, out, config=SYNC)
    assert read_status(out)["state"] == "ok" and stale_reason(out) is None
    md = write_report(out, tmp_path / "report", config=SYNC)["markdown"].read_text()
    assert "STALE" not in md and "Stores not wholly" not in md

    chunk = root / key / "shard-00000" / "segments" / "density" / "c" / "0"
    st = chunk.stat()
    os.utime(chunk, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # rewritten since the aggregation
    assert f"stores changed since the aggregation of" in stale_reason(out) and key in stale_reason(out)
    with pytest.raises(AnalysisError, match=r"not the sweep's current aggregation: stores changed .* run `python -m "
                                            r"jobs aggregate <sweep>`.* --allow-stale"):
        write_report(out, tmp_path / "report", config=SYNC)
    written = write_report(out, tmp_path / "stale", config=SYNC, allow_stale=True)
    md, page = written["markdown"].read_text(), written["html"].read_text()
    assert md.splitlines()[2].startswith("> **STALE: this report is built from an aggregation that is not the")
    assert page.index("class='stale'") < page.index("Generated") and key in page

    chunk.unlink()  # damage: the aggregation fails, the folder keeps the last tables and says it failed
    old = pd.read_parquet(out / "paths.parquet")
    with pytest.raises(AnalysisError, match="incomplete store"):
        aggregate(root, out, config=SYNC)
    assert read_status(out)["state"] == "failed" and "incomplete store" in read_status(out)["error"]
    pd.testing.assert_frame_equal(pd.read_parquet(out / "paths.parquet"), old)
    assert stale_reason(out).startswith("the last aggregation failed at ")
    with pytest.raises(AnalysisError, match="the last aggregation failed"):
        write_report(out, tmp_path / "report", config=SYNC)

    aggregate(root, out, on_incomplete="skip", config=SYNC)  # left out: the report says which and why
    assert read_status(out)["left_out"] == {key: "left out: incomplete (1 of 2 shards complete, missing or damaged "
                                                 "[0]; on_incomplete skip)"}
    written = write_report(out, tmp_path / "report", config=SYNC)
    for text in (written["markdown"].read_text(), written["html"].read_text()):
        assert f"Stores not wholly in this report: {key}: left out: incomplete (1 of 2 shards" in text


def test_the_probe_end_to_end(tmp_path, capsys):
    """The commands in turn on a tiny sweep whose manifest was edited: verify, aggregate,
    sweep status and report each give the same verdict, and a report after --on-incomplete skip
    names the store left out."""
    from jobs.__main__ import main as jobs
    from jobs.sweep import load_sweep, plan, status, submit
    from tests.sweeps import tiny_sweep

    path = tiny_sweep(tmp_path, variants={"vanilla": {}}, n_shards=1,
                      analysis={"planes": 0, "path_plots": 0, "figures": False})
    sweep, base = load_sweep(path)
    submit(sweep, base)
    assert plan(sweep, base)["aggregate"]["done"] and jobs(["report", str(path)]) == 0
    root = tmp_path / "out"
    store = next(root.glob("runs/*/regions/final-*.zarr"))
    key = store.relative_to(root).as_posix()
    _edit_json(store / "shard-00000" / "zarr.json", _manifest_entry("segments/density", "shape", lambda s: [s[0] - 1]))
    capsys.readouterr()

    assert jobs(["verify", str(path), "--deep"]) == 1
    assert "DAMAGED shard 0" in capsys.readouterr().out
    assert jobs(["aggregate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{store}: shard shard-00000 is damaged: array segments/density" in err
    assert f"python -m jobs discover {store.parent.parent} --from-store {store} --shard 0/1" in err
    p = plan(sweep, base)
    assert not p["aggregate"]["done"] and p["aggregate"]["todo"]
    assert (root / "analysis" / "DONE").exists()  # the job's old marker, left by the first aggregation
    assert "aggregate       0           0          1" in status(sweep, base)
    assert jobs(["report", str(path)]) == 2
    assert "the last aggregation failed" in capsys.readouterr().err
    assert jobs(["report", str(path), "--allow-stale"]) == 0
    assert "> **STALE" in (root / "report" / "report.md").read_text()
    assert jobs(["aggregate", str(path), "--on-incomplete", "skip"]) == 0
    assert jobs(["report", str(path)]) == 0
    md = (root / "report" / "report.md").read_text()
    assert "STALE" not in md and f"{key}: left out: incomplete (0 of 1 shards complete" in md
    submit(sweep, base)  # rewrites the shard, aggregates again
    p = plan(sweep, base)
    assert p["aggregate"]["done"] and not p["damaged"]
    assert jobs(["verify", str(path), "--deep"]) == 0 and jobs(["report", str(path)]) == 0
    assert "Stores not wholly" not in (root / "report" / "report.md").read_text()


def test_a_store_both_incomplete_and_uncertified_is_named_as_incomplete(tmp_path):
    """The report names a store counted from its complete shards even when failing certificates
    also left paths of it out (those have their own note): one reason must not hide the other."""
    import pandas as pd

    from analysis.aggregation import left_out
    from analysis.report import _left_out

    stores = pd.DataFrame([{"store": "runs/a/regions/final-1.zarr", "run_id": "a", "checkpoint": "final",
                            "status": "incomplete", "action": "read", "n_shards": 2, "complete_shards": 1,
                            "missing_shards": "[1]", "leftovers": 0, "n_paths": 4, "uncertified_paths": 3}])
    why = "counted from its complete shards only: incomplete (1 of 2 shards complete, missing or damaged [1]; " \
          "on_incomplete report)"
    assert left_out(stores) == {"runs/a/regions/final-1.zarr": why + "; 3 paths left out: their certificate failed"}
    assert left_out(stores, certificates=False) == {"runs/a/regions/final-1.zarr": why}
    stores.to_csv(tmp_path / "stores.csv", index=False)
    assert _left_out(tmp_path) == [f"Stores not wholly in this report: runs/a/regions/final-1.zarr: {why}"]
