"""Figures of a whole sweep from the per-path table: ECDFs, noise, test loss, double descent,
paired differences, and 2-D against 1-D density.

    from analysis.figures import ecdf_figure
    ecdf_figure(table[table.model == "vgg8"]).savefig("ecdf.png")
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..config import AnalysisConfig
from ..tables import PAIRED_MEASURES, present
from .common import LABELS, curve_label, style

__all__ = ["ecdf_figure", "noise_figure", "test_loss_figure", "double_descent_figure", "density2d_figure",
           "paired_hist_figure"]


def ecdf_figure(rows: pd.DataFrame, config: AnalysisConfig = AnalysisConfig(), title: str = "") -> Figure:
    """ECDFs over paths of absolute deviation and of density, one curve per setting (seeds
    pooled); the initialisations of all settings are pooled into one curve.

    Parameters
    ----------
    rows : pandas.DataFrame
        Per-path rows of one data/architecture/path-set group.
    """
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    trained = rows[rows["checkpoint"] == config.trained]
    curves = [(curve_label(s, n, config.trained), g) for (s, n), g in
              trained.groupby(["setting", "noise"], sort=True)]
    init = rows[rows["checkpoint"] == config.init]
    if len(init):
        curves.append(("initialisation (all settings)", init))
    for ax, measure in zip(axes, ("deviation", "density")):
        for label, g in curves:
            x = np.sort(g[measure].to_numpy(dtype=float))
            ax.step(np.r_[x[:1], x], np.arange(x.size + 1) / x.size, where="post", label=f"{label} (n={x.size})")
        ax.set_xlabel(LABELS[measure])
        ax.set_ylabel("fraction of paths ≤ x")
        if measure == "deviation" and len(rows) and (rows[measure] > 0).all():
            ax.set_xscale("log")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title or "ECDF over paths")
    return style(fig)


def noise_figure(medians: pd.DataFrame, title: str = "") -> Figure:
    """Median density and median deviation per network vs label-noise fraction, mean ± std
    over seeds (rows of :func:`analysis.tables.noise_medians` for one group)."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    m = medians.sort_values("noise")
    for ax, measure in zip(axes, ("density", "deviation")):
        ax.errorbar(m["noise"], m[f"median_{measure}_mean"], yerr=m[f"median_{measure}_std"].fillna(0.0),
                    marker="o", capsize=3, label="mean ± std over seeds")
        ax.set_xlabel("label-noise fraction p")
        ax.set_ylabel(f"median {LABELS[measure]}")
        ax.legend(fontsize=8)
    fig.suptitle(title or "Median measures vs label noise")
    return style(fig)


def _measure_axes(fig: Figure) -> list:
    """One panel per paired measure, three to a row (the grid's spare panels removed)."""
    rows = -(-len(PAIRED_MEASURES) // 3)
    axes = list(fig.subplots(rows, 3).ravel())
    for ax in axes[len(PAIRED_MEASURES):]:
        ax.remove()
    return axes[:len(PAIRED_MEASURES)]


def _per_network(rows: pd.DataFrame) -> pd.DataFrame:
    keys = ["run_id", "checkpoint", "path_set", "setting", "noise", "seed", "dataset", "model", "width"]
    return rows.groupby(keys, sort=True, dropna=False).agg(
        **{m: (m, "median") for m in present(PAIRED_MEASURES, rows)},
        **{c: (c, "first") for c in ("train_error", "test_error", "test_loss")}).reset_index()


def test_loss_figure(rows: pd.DataFrame, config: AnalysisConfig = AnalysisConfig(), title: str = "") -> Figure:
    """Each measure (median over paths of each trained network) against the network's test
    loss, over all networks of the rows given; one colour per setting, one marker per model."""
    nets = _per_network(rows[rows["checkpoint"] == config.trained])
    fig = Figure(figsize=(15, 8), layout="constrained")
    axes = _measure_axes(fig)
    markers = dict(zip(sorted(nets["model"].unique()), "osD^vP*X"))
    colors = {s: f"C{i % 10}" for i, s in enumerate(sorted(nets["setting"].unique()))}
    for ax, measure in zip(axes, PAIRED_MEASURES):
        if measure not in nets:
            continue
        for (setting, model), g in nets.groupby(["setting", "model"], sort=True):
            ax.scatter(g["test_loss"], g[measure], marker=markers[model], color=colors[setting],
                       label=f"{setting} · {model}", alpha=0.8)
        ax.set_xlabel(LABELS["test_loss"])
        ax.set_ylabel(f"median {LABELS[measure]}")
    if len(nets):
        axes[0].legend(fontsize=8)
    fig.suptitle(title or "Measures vs test loss (one point per trained network)")
    return style(fig)


def double_descent_figure(rows: pd.DataFrame, config: AnalysisConfig = AnalysisConfig(), title: str = "") -> Figure:
    """Median deviation, density and effective density, train and test error vs model width (the
    double-descent sweep), mean ± std over seeds, log-2 width axis."""
    nets = _per_network(rows[rows["checkpoint"] == config.trained])
    per_width = nets.groupby("width", sort=True)
    fig = Figure(figsize=(15, 8), layout="constrained")
    axes = _measure_axes(fig)
    panels = [("deviation", "median "), ("density", "median "), ("effective_density", "median "),
              ("train_error", ""), ("test_error", "")]
    for ax, (col, prefix) in zip(axes, panels):
        if col not in nets:
            continue
        mean, std = per_width[col].mean(), per_width[col].std(ddof=1).fillna(0.0)
        ax.errorbar(mean.index, mean.to_numpy(), yerr=std.to_numpy(), marker="o", capsize=3)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(mean.index), [str(w) for w in mean.index])
        ax.minorticks_off()
        ax.set_xlabel("width k")
        ax.set_ylabel(prefix + LABELS[col])
    fig.suptitle(title or "Double descent: measures and error vs width (mean ± std over seeds)")
    return style(fig)


