"""The user-facing side of planes: the figure, ``python -m jobs plane`` and the report's plane section."""

import shutil

import numpy as np
import pytest
import torch

from analysis import AnalysisConfig, AnalysisError, aggregate
from analysis.figures import plane_colors, plane_figure
from pipeline.engine.planes import discover_plane
from tests.nets import MLP


@pytest.fixture(scope="module")
def plane():
    torch.manual_seed(0)
    net = MLP(n_in=12, width=16, depth=2, k=4).double().eval()
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(1, 12, generator=g, dtype=torch.float64) * 3 for _ in range(3)]
    return net, xs, discover_plane(net, *xs)


def test_figure_polygons_colours_and_insets(plane, tmp_path):
    from matplotlib.collections import PolyCollection

    net, xs, res = plane
    n = int(res.n_regions[0])
    assert n > 50
    images = [x[0].reshape(3, 2, 2) for x in xs]  # 3-channel insets
    fig = plane_figure(res, images=images, title="mlp")
    colls = [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]
    assert len(colls) == 1 and len(colls[0].get_paths()) == n
    insets = fig.axes[0].child_axes
    assert sorted(a.get_label() for a in insets) == ["x0", "x1", "x2"]
    assert all(a.images[0].get_array().shape == (2, 2, 3) for a in insets)
    assert f"{n:,} linear regions" in fig.axes[0].get_title()
    # class colours are the network's argmax at each centroid
    cls, _ = plane_colors(res, color="class")
    with torch.no_grad():
        c = torch.as_tensor(res.centroid)
        x = xs[0] + c[:, :1] * (xs[1] - xs[0]) + c[:, 1:] * (xs[2] - xs[0])
        np.testing.assert_array_equal(cls, net(x).argmax(1).numpy())
    fig.savefig(tmp_path / "class.png", dpi=80)
    assert (tmp_path / "class.png").stat().st_size > 5_000
    # logit colours: a colorbar; 1-channel insets
    fig = plane_figure(res, images=[x[0].reshape(1, 3, 4) for x in xs], color="logit", logit=2)
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "logit 2 at the region's centroid"  # the colorbar
    assert [a.images[0].get_array().shape for a in fig.axes[0].child_axes] == [(3, 4)] * 3
    fig.savefig(tmp_path / "logit.png", dpi=80)
    # the (P, C, H, W) batches discover_plane takes: row `plane` of each
    batched = [x.reshape(1, 1, 3, 4) for x in xs]
    fig = plane_figure(res, images=batched)
    assert [a.images[0].get_array().shape for a in fig.axes[0].child_axes] == [(3, 4)] * 3
    with pytest.raises(ValueError, match="a batch of 2 corner images for a result of 1 plane"):
        plane_figure(res, images=[torch.cat([b, b]) for b in batched])
    with pytest.raises(ValueError, match="color must be"):
        plane_figure(res, color="hue")
    with pytest.raises(AnalysisError, match="no affine maps"):
        plane_figure(discover_plane(net, *xs, keep_affine=False))


def test_a_plane_with_no_area_is_refused(plane):
    """x2 == x1 (or x2 on the line through x0 and x1, or a repeated x0) spans no plane: its
    density per unit input area would be infinite, so it is refused by name, not computed."""
    net, (x0, x1, x2), _ = plane
    for bad in ((x0, x1, x1), (x0, x1, x0 + 2.5 * (x1 - x0)), (x0, x0, x2)):
        with pytest.raises(ValueError, match=r"plane\(s\) \[0\] have no area"):
            discover_plane(net, *bad)
    xs = [torch.cat(pair) for pair in ((x0, x0), (x1, x1), (x2, x1))]  # the second plane of two is flat
    with pytest.raises(ValueError, match=r"plane\(s\) \[1\] have no area"):
        discover_plane(net, *xs)


@pytest.fixture(scope="module")
def trained(digits_run, tmp_path_factory):
    """A copy of conftest's tiny VGG8 run: the command writes its figures into the run folder."""
    run_dir = tmp_path_factory.mktemp("runs") / "digits"
    shutil.copytree(digits_run, run_dir)
    return run_dir


