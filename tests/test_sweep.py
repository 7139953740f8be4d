"""Sweep expansion, naming, resume logic and the launcher, with the in-process debug executor."""

import pytest

from jobs.sweep import expand, load_sweep, plan, status, submit
from pipeline.config import ConfigError
from pipeline.store.verify import shard_status
from pipeline.store.lines import open_store
from tests.sweeps import tiny_sweep


def test_expansion_is_deterministic_and_named_by_hash(tmp_path):
    path = tiny_sweep(tmp_path, variants={"a": {}, "b": {"lr": 0.1}, "c": {"data.label_noise": 0.2}})
    sweep, base = load_sweep(path)
    runs = expand(sweep, base)
    assert [r.variant for r in runs] == ["a", "b", "c"]
    assert expand(sweep, base) == runs  # same file, same names
    assert runs[1].config.lr == 0.1 and runs[2].config.data.label_noise == 0.2
    assert all(r.run_id.startswith(r.variant + "-") and r.run_dir.parent.name == "runs" for r in runs)
    assert len({r.run_id for r in runs}) == 3


def test_grid_is_a_cartesian_product(tmp_path):
    sweep, base = load_sweep(tiny_sweep(tmp_path))
    from dataclasses import replace

    runs = expand(replace(sweep, grid={"seed": [0, 1, 2], "model.widths": [[4, 8], [6, 16]]}), base)
    assert len(runs) == 2 * 3 * 2
    assert {(r.config.seed, tuple(r.config.model.widths)) for r in runs if r.variant == "vanilla"} == {
        (s, w) for s in (0, 1, 2) for w in ((4, 8), (6, 16))}


def test_bad_sweeps(tmp_path):
    with pytest.raises(ConfigError, match="variant 'bad'.*Did you mean 'lr'"):
        sweep, base = load_sweep(tiny_sweep(tmp_path, variants={"bad": {"lrr": 1}}))
        expand(sweep, base)
    with pytest.raises(ConfigError, match="same training config"):
        sweep, base = load_sweep(tiny_sweep(tmp_path, variants={"a": {}, "b": {"lr": 0.05}}))
        expand(sweep, base)
    path = tiny_sweep(tmp_path)
    (tmp_path / "train.yaml").unlink()
    with pytest.raises(ConfigError, match="train.yaml does not exist"):
        load_sweep(path)
    with pytest.raises(ConfigError, match="executor must be one of"):
        path.write_text(path.read_text().replace("executor: debug", "executor: kubernetes"))
        load_sweep(path)


def test_debug_sweep_runs_end_to_end_and_resumes(tmp_path, capsys):
    sweep, base = load_sweep(tiny_sweep(tmp_path))
    dry = submit(sweep, base, dry_run=True)
    assert dry["submitted"] == 0 and not (tmp_path / "out").exists()
    assert "train           0           0          2" in capsys.readouterr().out
    first = submit(sweep, base)
    assert first["submitted"] == 2 + 2 * 2 * 2 + 1
    p = plan(sweep, base)
    assert len(p["train"]["done"]) == 2 and len(p["discover"]["done"]) == 8 and p["aggregate"]["done"]
    for r in p["runs"]:
        for ckpt in ("init", "final"):
            stores = list((r.run_dir / "regions").glob(f"{ckpt}-*.zarr"))
            assert len(stores) == 1 and len(open_store(stores[0]).paths()) == 4
    assert submit(sweep, base)["submitted"] == 0  # a finished sweep submits nothing
    # a lost shard is the only thing submitted again
    import shutil

    store = next((p["runs"][0].run_dir / "regions").glob("final-*.zarr"))
    shutil.rmtree(store / "shard-00001")
    again = submit(sweep, base)
    assert again["submitted"] == 2  # the shard, then the aggregation
    assert len(open_store(store).paths()) == 4
    # a damaged shard (a chunk lost after completion) is incomplete, shown by name, and resubmitted
    (store / "shard-00000" / "segments" / "deviation" / "c" / "0" / "0").unlink()
    p = plan(sweep, base)
    assert len(p["discover"]["incomplete"]) == 1 and [d[2] for d in p["damaged"]] == [0] and not p["aggregate"]["done"]
    text = status(sweep, base)
    assert "damaged shards (1, counted as incomplete" in text and f"{store}: shard shard-00000 is damaged" in text
    assert "file segments/deviation/c/0/0 is missing" in text
    assert submit(sweep, base)["submitted"] == 2
    assert shard_status(store, deep=True)["complete"] == [0, 1] and len(open_store(store).paths()) == 4
    # another run's store copied over this one's: listed by name, incomplete, the aggregation not done
    other = next((p["runs"][1].run_dir / "regions").glob("final-*.zarr"))
    shutil.rmtree(other)
    shutil.copytree(store, other)
    p = plan(sweep, base)
    assert [m[2] for m in p["misplaced"]] == [other] and not p["aggregate"]["done"]
    text = status(sweep, base)
    assert "stores that are not their run's (1" in text
    assert f"records run '{p['runs'][0].run_dir.name}' but sits in run '{p['runs'][1].run_dir.name}'" in text


