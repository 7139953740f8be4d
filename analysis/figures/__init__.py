"""The paper's figures from the per-path table (and, for one path at a time, from a store).

    from analysis import figures
    fig = figures.ecdf_figure(table[table.model == "vgg8"])
    fig.savefig("ecdf.png")
    figures.path_figure("runs/<id>/regions/final-<hash>.zarr", path_id=12).savefig("path.pdf")

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot, so it works on
a headless machine (the Agg canvas renders PNG, the PDF canvas PDF), inside Dask workers and in
notebooks alike. The figures only draw: what they show is computed before (the tables, and the
planes by :mod:`analysis.plane_runs`).

Modules: ``sweep`` (figures of the per-path table), ``paths`` (one path of a store),
``planes`` (one plane's regions), ``draw`` (:func:`draw_all`: the whole set for a sweep, into a
folder), ``common`` (labels, style, file names).
"""

from .common import LABELS
from .draw import PLANES_JSON, draw_all, draw_density2d, draw_planes
from .paths import RUG_MAX, STRIP_BINS, path_figure, path_profile
from .planes import plane_caption, plane_colors, plane_figure, plane_labels
from .sweep import (density2d_figure, double_descent_figure, ecdf_figure, noise_figure, paired_hist_figure,
                    test_loss_figure)

__all__ = ["LABELS", "ecdf_figure", "noise_figure", "test_loss_figure", "double_descent_figure",
           "density2d_figure", "paired_hist_figure", "path_profile", "path_figure", "plane_figure", "plane_colors",
           "plane_labels", "plane_caption", "draw_all", "draw_density2d", "draw_planes", "PLANES_JSON", "RUG_MAX",
           "STRIP_BINS"]
