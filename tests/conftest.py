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


def segments(shape, n, seed=0, scale=2.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn((n, *shape), generator=g, dtype=dtype) * scale,
            torch.randn((n, *shape), generator=g, dtype=dtype) * scale)


# The test networks are tiny: OpenMP threads only add overhead, and on a shared 2-core
# machine an oversubscribed OpenMP pool slows small ops down 100-fold.
torch.set_num_threads(1)
