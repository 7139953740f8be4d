"""Configs are checked for type and range when they are loaded, before anything is written: the
error names the file and the dotted field, what was expected and what was found."""

import dataclasses
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from analysis.config import AnalysisConfig
from jobs.sweepconfig import SweepConfig, claim_root, expand, load_sweep
from pipeline.config import ConfigError, config_hash, from_dict, load_config
from pipeline.stages.discovery import DiscoverConfig
from pipeline.stages.train import TrainConfig
from tests.sweeps import tiny_sweep

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cls,data,field,expected,got", [
    (TrainConfig, {"max_epochs": "three"}, "max_epochs", "an integer", "str 'three'"),
    (TrainConfig, {"batch_size": "sixty"}, "batch_size", "an integer", "str 'sixty'"),
    (TrainConfig, {"max_epochs": True}, "max_epochs", "an integer", "bool True"),  # a bool is not an int
    (TrainConfig, {"max_epochs": 10.0}, "max_epochs", "an integer", "float 10.0"),
    (TrainConfig, {"lr": "fast"}, "lr", "a number", "str 'fast'"),
    (TrainConfig, {"lr": None}, "lr", "a number", "NoneType None"),
    (TrainConfig, {"data": {"augment": 1}}, "data.augment", "true or false", "int 1"),  # an int is not a bool
    (TrainConfig, {"data": {"label_noise": "0.2"}}, "data.label_noise", "a number", "str '0.2'"),
    (TrainConfig, {"model": {"widths": [4, "eight"]}}, r"model.widths\[1\]", "an integer", "str 'eight'"),
    (TrainConfig, {"model": {"widths": 8}}, "model.widths", "a list", "int 8"),
    (TrainConfig, {"model": {"name": ["vgg8"]}}, "model.name", "a string", "list"),
    (DiscoverConfig, {"n_shards": "two"}, "n_shards", "an integer", "str 'two'"),
    (DiscoverConfig, {"batch_size": "big"}, "batch_size", "an integer or null", "str 'big'"),
    (DiscoverConfig, {"paths": {"radius": "wide"}}, "paths.radius", "a number or null", "str 'wide'"),
    (DiscoverConfig, {"planes": {"n_planes": "8"}}, "planes.n_planes", "an integer", "str '8'"),
    (DiscoverConfig, {"paths": [1, 2]}, "paths", "a mapping", "list"),
    (SweepConfig, {"n_shards": "two"}, "n_shards", "an integer", "str 'two'"),
    (SweepConfig, {"train_resources": {"mem_gb": "8G"}}, "train_resources.mem_gb", "a number", "str '8G'"),
    (SweepConfig, {"variants": ["vanilla"]}, "variants", "a mapping", "list"),
    (AnalysisConfig, {"formats": "png"}, "formats", "a list", "str 'png'"),
])
def test_a_value_of_the_wrong_type_is_named(cls, data, field, expected, got):
    with pytest.raises(ConfigError) as err:
        from_dict(cls, data)
    msg = str(err.value)
    assert msg.startswith(field.replace("\\", "")), msg
    assert f"expected {expected}" in msg and got in msg, msg


def test_types_that_fit_are_kept_as_given():
    cfg = from_dict(TrainConfig, {"lr": 1, "model": {"widths": [4, 8]}})
    assert cfg.lr == 1 and type(cfg.lr) is int  # an int is a number; kept, so a config's hash does not move
    assert cfg.model.widths == (4, 8)
    assert config_hash(cfg) == config_hash(TrainConfig(lr=1, model=dataclasses.replace(cfg.model)))
    assert from_dict(DiscoverConfig, {"batch_size": None, "paths": {"radius": 2}}).paths.radius == 2
    assert from_dict(DiscoverConfig, {"planes": None}).planes is None


