"""One path of a store drawn: the network's logits along it, its interpolating lines and its
breakpoints.

    from analysis.figures import path_figure
    path_figure("runs/<id>/regions/final-<hash>.zarr", path_id=12).savefig("path.pdf")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..config import AnalysisError
from .common import style

__all__ = ["path_profile", "path_figure", "RUG_MAX", "STRIP_BINS"]


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
        The path does not exist in the store (or may be in a shard not complete), or the store
        kept no affine maps. ``store``: a store's folder, or the reader :func:`pipeline.open_store` returns.
    """
    from pipeline.store.lines import open_store

    if hasattr(store, "segment_indices"):  # the reader open_store returns
        reader, store = store, store.path
    else:
        store = Path(store)
        reader = open_store(store, allow_incomplete=True)  # damaged shards are left out: never drawn
    indices = reader.segment_indices(path_id)
    if not indices:
        raise AnalysisError(reader.not_found(f"path {path_id}", reader.path_ids()).args[0])
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
    style(fig)
    strip.grid(False, axis="y")
    strip.set_title(kind, loc="right", fontsize=7, color="0.3", pad=2)
    return fig
