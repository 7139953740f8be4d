"""The report's sentences: built on tables whose answers are known by construction, and checked
against an independent recomputation of every number they quote."""

import re

import numpy as np
import pandas as pd
import pytest

from analysis.findings import findings, strength
from analysis.tables import spearman

N_PATHS = 10


def _net(run_id, setting, noise, seed, checkpoint, density, deviation, train_error=0.0, test_error=0.1,
         model="vgg8", width=8):
    return pd.DataFrame({
        "run_id": run_id, "dataset": "digits", "model": model, "width": width, "setting": setting,
        "noise": float(noise), "seed": seed, "checkpoint": checkpoint, "paths": "circle/train", "path_set": "abc",
        "path_id": np.arange(N_PATHS), "density": np.asarray(density, dtype=np.int64),
        "length": 10.0, "density_per_length": np.asarray(density, dtype=float) / 10.0,
        "deviation": np.asarray(deviation, dtype=float), "total_variation": np.asarray(deviation, dtype=float),
        "continuity_gap": 0.0, "n_segments": 8, "train_error": train_error, "train_loss": 0.01,
        "test_error": test_error, "test_loss": 0.5, "epochs": 10, "store": f"runs/{run_id}/x.zarr",
        "store_complete": True})


def _table():
    """Two seeds. Noise adds deviation on every path but density on only the first three; the
    p = 1.0 networks of seed 1 do not fit; augmentation lowers both on every path."""
    rng = np.random.default_rng(0)
    parts = []
    for seed in (0, 1):
        den0 = 100 + rng.permutation(N_PATHS) * 3
        dev0 = 1.0 + rng.random(N_PATHS)
        for setting, noise, tr, te in (("vanilla", 0, 0.0, 0.05), ("augment", 0, 0.0, 0.04),
                                       ("noisy", 0.5, 0.0, 0.4), ("noisy", 1.0, 0.0 if seed == 0 else 0.3, 0.9)):
            rid = f"{setting}{noise}-{seed}"
            if setting == "vanilla":
                den, dev = den0, dev0
            elif setting == "augment":
                den, dev = den0 - 5, dev0 - 0.5
            else:
                den = den0 + np.where(np.arange(N_PATHS) < 3, 7, -1) * (1 + noise)
                dev = dev0 + 2 * noise
            parts.append(_net(rid, setting, noise, seed, "final", den, dev, tr, te))
            parts.append(_net(rid, setting, noise, seed, "init", den0 - 50, dev0 * 0.1, tr, te))
    return pd.concat(parts, ignore_index=True)


def _by_topic(found):
    return {f.topic: f for f in found}


def test_findings_say_what_the_table_holds():
    table = _table()
    found = findings(table)
    topics = _by_topic(found)
    assert set(topics) == {"training", "correlation", "noise", "noise_medians", "augment", "training_vs_init",
                           "test_error"}
    assert all(f.text.startswith("VGG8 (width 8) on digits: ") for f in found)

    t = topics["training"]
    assert t.numbers == {"noisy_networks": 4, "fit": 3, "worst_train_error": 0.3}
    assert "3 of 4 networks" in t.text and "the other one stopped at the epoch budget with training error 30%" in t.text

    n = topics["noise"]  # deviation rises on all 10 paths, density on 3 of 10, at both levels
    assert n.numbers["p=0.5"] == {"deviation": 1.0, "density": 0.3}
    assert n.numbers["p=1"] == {"deviation": 1.0, "density": 0.3}
    assert "at p = 0.5 on 100% of paths (density: 30%)" in n.text
    assert "more often than density at every noise level" in n.text

    a = topics["augment"]
    assert a.numbers == {"deviation": 0.0, "density": 0.0} and "on 0% of paths and density on 0%" in a.text

    v = topics["training_vs_init"]  # trained deviation = 10x init, density +50 everywhere
    assert v.numbers["deviation"] == 1.0 and v.numbers["density"] == 1.0 and "(vanilla)" in v.text

    m = topics["noise_medians"]
    clean = table[(table.setting == "vanilla") & (table.checkpoint == "final")]
    want0 = clean.groupby("seed")["deviation"].median().mean()
    assert m.numbers["noise"] == [0.0, 0.5, 1.0]
    assert m.numbers["median_deviation"][0] == pytest.approx(want0)
    assert "deviation over paths rises at every step" in m.text


def test_correlation_and_test_error_numbers_are_recomputed_independently():
    table = _table()
    topics = _by_topic(findings(table))
    final = table[table.checkpoint == "final"]
    rhos = [spearman(g["density"], g["deviation"]) for _, g in final.groupby("run_id")]
    c = topics["correlation"]
    assert c.numbers["rho_mean"] == pytest.approx(np.mean(rhos))
    assert c.numbers["networks"] == 8
    assert f"averages {np.mean(rhos):.2f}" in c.text and strength(np.mean(rhos)) in c.text
    per = final.groupby("run_id").agg(dev=("deviation", "median"), err=("test_error", "first"))
    e = topics["test_error"]
    assert e.numbers["rho_deviation"] == pytest.approx(spearman(per["dev"], per["err"]))
    assert f"(ρ = {e.numbers['rho_deviation']:.2f})" in e.text


def test_every_percentage_in_the_text_is_one_of_the_numbers():
    for f in findings(_table()):
        flat = []

        def walk(v):
            if isinstance(v, dict):
                for x in v.values():
                    walk(x)
            elif isinstance(v, (list, tuple)):
                for x in v:
                    walk(x)
            elif isinstance(v, (int, float)):
                flat.append(float(v))
        walk(f.numbers)
        text = f.text.replace("100% training accuracy", "")  # the criterion's name, not a result
        for pct in re.findall(r"(\d+)%", text):
            assert any(round(100 * x) == int(pct) for x in flat), (pct, text)


