import pytest
import torch

from tests.nets import zoo


@pytest.fixture(scope="session")
def nets():
    return zoo()


def segments(shape, n, seed=0, scale=2.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn((n, *shape), generator=g, dtype=dtype) * scale,
            torch.randn((n, *shape), generator=g, dtype=dtype) * scale)


# The test networks are tiny: OpenMP threads only add overhead, and on a shared 2-core
# machine an oversubscribed OpenMP pool slows small ops down 100-fold.
torch.set_num_threads(1)
