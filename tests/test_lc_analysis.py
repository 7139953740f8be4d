"""Local complexity along a sweep's paths and the sampling-recall table and figure."""

import numpy as np
import pandas as pd
import pytest
import torch

from analysis.config import AnalysisConfig
from analysis.figures.sampling import sampling_figure
from analysis.local_complexity import lc_paths, lc_vs_density, sampling_recall
from pipeline.engine.local_complexity import lc_along_segments, local_complexity, segment_points

NET = {"run_id": "r", "model": "vgg8", "checkpoint": "final", "store": "r/regions/final.zarr"}


def _table():
    density = np.array([12, 20, 40, 80])
    return pd.DataFrame({**NET, "path_id": [1, 2, 3, 4], "density": density,
                         "sampled_density_8": density // 2, "sampled_density_32": density * 3 // 4,
                         "sampled_density_512": density})


def test_segment_points_are_equally_spaced_without_the_end():
    x0, x1 = torch.zeros(2, 3, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64)
    p = segment_points(x0, x1, 4)
    assert p.shape == (2, 4, 3)
    np.testing.assert_allclose(p[0, :, 0].numpy(), [0, 0.25, 0.5, 0.75])


def test_lc_along_segments_is_lc_at_the_points():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 10), torch.nn.ReLU(), torch.nn.Linear(10, 2)).double().eval()
    x0, x1 = torch.randn(3, 3, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    got = lc_along_segments(net, x0, x1, 5, 0.3, 2, seed=4)
    direct = local_complexity(net, segment_points(x0, x1, 5).reshape(-1, 3), 0.3, 2, seed=4).lc
    assert torch.equal(got.reshape(-1), direct)


def test_sampling_recall_per_n_and_the_figure():
    t = _table()
    r = sampling_recall(t)
    assert list(r["n"]) == [8, 32, 512]  # 128 is not in the table: left out
    np.testing.assert_allclose(r["recall"], [0.5, 0.75, 1.0])
    assert sampling_recall(t.drop(columns=[c for c in t if c.startswith("sampled")])).empty
    with pytest.raises(ValueError, match="density"):
        sampling_recall(t.assign(density=0))
    lc = t[list(NET) + ["path_id"]].assign(lc_mean=[1.0, 3.0, 2.0, 4.0])
    corr = lc_vs_density(t, lc)
    assert corr["spearman_lc_density"].iloc[0] == pytest.approx(0.8) and corr["n_paths"].iloc[0] == 4
    fig = sampling_figure(r, corr)
    assert len(fig.axes) == 2
    assert len(sampling_figure(r).axes) == 1
    with pytest.raises(ValueError, match="nothing to draw"):
        sampling_figure(r.iloc[:0])


def test_lc_of_a_sweep_cached_and_loud_on_a_changed_checkpoint(tmp_path):
    from analysis import aggregate
    from jobs.sweep import load_sweep, submit
    from tests.sweeps import tiny_sweep

    sweep, base = load_sweep(tiny_sweep(tmp_path, variants={"vanilla": {}}, n_shards=1))
    submit(sweep, base)
    root = base / sweep.root
    config = AnalysisConfig(scheduler="synchronous", figures=False, local_complexity=True, lc_points=4, lc_dirs=3)
    written = aggregate(root, tmp_path / "agg", config=config)
    lc = pd.read_parquet(written["local_complexity"])
    table = pd.read_parquet(written["paths"])
    assert len(lc) == len(table) and (lc["lc_mean"] >= 0).all() and lc["lc_mean"].gt(0).any()
    assert (tmp_path / "agg" / "tables" / "lc_density.csv").is_file()
    # the cached files are read back on a rerun: the same numbers
    cache = tmp_path / "agg" / "cache" / "local_complexity"
    again, notes = lc_paths(table, root, cache, config)
    pd.testing.assert_frame_equal(again, lc)
    assert not notes
    # a checkpoint replaced after discovery: that store is left out, by name
    store = table["store"].iloc[0]
    ckpt = (root / store).parents[1] / "checkpoints" / f"{table['checkpoint'].iloc[0]}.pt"
    state = torch.load(ckpt, weights_only=False)
    state["epoch_extra"] = 1
    torch.save(state, ckpt)
    changed, notes = lc_paths(table, root, cache, config)
    assert store not in set(changed["store"]) and any(store in n and "sha256" in n for n in notes)
