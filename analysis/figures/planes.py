"""One plane's linear regions drawn as polygons, SplineCam style, with its captions.

    from analysis.figures import plane_figure
    plane_figure(result, images=(x0, x1, x2), color="class").savefig("plane.png")

Drawing only: the regions come from :func:`pipeline.engine.planes.discover_plane` (through
:func:`pipeline.stages.plane_run.run_plane`, a plane store, or the aggregation's cache,
:mod:`analysis.plane_runs`).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from ..config import AnalysisError

__all__ = ["plane_figure", "plane_colors", "plane_labels", "plane_caption"]


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


def _plane_image(img, plane: int, n_planes: int):
    """Row ``plane`` of a ``(P, C, H, W)`` batch of corners (as ``discover_plane`` takes them);
    any other shape as it is."""
    if getattr(img, "ndim", np.ndim(img)) != 4:
        return img
    if len(img) != n_planes:
        raise ValueError(f"images: a batch of {len(img)} corner images for a result of {n_planes} plane(s); "
                         "pass the batches given to discover_plane, or one (C, H, W) image per corner")
    return img[plane]


def plane_figure(result, plane: int = 0, images=None, color: str = "class", logit: int | None = None,
                 title: str = "", labels=None, class_names=None, figsize=(6.4, 5.8),
                 boundary: bool = False) -> Figure:
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
        its own range). The ``(P, C, H, W)`` batches given to ``discover_plane`` are taken as
        they are: row ``plane`` of each is drawn.
    labels : sequence of three str, optional
        A caption under each inset (e.g. ``"#12, label 3"``).
    class_names : sequence of str, optional
        Legend names of the classes (default their indices).
    title : str
        Prepended to the default title (region count and density).
    boundary : bool
        Draw the decision boundary inside the plane (the ties of the top two logits within regions,
        :func:`pipeline.engine.planes.stats.decision_boundary`) as one ``LineCollection`` over
        the regions, and give its length in the title.
    """
    from matplotlib.collections import PolyCollection

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
        _fill_by_class(ax, coll, values, result, sl, class_names)
    else:
        _fill_by_logit(fig, ax, coll, values, k)
    ax.add_collection(coll)
    corners = _to_picture(np.array(((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)) if result.domain != "triangle"
                                   else ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0))), result.domain)
    ax.plot(*np.vstack([corners, corners[:1]]).T, color="black", linewidth=0.8)
    ax.set_aspect("equal")
    ax.set_axis_off()
    top, right = corners[:, 1].max(), corners[:, 0].max()
    ax.set_xlim(-INSET - 0.08, right + INSET + 0.08)
    ax.set_ylim(-0.55 * INSET - 0.1, top + INSET + 0.12)
    if images is not None:
        _draw_insets(ax, [_plane_image(img, plane, result.n_planes) for img in images], labels, corners,
                     result.domain)
    dens = float(result.density[plane])
    head = f"{n:,} linear regions · density {dens:,.4g} per unit (u, v) area"
    if boundary:
        head += f"\ndecision boundary: {_draw_boundary(ax, result, plane):.3g} (u, v) units long"
    ax.set_title(f"{title}\n{head}" if title else head, fontsize=9)
    return fig


def _draw_boundary(ax, result, plane: int) -> float:
    """The decision boundary of ``plane`` as one ``LineCollection`` (white under black, seen on any
    fill); returns its length in ``(u, v)`` units."""
    from matplotlib.collections import LineCollection
    from pipeline.engine.planes.stats import decision_boundary

    if result.intercept is None:
        raise AnalysisError("this plane result kept no affine maps (keep_affine=False): no decision boundary")
    segs = decision_boundary(result, plane)
    xy = _to_picture(segs.reshape(-1, 2), result.domain).reshape(-1, 2, 2)
    for color, width in (("white", 2.4), ("black", 1.1)):
        ax.add_collection(LineCollection(xy, colors=color, linewidths=width, capstyle="round",
                                         label="decision boundary" if color == "black" else None))
    return float(np.linalg.norm(segs[:, 1] - segs[:, 0], axis=1).sum())


INSET = 0.24  # the corner images' size, in picture units (the triangle's side is 1)


def _fill_by_class(ax, coll, values: np.ndarray, result, sl: slice, class_names) -> None:
    """Regions coloured by predicted class (a qualitative colormap) and a legend of the classes
    present, each with its share of the domain's area."""
    from matplotlib import colormaps
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

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


def _fill_by_logit(fig, ax, coll, values: np.ndarray, k: int) -> None:
    """Regions coloured by logit ``k`` (a diverging colormap) and a colorbar."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

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


def _draw_insets(ax, images, labels, corners: np.ndarray, domain: str) -> None:
    """The three corner images as small insets: x0 below left of its corner, x1 below right, x2
    above its corner (the parallelogram's fourth corner x1 + x2 - x0 gets none)."""
    if len(images) != 3:
        raise ValueError(f"images: pass the three corners x0, x1, x2, got {len(images)}")
    s, top = INSET, corners[:, 1].max()
    spots = [(-s - 0.03, -0.55 * s), (corners[1, 0] + 0.03, -0.55 * s),
             (corners[-1, 0] - s / 2 if domain == "triangle" else -s - 0.03, top + 0.04)]
    for i, (img, (x, y)) in enumerate(zip(images, spots)):
        inset = ax.inset_axes((x, y, s, s), transform=ax.transData)
        a, cmap = _image_rgb(img)
        inset.imshow(a, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        inset.set_xticks([])
        inset.set_yticks([])
        inset.set_label(f"x{i}")
        text = f"x{i}" + (f": {labels[i]}" if labels is not None else "")
        inset.set_title(text, fontsize=7, pad=2) if i == 2 else inset.set_xlabel(text, fontsize=7, labelpad=2)


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
