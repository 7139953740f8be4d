"""How much sampling misses as N grows, and how local complexity ranks paths against the exact count.

    from analysis.local_complexity import lc_vs_density, sampling_recall
    from analysis.figures.sampling import sampling_figure
    sampling_figure(sampling_recall(table), lc_vs_density(table, lc)).savefig("sampling.png")

Drawing only: the numbers are :func:`analysis.local_complexity.sampling_recall` (per network and
``N``, the mean over paths of ``sampled_density_N / density``) and
:func:`analysis.local_complexity.lc_vs_density` (per network, Spearman of the local complexity of
Humayun et al. 2024 against the exact density across paths).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .common import style

__all__ = ["sampling_figure"]


def _label(row) -> str:
    return f"{row['model']} {row['run_id']} ({row['checkpoint']})"


def sampling_figure(recall: pd.DataFrame, lc_corr: pd.DataFrame | None = None) -> Figure:
    """Left: recall (``sampled_density_N / density``, mean over paths) against ``N`` on a log
    axis, one line per network, the minimum over paths dotted. Right, when ``lc_corr`` has rows:
    per network, the Spearman correlation of LC with the exact density across paths."""
    if recall.empty:
        raise ValueError("no sampled_density_<N> columns in the table: nothing to draw")
    right = lc_corr is not None and len(lc_corr) > 0
    fig = Figure(figsize=(10 if right else 5.5, 4), layout="constrained")
    axes = fig.subplots(1, 2 if right else 1, squeeze=False)[0]
    ax = axes[0]
    for _, g in recall.groupby(["run_id", "model", "checkpoint", "store"], sort=True):
        g = g.sort_values("n")
        line, = ax.plot(g["n"], g["recall"], marker="o", label=_label(g.iloc[0]))
        ax.plot(g["n"], g["recall_min"], ls=":", color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(recall["n"].unique()), [str(n) for n in sorted(recall["n"].unique())])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("points per segment N")
    ax.set_ylabel("regions seen / regions (mean; dotted: min over paths)")
    ax.set_title("what sampling misses", fontsize=10)
    if recall.groupby(["run_id", "checkpoint", "store"]).ngroups <= 8:
        ax.legend(fontsize=7)
    if right:
        bx = axes[1]
        c = lc_corr.reset_index(drop=True)
        y = np.arange(len(c))
        bx.barh(y, c["spearman_lc_density"].fillna(0.0), color="tab:gray")
        bx.set_yticks(y, [_label(r) for _, r in c.iterrows()], fontsize=7)
        bx.set_xlim(-1, 1)
        bx.axvline(0, color="k", lw=0.8)
        bx.set_xlabel("Spearman(local complexity, exact density) across paths")
        bx.set_title("local complexity against the exact count", fontsize=10)
    return style(fig)
