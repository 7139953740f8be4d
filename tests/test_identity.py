"""One identity for every run and store: a rerun is the same run, a different run is never mixed in."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.config import ConfigError, config_hash, identity_dict, to_dict
from pipeline.inputs.data import DataConfig
from pipeline.stages.discovery import DiscoverConfig, store_path, write_shards
from pipeline.inputs.paths import PathConfig, path_set_id
from pipeline.store.identity import StoreError
from pipeline.store.lines import open_store
from pipeline.stages.train import TrainConfig
from tests.sweeps import tiny_sweep


def test_where_the_data_lives_is_not_part_of_a_run_name():
    a = TrainConfig(data=DataConfig(name="cifar10", root="/scratch/a"))
    b = TrainConfig(data=DataConfig(name="cifar10", root="/nfs/datasets/cifar", download=True))
    assert config_hash(a) == config_hash(b)
    assert to_dict(a) != to_dict(b)  # ... but both are saved as given
    assert "root" not in identity_dict(a)["data"] and "download" not in identity_dict(a)["data"]
    # what changes a result still renames
    assert config_hash(a) != config_hash(replace(a, data=replace(a.data, label_noise=0.2)))
    assert config_hash(a) != config_hash(replace(a, seed=1))


def test_how_discovery_runs_is_not_part_of_its_identity():
    a = DiscoverConfig()
    b = DiscoverConfig(batch_size=8, chunk_segments=4, device="cpu")
    assert config_hash(a) == config_hash(b)
    for changed in (replace(a, method="walk"), replace(a, eps=1e-5), replace(a, certify="strict"),
                    replace(a, paths=PathConfig(n_paths=3))):
        assert config_hash(changed) != config_hash(a)


def test_moving_the_dataset_keeps_the_sweep(tmp_path):
    """The same sweep after `data.root` moved: same run ids, and the sweep folder is accepted."""
    from jobs.sweep import claim_root, expand, load_sweep

    path = tiny_sweep(tmp_path)
    sweep, base = load_sweep(path)
    runs = expand(sweep, base)
    claim_root(sweep, base, runs)
    recipe = yaml.safe_load((tmp_path / "train.yaml").read_text())
    recipe["data"].update(root=str(tmp_path / "elsewhere"), download=True)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(recipe))
    moved = expand(*load_sweep(path))
    assert [r.run_id for r in moved] == [r.run_id for r in runs]
    claim_root(sweep, base, moved)  # not refused
    # an edit that changes a result is still refused
    recipe["lr"] = 0.5
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match="training runs"):
        claim_root(sweep, base, expand(*load_sweep(path)))


def test_a_run_folder_accepts_its_config_with_the_data_moved(tmp_path):
    from pipeline.stages.train import train

    cfg = TrainConfig(model=replace(TrainConfig().model, name="vgg8", widths=(2, 2)), stop="epochs", max_epochs=1,
                      batch_size=256)
    train(cfg, tmp_path / "run", progress=False, stop_after_epochs=1)
    moved = replace(cfg, data=replace(cfg.data, root=str(tmp_path / "other")))
    train(moved, tmp_path / "run", progress=False)  # the same run: resumes (here: already done)
    with pytest.raises(ConfigError, match="another config"):
        train(replace(cfg, lr=0.5), tmp_path / "run", progress=False)


def test_old_sweep_key_is_named(tmp_path):
    from jobs.sweep import load_sweep

    path = tiny_sweep(tmp_path)
    text = path.read_text().replace("variants:", "settings:")
    path.write_text(text)
    with pytest.raises(ConfigError, match="'settings' is now called 'variants'"):
        load_sweep(path)


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2)).double().eval()


def _segments():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    return x0, x0.roll(1, 0), np.repeat(np.arange(2), 2), np.tile(np.arange(2), 2)


ATTRS = {"checkpoint_sha256": "abc", "model": {"name": "mlp"}, "dataset": {"name": "synthetic"}, "split": "train",
         "paths": to_dict(PathConfig(n_paths=2, anchors=2))}


@pytest.mark.parametrize("change, name", [({"method": "walk"}, "method"), ({"certify": "sample"}, "certify"),
                                          ({"eps": 1e-4}, "eps")])
def test_a_store_never_mixes_shards_discovered_differently(tmp_path, change, name):
    cfg = DiscoverConfig(n_shards=2, device="cpu")
    x0, x1, pid, sidx = _segments()
    store = tmp_path / "s.zarr"
    write_shards(store, _net(), x0, x1, pid, sidx, cfg, ATTRS, shards=[0])
    with pytest.raises(StoreError, match=f"{name}: store has"):
        write_shards(store, _net(), x0, x1, pid, sidx, replace(cfg, **change), ATTRS, shards=[1])
    assert open_store(store, allow_incomplete=True).shards == [0]  # nothing was written
    # how the work is done may change between the jobs of one store
    st = write_shards(store, _net(), x0, x1, pid, sidx, replace(cfg, batch_size=1, chunk_segments=1), ATTRS,
                      shards=[1])
    assert st["complete"] == [0, 1]


def test_one_path_set_id_names_the_store_and_labels_the_table(tmp_path):
    from analysis.collect import collect
    from analysis.synthetic import SyntheticRun, make_sweep

    (run_dir,) = make_sweep(tmp_path, runs=(SyntheticRun("vanilla", 0, checkpoints=("final",)),), n_paths=3,
                            anchors=3, n_shards=1)
    (store,) = (run_dir / "regions").glob("*.zarr")
    attrs = open_store(store).attrs
    assert store.name == f"final-{attrs['path_set']}.zarr"
    assert attrs["path_set"] == path_set_id(attrs["paths"])
    table, _ = collect(tmp_path, scheduler="synchronous")
    assert set(table["path_set"]) == {attrs["path_set"]}
    # and a discovery config names the same id as the store it writes
    cfg = DiscoverConfig(paths=PathConfig(**attrs["paths"]))
    assert store_path(Path("r"), cfg).name == store.name