def test_cli_writes_the_figure(trained, tmp_path, capsys):
    from jobs.plane import main

    out = tmp_path / "p.png"
    assert main([str(trained), "--scale", "0.1", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "linear regions on the triangle through train images" in text and "shrunk by 0.1" in text
    assert "absolute deviation" in text and out.stat().st_size > 10_000
    # chosen images, logit colours, the default output path
    assert main([str(trained), "--images", "0,1,2", "--scale", "0.05", "--color", "logit", "--no-progress"]) == 0
    assert (trained / "planes" / "final-0-1-2.png").is_file()
    assert main([str(trained), "--checkpoint", "epoch-0099", "--no-progress"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_choose_images_has_three_classes():
    from pipeline.stages.plane_run import choose_images, shrink

    labels = np.repeat(np.arange(5), 7)
    idx = choose_images(labels, seed=3)
    assert len(set(labels[idx])) == 3 and np.array_equal(idx, choose_images(labels, seed=3))
    assert len(set(choose_images(np.zeros(4, dtype=int)))) == 3  # one class: three distinct images
    x = [torch.full((1, 2), float(v)) for v in (0, 2, 4)]
    assert [float(t[0, 0]) for t in shrink(*x, 0.5)] == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError):
        shrink(*x, 0.0)


def _sweep_with_a_checkpoint(sweep, trained, root):
    """A copy of the synthetic sweep whose vanilla seed-0 run has checkpoints (the others none):
    the per-path table and that run's row."""
    from analysis.collect import collect

    shutil.copytree(sweep, root)
    table, _ = collect(root, scheduler="synchronous")
    row = table[(table.setting == "vanilla") & (table.seed == 0) & (table.checkpoint == "final")].iloc[0]
    run_dir = (root / row.store).parents[1]
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    shutil.copytree(trained / "checkpoints", run_dir / "checkpoints")
    _adopt_checkpoints(run_dir)
    return table, row


def _adopt_checkpoints(run_dir):
    """Record the new checkpoint files' sha256 in the run's stores, as if discovered from them:
    a store's record must match the checkpoint beside it (pipeline/store/placement.py)."""
    import zarr

    from pipeline.store.placement import file_sha256

    for store in (run_dir / "regions").glob("*.zarr"):
        group = zarr.open_group(str(store), mode="r+")
        ckpt = run_dir / "checkpoints" / f"{group.attrs['checkpoint']}.pt"
        if ckpt.is_file():
            group.attrs["checkpoint_sha256"] = file_sha256(ckpt)


def _no_engine(monkeypatch):
    """Make any run of the plane engine fail loudly."""
    import pipeline.engine.planes
    import pipeline.stages.plane_run

    def boom(*args, **kwargs):
        raise AssertionError("the plane engine ran")

    monkeypatch.setattr(pipeline.stages.plane_run, "run_plane", boom)
    monkeypatch.setattr(pipeline.engine.planes, "discover_plane", boom)


def test_report_plane_section_or_note(sweep, trained, tmp_path, monkeypatch):
    from analysis.report import write_report

    root = tmp_path / "sweep"
    shutil.copytree(sweep, root)
    cfg = AnalysisConfig(scheduler="synchronous", formats=("png",), path_plots=0, plane_scale=0.05)
    aggregate(root, root / "analysis", config=cfg)
    md = write_report(root / "analysis", root / "report", config=cfg)["markdown"].read_text()
    assert "## Figures" in md and "Planes: every linear region" in md
    assert "No plane figure for mlp: 10 of its runs have no checkpoints/final.pt" in md
    assert not list((root / "report" / "figures").glob("plane-*"))

    # a checkpoint in the vanilla seed-0 run: the aggregation computes its plane (cached), the
    # figure is drawn and captioned, the other runs noted
    shutil.rmtree(root)
    _, row = _sweep_with_a_checkpoint(sweep, trained, root)
    name = f"plane-mlp-{row.run_id}-final"
    written = aggregate(root, root / "analysis", config=cfg)
    assert [f.name for f in written["figures"] if f.name.startswith("plane-")] == [f"{name}.png"]
    assert (root / "analysis" / "cache" / "planes" / f"{name}.npz").is_file()
    written = write_report(root / "analysis", root / "report", config=cfg)
    md, page = written["markdown"].read_text(), written["html"].read_text()
    assert f"![{name}](figures/{name}.png)" in md
    assert "linear regions on the triangle through train images" in md and "shrunk by 0.05" in md
    assert "No plane figure" not in md and "linear regions on the triangle" in page
    assert (root / "report" / "figures" / f"{name}.png").is_file()
    first = md

    # a second aggregation reads the plane from the cache: the engine does not run, the figure
    # is drawn again and the report's numbers are the same
    _no_engine(monkeypatch)
    figure = root / "analysis" / "figures" / f"{name}.png"
    figure.unlink()
    aggregate(root, root / "analysis", config=cfg)
    assert figure.is_file()
    md = write_report(root / "analysis", root / "report", config=cfg)["markdown"].read_text()
    caption = [line for line in md.splitlines() if "linear regions on the triangle" in line]
    assert caption and [c.split(" found in ")[0] for c in caption] == \
        [line.split(" found in ")[0] for line in first.splitlines() if "linear regions on the triangle" in line]


def test_plane_figures_draw_from_the_aggregation_s_cache(sweep, trained, tmp_path, monkeypatch):
    """plane_runs computes each plane once and caches it; a second call reads it (no engine);
    a changed option or checkpoint computes it again; draw_planes only draws."""
    from analysis.figures import draw_planes
    from analysis.plane_runs import plane_runs

    root, cache, figs = tmp_path / "sweep", tmp_path / "cache", tmp_path / "figures"
    table, row = _sweep_with_a_checkpoint(sweep, trained, root)
    cfg = AnalysisConfig(formats=("png",), plane_scale=0.05)
    computed = plane_runs(table, root, cache, cfg)
    (run,) = computed.runs
    assert not run.reused and run.run_id == row.run_id and run.plane["result"].n_regions[0] > 1
    assert [f.name for f in cache.iterdir()] == [f"plane-mlp-{row.run_id}-final.npz"]

    _no_engine(monkeypatch)
    again = plane_runs(table, root, cache, cfg)
    (cached,) = again.runs
    assert cached.reused and cached.key == run.key and again.notes == computed.notes
    new, old = cached.plane, run.plane
    for f in ("uv", "vertex_offset", "area", "centroid", "intercept", "grad", "density", "n_regions"):
        np.testing.assert_array_equal(getattr(new["result"], f), getattr(old["result"], f))
    assert new["result"].domain == old["result"].domain and new["result"].gap_tol is not None
    for k in ("indices", "labels", "predicted"):
        np.testing.assert_array_equal(new[k], old[k])
    assert (new["scale"], new["split"], new["domain"], new["seconds"]) == \
        (old["scale"], old["split"], old["domain"], old["seconds"])
    np.testing.assert_array_equal(np.stack(new["corners"]), np.stack(old["corners"]))
    files = draw_planes(again, figs, cfg)  # the engine cannot run: drawing alone
    assert [f.name for f in files] == [f"plane-mlp-{row.run_id}-final.png", "planes.json"]

    # changed inputs are computed again: other plane options, then another checkpoint
    with pytest.raises(AssertionError, match="the plane engine ran"):
        plane_runs(table, root, cache, AnalysisConfig(plane_scale=0.05, plane_seed=1))
    ckpt = (root / row.store).parents[1] / "checkpoints"
    shutil.copyfile(ckpt / "init.pt", ckpt / "final.pt")
    with pytest.raises(AssertionError, match="the plane engine ran"):
        plane_runs(table, root, cache, cfg)
    monkeypatch.undo()
    (fresh,) = plane_runs(table, root, cache, cfg).runs
    assert not fresh.reused and fresh.key != run.key
    assert plane_runs(table, root, cache, cfg).runs[0].reused
    # planes: 0 computes none and caches nothing; a run no longer chosen leaves the cache
    assert plane_runs(table, root, cache, AnalysisConfig(planes=0)) == type(computed)([], [])
    assert not list(cache.iterdir())
    assert draw_planes(type(computed)(), tmp_path / "none", cfg) == [tmp_path / "none" / "planes.json"]
