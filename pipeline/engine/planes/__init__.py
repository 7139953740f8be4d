"""Exact 2-D slices: every linear region of a network on a plane through three inputs.

The plane ``x(u, v) = x0 + u (x1 - x0) + v (x2 - x0)`` over the triangle ``u, v >= 0,
u + v <= 1`` (``domain="triangle"``) or the unit square in ``(u, v)``
(``domain="parallelogram"``) is partitioned into the convex polygons on which the network is
affine: its linear regions, i.e. the sets of constant activation pattern (ReLU signs, clamp
states, max-pool argmaxes).

Algorithm (the 2-D analogue of :mod:`pipeline.engine.subdivide`, sharing its traced graph, op
recognition and graph runner):

* The domain is a set of convex *pieces*, each with its own vertex list (CSR, CCW). Every
  live tensor of the graph is carried at every vertex, so affine ops (linear, conv, BN in
  eval, residual adds, avg-pool, reshapes) run on vertex values directly; before each
  piecewise-linear op every tensor is affine on each piece.
* At a PWL op with input ``z``, a piece needs a cut iff some unit's state differs between its
  vertices: a ReLU / clamp input above ``+tol`` at one vertex and below ``-tol`` at another;
  for a max-pool window, no candidate is (within ``tol``) the max at every vertex (if one
  is, it is the max on the whole piece: ``z_a - z_j`` is affine). Each such piece is cut, one
  line per round, by a randomly chosen offending unit's zero line (for a window, the line
  ``z_a = z_b`` of the argmaxes at two vertices, picked so that it strictly separates them)
  with Sutherland-Hodgman clipping, vectorised over pieces; new vertices interpolate every
  live tensor along the crossed edge (exact: it is affine there). Vertices with ``|s| <= tol``
  lie on the line (``tol`` = ``rel_tol`` x the unit's largest ``|z|`` over the tile), and
  pieces below ``min_area`` x the domain's area are dropped (counted in ``dropped_*``).
  Rounds repeat until no piece needs a cut; then the state of every unit at each piece's
  vertex mean (an interior point) is folded into two 64-bit hashes of the piece's activation
  pattern, and the op is applied at the vertices with that state (so vertex values follow the
  piece's affine map exactly, and a unit off on a piece is exactly zero there).
* Memory: when a tile's vertices pass ``max_vertices`` (during the cut rounds or after an op)
  its pieces are split into groups that continue depth-first (mid-op, the op is run again on
  each group: cutting is stateless).
* At the output, pieces are merged by (plane, pattern hashes): one pattern is a convex set,
  so a region's polygon is the convex hull of its pieces' vertices, its area their sum.
  Pieces merge where a cut along ``z_a = z_b`` crossed an area where a third candidate is the
  max. The region's affine map is the least-squares fit over its vertices' outputs; its
  certificate ``region_gap`` is the larger of the fit's residual at the vertices and the
  disagreement with a plain forward of the network at the centroid.

Modules, in the order the work flows: :mod:`~pipeline.engine.planes.discover` (the entry points
and the driver over chunks of planes), :mod:`~pipeline.engine.planes.tiles` (pieces as CSR
vertex lists), :mod:`~pipeline.engine.planes.mode` (the graph mode that cuts them at each
piecewise-linear op), :mod:`~pipeline.engine.planes.cuts` (one round of cuts),
:mod:`~pipeline.engine.planes.assemble` (pieces to regions, maps and measures),
:mod:`~pipeline.engine.planes.certify` (the centroid certificate),
:mod:`~pipeline.engine.planes.geometry` (polygon geometry on the host),
:mod:`~pipeline.engine.planes.result` (:class:`PlaneResult` and :data:`DOMAINS`) and, after
discovery, :mod:`~pipeline.engine.planes.stats` (the partition's statistics: areas, adjacency,
decision boundary, gradient jumps).
"""

from pipeline.engine.certificate import CertificateError, CertificateWarning
from pipeline.engine.planes.discover import MIN_AREA, default_rel_tol, discover_plane, discover_plane_iter
from pipeline.engine.planes.result import DOMAINS, PlaneResult, domain_area

__all__ = ["PlaneResult", "discover_plane", "discover_plane_iter", "DOMAINS", "MIN_AREA", "default_rel_tol",
           "domain_area", "CertificateError", "CertificateWarning"]