def test_literal_and_tuple_hints():
    @dataclasses.dataclass(frozen=True)
    class Cfg:
        mode: typing.Literal["a", "b"] = "a"
        pair: tuple[int, float] = (1, 2.0)

    assert from_dict(Cfg, {"mode": "b", "pair": [3, 4]}) == Cfg("b", (3, 4))
    with pytest.raises(ConfigError, match=r"^mode: expected one of 'a', 'b', got str 'c'"):
        from_dict(Cfg, {"mode": "c"})
    with pytest.raises(ConfigError, match=r"^pair: expected a list of 2 items"):
        from_dict(Cfg, {"pair": [1, 2, 3]})
    with pytest.raises(ConfigError, match=r"^pair\[1\]: expected a number"):
        from_dict(Cfg, {"pair": [1, "x"]})


@pytest.mark.parametrize("cls,data,match", [
    (TrainConfig, {"lr": -1}, "lr must be a finite number > 0, got -1"),
    (TrainConfig, {"lr": 0}, "lr must be a finite number > 0"),
    (TrainConfig, {"lr": float("nan")}, "lr must be a finite number > 0"),
    (TrainConfig, {"batch_size": 0}, "batch_size must be >= 1, got 0"),
    (TrainConfig, {"max_epochs": -5}, "max_epochs must be >= 1, got -5"),
    (TrainConfig, {"step_epochs": 0}, "step_epochs must be >= 1"),
    (TrainConfig, {"momentum": 1.5}, r"momentum must be in \[0, 1\)"),
    (TrainConfig, {"weight_decay": -0.1}, "weight_decay must be a finite number >= 0"),
    (TrainConfig, {"gamma": 0}, "gamma must be a finite number > 0"),
    (TrainConfig, {"seed": -1}, "seed must be >= 0"),
    (TrainConfig, {"model": {"widths": [4, 0]}}, r"^model: widths must be a non-empty list of integers >= 1"),
    (TrainConfig, {"model": {"widths": []}}, r"^model: widths must be a non-empty list"),
    (TrainConfig, {"model": {"name": "resnet18", "k": 0}}, r"^model: k .* must be >= 1"),
    (TrainConfig, {"data": {"label_noise": 1.5}}, r"^data: label_noise must be a fraction in \[0, 1\]"),
    (TrainConfig, {"data": {"noise_seed": -2}}, r"^data: noise_seed must be >= 0"),
    (DiscoverConfig, {"n_shards": 0}, "n_shards must be >= 1, got 0"),
    (DiscoverConfig, {"chunk_segments": 0}, "chunk_segments must be >= 1"),
    (DiscoverConfig, {"eps": float("inf")}, "eps must be a finite number > 0"),
    (DiscoverConfig, {"paths": {"n_paths": 0}}, r"^paths: n_paths must be >= 1"),
    (DiscoverConfig, {"store": {"region_chunk": 0}}, r"^store: region_chunk must be >= 1"),
    (SweepConfig, {"n_shards": 0}, "n_shards must be >= 1"),
    (SweepConfig, {"checkpoints": []}, "checkpoints must name at least one"),
    (SweepConfig, {"grid": {"seed": 0}}, r"grid.seed: expected a non-empty list"),
    (SweepConfig, {"variants": {"vanilla": ["lr", 0.1]}}, r"variants.vanilla: expected a mapping"),
    (SweepConfig, {"train_resources": {"cpus": 0}}, r"^train_resources: cpus must be >= 1"),
    (SweepConfig, {"discover_resources": {"mem_gb": 0}}, r"^discover_resources: mem_gb must be > 0"),
    (AnalysisConfig, {"plane_seed": -1}, "plane_seed must be >= 0"),
])
def test_a_value_out_of_range_is_named(cls, data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(cls, data)


def test_load_config_names_the_file_and_field(tmp_path):
    f = tmp_path / "recipe.yaml"
    f.write_text('max_epochs: "three"\n')
    with pytest.raises(ConfigError, match=r"recipe.yaml: max_epochs: expected an integer, got str 'three'"):
        load_config(f, TrainConfig)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "null\n"])
