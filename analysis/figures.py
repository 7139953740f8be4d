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
           "paired_hist_figure", "path_profile", "path_figure", "plane_figure", "plane_colors",
           "plane_labels", "plane_caption", "draw_all"]

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
        right.scatter(g["density_1d"], g["rho_density"], **kw)
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("median regions per path (1-D)")
    left.set_ylabel("median regions per plane (2-D)")
    right.set_xscale("log")
    right.axhline(0.0, color="0.6", lw=0.8, ls="--")
    right.set_ylim(-1.05, 1.05)
    right.set_xlabel("median regions per path (1-D)")
    right.set_ylabel("Spearman over images, 1-D vs 2-D density")
    if len(per_network):
        left.legend(fontsize=7)
    fig.suptitle(title or "2-D against 1-D density on the same images (one point per network)")
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
    from pipeline.store.lines import open_store

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


# the plane's domain drawn as an equilateral triangle (x0 bottom left, x1 bottom right, x2 on
# top) or as the unit square: (u, v) -> (u + v / 2, v sqrt(3) / 2), or the identity
_EQUILATERAL = np.array([[1.0, 0.0], [0.5, np.sqrt(3) / 2]])


def _to_picture(uv: np.ndarray, domain: str) -> np.ndarray:
    return uv @ _EQUILATERAL if domain == "triangle" else np.asarray(uv, dtype=np.float64)


def plane_colors(result, plane: int = 0, color: str = "class", logit: int | None = None) -> tuple[np.ndarray, int]:
    """Per region of ``plane``: the predicted class (argmax of the region's affine map at its
    centroid, ``color="class"``) or logit ``logit``'s value there (``"logit"``; default the
    class predicted at ``x0``). Returns ``(values (R,), logit)``."""
    if result.intercept is None:
        raise AnalysisError("this plane result kept no affine maps (keep_affine=False): nothing to colour by")
    sl = result.region_slice(plane)
    c = result.centroid[sl]
    f = result.intercept[sl] + c[:, :1] * result.grad[sl, 0] + c[:, 1:] * result.grad[sl, 1]
    if color == "class":
        return f.argmax(1), -1
    if color != "logit":
        raise ValueError(f"color must be 'class' or 'logit', got {color!r}")
    k = int(result.f_corners[plane, 0].argmax()) if logit is None else int(logit)
    if not 0 <= k < f.shape[1]:
        raise ValueError(f"logit {k} out of range: the network has {f.shape[1]} outputs")
    return f[:, k], k


def _image_rgb(img) -> tuple[np.ndarray, str | None]:
    """A ``(C, H, W)`` / ``(H, W)`` image (tensor or array) scaled to [0, 1] on its own range,
    as ``(H, W)`` (grey) or ``(H, W, 3)``."""
    a = np.asarray(img.detach().cpu() if hasattr(img, "detach") else img, dtype=np.float64)
    if a.ndim == 3 and a.shape[0] in (1, 3):
        a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    elif a.ndim == 3:
        a = a[0]  # another channel count: its first channel
    elif a.ndim != 2:
        raise ValueError(f"an inset image must be (C, H, W) or (H, W), got shape {a.shape}")
    lo, hi = np.nanmin(a), np.nanmax(a)
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return a, ("gray" if a.ndim == 2 else None)


