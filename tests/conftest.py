import pytest
import torch

from tests.nets import zoo


@pytest.fixture(scope="session")
def nets():
    return zoo()


@pytest.fixture(scope="session")
def sweep(tmp_path_factory):
    """The synthetic sweep of analysis/synthetic.py, made once per session; read only."""
    import shutil

    from analysis.synthetic import make_sweep

    root = tmp_path_factory.getbasetemp() / "analysis-sweep"
    if not (root / "DONE").exists():
        shutil.rmtree(root, ignore_errors=True)
        make_sweep(root)
        (root / "DONE").write_text("")
    return root


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A training run folder of a tiny VGG8 (widths 4, 8) trained one epoch on the digits; read
    only (copy it to write stores into it)."""
    from pipeline.inputs.data import DataConfig
    from pipeline.stages.train import ModelConfig, TrainConfig, train

    run_dir = tmp_path_factory.mktemp("digits-run") / "vgg8"
    cfg = TrainConfig(model=ModelConfig(name="vgg8", widths=(4, 8)), data=DataConfig(name="digits"), lr=0.05,
                      batch_size=64, stop="epochs", max_epochs=1, seed=0)
    train(cfg, run_dir, progress=False)
    return run_dir


def segments(shape, n, seed=0, scale=2.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn((n, *shape), generator=g, dtype=dtype) * scale,
            torch.randn((n, *shape), generator=g, dtype=dtype) * scale)


# The test networks are tiny: OpenMP threads only add overhead, and on a shared 2-core
# machine an oversubscribed OpenMP pool slows small ops down 100-fold.
torch.set_num_threads(1)
