"""Training recipes on the embedded digits: learning happens, criteria stop, resume is exact."""

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from pipeline.config import ConfigError, config_hash, from_dict, load_config
from pipeline.data import DataConfig
from pipeline.regions import discover
from pipeline.train import ModelConfig, TrainConfig, load_checkpoint, train

ROOT = Path(__file__).resolve().parents[1]
SMALL = TrainConfig(model=ModelConfig(name="vgg8", widths=(4, 8)), data=DataConfig(name="digits"), lr=0.05,
                    batch_size=64, stop="epochs", max_epochs=4, checkpoint_every=2, seed=3)


def test_short_training_lowers_the_loss(tmp_path):
    m = train(SMALL, tmp_path / "run")
    assert list(m.columns[:8]) == ["epoch", "lr", "train_loss", "train_error", "val_loss", "val_error", "test_loss",
                                   "test_error"]
    assert len(m) == 4 and m.train_loss.iloc[-1] < 0.5 * m.train_loss.iloc[0]
    assert m.test_error.iloc[-1] < 0.5
    saved = pd.read_csv(tmp_path / "run" / "metrics.csv")
    pd.testing.assert_frame_equal(saved, m, check_dtype=False)
    init, _ = load_checkpoint(tmp_path / "run", "init")
    final, ckpt = load_checkpoint(tmp_path / "run", "final")
    assert ckpt["finished"] and ckpt["epoch"] == 4
    assert not torch.equal(init.state_dict()["classifier.1.weight"], final.state_dict()["classifier.1.weight"])
    # the trained network goes straight into the region engine
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    assert discover(final, x, x.flip(0)).density.min() >= 1


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    straight = tmp_path / "straight"
    train(SMALL, straight)
    broken = tmp_path / "broken"
    first = train(SMALL, broken, stop_after_epochs=1)  # preempted after epoch 1: no periodic checkpoint yet
    assert len(first) == 1 and (broken / "checkpoints" / "LAST").read_text() == "epoch-0001.pt"
    (broken / "checkpoints" / "final.pt.tmp").write_bytes(b"half-written")  # a kill mid-save leaves this
    train(SMALL, broken, stop_after_epochs=2)
    resumed = train(SMALL, broken)
    a, _ = load_checkpoint(straight, "final")
    b, _ = load_checkpoint(broken, "final")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    pd.testing.assert_frame_equal(resumed, pd.read_csv(straight / "metrics.csv"), check_dtype=False)
    assert train(SMALL, broken).shape == resumed.shape  # a finished run trains nothing more


def test_stopping_criteria(tmp_path):
    loss = train(replace(SMALL, stop="loss", loss_threshold=10.0, max_epochs=5), tmp_path / "loss")
    assert len(loss) == 1  # below 10 nats after one epoch
    fit = train(replace(SMALL, stop="fit", max_epochs=3, recipe="noisy", schedule="exponential", gamma=0.9,
                        data=DataConfig(name="digits", label_noise=0.2)), tmp_path / "fit")
    assert len(fit) == 3 and fit.train_error.iloc[-1] > 0  # budget reached before memorising the noise
    assert fit.lr.iloc[1] == pytest.approx(0.05 * 0.9)
    assert (tmp_path / "fit" / "noisy_indices.npy").exists()


def test_run_folder_of_another_config_is_refused(tmp_path):
    train(replace(SMALL, max_epochs=1), tmp_path / "run")
    with pytest.raises(ConfigError, match="another config"):
        train(replace(SMALL, max_epochs=1, lr=0.1), tmp_path / "run")


def test_configs_shipped_parse_and_name_by_hash():
    files = sorted((ROOT / "configs" / "train").glob("*.yaml"))
    assert len(files) >= 6
    names = {config_hash(load_config(f, TrainConfig)) for f in files}
    assert len(names) == len(files)
    assert config_hash(load_config(files[0], TrainConfig)) == config_hash(load_config(files[0], TrainConfig))


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'lr'"):
        from_dict(TrainConfig, {"lrr": 0.1})
    with pytest.raises(ConfigError, match="unknown key 'data.nmae'.*Did you mean 'name'"):
        from_dict(TrainConfig, {"data": {"nmae": "cifar10"}})
    with pytest.raises(ConfigError, match="stop must be one of"):
        from_dict(TrainConfig, {"stop": "never"})
    with pytest.raises(ConfigError, match="augment recipe needs data.augment"):
        from_dict(TrainConfig, {"recipe": "augment"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [0.1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, TrainConfig)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml", TrainConfig)
