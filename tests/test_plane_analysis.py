"""2-D against 1-D density in the analysis (analysis/planes.py), and planes through a whole sweep."""

import shutil

import numpy as np
import pandas as pd
import pytest

from analysis.planes import COMPARE_COLUMNS, plane_findings, plane_vs_line
from jobs.sweep import load_sweep, plan, status, submit
from pipeline.stages.discovery import plane_store_path
from pipeline.store.planes import open_plane_store
from tests.sweeps import tiny_sweep


def _frames(kind="circle", split="train"):
    ids = np.array([3, 8, 13, 21, 40])
    net = {"dataset": "digits", "model": "vgg8", "width": 4, "setting": "vanilla", "noise": 0.0, "seed": 0,
           "checkpoint": "final", "run_id": "r"}
    paths = pd.DataFrame({**net, "paths": f"{kind}/train", "path_set": "aaaa", "path_id": ids,
                          "density": [10, 30, 20, 50, 40], "deviation": [0.1, 0.2, 0.3, 0.4, 0.5]})
    planes = pd.DataFrame({**net, "paths": f"planes-images/{split}", "path_set": "bbbb", "plane_id": ids[:4],
                           "n_regions": [100, 300, 200, 500], "density_input": [1.0, 2.0, 3.0, 4.0],
                           "deviation": [0.4, 0.3, 0.2, 0.1]})
    return paths, planes


def test_planes_and_paths_are_matched_image_by_image():
    paths, planes = _frames()
    out = plane_vs_line(paths, planes)
    assert list(out.columns) == COMPARE_COLUMNS and len(out) == 1
    row = out.iloc[0]
    assert row["n_images"] == 4 and row["planes"] == "planes-images/train" and row["plane_set"] == "bbbb"
    assert row["density_1d"] == 25.0 and row["regions_2d"] == 250.0 and row["density_2d_input"] == 2.5
    assert row["rho_density"] == pytest.approx(1.0) and row["rho_deviation"] == pytest.approx(-1.0)
    # noise paths have no base image, and a plane of another split is another image
    assert plane_vs_line(*_frames(kind="noise")).empty and plane_vs_line(*_frames(split="test")).empty
    text = plane_findings(out)[0].text
    assert "a strong positive rank correlation image by image (median Spearman 1.00 over 1 network)" in text
    assert np.isnan(row["effective_regions_2d"]) and "effective number" not in text  # no statistics stored
    # with the partition statistics: their medians over the planes, and the sentence quotes them
    stats = planes.assign(effective_regions=[10.0, 30.0, 20.0, 40.0], boundary_pieces=[1, 3, 2, 2],
                          boundary_length_input=[1.0, 2.0, 3.0, 4.0])
    row = plane_vs_line(paths, stats).iloc[0]
    assert (row["effective_regions_2d"], row["boundary_pieces_2d"], row["boundary_length_2d"]) == (25.0, 2.0, 2.5)
    text = plane_findings(plane_vs_line(paths, stats))[0].text
    assert "a plane's 250 regions count as 25.0" in text and "runs in 2 pieces of total input-space length 2.5" in text


def test_a_sweep_with_planes_writes_resumes_and_compares_them(tmp_path):
    sweep, base = load_sweep(tiny_sweep(tmp_path, planes={"kind": "images", "n_planes": 4, "scale": 0.2, "seed": 1}))
    first = submit(sweep, base)
    assert first["submitted"] == 2 + 2 * 2 * 2 + 1  # a discovery job writes a shard of both stores
    p = plan(sweep, base)
    assert len(p["discover"]["done"]) == 8 and p["aggregate"]["done"]
    r = p["runs"][0]
    dcfg = p["discover"]["done"][0][1]
    store = plane_store_path(r.run_dir, dcfg)
    assert len(open_plane_store(store).planes()) == 4
    # a lost plane shard makes its discovery item incomplete; resume writes it and aggregates again
    shutil.rmtree(store / "shard-00001")
    p = plan(sweep, base)
    assert len(p["discover"]["incomplete"]) == 1 and not p["aggregate"]["done"]
    (store / "shard-00000" / "planes" / "n_regions" / "c" / "0").unlink()
    assert "planes/n_regions/c/0 is missing" in status(sweep, base)
    assert submit(sweep, base)["submitted"] == 3  # two shards of one store, then the aggregation
    assert open_plane_store(store).status["complete"] == [0, 1]
    out = base / sweep.root / "analysis"
    planes = pd.read_parquet(out / "planes.parquet")
    assert len(planes) == 2 * 2 * 4 and set(planes["paths"]) == {"planes-images/train"}
    # the partition statistics, from each plane's regions (affine maps and Gram matrix kept)
    assert {"mean_degree", "boundary_length", "boundary_length_input", "grad_jump_per_length"} <= set(planes)
    assert planes["mean_degree"].gt(0).all() and planes["area_median"].between(0, 1).all()
    assert planes["boundary_length_input"].notna().all() and planes["vertices_max"].ge(3).all()
    compare = pd.read_csv(out / "tables" / "plane_vs_line.csv")
    assert len(compare) == 4 and (compare["n_images"] == 4).all()  # the 1-D paths' bases, seed 1 both
    assert compare["rho_density"].between(-1, 1).all()
    stores = pd.read_csv(out / "stores.csv")
    assert stores["store"].str.contains("-planes-").sum() == 4
    assert list((out / "figures").glob("density2d-*.png"))


def test_the_2d_figure_draws_when_no_network_has_enough_images(tmp_path):
    """With fewer than 3 images per network every Spearman is NaN: the figure says so instead of
    failing on an empty log axis (which used to stop the whole aggregation)."""
    import numpy as np
    import pandas as pd

    from analysis.figures import density2d_figure

    per_network = pd.DataFrame({"setting": ["vanilla", "augment"], "checkpoint": ["final", "init"],
                                "density_1d": [120.0, 80.0], "regions_2d": [900.0, 400.0],
                                "rho_density": [np.nan, np.nan]})
    fig = density2d_figure(per_network)
    fig.savefig(tmp_path / "density2d.png")
    assert (tmp_path / "density2d.png").stat().st_size > 0
    assert any("3 images" in t.get_text() for t in fig.axes[1].texts)