def plane_figure(result, plane: int = 0, images=None, color: str = "class", logit: int | None = None,
                 title: str = "", labels=None, class_names=None, figsize=(6.4, 5.8)) -> Figure:
    """The linear regions of one plane of a :class:`pipeline.engine.planes.PlaneResult`, SplineCam style.

    Each region is a polygon, mapped from ``(u, v)`` to an equilateral triangle (``x0`` bottom
    left, ``x1`` bottom right, ``x2`` on top; the unit square for a parallelogram domain),
    filled by the class the network predicts at its centroid (``color="class"``: a qualitative
    colormap, a legend of the classes present) or by one logit's value there (``"logit"``, by
    default the class predicted at ``x0``: a diverging colormap centred on 0, a colorbar). Thin
    dark edges show the partition; all polygons are one ``PolyCollection`` (rasterised in
    vector formats), so tens of thousands of regions draw in seconds.

    Parameters
    ----------
    images : sequence of three ``(C, H, W)`` tensors or arrays, optional
        ``x0, x1, x2``, drawn as small insets at their corners (1- or 3-channel, each scaled to
        its own range).
    labels : sequence of three str, optional
        A caption under each inset (e.g. ``"#12, label 3"``).
    class_names : sequence of str, optional
        Legend names of the classes (default their indices).
    title : str
        Prepended to the default title (region count and density).
    """
    from matplotlib import colormaps
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import BoundaryNorm, ListedColormap, Normalize
    from matplotlib.patches import Patch

    if not 0 <= plane < result.n_planes:
        raise ValueError(f"plane {plane} out of range: the result has {result.n_planes} plane(s)")
    values, k = plane_colors(result, plane, color, logit)
    sl = result.region_slice(plane)
    off = result.vertex_offset[sl.start:sl.stop + 1]
    xy = _to_picture(result.uv[off[0]:off[-1]], result.domain)
    polys = np.split(xy, off[1:-1] - off[0])
    n = len(polys)
    edge = 0.5 if n < 300 else 0.3 if n < 3000 else 0.15 if n < 20000 else 0.08
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.subplots()
    coll = PolyCollection(polys, edgecolors=(0.1, 0.1, 0.1, 0.85), linewidths=edge, rasterized=True)
    if color == "class":
        n_classes = result.intercept.shape[1]
        base = colormaps["tab10" if n_classes <= 10 else "tab20"]
        cmap = ListedColormap([base(i % base.N) for i in range(n_classes)])
        coll.set_array(values.astype(np.float64))
        coll.set_cmap(cmap)
        coll.set_norm(BoundaryNorm(np.arange(n_classes + 1) - 0.5, n_classes))
        present = np.unique(values)
        names = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
        share = np.bincount(values, weights=result.area[sl], minlength=n_classes) / result.domain_area
        handles = [Patch(facecolor=cmap(int(c)), edgecolor="0.2", label=f"{names[c]} ({share[c]:.0%})")
                   for c in present]
        ax.legend(handles=handles, title="predicted class (area)", fontsize=8, title_fontsize=8,
                  loc="upper right", frameon=False, ncol=1 if len(handles) <= 6 else 2)
    else:
        lo, hi = float(values.min()), float(values.max())
        m = max(abs(lo), abs(hi))
        # white at 0 when the logit changes sign (the colorbar shows the values present only)
        norm = Normalize(-m, m) if lo < 0 < hi else Normalize(lo, hi if hi > lo else lo + 1)
        coll.set_array(values)
        coll.set_cmap(colormaps["RdBu_r"])
        coll.set_norm(norm)
        bar = fig.colorbar(coll, ax=ax, shrink=0.6, label=f"logit {k} at the region's centroid")
        if lo < 0 < hi:
            bar.ax.set_ylim(lo, hi)
    ax.add_collection(coll)
    corners = _to_picture(np.array(((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)) if result.domain != "triangle"
                                   else ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0))), result.domain)
    ax.plot(*np.vstack([corners, corners[:1]]).T, color="black", linewidth=0.8)
    ax.set_aspect("equal")
    ax.set_axis_off()
    s = 0.24  # inset size, in picture units
    top, right = corners[:, 1].max(), corners[:, 0].max()
    ax.set_xlim(-s - 0.08, right + s + 0.08)
    ax.set_ylim(-0.55 * s - 0.1, top + s + 0.12)
    if images is not None:
        if len(images) != 3:
            raise ValueError(f"images: pass the three corners x0, x1, x2, got {len(images)}")
        # x0 below left of its corner, x1 below right, x2 above its corner (the parallelogram's
        # fourth corner x1 + x2 - x0 gets none)
        spots = [(-s - 0.03, -0.55 * s), (corners[1, 0] + 0.03, -0.55 * s),
                 (corners[-1, 0] - s / 2 if result.domain == "triangle" else -s - 0.03, top + 0.04)]
        for i, (img, (x, y)) in enumerate(zip(images, spots)):
            inset = ax.inset_axes((x, y, s, s), transform=ax.transData)
            a, cmap = _image_rgb(img)
            inset.imshow(a, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            inset.set_xticks([])
            inset.set_yticks([])
            inset.set_label(f"x{i}")
            text = f"x{i}" + (f": {labels[i]}" if labels is not None else "")
            inset.set_title(text, fontsize=7, pad=2) if i == 2 else inset.set_xlabel(text, fontsize=7, labelpad=2)
    dens = float(result.density[plane])
    head = f"{n:,} linear regions · density {dens:,.4g} per unit (u, v) area"
    ax.set_title(f"{title}\n{head}" if title else head, fontsize=9)
    return fig


def plane_labels(out: dict) -> list[str]:
    """Inset captions for a :func:`pipeline.stages.plane_run.run_plane` result: each image's index,
    label and predicted class (the shrunk corners say how far towards which image they are)."""
    idx, lab, pred, s = out["indices"], out["labels"], out["predicted"], out["scale"]
    text = [f"#{i}, label {y}" + (f" (pred. {p})" if p != y else "") for i, y, p in zip(idx, lab, pred)]
    if s < 1:
        text[1:] = [f"{s:g} of the way to {t}" for t in text[1:]]
    return text


def plane_caption(out: dict) -> str:
    """One line for a :func:`pipeline.stages.plane_run.run_plane` result: regions, density, time."""
    r = out["result"]
    shrunk = f", triangle shrunk by {out['scale']:g} towards x0" if out["scale"] < 1 else ""
    dom = "triangle" if out["domain"] == "triangle" else "parallelogram"
    return (f"{int(r.n_regions[0]):,} linear regions on the {dom} through {out['split']} images "
            f"{', '.join(map(str, out['indices']))}{shrunk}; density {float(r.density[0]):,.4g} per unit (u, v) "
            f"area ({float(r.density_input[0]):,.4g} per unit input-space area); found in {out['seconds']:.1f} s")


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
    if config.planes and sweep_root is not None:
        written += draw_planes(table, Path(sweep_root), out, config)
    return written


def draw_density2d(per_network: pd.DataFrame, out_dir, config: AnalysisConfig = AnalysisConfig()) -> list[Path]:
    """One :func:`density2d_figure` per data set, architecture and plane set; returns the files
    written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for k, rows in per_network.groupby(["dataset", "model", "width", "planes", "plane_set"], sort=True):
        fig = density2d_figure(rows, title=f"2-D against 1-D density — {k[0]} · {k[1]} (width {k[2]}) · "
                                           f"{k[3]} {k[4]}")
        written += _save(fig, out, _slug("density2d", *k[:3], k[3].replace("/", "_"), k[4]), config)
    return written


PLANES_JSON = "planes.json"  # beside the plane figures: their captions and notes, for the report


def _plane_runs(table: pd.DataFrame, root: Path, config: AnalysisConfig) -> tuple[dict, list[str]]:
    """Per architecture, up to ``config.planes`` run folders with a ``trained`` checkpoint
    (vanilla first, then the other settings; lowest seed first), and notes on the missing."""
    trained = table[table["checkpoint"] == config.trained]
    chosen, notes = {}, []
    if not config.planes:
        return chosen, notes
    for model, rows in trained.groupby("model", sort=True):
        runs = rows.drop_duplicates("run_id").assign(_v=lambda d: d["setting"] != "vanilla")
        runs = runs.sort_values(["_v", "setting", "noise", "seed", "run_id"])
        found, missing = [], 0
        for r in runs.itertuples():
            run_dir = (root / r.store).parents[1]  # <run>/regions/<store>.zarr
            if (run_dir / "checkpoints" / f"{config.trained}.pt").is_file():
                found.append((run_dir, r))
            else:
                missing += 1
            if len(found) == config.planes:
                break
        if found:
            chosen[model] = found
        if len(found) < config.planes:
            notes.append(f"No plane figure for {model}" + (f" beyond {len(found)}" if found else "") +
                         f": {missing} of its runs have no checkpoints/{config.trained}.pt (the sweep's stores "
                         "were written without training checkpoints).")
    return chosen, notes


def draw_planes(table: pd.DataFrame, root: Path, out: Path, config: AnalysisConfig = AnalysisConfig()) -> list[Path]:
    """``config.planes`` plane figures per architecture (``plane-<model>-<run>-<checkpoint>``)
    and ``planes.json`` (their captions, timings and notes); returns the files written. A
    figure whose checkpoint, images and options are unchanged since the last call is kept,
    not computed again."""
    import json
    import time

    from pipeline.config import write_atomic
    from pipeline.stages.discovery import sha256
    from pipeline.stages.plane_run import run_plane

    out.mkdir(parents=True, exist_ok=True)
    meta_file = out / PLANES_JSON
    old = {}
    if meta_file.is_file():
        try:
            old = {p["key"]: p for p in json.loads(meta_file.read_text()).get("planes", [])}
        except (ValueError, KeyError, TypeError):
            old = {}
    chosen, notes = _plane_runs(table, root, config)
    planes, written = [], []
    for model, runs in chosen.items():
        for run_dir, r in runs:
            ckpt = run_dir / "checkpoints" / f"{config.trained}.pt"
            key = json.dumps({"sha256": sha256(ckpt), "scale": config.plane_scale, "seed": config.plane_seed,
                              "color": config.plane_color, "formats": list(config.formats)}, sort_keys=True)
            name = _slug("plane", model, r.run_id, config.trained)
            files = [out / f"{name}.{fmt}" for fmt in config.formats]
            if key in old and all(f.is_file() for f in files):
                planes.append(old[key])
                written += files
                continue
            t0 = time.perf_counter()
            res = run_plane(run_dir, config.trained, scale=config.plane_scale, seed=config.plane_seed)
            setting = f"{r.setting}{f' p={r.noise:g}' if r.noise else ''}"
            fig = plane_figure(res["result"], images=res["corners"], color=config.plane_color,
                               labels=plane_labels(res),
                               title=f"{model} · {setting}, seed {r.seed} · {config.trained} · run {r.run_id}")
            written += _save(fig, out, name, config)
            total = time.perf_counter() - t0
            caption = (f"{model} ({setting}, seed {r.seed}, run {r.run_id}, checkpoint {config.trained}): "
                       f"{plane_caption(res)}; {total:.1f} s with loading and drawing.")
            planes.append({"key": key, "file": f"{name}.png", "model": model, "run_id": r.run_id,
                           "regions": int(res["result"].n_regions[0]), "density": float(res["result"].density[0]),
                           "scale": config.plane_scale, "indices": [int(i) for i in res["indices"]],
                           "seconds": res["seconds"], "total_seconds": total, "caption": caption})
    write_atomic(meta_file, json.dumps({"planes": planes, "notes": notes}, indent=1))
    return written + [meta_file]


def _draw_paths(table, root: Path, out: Path, config: AnalysisConfig) -> list[Path]:
    from pipeline.store.identity import store_attrs

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