def test_slurm_without_a_cluster_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    sweep, base = load_sweep(tiny_sweep(tmp_path))
    with pytest.raises(RuntimeError, match="no sbatch"):
        submit(sweep, base, executor="slurm")


def test_slurm_submission_while_the_last_one_s_jobs_run_is_refused(tmp_path, monkeypatch):
    """`sweep submit` to SLURM returns at once and its lock with it: while its jobs are queued or
    running, a second submission would plan their work again and submit it twice."""
    import json
    import os

    from jobs.plan import jobs_in_flight

    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name, body in (("sbatch", "echo never called >&2; exit 1"), ("sacct", 'cat "$SACCT_OUT"')):
        (bin_ / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_ / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    sweep, base = load_sweep(tiny_sweep(tmp_path))
    root = tmp_path / "out"
    root.mkdir()
    ledger = root / "submissions.jsonl"
    ledger.write_text("".join(json.dumps({"stage": s, "job_id": j, "stdout": "o", "stderr": "e"}) + "\n"
                              for s, j in (("train", "41_0"), ("train", "41_1"), ("aggregate", "42"))))
    states = tmp_path / "sacct.txt"
    monkeypatch.setenv("SACCT_OUT", str(states))
    states.write_text("41_0|COMPLETED\n41_1|RUNNING\n42|PENDING\n")
    assert jobs_in_flight(root) == [("train", "41_1", "RUNNING"), ("aggregate", "42", "PENDING")]
    before = ledger.read_text()
    with pytest.raises(RuntimeError, match=r"2 SLURM job\(s\) this sweep submitted are still queued or running: "
                                           r"41_1 \(train, RUNNING\), 42 \(aggregate, PENDING\).*scancel 41 42"):
        submit(sweep, base, executor="slurm")
    assert ledger.read_text() == before and not (root / "sweep.yaml").exists()
    states.write_text("41_0|COMPLETED\n41_1|CANCELLED by 0\n42|CANCELLED by 0\n")
    assert jobs_in_flight(root) == []


@pytest.mark.slow
def test_local_executor_runs_the_stages_in_turn(tmp_path):
    sweep, base = load_sweep(tiny_sweep(tmp_path, variants={"vanilla": {}}, n_shards=1, executor="local"))
    assert submit(sweep, base)["submitted"] == 1 + 2 + 1
    p = plan(sweep, base)
    assert p["aggregate"]["done"] and len(p["discover"]["done"]) == 2
    assert (tmp_path / "out" / "analysis" / "paths.parquet").exists()
    assert submit(sweep, base)["submitted"] == 0


def test_the_sweeps_analysis_config_reaches_the_aggregation(tmp_path):
    import yaml

    path = tiny_sweep(tmp_path, variants={"vanilla": {}}, n_shards=1,
                      analysis={"planes": 0, "path_plots": 0, "formats": ["png"]})
    sweep, base = load_sweep(path)
    submit(sweep, base)
    out = tmp_path / "out" / "analysis"
    saved = yaml.safe_load((out / "analysis_config.yaml").read_text())
    assert saved["planes"] == 0 and saved["path_plots"] == 0 and saved["formats"] == ["png"]
    figures = list((out / "figures").iterdir())
    assert figures and not [f for f in figures if f.suffix == ".pdf" or f.name.startswith(("path-", "plane-"))]
    # the report's options may change without a new sweep folder; a missing file is named
    (tmp_path / "analysis.yaml").write_text(yaml.safe_dump({"planes": 0, "path_plots": 1}))
    assert submit(*load_sweep(path))["submitted"] == 0
    (tmp_path / "analysis.yaml").unlink()
    with pytest.raises(ConfigError, match="analysis: .*analysis.yaml does not exist"):
        load_sweep(path)
    (tmp_path / "analysis.yaml").write_text(yaml.safe_dump({"plane_scale": 2.0}))
    with pytest.raises(ConfigError, match="plane_scale in \\(0, 1\\]"):
        submit(*load_sweep(path))
