"""The Zarr store of plane regions: the 2-D counterpart of :mod:`pipeline.store.lines`'s segments.

Layout (the store's ``geometry`` attribute is ``"plane"``)::

    <checkpoint>-planes-<id>.zarr/  attrs: schema, geometry, model, checkpoint sha256, dataset, split,
                                    paths (the plane set's config), path_set, domain, dtype,
                                    plane_engine, n_shards, n_planes, K, keep_affine, run, discover_config
      shard-00000/                  attrs: complete=true and manifest (written last), n_planes, n_regions
        planes/    plane_id, label, corner_index (P,3), region_offset (P+1), n_regions, n_pieces,
                   input_area, density, density_input, deviation (P,K), f_corners (P,C,K),
                   continuity_gap, certificate_tol, gap_tol, hull_gap, dropped_pieces, dropped_area,
                   gram (P,3) (d1.d1, d1.d2, d2.d2; NaN where the result had none)
        regions/   area, region_gap, centroid (R,2), vertex_offset (R+1), intercept (R,K), grad (R,2,K)
        vertices/  uv (V,2)

The fields are those of :class:`pipeline.engine.planes.PlaneResult`. Shards are written, published,
verified, read and rewritten by the same code as segment shards (:class:`pipeline.store.shards.ShardFolder`:
a temporary, a manifest of sizes and CRC-32s, one rename; :class:`pipeline.store.reading.ShardReader`);
this module knows only the layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.store.identity import StoreConfig, store_attrs
from pipeline.store.reading import ShardReader, check_geometry, read_checked
from pipeline.store.shards import ShardFolder

__all__ = ["PLANE_COLUMNS", "PlaneShardWriter", "PlaneStoreReader", "open_plane_store", "plane_table",
           "plane_stats_table"]

PLANE_INTS = ("plane_id", "label", "n_regions", "n_pieces", "dropped_pieces")
PLANE_FLOATS = ("input_area", "density", "density_input", "continuity_gap", "certificate_tol", "gap_tol",
                "hull_gap", "dropped_area")
# what plane_table reads (checked deeply: small)
TABLE_ARRAYS = (*PLANE_INTS, *PLANE_FLOATS, "deviation", "corner_index")
# one row per plane: ids, the counts and the measures (deviation: the plane's mean |f - g|, L2 over logits)
PLANE_COLUMNS = ("plane_id", "label", "corner_1", "corner_2", "n_regions", "density", "density_input", "input_area",
                 "deviation", "continuity_gap", "certificate_tol", "gap_tol", "hull_gap", "n_pieces",
                 "dropped_pieces", "dropped_area")


class PlaneShardWriter(ShardFolder):
    """Write one shard of a plane store in chunks of consecutive planes; :meth:`commit`
    publishes it.

    ``plane_id``, ``label`` (``(P,)``) and ``corner_index`` (``(P, 3)``) describe the shard's
    planes in order; each :meth:`write` takes a :class:`pipeline.engine.planes.PlaneResult` whose
    ``plane_index`` are positions ``0..P-1`` in this shard. ``corners`` is 3 for triangles, 4
    for parallelograms (the rows of ``f_corners``).
    """

    item = "planes"

    def __init__(self, store, shard: int, plane_id, label, corner_index, k: int, corners: int,
                 cfg: StoreConfig = StoreConfig()):
        n, rc = len(plane_id), cfg.region_chunk
        rows = max(1, n)
        super().__init__(store, shard, cfg, n, rows,
                         affine={"intercept": ((k,), rc), "grad": ((2, k), max(1, rc // 2))})
        self.vertices = 0
        self.pl = {name: self.array(f"planes/{name}", (n,), "i8", (rows,)) for name in PLANE_INTS}
        self.pl.update({name: self.array(f"planes/{name}", (n,), "f8", (rows,)) for name in PLANE_FLOATS})
        self.pl["corner_index"] = self.array("planes/corner_index", (n, 3), "i8", (rows, 3))
        self.pl["deviation"] = self.array("planes/deviation", (n, k), "f8", (rows, k))
        self.pl["f_corners"] = self.array("planes/f_corners", (n, corners, k), "f8", (rows, corners, k))
        self.pl["gram"] = self.array("planes/gram", (n, 3), "f8", (rows, 3))
        self.pl["plane_id"][:] = np.asarray(plane_id, dtype=np.int64)
        self.pl["label"][:] = np.asarray(label, dtype=np.int64)
        self.pl["corner_index"][:] = np.asarray(corner_index, dtype=np.int64).reshape(n, 3)
        self.reg = {"area": self.array("regions/area", (0,), "f8", (rc,)),
                    "region_gap": self.array("regions/region_gap", (0,), "f8", (rc,)),
                    "centroid": self.array("regions/centroid", (0, 2), "f8", (rc, 2)),
                    "vertex_offset": self.array("regions/vertex_offset", (1,), "i8", (rc,))}
        self.reg["vertex_offset"][:] = np.zeros(1, dtype=np.int64)
        self.uv = self.array("vertices/uv", (0, 2), "f8", (rc, 2))

    def write(self, res) -> None:
        """Append the next chunk of planes (a :class:`pipeline.engine.planes.PlaneResult`)."""
        lo, hi = self._chunk(res.plane_index, res.n_planes)
        for name in ("n_regions", "n_pieces", "dropped_pieces", *PLANE_FLOATS, "deviation", "f_corners"):
            val = getattr(res, name)
            self.pl[name][lo:hi] = np.full(res.n_planes, np.nan) if val is None else val  # gap_tol
        self.pl["gram"][lo:hi] = np.full((res.n_planes, 3), np.nan) if res.gram is None else res.gram
        for name in ("area", "region_gap", "centroid"):
            self.reg[name].append(getattr(res, name))
        self.reg["vertex_offset"].append(res.vertex_offset[1:] + self.vertices)
        self.uv.append(res.uv)
        self.vertices += int(res.uv.shape[0])
        self._close_chunk(res, lo, hi, res.plane_offset, res.total_regions)


def _read_shard(store, shard: int, keys) -> tuple[dict, dict]:
    """A plane store's attributes and the arrays ``keys`` (or ``keys(attrs)``) of one complete
    shard, checked deeply against the manifest (:func:`pipeline.store.reading.read_checked`)."""
    store = Path(store)
    attrs = store_attrs(store)
    check_geometry(store, attrs, "plane")
    return attrs, read_checked(store, shard, keys(attrs) if callable(keys) else keys)


def plane_table(store, shard: int) -> pd.DataFrame:
    """One row per plane of a complete shard (``PLANE_COLUMNS``), from its per-plane arrays
    alone, checked deeply against the manifest first (they are small). ``deviation`` is the
    plane's mean absolute deviation: the 2-D ``∫ |f - g|`` over the domain divided by its area
    in ``(u, v)``, L2 over logits (as a segment's, whose ``t`` domain has length 1).

    Raises
    ------
    pipeline.store.identity.DamagedShardError
        The arrays differ from the manifest or cannot be decoded.
    """
    from pipeline.engine.planes import domain_area

    attrs, cols = _read_shard(store, shard, [f"planes/{name}" for name in TABLE_ARRAYS])
    if "gap_tol" not in cols:  # written before the tolerance was recorded: no verdict
        cols["gap_tol"] = np.full(cols["plane_id"].size, np.nan)
    area = domain_area(attrs.get("domain") or "triangle")  # none recorded: PlaneResult's default
    corners = cols.pop("corner_index")
    out = {name: cols[name] for name in (*PLANE_INTS, *PLANE_FLOATS)}
    out["corner_1"], out["corner_2"] = corners[:, 1], corners[:, 2]
    out["deviation"] = np.linalg.norm(cols["deviation"] / area, axis=1)
    return pd.DataFrame(out, columns=list(PLANE_COLUMNS))


def plane_stats_table(store, shard: int) -> pd.DataFrame:
    """The partition statistics of every plane of a complete shard
    (:data:`pipeline.engine.planes.stats.STATS_COLUMNS`, with ``plane_id``), from its regions,
    all arrays checked deeply against the manifest first. Without affine maps (``keep_affine``
    false) the decision boundary and gradient columns are NaN; without the Gram matrix (stores
    written before it was recorded) the columns in input units are.

    Raises
    ------
    pipeline.store.identity.DamagedShardError
        The arrays differ from the manifest or cannot be decoded.
    """
    from pipeline.engine.planes import PlaneResult
    from pipeline.engine.planes.stats import STATS_COLUMNS, plane_stats_table as stats

    keys = ["planes/plane_id", "planes/region_offset", "planes/input_area", "planes/gram", "regions/area",
            "regions/centroid", "regions/vertex_offset", "vertices/uv"]
    affine = ["regions/intercept", "regions/grad"]
    attrs, cols = _read_shard(store, shard, lambda attrs: keys + (affine if attrs.get("keep_affine", True) else []))
    n = cols["plane_id"].size
    nan = np.full(n, np.nan)
    res = PlaneResult(
        plane_index=np.arange(n), n_regions=np.diff(cols["region_offset"]), plane_offset=cols["region_offset"],
        input_area=cols["input_area"], density=nan, density_input=nan, f_corners=np.zeros((n, 0, 0)),
        deviation=np.zeros((n, 0)), continuity_gap=nan, certificate_tol=nan, hull_gap=nan,
        n_pieces=np.zeros(n, dtype=np.int64), dropped_pieces=np.zeros(n, dtype=np.int64), dropped_area=nan,
        area=cols["area"], centroid=cols["centroid"], vertex_offset=cols["vertex_offset"], uv=cols["uv"],
        region_gap=np.zeros(cols["area"].size),
        intercept=cols["intercept"].astype(np.float64) if "intercept" in cols else None,
        grad=cols["grad"].astype(np.float64) if "grad" in cols else None,
        domain=attrs.get("domain") or "triangle", gram=cols.get("gram"))
    return pd.DataFrame({"plane_id": cols["plane_id"], **stats(res)}, columns=["plane_id", *STATS_COLUMNS])


class PlaneStoreReader(ShardReader):
    """Read the complete shards of one plane store: the per-plane table, and any plane's
    regions as a :class:`pipeline.engine.planes.PlaneResult` (for figures and notebooks).

    Opening checks every shard once, cheaply (or deeply with ``deep``): a damaged one raises
    :class:`pipeline.store.identity.DamagedShardError` unless ``allow_incomplete`` (it is then
    left out, like a missing one).
    """

    geometry = "plane"

    def _ids(self, shard: int) -> list:
        return [int(p) for p in self._read(shard, "planes/plane_id")]

    @property
    def domain(self) -> str:
        return str(self.attrs.get("domain", "triangle"))

    def planes(self) -> pd.DataFrame:
        """One row per plane (``PLANE_COLUMNS`` of :func:`plane_table`, plus ``shard``)."""
        frames = [plane_table(self.path, i).assign(shard=i) for i in self.shards]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*PLANE_COLUMNS, "shard"])

    def plane_ids(self) -> list[int]:
        return sorted(self._locate())

    def plane(self, plane_id: int):
        """Every region of plane ``plane_id`` as a :class:`pipeline.engine.planes.PlaneResult` of one
        plane (``plane_index`` 0; ``intercept`` and ``grad`` ``None`` without affine maps).

        Raises
        ------
        KeyError
            No complete shard holds that plane.
        """
        from pipeline.engine.planes import PlaneResult

        try:
            shard, row = self._locate()[int(plane_id)]
        except KeyError:
            raise self.not_found(f"plane {plane_id}", self._locate()) from None
        one = slice(row, row + 1)
        get = lambda key, sel=one: self._read(shard, key, sel)  # noqa: E731
        lo, hi = (int(v) for v in get("planes/region_offset", slice(row, row + 2)))
        voff = get("regions/vertex_offset", slice(lo, hi + 1))
        affine = self._has(shard, "regions/intercept")
        return PlaneResult(
            plane_index=np.zeros(1, dtype=np.int64), n_regions=get("planes/n_regions"),
            plane_offset=np.array([0, hi - lo], dtype=np.int64), input_area=get("planes/input_area"),
            density=get("planes/density"), density_input=get("planes/density_input"),
            f_corners=get("planes/f_corners"), deviation=get("planes/deviation"),
            continuity_gap=get("planes/continuity_gap"), certificate_tol=get("planes/certificate_tol"),
            gap_tol=get("planes/gap_tol") if self._has(shard, "planes/gap_tol") else np.full(1, np.nan),
            hull_gap=get("planes/hull_gap"),
            n_pieces=get("planes/n_pieces"), dropped_pieces=get("planes/dropped_pieces"),
            dropped_area=get("planes/dropped_area"), area=get("regions/area", slice(lo, hi)),
            centroid=get("regions/centroid", slice(lo, hi)), vertex_offset=voff - voff[0],
            uv=get("vertices/uv", slice(int(voff[0]), int(voff[-1]))),
            region_gap=get("regions/region_gap", slice(lo, hi)),
            intercept=get("regions/intercept", slice(lo, hi)).astype(np.float64) if affine else None,
            grad=get("regions/grad", slice(lo, hi)).astype(np.float64) if affine else None,
            domain=self.domain, gram=get("planes/gram") if self._has(shard, "planes/gram") else None)


def open_plane_store(path, allow_incomplete: bool = False, deep: bool = False) -> PlaneStoreReader:
    """A :class:`PlaneStoreReader` of the plane store at ``path``."""
    return PlaneStoreReader(path, allow_incomplete, deep)

