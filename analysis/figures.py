"""The paper's figures from the per-path table (and, for one path at a time, from a store).

    from analysis import figures
    fig = figures.ecdf_figure(table[table.model == "vgg8"])
    fig.savefig("ecdf.png")
    figures.path_figure("runs/<id>/regions/final-<hash>.zarr", path_id=12).savefig("path.pdf")

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot, so it works on
a headless machine (the Agg canvas renders PNG, the PDF canvas PDF), inside Dask workers and in
notebooks alike. :func:`draw_all` writes the whole set for a sweep.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .config import AnalysisConfig, AnalysisError
from .tables import GROUP, PAIRED_MEASURES

__all__ = ["LABELS", "ecdf_figure", "noise_figure", "test_loss_figure", "double_descent_figure",
           "paired_hist_figure", "path_profile", "path_figure", "draw_all"]

LABELS = {
    "density": "density (regions per path)",
    "density_per_length": "density per unit length",
    "deviation": "absolute deviation (L2 over logits)",
    "total_variation": "total variation (L2 over logits)",
    "train_error": "train error",
    "test_error": "test error",
    "test_loss": "test loss",
}


def _style(fig: Figure) -> Figure:
    for ax in fig.axes:
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=9)
    return fig


def _group_title(keys: dict) -> str:
    w = f" (width {keys['width']})" if "width" in keys else ""
    return f"{keys.get('dataset', '')} · {keys.get('model', '')}{w} · paths {keys.get('paths', '')}"


def _curve_label(setting, noise, checkpoint, trained="final") -> str:
    text = setting if not noise else f"{setting} p={noise:g}"
    return text if checkpoint == trained else f"{text} ({checkpoint})"


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
    curves = [(_curve_label(s, n, config.trained), g) for (s, n), g in
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
    return _style(fig)


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
    return _style(fig)


def _per_network(rows: pd.DataFrame) -> pd.DataFrame:
    keys = ["run_id", "checkpoint", "path_set", "setting", "noise", "seed", "dataset", "model", "width"]
    return rows.groupby(keys, sort=True, dropna=False).agg(
        **{m: (m, "median") for m in PAIRED_MEASURES},
        **{c: (c, "first") for c in ("train_error", "test_error", "test_loss")}).reset_index()


def test_loss_figure(rows: pd.DataFrame, config: AnalysisConfig = AnalysisConfig(), title: str = "") -> Figure:
    """Each measure (median over paths of each trained network) against the network's test
    loss, over all networks of the rows given; one colour per setting, one marker per model."""
    nets = _per_network(rows[rows["checkpoint"] == config.trained])
    fig = Figure(figsize=(10, 8), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    markers = dict(zip(sorted(nets["model"].unique()), "osD^vP*X"))
    colors = {s: f"C{i % 10}" for i, s in enumerate(sorted(nets["setting"].unique()))}
    for ax, measure in zip(axes, PAIRED_MEASURES):
        for (setting, model), g in nets.groupby(["setting", "model"], sort=True):
            ax.scatter(g["test_loss"], g[measure], marker=markers[model], color=colors[setting],
                       label=f"{setting} · {model}", alpha=0.8)
        ax.set_xlabel(LABELS["test_loss"])
        ax.set_ylabel(f"median {LABELS[measure]}")
    if len(nets):
        axes[0].legend(fontsize=8)
    fig.suptitle(title or "Measures vs test loss (one point per trained network)")
    return _style(fig)


def double_descent_figure(rows: pd.DataFrame, config: AnalysisConfig = AnalysisConfig(), title: str = "") -> Figure:
    """Median deviation, median density, train and test error vs model width (the
    double-descent sweep), mean ± std over seeds, log-2 width axis."""
    nets = _per_network(rows[rows["checkpoint"] == config.trained])
    per_width = nets.groupby("width", sort=True)
    fig = Figure(figsize=(10, 8), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    panels = [("deviation", "median "), ("density", "median "), ("train_error", ""), ("test_error", "")]
    for ax, (col, prefix) in zip(axes, panels):
        mean, std = per_width[col].mean(), per_width[col].std(ddof=1).fillna(0.0)
        ax.errorbar(mean.index, mean.to_numpy(), yerr=std.to_numpy(), marker="o", capsize=3)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(mean.index), [str(w) for w in mean.index])
        ax.minorticks_off()
        ax.set_xlabel("width k")
        ax.set_ylabel(prefix + LABELS[col])
    fig.suptitle(title or "Double descent: measures and error vs width (mean ± std over seeds)")
    return _style(fig)


def paired_hist_figure(pairs: pd.DataFrame, title: str = "") -> Figure:
    """Histograms of the paired differences (after − before) per measure, one outline per
    setting and noise level (seeds pooled); the dashed line marks no change."""
    fig = Figure(figsize=(10, 8), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
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
                    label=f"{_curve_label(setting, noise, 'final')} (n={x.size})")
        ax.axvline(0.0, color="k", linestyle="--", linewidth=1)
        ax.set_xlabel(f"{LABELS[measure]}: after − before")
        ax.set_ylabel("paths")
    if len(pairs):
        axes[0].legend(fontsize=8)
    fig.suptitle(title or "Paired differences per path")
    return _style(fig)


def path_profile(store, path_id: int) -> dict:
    """The network's output along one path, from a store that kept its affine maps.

    Segments are laid end to end in ``segment_index`` order, at their input-space lengths.

    Returns
    -------
    dict
        ``s`` (positions of the region boundaries along the path), ``f`` (``(len(s), K)``
        network values there: the output is affine in between, so these knots draw it
        exactly), ``line_s`` and ``line`` (the interpolating line of each segment, its two
        ends), ``breaks`` (positions of the breakpoints inside segments), ``anchors``
        (positions of the segment ends), ``offsets`` (``S + 1``: the knots of segment ``j`` are
        ``offsets[j]:offsets[j + 1]``).

    Raises
    ------
    AnalysisError
        The path is in no complete shard, or the store kept no affine maps.
    """
    from pipeline.store import open_store

    store = Path(store)
    reader = open_store(store, allow_incomplete=True)  # damaged shards are left out: never drawn
    indices = reader.segment_indices(path_id)
    if not indices:
        damaged = reader.status["damaged"]
        why = f" (damaged shards {damaged} are not read: `python -m jobs verify {store}`)" if damaged else ""
        raise AnalysisError(f"path {path_id} is in no complete shard of {store}{why}")
    s, f, line_s, line, breaks, anchors = [], [], [], [], [], [0.0]
    offset = 0.0
    for j in indices:
        seg = reader.segment(path_id, j)
        if seg["intercept"] is None:
            raise AnalysisError(f"{store} kept no affine maps (discovered with keep_affine=False): "
                                "its paths cannot be drawn")
        length = seg["length"]
        t0, t1, a, b = seg["t_start"], seg["t_end"], seg["intercept"], seg["slope"]
        t = np.append(t0, t1[-1])
        s.append(offset + t * length)
        f.append(np.vstack([a + b * t0[:, None], a[-1:] + b[-1:] * t1[-1]]))
        line_s += [offset, offset + length]
        line += [seg["f0"], seg["f1"]]
        breaks.append(offset + t0[1:] * length)
        offset += length
        anchors.append(offset)
    return {"s": np.concatenate(s), "f": np.vstack(f), "line_s": np.array(line_s), "line": np.array(line),
            "breaks": np.concatenate(breaks), "anchors": np.array(anchors),
            "offsets": np.cumsum([0] + [x.size for x in s])}


RUG_MAX = 300  # path_figure draws at most this many breakpoints as a rug, more as a density strip
STRIP_BINS = (30, 200)  # the density strip's bin count over the whole path: breakpoints / 10, clipped to this


def _strip_edges(anchors: np.ndarray, n_breaks: int) -> np.ndarray:
    """Bin edges for the density strip: about ``n_breaks / 10`` bins (within ``STRIP_BINS``)
    shared among the segments by length, every anchor an edge (no bin straddles two segments)."""
    lengths = np.diff(anchors)
    total = anchors[-1] - anchors[0]
    n = int(np.clip(n_breaks // 10, *STRIP_BINS))
    edges = [anchors[:1]]
    for a, length in zip(anchors[:-1], lengths):
        if length > 0:
            m = max(1, int(round(n * length / total)))
            edges.append(a + np.linspace(0.0, length, m + 1)[1:])
    return np.concatenate(edges)


def path_figure(store, path_id: int, logits=3, title: str = "") -> Figure:
    """The network's logits along one path (solid) and the interpolating line of each segment
    (dashed), with the breakpoints in a thin strip below; dotted verticals mark the anchors.

    The breakpoints are not marked on the curves (at thousands per path, ticks smear the curves
    into bands). The strip below, sharing the x axis, shows them as a rug of short vertical
    lines, one per breakpoint, when there are at most :data:`RUG_MAX` (300) of them, and
    otherwise as a histogram of breakpoints per unit length along the path: about one bin per
    ten breakpoints (30 to 200 bins, :data:`STRIP_BINS`), shared among the segments by length
    so that no bin straddles an anchor; the strip's area is the breakpoint count.
    """
    p = path_profile(store, path_id)
    ks = range(min(logits, p["f"].shape[1])) if isinstance(logits, int) else logits
    fig = Figure(figsize=(10, 5), layout="constrained")
    ax, strip = fig.subplots(2, 1, sharex=True, height_ratios=(5, 1))
    # the interpolating lines of all segments as one line per logit, broken between segments
    pairs = p["line_s"].reshape(-1, 2)
    line_s = np.column_stack([pairs, np.full(len(pairs), np.nan)]).ravel()
    for k in ks:
        color = f"C{k % 10}"
        ax.plot(p["s"], p["f"][:, k], color=color, linewidth=1.2, label=f"logit {k}: network")
        ends = p["line"][:, k].reshape(-1, 2)
        ax.plot(line_s, np.column_stack([ends, np.full(len(ends), np.nan)]).ravel(), color=color,
                linestyle="--", linewidth=1, label=f"logit {k}: interpolation")
    breaks = p["breaks"]
    if breaks.size <= RUG_MAX:
        strip.vlines(breaks, 0.0, 1.0, color="k", linewidth=0.7, alpha=0.8)
        strip.set_ylim(0.0, 1.0)
        strip.set_yticks([])
        strip.set_ylabel("breaks", fontsize=9)
        kind = "rug: one line per breakpoint"
    else:
        edges = _strip_edges(p["anchors"], breaks.size)
        counts, _ = np.histogram(breaks, bins=edges)
        strip.stairs(counts / np.diff(edges), edges, fill=True, color="0.35", linewidth=0)
        strip.set_ylim(bottom=0.0)
        strip.set_ylabel("breaks /\nunit length", fontsize=9)
        kind = f"density strip: breakpoints per unit length, {edges.size - 1} bins"
    for a in (ax, strip):
        a.vlines(p["anchors"], 0.0, 1.0, transform=a.get_xaxis_transform(), color="0.6", linestyle=":",
                 linewidth=0.8)
    strip.set_xlabel("distance along the path (input space)")
    ax.set_ylabel("logit value")
    ax.legend(fontsize=8, ncol=2)
    ax.set_title(title or f"path {path_id}: {breaks.size} breakpoints", fontsize=10)
    _style(fig)
    strip.grid(False, axis="y")
    strip.set_title(kind, loc="right", fontsize=7, color="0.3", pad=2)
    return fig


def _slug(*parts) -> str:
    text = "-".join(str(p) for p in parts if p is not None and str(p) != "")
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")


def _save(fig: Figure, out: Path, name: str, config: AnalysisConfig) -> list[Path]:
    written = []
    for fmt in config.formats:
        path = out / f"{name}.{fmt}"
        fig.savefig(path, dpi=150, metadata={"CreationDate": None} if fmt == "pdf" else None)
        written.append(path)
    return written


def draw_all(table: pd.DataFrame, pairs: pd.DataFrame, medians: pd.DataFrame, out_dir, sweep_root=None,
             config: AnalysisConfig = AnalysisConfig()) -> list[Path]:
    """Write every figure of a sweep into ``out_dir``; returns the files written.

    ECDFs per data/architecture/path-set group (double-descent runs excluded), median measures
    vs noise per group with noisy networks, measures vs test loss per path set, double descent
    per dataset and path set, paired-difference histograms per comparison and group, and
    ``config.path_plots`` paths of the first trained store that kept its affine maps (needs
    ``sweep_root``, to which the table's ``store`` column is relative).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    main = table[table["setting"] != "double_descent"]
    for k, rows in main.groupby(GROUP, sort=True):
        keys = dict(zip(GROUP, k))
        fig = ecdf_figure(rows, config, title=f"ECDF over paths — {_group_title(keys)}")
        written += _save(fig, out, _slug("ecdf", *k[:4], k[4]), config)
    for k, rows in medians.groupby(GROUP, sort=True):
        keys = dict(zip(GROUP, k))
        fig = noise_figure(rows, title=f"Median measures vs label noise — {_group_title(keys)}")
        written += _save(fig, out, _slug("noise", *k), config)
    for k, rows in table.groupby(["paths", "path_set"], sort=True):
        fig = test_loss_figure(rows, config, title=f"Measures vs test loss — paths {k[0]} (one point per network)")
        written += _save(fig, out, _slug("test-loss", *k), config)
    dd = table[table["setting"] == "double_descent"]
    for k, rows in dd.groupby(["dataset", "model", "paths", "path_set"], sort=True):
        fig = double_descent_figure(rows, config, title=f"Double descent — {k[0]} · {k[1]} · paths {k[2]}")
        written += _save(fig, out, _slug("double-descent", *k), config)
    for k, rows in pairs.groupby(["comparison"] + GROUP, sort=True):
        keys = dict(zip(GROUP, k[1:]))
        fig = paired_hist_figure(rows, title=f"Paired differences, {k[0]} — {_group_title(keys)}")
        written += _save(fig, out, _slug("paired", k[0].replace(" ", "_"), *k[1:]), config)
    if config.path_plots and sweep_root is not None:
        written += _draw_paths(table, Path(sweep_root), out, config)
    return written


def _draw_paths(table, root: Path, out: Path, config: AnalysisConfig) -> list[Path]:
    from pipeline.store import store_attrs

    trained = table[table["checkpoint"] == config.trained]
    for store in sorted(trained["store"].unique()):
        if not store_attrs(root / store).get("keep_affine", True):
            continue
        rows = trained[trained["store"] == store]
        written = []
        for pid in sorted(rows["path_id"].unique())[:config.path_plots]:
            r = rows[rows["path_id"] == pid].iloc[0]
            title = (f"{r['setting']}{f' p={r.noise:g}' if r['noise'] else ''}, seed {r['seed']}, run {r['run_id']}, "
                     f"path {pid}: {r['density']} regions, deviation {r['deviation']:.3g}")
            fig = path_figure(root / store, int(pid), config.logits, title=title)
            written += _save(fig, out, _slug("path", r["run_id"], r["checkpoint"], r["path_set"], pid), config)
        return written
    return []
