"""Training recipes on the embedded digits: learning happens, criteria stop, resume is exact."""

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from pipeline.config import ConfigError, config_hash, from_dict, load_config
from pipeline.inputs.data import DataConfig, load
from pipeline.engine.lines import discover
from pipeline.stages.train import ModelConfig, TrainConfig, load_checkpoint, train

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
    # metrics.csv starts after epoch 1: the loss at initialisation, from the saved init weights
    data = load(SMALL.data)
    x_train, y_train = data.images("train"), torch.from_numpy(data.labels("train"))
    with torch.no_grad():
        init_loss = F.cross_entropy(init(x_train), y_train).item()
        final_loss = F.cross_entropy(final(x_train), y_train).item()
    assert init_loss > 2.0  # about ln 10 for ten classes: the init network has learnt nothing
    assert final_loss == pytest.approx(m.train_loss.iloc[-1], rel=1e-5)  # the checkpoint is the run's last epoch
    assert final_loss < 0.5 * init_loss
    # the trained network goes straight into the region engine, and training moved its regions:
    # along the same segments between training images, the trained network's regions differ
    # from the initial one's
    x0, x1 = x_train[:4].double(), x_train[4:8].double()
    before, after = discover(init, x0, x1), discover(final, x0, x1)
    assert before.density.min() > 1 and after.density.min() > 1
    assert not np.array_equal(before.density, after.density)
    assert not np.allclose(before.deviation, after.deviation)


def test_training_leaves_the_callers_random_state_alone(tmp_path):
    # augmentation, data order, evaluation loaders and initialisation all draw random numbers
    cfg = replace(SMALL, recipe="augment", data=DataConfig(name="digits", augment=True), max_epochs=2)

    def callers_draws():
        return torch.rand(3), np.random.random(3), random.random()

    weights = []
    for seed in (123, 7):  # the caller's state differs between the two runs: the weights may not
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        train(cfg, tmp_path / f"run-{seed}")
        after = callers_draws()
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        expected = callers_draws()
        assert torch.equal(after[0], expected[0]), "train moved torch's global generator"
        assert np.array_equal(after[1], expected[1]), "train moved numpy's global generator"
        assert after[2] == expected[2], "train moved Python's global generator"
        weights.append(load_checkpoint(tmp_path / f"run-{seed}", "final")[0].state_dict())
    for k, v in weights[0].items():
        assert torch.equal(v, weights[1][k]), k


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
    # a nested section is named without a trailing dot, and a section that is not a mapping says so
    with pytest.raises(ConfigError, match=r"^model: unknown model 'mlp'"):
        from_dict(TrainConfig, {"model": {"name": "mlp"}})
    with pytest.raises(ConfigError, match=r"^model: expected a mapping, got list"):
        from_dict(TrainConfig, {"model": ["vgg8", 4]})
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [0.1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, TrainConfig)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml", TrainConfig)
