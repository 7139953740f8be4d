"""What a sweep found, in plain words, with every number computed from the per-path table.

    from analysis.findings import findings
    for f in findings(table):
        print(f.text)            # "VGG8 (width 8): at label noise 1, deviation is higher ..."
        f.numbers                # the values the sentence quotes, unrounded

Each :class:`Finding` is one sentence about one architecture (data set, model, width and path
set, as in :data:`analysis.tables.GROUP`) and one of the paper's questions: do density and
deviation rank paths alike (Spearman), which measure detects added nonlinearity path by path
(label noise, augmentation, training), how the medians move with noise, how they relate to test
error, and whether the noisy networks fit their labels. A question the sweep has no data for
gives no sentence. Nothing here is written by hand: change the sweep and the words change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.engine.kink_measures import SAMPLE_POINTS

from .config import AnalysisConfig
from .tables import GROUP, paired_differences, paired_table, spearman, noise_medians

__all__ = ["Finding", "findings", "group_label", "strength"]

MODEL_NAMES = {"vgg8": "VGG8", "resnet18": "ResNet18", "mlp": "MLP"}


@dataclass(frozen=True)
class Finding:
    topic: str  # training | correlation | noise | noise_medians | augment | training_vs_init | test_error |
    #             effective_density | sampling | double_descent
    group: str  # the architecture, as written in the text
    text: str  # "<group>: <what was found>."
    numbers: dict = field(default_factory=dict)

    @property
    def body(self) -> str:
        """The sentence without the architecture in front (for text grouped by architecture)."""
        return self.text[len(self.group) + 2:] if self.text.startswith(self.group + ": ") else self.text


def group_label(keys: dict, several_path_sets: bool = False) -> str:
    """``"VGG8 (width 8)"``, ``"ResNet18 (k = 4)"``; the data set and path set when needed."""
    name = MODEL_NAMES.get(keys["model"], keys["model"])
    width = f"k = {keys['width']}" if keys["model"] == "resnet18" else f"width {keys['width']}"
    label = f"{name} ({width}) on {keys['dataset']}"
    return f"{label}, paths {keys['paths']} {keys['path_set']}" if several_path_sets else label


def strength(rho: float) -> str:
    """Words for a rank correlation: ``"a weak positive"``, ``"no"``, ``"a strong negative"``."""
    if math.isnan(rho):
        return "an undefined"
    a = abs(rho)
    if a < 0.1:
        return "no"
    size = "a weak" if a < 0.3 else "a moderate" if a < 0.6 else "a strong"
    return f"{size} {'positive' if rho > 0 else 'negative'}"


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.0f}%"


def _num(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def _p(p: float) -> str:
    return f"{p:g}"


def findings(table: pd.DataFrame, config: AnalysisConfig = AnalysisConfig()) -> list[Finding]:
    """Every sentence the table supports, grouped by architecture, in a fixed order."""
    if table.empty:
        return []
    several = table[["paths", "path_set"]].drop_duplicates().shape[0] > 1
    pairs = paired_differences(table, config)
    paired = paired_table(pairs)
    medians = noise_medians(table, config)
    out = []
    for k, rows in table.groupby(GROUP, sort=True, dropna=False):
        keys = dict(zip(GROUP, k))
        label = group_label(keys, several)

        def mine(df):
            if df.empty:
                return df
            return df[np.logical_and.reduce([df[c] == v for c, v in keys.items()])]

        main = rows[rows["setting"] != "double_descent"]
        trained, init = _networks(main, config.trained), _networks(main, config.init)
        fractions = mine(paired)
        out += _training(trained, label)
        out += _correlation(trained, init, label)
        out += _noise(fractions, label)
        out += _noise_medians(mine(medians), label)
        out += _augment(fractions, label)
        out += _trained_vs_init(fractions, label)
        out += _test_error(trained, label)
        out += _effective(fractions, trained, label)
        out += _sampling(trained, label)
    dd = table[table["setting"] == "double_descent"]
    for k, rows in dd.groupby(["dataset", "model", "paths", "path_set"], sort=True):
        out += _double_descent(rows, dict(zip(["dataset", "model", "paths", "path_set"], k)), config)
    return out


def _networks(rows: pd.DataFrame, checkpoint: str) -> pd.DataFrame:
    """One row per network at ``checkpoint``: labels, run metrics and median measures."""
    r = rows[rows["checkpoint"] == checkpoint]
    if r.empty:
        return pd.DataFrame()
    g = r.groupby("run_id", sort=True)
    net = g[["setting", "noise", "seed", "width", "train_error", "test_error", "epochs"]].first()
    net["median_density"] = g["density"].median()
    net["median_deviation"] = g["deviation"].median()
    if "effective_density" in r:
        net["median_effective_density"] = g["effective_density"].median()
    if "cos_median" in r:
        net["median_cos"] = g["cos_median"].median()
    for n in SAMPLE_POINTS:
        if f"sampled_density_{n}" in r:
            net[f"recall_{n}"] = g[f"sampled_density_{n}"].sum() / g["density"].sum()
    net["rho"] = g.apply(lambda d: spearman(d["density"], d["deviation"]), include_groups=False)
    net["n_paths"] = g.size()
    return net.reset_index()


def _training(net, label) -> list[Finding]:
    if net.empty:
        return []
    noisy = net[net["noise"] > 0]
    if noisy.empty:
        return []
    fit = noisy["train_error"] == 0
    worst = float(noisy.loc[~fit, "train_error"].max()) if (~fit).any() else 0.0
    n, k = len(noisy), int(fit.sum())
    if fit.all():
        text = (f"{label}: {'all ' if n > 1 else ''}{n} network{'s' if n > 1 else ''} trained on noisy labels "
                "reached 100% training accuracy, i.e. fit their noisy labels as in the paper")
    else:
        text = f"{label}: {k} of {n} networks trained on noisy labels reached 100% training accuracy"
    if not fit.all():
        rest = n - k
        text += (f"; {'the other one' if rest == 1 else f'the other {rest}'} stopped at the epoch budget with "
                 f"training error {'' if rest == 1 else 'up to '}{_pct(worst)}, so the noise comparisons below include "
                 f"{'a network' if rest == 1 else 'networks'} that did not fit {'its' if rest == 1 else 'their'} "
                 "noisy labels (the paper's all do)")
    return [Finding("training", label, text + ".", {"noisy_networks": len(noisy), "fit": int(fit.sum()),
                                                     "worst_train_error": worst})]


def _correlation(net, init, label) -> list[Finding]:
    if net.empty or net["rho"].isna().all():
        return []
    rho = net["rho"].dropna()
    m, lo, hi = float(rho.mean()), float(rho.min()), float(rho.max())
    text = (f"{label}: across the paths of each trained network, density and deviation show {strength(m)} rank "
            f"correlation: Spearman's ρ averages {m:.2f} (from {lo:.2f} to {hi:.2f} over {len(rho)} networks)")
    numbers = {"rho_mean": m, "rho_min": lo, "rho_max": hi, "networks": len(rho)}
    if not init.empty and init["rho"].notna().any():
        mi = float(init["rho"].dropna().mean())
        text += f"; at initialisation it averages {mi:.2f}"
        numbers["rho_init_mean"] = mi
    if abs(m) < 0.6:
        text += ". The two measures do not rank paths alike: a path crossing many regions is not necessarily one " \
                "where the network bends far from a straight line"
    return [Finding("correlation", label, text + ".", numbers)]


def _fractions(paired: pd.DataFrame, comparison: str) -> pd.DataFrame:
    if paired.empty:
        return paired
    return paired[paired["comparison"] == comparison]


def _noise(paired, label) -> list[Finding]:
    rows = _fractions(paired, "noise vs clean")
    if rows.empty:
        return []
    rows = rows.sort_values("noise")
    parts, better, tied = [], 0, 0
    numbers = {}
    for _, r in rows.iterrows():
        dev, den = float(r["frac_deviation_mean"]), float(r["frac_density_mean"])
        parts.append(f"at p = {_p(r['noise'])} on {_pct(dev)} of paths (density: {_pct(den)})")
        better += int(dev > den)
        tied += int(dev == den)
        numbers[f"p={_p(r['noise'])}"] = {"deviation": dev, "density": den}
    n = len(rows)
    worse = n - better - tied
    if better == n:
        verdict = "more often than density at every noise level"
    elif worse == n:
        verdict = "less often than density at every noise level"
    elif tied == n:
        verdict = "as often as density at every noise level"
    else:
        words = ("more often than density at", "as often as density at", "less often than density at")
        verdict = ", ".join(f"{w} {k} of {n} noise levels" for w, k in zip(words, (better, tied, worse)) if k)
    text = (f"{label}: compared path by path with the clean network of the same seed, deviation is higher "
            f"{'; '.join(parts)}. Deviation detects the added label noise {verdict}.")
    numbers.update({"levels": n, "deviation_better": better, "tied": tied, "deviation_worse": worse})
    return [Finding("noise", label, text, numbers)]


def _trend(values: list[float]) -> str:
    d = np.diff(values)
    if len(values) < 2:
        return "cannot show a trend"
    if (d > 0).all():
        return "rises at every step"
    if (d < 0).all():
        return "falls at every step"
    if values[-1] == values[0]:
        return "ends where it started, not monotonically"
    return f"{'rises' if values[-1] > values[0] else 'falls'} overall but not at every step"


def _noise_medians(medians, label) -> list[Finding]:
    if medians.empty or medians["noise"].nunique() < 2:
        return []
    m = medians.sort_values("noise")
    ps = [float(p) for p in m["noise"]]
    dev = [float(v) for v in m["median_deviation_mean"]]
    den = [float(v) for v in m["median_density_mean"]]
    seq = " → ".join(_p(p) for p in ps)
    text = (f"{label}: with label noise {seq}, the median deviation over paths {_trend(dev)} "
            f"({' → '.join(_num(v) for v in dev)}), the median density {_trend(den)} "
            f"({' → '.join(_num(v) for v in den)})")
    numbers = {"noise": ps, "median_deviation": dev, "median_density": den}
    if "median_cos_median_mean" in m and m["median_cos_median_mean"].notna().all():
        cos = [float(v) for v in m["median_cos_median_mean"]]
        text += (f"; local similarity (the median cosine between the slopes of adjacent regions) "
                 f"{_trend(cos)} ({' → '.join(f'{v:.3f}' for v in cos)})")
        numbers["median_cos"] = cos
    return [Finding("noise_medians", label, text + ".", numbers)]


def _augment(paired, label) -> list[Finding]:
    rows = _fractions(paired, "augment vs vanilla")
    if rows.empty:
        return []
    r = rows.iloc[0]
    dev, den = float(r["frac_deviation_mean"]), float(r["frac_density_mean"])
    text = (f"{label}: with data augmentation, deviation is higher than without on {_pct(dev)} of paths and "
            f"density on {_pct(den)} (matched by seed and path).")
    return [Finding("augment", label, text, {"deviation": dev, "density": den})]


def _trained_vs_init(paired, label) -> list[Finding]:
    rows = _fractions(paired, "trained vs init")
    if rows.empty:
        return []
    order = ["vanilla", "augment", "noisy", "double_descent"]
    rows = rows.assign(_o=rows["setting"].map({s: i for i, s in enumerate(order)})).sort_values(["_o", "noise"])
    r = rows.iloc[0]
    what = r["setting"] if not r["noise"] else f"{r['setting']} p = {_p(r['noise'])}"
    dev, den = float(r["frac_deviation_mean"]), float(r["frac_density_mean"])
    text = (f"{label}: training ({what}) raises deviation above its initial value on {_pct(dev)} of paths, "
            f"and density on {_pct(den)}.")
    return [Finding("training_vs_init", label, text, {"setting": what, "deviation": dev, "density": den})]


def _test_error(net, label) -> list[Finding]:
    if len(net) < 3 or net["test_error"].nunique() < 2:
        return []
    r_dev = spearman(net["median_deviation"], net["test_error"])
    r_den = spearman(net["median_density"], net["test_error"])
    text = (f"{label}: across the {len(net)} trained networks, test error shows {strength(r_dev)} rank correlation "
            f"with median deviation (ρ = {r_dev:.2f}) and {strength(r_den)} one with median density "
            f"(ρ = {r_den:.2f}).")
    return [Finding("test_error", label, text, {"networks": len(net), "rho_deviation": r_dev, "rho_density": r_den})]


def _mean_frac(paired, comparison: str, measure: str) -> float:
    rows = _fractions(paired, comparison)
    col = f"frac_{measure}_mean"
    if rows.empty or col not in rows:
        return math.nan
    return float(rows[col].mean())


def _effective(paired, net, label) -> list[Finding]:
    """Effective density (regions weighted by their slope jumps: the paper's open question)
    against density and deviation, on the statistics the other sentences use."""
    parts, verdicts, numbers = [], [], {}
    for comparison, what in (("noise vs clean", "added label noise"), ("augment vs vanilla", "data augmentation")):
        eff, den, dev = (_mean_frac(paired, comparison, m) for m in ("effective_density", "density", "deviation"))
        if math.isnan(eff):
            continue
        parts.append(f"{what} raises it on {_pct(eff)} of paths (density: {_pct(den)}, deviation: {_pct(dev)}"
                     f"{', mean over noise levels' if comparison == 'noise vs clean' else ''})")
        verdicts.append(f"{what} {_than(eff, den, dev)}")
        numbers[comparison] = {"effective_density": eff, "density": den, "deviation": dev}
    if len(net) >= 3 and net["test_error"].nunique() >= 2 and "median_effective_density" in net \
            and net["median_effective_density"].notna().all():
        r = {m: spearman(net[f"median_{m}"], net["test_error"]) for m in ("effective_density", "density", "deviation")}
        parts.append(f"across the {len(net)} trained networks its median has ρ = {r['effective_density']:.2f} with test "
                     f"error (density: {r['density']:.2f}, deviation: {r['deviation']:.2f})")
        abs_r = {m: abs(v) if not math.isnan(v) else math.nan for m, v in r.items()}
        verdicts.append(f"test error {_than(abs_r['effective_density'], abs_r['density'], abs_r['deviation'])}")
        numbers["test_error_rho"] = r
    if not parts:
        return []
    text = (f"{label}: weighting each region boundary by the jump of the slope there (effective density, "
            f"docs/design.md), {'; '.join(parts)}. Effective density tracks {'; '.join(verdicts)}.")
    return [Finding("effective_density", label, text, numbers)]


def _than(eff: float, den: float, dev: float) -> str:
    """``more/less/as closely than density and ... deviation`` for comparable scores."""
    def word(other):
        if math.isnan(other):
            return "n/a against"
        return "better than" if eff > other else "worse than" if eff < other else "as well as"
    return f"{word(den)} density and {word(dev)} deviation"


def _sampling(net, label) -> list[Finding]:
    """How many of the exact regions N equally spaced points per segment find (the paper's
    Section 2.2 critique of sampled counts), per trained network."""
    cols = [n for n in SAMPLE_POINTS if f"recall_{n}" in net]
    if net.empty or not cols:
        return []
    med = {n: float(net[f"recall_{n}"].median()) for n in cols}
    worst = {n: float(net[f"recall_{n}"].min()) for n in cols}
    text = (f"{label}: counting distinct regions at N equally spaced points per segment, as sampled estimates do, "
            f"finds {', '.join(f'{_pct(med[n])} at N = {n}' for n in cols)} of the regions the exact method finds "
            f"(median over {len(net)} trained network{'s' if len(net) > 1 else ''}; the lowest: "
            f"{', '.join(_pct(worst[n]) for n in cols)}).")
    return [Finding("sampling", label, text, {"recall_median": med, "recall_min": worst})]


def _double_descent(rows, keys, config) -> list[Finding]:
    net = _networks(rows, config.trained)
    if net["width"].nunique() < 3:
        return []
    cols = ["test_error", "median_deviation", "median_density"]
    by = net.groupby("width")[cols + (["median_cos"] if "median_cos" in net else [])].mean().sort_index()
    peak = {c: int(by[c].idxmax()) for c in cols}
    label = f"{MODEL_NAMES.get(keys['model'], keys['model'])} on {keys['dataset']} (double descent)"
    text = (f"{label}: over widths {int(by.index.min())}–{int(by.index.max())}, test error peaks at width "
            f"{peak['test_error']} ({_pct(float(by['test_error'].max()))}); median deviation peaks at width "
            f"{peak['median_deviation']}, median density at width {peak['median_density']}")
    numbers = {"peaks": peak, "widths": [int(w) for w in by.index]}
    if "median_cos" in by and by["median_cos"].notna().all():
        at_peak, widest = float(by["median_cos"].loc[peak["test_error"]]), float(by["median_cos"].iloc[-1])
        text += (f"; local similarity (median cosine between adjacent regions' slopes) is {at_peak:.3f} at the test-"
                 f"error peak and {widest:.3f} at width {int(by.index.max())}, "
                 f"{'higher' if widest > at_peak else 'lower' if widest < at_peak else 'the same'} past it")
        numbers["cos_at_peak"], numbers["cos_widest"] = at_peak, widest
    return [Finding("double_descent", label, text + ".", numbers)]