def density2d_figure(per_network: pd.DataFrame, title: str = "") -> Figure:
    """2-D against 1-D density, one point per network and checkpoint
    (:func:`analysis.planes.plane_vs_line`): left, the median regions per plane against the
    median regions per path through the same images (log axes); right, the image-by-image
    Spearman correlation of each network. One colour per setting, one marker per checkpoint."""
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    markers = dict(zip(sorted(per_network["checkpoint"].unique()), "os^Dv"))
    colors = {s: f"C{i % 10}" for i, s in enumerate(sorted(per_network["setting"].unique()))}
    for (setting, checkpoint), g in per_network.groupby(["setting", "checkpoint"], sort=True):
        kw = dict(marker=markers[checkpoint], color=colors[setting], alpha=0.8, label=f"{setting} · {checkpoint}")
        left.scatter(g["density_1d"], g["regions_2d"], **kw)
        ranked = g[np.isfinite(g["rho_density"].to_numpy(dtype=float))]  # Spearman needs 3+ images
        right.scatter(ranked["density_1d"], ranked["rho_density"], **kw)
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("median regions per path (1-D)")
    left.set_ylabel("median regions per plane (2-D)")
    if np.isfinite(per_network["rho_density"].to_numpy(dtype=float)).any():
        right.set_xscale("log")  # a log axis with no point on it cannot be drawn
    else:
        right.text(0.5, 0.5, "no network has the 3 images a rank correlation needs",
                   ha="center", va="center", transform=right.transAxes, color="0.4")
    right.axhline(0.0, color="0.6", lw=0.8, ls="--")
    right.set_ylim(-1.05, 1.05)
    right.set_xlabel("median regions per path (1-D)")
    right.set_ylabel("Spearman over images, 1-D vs 2-D density")
    if len(per_network):
        left.legend(fontsize=7)
    fig.suptitle(title or "2-D against 1-D density on the same images (one point per network)")
    return style(fig)


def paired_hist_figure(pairs: pd.DataFrame, title: str = "") -> Figure:
    """Histograms of the paired differences (after − before) per measure, one outline per
    setting and noise level (seeds pooled); the dashed line marks no change."""
    fig = Figure(figsize=(15, 8), layout="constrained")
    axes = _measure_axes(fig)
    for ax, measure in zip(axes, PAIRED_MEASURES):
        d = pairs[pairs["measure"] == measure]
        if d.empty:
            continue
        groups = list(d.groupby(["setting", "noise"], sort=True))
        largest = max(len(g) for _, g in groups)
        bins = np.histogram_bin_edges(d["difference"].to_numpy(dtype=float), bins=min(30, max(5, largest // 3)))
        for (setting, noise), g in groups:
            x = g["difference"].to_numpy(dtype=float)
            ax.hist(x, bins=bins, histtype="step", linewidth=1.5,
                    label=f"{curve_label(setting, noise, 'final')} (n={x.size})")
        ax.axvline(0.0, color="k", linestyle="--", linewidth=1)
        ax.set_xlabel(f"{LABELS[measure]}: after − before")
        ax.set_ylabel("paths")
    if len(pairs):
        axes[0].legend(fontsize=8)
    fig.suptitle(title or "Paired differences per path")
    return style(fig)