def test_verdict_words_follow_the_comparison():
    table = _table()
    # make density win at p = 1: it rises everywhere while deviation falls
    sel = (table.setting == "noisy") & (table.noise == 1.0) & (table.checkpoint == "final")
    table.loc[sel, "density"] += 1000
    table.loc[sel, "deviation"] = 0.0
    n = _by_topic(findings(table))["noise"]
    assert n.numbers["deviation_better"] == 1 and n.numbers["deviation_worse"] == 1
    assert "more often than density at 1 of 2 noise levels, less often than density at 1 of 2" in n.text


def test_no_comparison_no_sentence():
    one = _net("a", "vanilla", 0, 0, "final", np.arange(N_PATHS) + 5, np.arange(N_PATHS) * 1.0)
    topics = _by_topic(findings(one))
    assert set(topics) == {"correlation"}  # one network: nothing to compare, no noise, no test-error trend
    assert topics["correlation"].numbers["rho_mean"] == pytest.approx(1.0)
    assert "a strong positive" in topics["correlation"].text
    assert findings(one.iloc[:0]) == []


def test_strength_words():
    assert strength(0.05) == "no" and strength(-0.2) == "a weak negative"
    assert strength(0.45) == "a moderate positive" and strength(0.9) == "a strong positive"
    assert strength(float("nan")) == "an undefined"


def test_training_sentence_counts_the_networks_that_did_not_fit():
    table = _table()
    table.loc[(table.setting == "noisy") & (table.noise == 0.5) & (table.seed == 0), "train_error"] = 0.12
    t = _by_topic(findings(table))["training"]
    assert t.numbers == {"noisy_networks": 4, "fit": 2, "worst_train_error": 0.3}
    assert "2 of 4 networks" in t.text and "the other 2 stopped at the epoch budget with training error up to 30%" \
        in t.text
    table["train_error"] = 0.0
    t = _by_topic(findings(table))["training"]
    assert "all 4 networks trained on noisy labels reached 100% training accuracy" in t.text


def test_effective_density_and_sampling_sentences_quote_their_numbers():
    """Effective density raised by noise on every path (density on 3 of 10), lowered by
    augmentation on every path; sampled counts a known fraction of the exact ones."""
    table = _table()
    bump = (table["setting"] == "noisy") & (table["checkpoint"] == "final")
    table["effective_density"] = 0.5 * table["density"] + np.where(bump, 100.0, 0.0)
    for n in (8, 32, 128, 512):
        table[f"sampled_density_{n}"] = np.floor(table["density"] * n / (n + 8))
    topics = _by_topic(findings(table))
    eff = topics["effective_density"]
    assert eff.numbers["noise vs clean"] == {"effective_density": 1.0, "density": 0.3, "deviation": 1.0}
    assert eff.numbers["augment vs vanilla"] == {"effective_density": 0.0, "density": 0.0, "deviation": 0.0}
    assert "added label noise raises it on 100% of paths (density: 30%, deviation: 100%" in eff.text
    assert "tracks added label noise better than density and as well as deviation" in eff.text
    trained = table[table["checkpoint"] == "final"]
    per = trained.groupby("run_id").agg(e=("effective_density", "median"), t=("test_error", "first"))
    rho = per["e"].rank().corr(per["t"].rank())
    assert eff.numbers["test_error_rho"]["effective_density"] == pytest.approx(rho)
    assert f"ρ = {rho:.2f} with test error" in eff.text
    sampling = topics["sampling"]
    sums = trained.groupby("run_id")[["density", "sampled_density_8", "sampled_density_512"]].sum()
    for n in (8, 512):
        recall = sums[f"sampled_density_{n}"] / sums["density"]
        assert sampling.numbers["recall_median"][n] == pytest.approx(recall.median())
        assert sampling.numbers["recall_min"][n] == pytest.approx(recall.min())
    assert "at N = 8" in sampling.text and "of the regions the exact method finds" in sampling.text
    # a table without the new columns (aggregated before they existed) says nothing of them
    assert not {"effective_density", "sampling"} & set(_by_topic(findings(_table())))


def test_local_similarity_with_noise_and_past_the_double_descent_peak():
    table = _table()
    final = table["checkpoint"] == "final"
    table["cos_median"] = np.where(final, 0.9 - 0.2 * table["noise"], 0.5)
    text = _by_topic(findings(table))["noise_medians"].text
    assert "local similarity (the median cosine between the slopes of adjacent regions) falls at every step " \
           "(0.900 → 0.800 → 0.700)" in text
    # double descent: test error peaks at width 4; local similarity lowest there, highest at the widest
    parts = []
    for width, te, cos in ((2, 0.3, 0.5), (4, 0.5, 0.4), (8, 0.2, 0.6), (16, 0.1, 0.8)):
        net = _net(f"dd{width}", "double_descent", 0.2, 0, "final", np.arange(N_PATHS) + 10, np.ones(N_PATHS),
                   test_error=te, width=width)
        parts.append(net.assign(cos_median=cos))
    dd = _by_topic(findings(pd.concat(parts, ignore_index=True)))["double_descent"]
    assert dd.numbers["peaks"]["test_error"] == 4
    assert (dd.numbers["cos_at_peak"], dd.numbers["cos_widest"]) == (0.4, 0.8)
    assert "is 0.400 at the test-error peak and 0.800 at width 16, higher past it" in dd.text
