"""The analysis stage: Dask collection vs plain pandas, statistics vs independent computations,
incremental reruns, incomplete stores (fail / skip / report), errors, CLI, figures."""

import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import AnalysisConfig, AnalysisError, aggregate
from analysis import tables as T
from analysis.collect import TABLE_COLUMNS, collect, find_stores
from pipeline.store.lines import open_store

SYNC = AnalysisConfig(scheduler="synchronous", figures=False)



@pytest.fixture(scope="session")
def table(sweep):
    return collect(sweep, config=SYNC)[0]


@pytest.fixture
def sweep_copy(sweep, tmp_path):
    dst = tmp_path / "sweep"
    shutil.copytree(sweep, dst)
    return dst


def _break_store(root, setting="vanilla", seed=1, checkpoint="final"):
    """Remove shard 1 of one store, as a killed discovery job leaves it; returns its key."""
    t = collect(root, config=SYNC)[0]
    key = t[(t.setting == setting) & (t.seed == seed) & (t.checkpoint == checkpoint)].store.iloc[0]
    shutil.rmtree(root / key / "shard-00001")
    return key


# ---- collection -------------------------------------------------------------------------------

def test_dask_table_equals_pandas_over_open_store(sweep):
    table, report = collect(sweep, config=AnalysisConfig(scheduler=None))  # a real LocalCluster
    stores = find_stores(sweep)
    assert list(table.columns) == TABLE_COLUMNS and len(stores) == 17 == len(report)
    assert (report.action == "read").all() and (report.status == "complete").all()
    for store in stores:
        key = store.relative_to(sweep).as_posix()
        mine = table[table.store == key].reset_index(drop=True)
        ref = open_store(store).paths()
        for col in ("path_id", "density", "length", "density_per_length", "deviation", "total_variation",
                    "n_segments"):
            np.testing.assert_array_equal(mine[col].to_numpy(), ref[col].to_numpy(), err_msg=f"{key} {col}")
        np.testing.assert_array_equal(mine["continuity_gap"].to_numpy(), ref["continuity_gap"].to_numpy())
    # labels come from the run's config.yaml and the last row of its metrics.csv
    row = table[(table.setting == "noisy") & (table.noise == 0.6)].iloc[0]
    metrics = pd.read_csv(sweep / "runs" / row.run_id / "metrics.csv").iloc[-1]
    assert (row.dataset, row.model, row.width, row.seed, row.paths) == ("synthetic", "mlp", 8, 0, "circle/train")
    assert row.test_error == metrics.test_error and row.train_loss == metrics.train_loss and row.epochs == 3
    assert table.store_complete.all()
    assert sorted(table[table.setting == "double_descent"].width.unique()) == [2, 4, 8]


def test_existing_scheduler_address(sweep, table):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        mine, _ = collect(sweep, scheduler=cluster.scheduler_address, config=SYNC)
    pd.testing.assert_frame_equal(mine, table)