@pytest.mark.parametrize("cls", [TrainConfig, DiscoverConfig, SweepConfig])
def test_an_empty_file_is_an_error(tmp_path, cls, text):
    f = tmp_path / "cfg.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=r"cfg.yaml is empty: list the fields that differ from the defaults"):
        load_config(f, cls)
    f.write_text("{}\n")  # every default, said on purpose
    assert load_config(f, cls) == cls()


@pytest.mark.parametrize("text,got", [("- lr: 0.1\n", "list"), ("3\n", "int 3"), ("vanilla\n", "str 'vanilla'")])
def test_a_file_that_is_not_a_mapping_is_an_error(tmp_path, text, got):
    f = tmp_path / "cfg.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=rf"cfg.yaml: expected a mapping of field names to values .*got {got}"):
        load_config(f, TrainConfig)


def test_an_empty_sweep_file_says_it_is_empty(tmp_path):
    f = tmp_path / "sweep.yaml"
    f.write_text("")
    with pytest.raises(ConfigError, match=r"sweep.yaml is empty") as err:
        load_sweep(f, base=tmp_path)
    assert "does not exist" not in str(err.value)  # not the default recipe, missing from tmp_path


@pytest.mark.parametrize("recipe,match", [
    ("", r"train.yaml is empty"),
    ("- lr: 0.1\n", r"train.yaml: expected a mapping of field names to values"),
    ("lr: -1\n", r"variant 'vanilla' of the recipe .*train.yaml: TrainConfig: lr must be a finite number > 0"),
    ("max_epochs: three\n", r"of the recipe .*train.yaml: max_epochs: expected an integer, got str 'three'"),
    ("model: vgg8\n", r"'model.widths' sets a field inside 'model', which the recipe gives the value 'vgg8'"),
])
def test_a_bad_recipe_is_caught_when_the_sweep_is_loaded(tmp_path, recipe, match):
    sweep = tiny_sweep(tmp_path, variants={"vanilla": {"model.widths": [4, 8]}})
    (tmp_path / "train.yaml").write_text(recipe)
    with pytest.raises(ConfigError, match=match):
        load_sweep(sweep)


@pytest.mark.parametrize("discover,match", [
    ("", r"discover.yaml is empty"),
    ("- paths\n", r"discover.yaml: expected a mapping"),
    ("paths: {n_paths: 0}\n", r"discover.yaml: paths: n_paths must be >= 1"),
])
def test_a_bad_discovery_config_is_caught_when_the_sweep_is_loaded(tmp_path, discover, match):
    sweep = tiny_sweep(tmp_path)
    (tmp_path / "discover.yaml").write_text(discover)
    with pytest.raises(ConfigError, match=match):
        load_sweep(sweep)


@pytest.mark.parametrize("override,match", [({"lr": -1}, "lr must be a finite number > 0"),
                                            ({"n_shards": "two"}, "n_shards: expected an integer")])
def test_run_refuses_a_bad_config_before_writing_the_sweep_folder(tmp_path, capsys, override, match):
    from jobs.run import main

    sweep = tiny_sweep(tmp_path, variants={"vanilla": {}}, train_extra=override if "lr" in override else None)
    if "n_shards" in override:
        d = yaml.safe_load(sweep.read_text())
        sweep.write_text(yaml.safe_dump({**d, **override}))
    assert main([str(sweep), "--executor", "debug"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written


def test_debug_executor_never_opens_a_debugger(tmp_path):
    """A job that fails at run time (CIFAR-10 is not on disk) under --executor debug: submitit's
    DebugJob.result() would stop at a (Pdb) prompt; the command ends with the error instead."""
    sweep = tiny_sweep(tmp_path, variants={"vanilla": {}},
                       train_extra={"data": {"name": "cifar10", "root": str(tmp_path / "no-data")}})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "jobs", "run", str(sweep), "--executor", "debug"], cwd=tmp_path,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, env=env)
    out = proc.stdout + proc.stderr
    assert "(Pdb)" not in out and "pdb" not in proc.stdout
    assert proc.returncode == 1, out
    assert "error: 1 train job(s) failed" in proc.stderr and "DatasetNotFoundError: CIFAR-10 not found" in proc.stderr


def _claimed(tmp_path, root="out/sweep"):
    """A sweep written with relative paths, claimed from ``tmp_path`` as `sweep submit` does."""
    sweep = tiny_sweep(tmp_path)
    d = yaml.safe_load(sweep.read_text())
    d.update(root=root, train="train.yaml", discover="discover.yaml")
    sweep.write_text(yaml.safe_dump(d))
    cfg, base = load_sweep(sweep, base=tmp_path)
    claim_root(cfg, base, expand(cfg, base))
    return sweep, base / root


def test_sweep_status_takes_the_sweep_folder(tmp_path, monkeypatch, capsys):
    from jobs.sweep import main
    from jobs.sweepconfig import load_sweep_folder

    sweep, folder = _claimed(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["status", str(sweep)]) == 0
    from_file = capsys.readouterr().out
    monkeypatch.chdir(folder.parent)  # elsewhere: the recipe is found from the recorded root
    assert main(["status", str(folder)]) == 0
    from_folder = capsys.readouterr().out
    assert "to launch" in from_folder and from_folder == from_file
    cfg, base = load_sweep_folder(folder)
    assert base == tmp_path.resolve() and Path(cfg.root) == folder.resolve()


def test_sweep_status_of_a_folder_refuses_what_it_cannot_count(tmp_path, monkeypatch, capsys):
    from jobs.sweep import main
    from jobs.sweepconfig import load_sweep_folder

    sweep, folder = _claimed(tmp_path)
    with pytest.raises(ConfigError, match="is not a sweep folder .*no sweep.yaml"):
        load_sweep_folder(tmp_path)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({**yaml.safe_load((tmp_path / "train.yaml").read_text()),
                                                         "lr": 0.2}))
    with pytest.raises(ConfigError, match="changed since the sweep was submitted"):
        load_sweep_folder(folder)
    with pytest.raises(SystemExit):
        main(["submit", str(folder)])
    assert "submit takes the sweep file" in capsys.readouterr().err


def test_discover_a_missing_checkpoint_lists_those_that_exist(tmp_path, capsys):
    from jobs.discover import main

    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    for name in ("init", "final"):
        (ckpts / f"{name}.pt").write_bytes(b"")  # never read: the missing one is asked for
    assert main([str(tmp_path / "run"), "--checkpoint", "epoch-0099"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no checkpoint ") and "epoch-0099.pt: the run has final, init" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run" / "regions").exists()


def test_report_of_a_damaged_table_says_to_aggregate_again(tmp_path, capsys):
    from jobs.report import main

    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "paths.parquet").write_bytes(b"PAR1" + b"\0" * 64)  # a truncated write
    assert main([str(tmp_path)]) == 2  # no recorded verdict: refused as not current
    assert "not the sweep's current aggregation" in capsys.readouterr().err
    assert main([str(tmp_path), "--allow-stale"]) == 2  # asked to report anyway: the table itself is refused
    err = capsys.readouterr().err
    assert "paths.parquet is unreadable" in err and "python -m jobs aggregate" in err
    assert not (tmp_path / "report").exists()


def test_train_with_a_missing_dataset_writes_nothing(tmp_path, capsys):
    """`python -m jobs train` on a CIFAR recipe whose files are not there: one error saying where
    to put them, and no run folder left behind (the data is loaded before anything is written)."""
    from jobs.train import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{name: vgg8, widths: [4, 8]}}\ndata: {{name: cifar10, root: {tmp_path / 'none'}}}\n"
                      "max_epochs: 1\n")
    assert main([str(recipe), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: CIFAR-10 not found") and "download: true" in err
    assert not (tmp_path / "run").exists()