def test_incremental_rerun_reads_only_changed_stores(sweep_copy, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first, rep = collect(sweep_copy, cache_dir=cache, config=SYNC)
    assert (rep.action == "read").all()

    import analysis.collect as collect_mod

    def no_reads(*_):
        raise AssertionError("an unchanged store was read again")

    monkeypatch.setattr(collect_mod, "shard_partials", no_reads)
    again, rep = collect(sweep_copy, cache_dir=cache, config=SYNC)
    assert (rep.action == "cached").all()
    pd.testing.assert_frame_equal(first, again)
    monkeypatch.undo()

    key = _break_store(sweep_copy)  # one store loses a shard: only it is read again
    _, rep = collect(sweep_copy, cache_dir=cache, on_incomplete="report", config=SYNC)
    assert rep.set_index("store").action.to_dict() == {k: ("read" if k == key else "cached") for k in rep.store}
    # metrics are re-read every time: a resumed run's new last row shows up without reading stores
    run = sweep_copy / key.split("/regions/")[0]
    m = pd.read_csv(run / "metrics.csv")
    pd.concat([m, m.tail(1).assign(epoch=4, test_error=0.5)]).to_csv(run / "metrics.csv", index=False)
    t, rep = collect(sweep_copy, cache_dir=cache, on_incomplete="report", config=SYNC)
    assert (rep.action == "cached").all() and set(t[t.run_id == run.name].test_error) == {0.5}


def test_incomplete_store_fail_skip_report(sweep_copy, tmp_path):
    key = _break_store(sweep_copy)
    with pytest.raises(AnalysisError, match=r"(?s)1 incomplete store.*final-\w+\.zarr: shards \[1\] of 2 missing"):
        collect(sweep_copy, config=SYNC)
    with pytest.raises(AnalysisError, match="incomplete"):
        aggregate(sweep_copy, tmp_path / "fail", config=SYNC)
    assert not (tmp_path / "fail" / "paths.parquet").exists()  # failed before writing anything

    out = aggregate(sweep_copy, tmp_path / "skip", on_incomplete="skip", config=SYNC)
    t = pd.read_parquet(out["paths"])
    stores = pd.read_csv(out["stores"]).set_index("store")
    assert key not in set(t.store) and stores.loc[key, "action"] == "skipped"
    assert stores.loc[key, "status"] == "incomplete" and stores.loc[key, "missing_shards"] == "[1]"
    assert f"Incomplete stores left out: {key}" in (tmp_path / "skip" / "tables" / "spearman.md").read_text()
    # vanilla seed 1 is gone: augment vs vanilla pairs on seed 0 only
    paired = pd.read_csv(tmp_path / "skip" / "tables" / "paired.csv")
    assert paired[paired.comparison == "augment vs vanilla"].n_seeds.tolist() == [1]

    out = aggregate(sweep_copy, tmp_path / "report", on_incomplete="report", config=SYNC)
    t = pd.read_parquet(out["paths"])
    mine = t[t.store == key]
    assert len(mine) == 4 and not mine.store_complete.any() and t[t.store != key].store_complete.all()
    for name in ("spearman", "paired", "noise_medians"):
        assert f"Incomplete stores counted (their complete shards only" in \
               (tmp_path / "report" / "tables" / f"{name}.md").read_text()
    assert pd.read_csv(out["stores"]).set_index("store").loc[key, "action"] == "read"


def test_errors_say_where_and_why(tmp_path, sweep):
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    with pytest.raises(AnalysisError, match=r"no discovery stores found under .*empty: looked for <run>/regions"):
        collect(tmp_path / "empty", config=SYNC)
    with pytest.raises(AnalysisError, match="does not exist"):
        collect(tmp_path / "nowhere", config=SYNC)
    run = sorted((sweep / "runs").iterdir())[0]
    shutil.copytree(run, tmp_path / "one" / run.name)
    (tmp_path / "one" / run.name / "config.yaml").unlink()
    with pytest.raises(AnalysisError, match="config.yaml is missing"):
        collect(tmp_path / "one", config=SYNC)
    # the same network's store copied under another name would count every path twice: its
    # record names another store than where it sits (pipeline/store/placement.py), so it is
    # refused before the duplicate check behind it, which still guards stores with no recorded run
    store = find_stores(sweep)[0]
    shutil.copytree(store.parent.parent, tmp_path / "dup" / "run")
    shutil.copytree(store, tmp_path / "dup" / "run" / "regions" / "copy.zarr")
    with pytest.raises(AnalysisError, match="not this run's store.*not copy.zarr"):
        collect(tmp_path / "dup", config=SYNC)
    with pytest.raises(ValueError, match="on_incomplete"):
        AnalysisConfig(on_incomplete="ignore")


# ---- statistics ---------------------------------------------------------------------------------

@pytest.mark.parametrize("x,y", [([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]), ([1, 1, 2, 2, 3, 9], [3, 1, 2, 2, 5, 4]),
                                 (np.arange(20.0) % 7, np.sin(np.arange(20.0)))])
def test_spearman_matches_scipy(x, y):
    assert T.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_spearman_undefined_is_nan():
    assert np.isnan(T.spearman([1, 2, 3], [4, 4, 4])) and np.isnan(T.spearman([1], [2]))


def _by_network(table, **where):
    rows = table
    for k, v in where.items():
        rows = rows[rows[k] == v]
    return {seed: g.set_index("path_id") for seed, g in rows.groupby("seed")}


def test_spearman_table_against_scipy(table):
    rho = T.spearman_table(table)
    assert len(rho) == 11  # (setting, noise, checkpoint, width) groups of the sweep
    for _, r in rho.iterrows():
        nets = _by_network(table, setting=r.setting, noise=r.noise, checkpoint=r.checkpoint, width=r.width)
        per_seed = [stats.spearmanr(n.density, n.deviation).statistic for n in nets.values()]
        per_len = [stats.spearmanr(n.density_per_length, n.deviation).statistic for n in nets.values()]
        assert r.n_seeds == len(nets) and r.n_paths == 8
        assert r.rho_density_mean == pytest.approx(np.mean(per_seed), abs=1e-12)
        assert r.rho_density_per_length_mean == pytest.approx(np.mean(per_len), abs=1e-12)
        if len(per_seed) > 1:
            assert r.rho_density_std == pytest.approx(np.std(per_seed, ddof=1), abs=1e-12)
        else:  # one seed: the std is undefined, not zero
            assert np.isnan(r.rho_density_std)


def _fractions_by_hand(after: dict, before: dict, measure):
    return {s: float((after[s][measure] > before[s].loc[after[s].index, measure]).mean())
            for s in after if s in before}


def test_paired_fractions_by_hand(table):
    frac = T.paired_table(T.paired_differences(table)).set_index(["comparison", "setting", "noise"])
    van = _by_network(table, setting="vanilla", checkpoint="final")
    checks = [(("augment vs vanilla", "augment", 0.0), _by_network(table, setting="augment", checkpoint="final"), van)]
    for p in (0.2, 0.6):  # the sweep has no noisy run at p = 0: vanilla is the clean reference
        checks.append((("noise vs clean", "noisy", p), _by_network(table, setting="noisy", noise=p, checkpoint="final"),
                       van))
    for setting, p in (("vanilla", 0.0), ("augment", 0.0), ("noisy", 0.2), ("noisy", 0.6)):
        checks.append((("trained vs init", setting, p),
                       _by_network(table, setting=setting, noise=p, checkpoint="final"),
                       _by_network(table, setting=setting, noise=p, checkpoint="init")))
    assert len(frac) == len(checks)  # double descent has no init store and no clean partner
    for key, after, before in checks:
        r = frac.loc[key]
        for m in T.PAIRED_MEASURES:
            by_hand = _fractions_by_hand(after, before, m)
            assert r.n_seeds == len(by_hand)
            assert r[f"frac_{m}_mean"] == pytest.approx(np.mean(list(by_hand.values())), abs=1e-12), (key, m)
            if len(by_hand) == 1:
                assert np.isnan(r[f"frac_{m}_std"])
            else:
                assert r[f"frac_{m}_std"] == pytest.approx(np.std(list(by_hand.values()), ddof=1), abs=1e-12)
    assert set(frac.reference) == {"vanilla", "init"}


def test_pairs_match_path_by_path_and_seed_by_seed(table):
    pairs = T.paired_differences(table)
    aug = pairs[(pairs.comparison == "augment vs vanilla") & (pairs.measure == "deviation")]
    t = table.set_index(["setting", "checkpoint", "seed", "path_id"])
    for _, r in aug.iterrows():
        assert r.after == t.loc[("augment", "final", r.seed, r.path_id), "deviation"]
        assert r.before == t.loc[("vanilla", "final", r.seed, r.path_id), "deviation"]
    # a missing seed: drop augment seed 1, the pair of seed 1 disappears and the std is undefined
    fewer = table[~((table.setting == "augment") & (table.seed == 1))]
    r = T.paired_table(T.paired_differences(fewer)).query("comparison == 'augment vs vanilla'").iloc[0]
    assert r.n_seeds == 1 and np.isnan(r.frac_deviation_std)


def test_noisy_clean_run_is_preferred_reference(table):
    # a noisy-recipe run at p = 0 (same seed) replaces vanilla as the clean reference
    clean = table[(table.setting == "vanilla")].assign(setting="noisy")
    both = pd.concat([table, clean.assign(run_id=clean.run_id + "-p0")], ignore_index=True)
    pairs = T.paired_differences(both)
    assert set(pairs[pairs.comparison == "noise vs clean"].reference) == {"noisy"}
    med = T.noise_medians(both)
    assert med.loc[med.noise == 0, "setting"].tolist() == ["noisy"]


def test_noise_medians_by_hand(table):
    med = T.noise_medians(table)
    assert med.noise.tolist() == [0.0, 0.2, 0.6] and med.setting.tolist() == ["vanilla", "noisy", "noisy"]
    for _, r in med.iterrows():
        setting = "vanilla" if r.noise == 0 else "noisy"
        nets = _by_network(table, setting=setting, noise=r.noise, checkpoint="final")
        for m in ("density", "density_per_length", "deviation"):
            medians = [n[m].median() for n in nets.values()]
            assert r[f"median_{m}_mean"] == pytest.approx(np.mean(medians), abs=1e-12)
            assert r.n_seeds == len(medians)
    assert np.isnan(med.iloc[2].median_deviation_std)  # p = 0.6 has one seed


def test_formatting_one_seed_and_nan():
    df = pd.DataFrame({"setting": ["a", "b"], "noise": [0.0, 0.2], "n_seeds": [2, 1],
                       "x_mean": [0.51234, 0.25], "x_std": [0.0312, np.nan]})
    md = T.format_markdown(df, ".3f", title="T")
    assert "| a | 0 | 2 | 0.512 ± 0.031 |" in md and "| b | 0.2 | 1 | 0.250 ± – |" in md
    assert "– : undefined (a single seed" in md
    assert T.format_csv(df).splitlines()[2] == "b,0.2,1,0.25,nan"


# ---- CLI, figures -------------------------------------------------------------------------------

def test_cli_help_and_errors(capsys, tmp_path, sweep_copy):
    from analysis.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out.strip().splitlines()
    assert help_text[-1].startswith("example: python -m analysis ")
    assert main([str(tmp_path / "nothing-here")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([str(sweep_copy), "--out", str(tmp_path / "out"), "--scheduler", "synchronous",
                 "--no-figures"]) == 0
    assert (tmp_path / "out" / "tables" / "paired.md").is_file()
    assert (tmp_path / "out" / "analysis_config.yaml").read_text().count("on_incomplete: fail") == 1


def test_figures_and_path_profile(sweep, table, tmp_path):
    from analysis.figures import draw_all, path_profile
    from analysis.plane_runs import plane_runs

    cfg = AnalysisConfig(formats=("png",), path_plots=1)
    pairs = T.paired_differences(table)
    planes = plane_runs(table, sweep, tmp_path / "cache", cfg)
    assert not planes.runs and planes.notes  # the synthetic runs have no checkpoints: no plane figure, a note
    files = draw_all(table, pairs, T.noise_medians(table), tmp_path, sweep, cfg, planes=planes)
    assert files[-1].name == "planes.json"
    files = files[:-1]
    names = sorted(f.name.split("-")[0] for f in files)
    assert names == ["double", "ecdf", "noise", "paired", "paired", "paired", "path", "test"]
    assert all(f.stat().st_size > 10_000 for f in files)
    # the drawn profile is the network: it starts and ends each segment at f(x0), f(x1) and its
    # knots are the region boundaries (density + 1 per segment)
    row = table[table.checkpoint == "final"].iloc[0]
    p = path_profile(sweep / row.store, int(row.path_id))
    assert p["s"].size == row.density + row.n_segments and np.all(np.diff(p["s"]) >= 0)
    off = p["offsets"]
    np.testing.assert_allclose(p["s"][off[:-1]], p["anchors"][:-1])
    np.testing.assert_allclose(p["f"][off[:-1]], p["line"][0::2], atol=1e-9)
    np.testing.assert_allclose(p["f"][off[1:] - 1], p["line"][1::2], atol=1e-9)
    assert p["breaks"].size == row.density - row.n_segments
    with pytest.raises(AnalysisError, match=r"path 123456 does not exist in this store .* it holds 8 ids: "):
        path_profile(sweep / row.store, 123456)
    # the reader open_store returns draws the same profile
    from pipeline import open_store

    q = path_profile(open_store(sweep / row.store), int(row.path_id))
    assert all(np.array_equal(p[k], q[k]) for k in p)


def test_path_figure_breakpoints_in_a_strip_not_on_the_curves(sweep, table, monkeypatch):
    """Breakpoints are drawn in a thin strip below the curves (a rug when few, a density strip
    when many), never as markers on the curves: at 10^3+ per path those smear the curves."""
    import io

    from matplotlib.collections import LineCollection
    from matplotlib.patches import StepPatch

    from analysis import figures

    row = table[table.checkpoint == "final"].sort_values("density").iloc[-1]
    store, pid = sweep / row.store, int(row.path_id)
    p = figures.path_profile(store, pid)
    k = min(3, p["f"].shape[1])

    def check(fig):
        assert len(fig.axes) == 2
        ax, strip = fig.axes
        assert ax.get_shared_x_axes().joined(ax, strip)
        # the curves: one network line and one interpolation line (broken between segments) per
        # logit; no markers anywhere on the curve axes
        assert len(ax.lines) == 2 * k
        assert sum(len(line.get_xdata()) for line in ax.lines if line.get_marker() not in ("None", "", None)) == 0
        assert not ax.patches
        assert [len(c.get_segments()) for c in ax.collections] == [p["anchors"].size]  # the anchors only
        fig.savefig(io.BytesIO(), format="png")
        return strip

    # few breakpoints: a rug, one short vertical line per breakpoint
    strip = check(figures.path_figure(store, pid))
    assert 0 < p["breaks"].size <= figures.RUG_MAX
    rug = [c for c in strip.collections if isinstance(c, LineCollection) and len(c.get_segments()) == p["breaks"].size]
    assert len(rug) == 1 and not strip.patches
    np.testing.assert_allclose(np.sort([seg[0, 0] for seg in rug[0].get_segments()]), np.sort(p["breaks"]))

    # many breakpoints (forced by lowering the threshold): a histogram of breakpoints per unit
    # length, every anchor a bin edge, its area the breakpoint count
    monkeypatch.setattr(figures.paths, "RUG_MAX", 0)
    strip = check(figures.path_figure(store, pid))
    (step,) = [a for a in strip.patches if isinstance(a, StepPatch)]
    values, edges, _ = step.get_data()
    assert np.all(values >= 0) and np.all(np.diff(edges) > 0)
    assert np.all(np.min(np.abs(p["anchors"][:, None] - edges[None, :]), axis=1) < 1e-9)
    np.testing.assert_allclose((values * np.diff(edges)).sum(), p["breaks"].size)
    assert [len(c.get_segments()) for c in strip.collections] == [p["anchors"].size]  # no rug
