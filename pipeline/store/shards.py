"""Publishing one shard: written under a temporary name, completed with its manifest, renamed into place.

    writer = ShardWriter(store, 0, path_id, segment_index, k)     # a layout on top of ShardFolder
    for chunk in results: writer.write(chunk)
    writer.commit()

A shard is written by one writer under a temporary name beside its final place
(``shard-00000.tmp-<host>-<pid>-<token>``), marked complete together with its manifest
(:mod:`pipeline.store.manifest`), flushed to disk, then renamed into place in one step. So a
killed job leaves no half shard under the final name (its leftovers are ignored and listed by
:func:`pipeline.store.verify.shard_status`), and two jobs given the same shard cannot interleave
their writes: the first rename wins, the second finds a valid complete shard and discards its
copy. A damaged or incomplete shard under the final name is renamed aside
(``shard-00000.damaged-<token>``), replaced, then deleted.

:class:`ShardFolder` is everything a shard writer does whatever its layout: the temporary
group, the items' ``region_offset``, the per-region affine maps, the order of the chunks, the
manifest and the rename. The layouts (:class:`pipeline.store.lines.ShardWriter`,
:class:`pipeline.store.planes.PlaneShardWriter`) add their own arrays only.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import zarr

from pipeline.atomic import fsync_dir, fsync_tree, unique_suffix
from pipeline.store.identity import StoreConfig, StoreError, shard_name
from pipeline.store.manifest import make_manifest
from pipeline.store.verify import inspect

__all__ = ["ShardFolder", "uncertified"]

log = logging.getLogger("pipeline.store.shards")

_PUBLISH_ATTEMPTS = 8


def uncertified(gap, gap_tol) -> int:
    """How many rows failed their certificate (``gap > gap_tol`` or a non-finite gap; a NaN
    ``gap_tol``, no verdict recorded, passes)."""
    if gap_tol is None:
        return 0
    gap, tol = np.asarray(gap, dtype=np.float64), np.asarray(gap_tol, dtype=np.float64)
    return int(np.sum(~(gap <= tol) & ~np.isnan(tol)))


class ShardFolder:
    """One shard being written under its temporary name, in chunks of consecutive items;
    :meth:`commit` publishes it.

    Parameters
    ----------
    store : path
    shard : int
    cfg : StoreConfig
    n : int
        Items (segments, planes) of the shard: the group's attribute ``n_<item>``.
    rows : int
        Items per chunk of the per-item arrays (``<item>/region_offset`` has one more).
    affine : dict
        The per-region affine maps the layout stores when ``cfg.keep_affine``: name (an
        attribute of the results written) -> ``(trailing shape, rows per chunk)``.
    """

    item = "items"  # what the layout's items are called: their group's name, and in messages

    def __init__(self, store, shard: int, cfg: StoreConfig, n: int, rows: int, affine: dict):
        self.store = Path(store)
        self.shard = shard
        self.final = self.store / shard_name(shard)
        self.tmp = self.store / f"{shard_name(shard)}.tmp-{unique_suffix()}"
        self.cfg = cfg
        self.n, self.written = n, 0
        self.regions = 0
        self.uncertified = 0  # items whose certificate failed (written with on_certificate="warn")
        self.arrays: dict = {}  # key ("segments/density") -> zarr array: what the manifest lists
        self.group = zarr.open_group(str(self.tmp), mode="w")
        self.group.attrs.update({"complete": False, "shard": shard, f"n_{self.item}": n})
        self._codec = cfg.codec()
        self.region_offset = self.array(f"{self.item}/region_offset", (n + 1,), "i8", (rows + 1,))
        self.region_offset[0:1] = np.zeros(1, dtype=np.int64)
        self.affine = {name: self.array(f"regions/{name}", (0, *tail), cfg.affine_dtype, (chunk, *tail))
                       for name, (tail, chunk) in affine.items()} if cfg.keep_affine else {}

    def array(self, key: str, shape, dtype, chunks):
        """Create array ``key`` (``group/name``) of the shard, compressed with the store's codec."""
        group, name = key.split("/")
        arr = self.group.require_group(group).create_array(name, shape=shape, dtype=dtype, chunks=chunks,
                                                           compressors=self._codec)
        self.arrays[key] = arr
        return arr

    def _chunk(self, index, count: int) -> tuple[int, int]:
        """``(lo, hi)`` of a chunk whose items are ``index`` (positions in the shard), after
        checking it is the next ``count`` items and ends within the shard."""
        lo, hi = int(index[0]), int(index[-1]) + 1
        one = self.item[:-1]
        if lo != self.written or hi - lo != count:
            raise ValueError(f"shard chunks must arrive in order: expected {one} {self.written}, got {lo}..{hi - 1}")
        if hi > self.n:
            raise ValueError(f"chunk ends at {one} {hi - 1} but the shard has {self.n}")
        return lo, hi

    def _close_chunk(self, res, lo: int, hi: int, offsets, n_regions: int) -> None:
        """The end of every layout's ``write`` of items ``lo..hi-1``: the failed certificates
        counted, the items' region offsets (``offsets``, ``(hi - lo + 1,)``, from 0 within the
        chunk), the affine maps appended, ``n_regions`` more regions."""
        self.uncertified += uncertified(res.continuity_gap, res.gap_tol)
        self.region_offset[lo + 1:hi + 1] = offsets[1:] + self.regions
        if self.affine and res.intercept is None:
            raise ValueError("the store keeps affine maps but the result has none: discover with keep_affine=True")
        for name, arr in self.affine.items():
            arr.append(getattr(res, name).astype(self.cfg.affine_dtype))
        self.regions += n_regions
        self.written = hi

    def complete(self) -> bool:
        """Whether every item was written (checked by :meth:`commit`)."""
        return self.written == self.n

    def commit(self, deep: bool = False) -> bool:
        """Mark complete with the shard's manifest, flush it to disk and publish it.

        Parameters
        ----------
        deep : bool
            How to judge a shard already under the final name: by checksums (``True``) or by
            file sizes (the default, as :func:`pipeline.store.verify.shard_status`).

        Returns
        -------
        bool
            ``True`` if this copy was published; ``False`` if another job had already published
            a valid complete shard (this copy is then discarded). A damaged or incomplete shard
            under the final name is replaced.
        """
        if not self.complete():
            raise ValueError(f"shard incomplete: {self.written} of {self.n} {self.item} written")
        manifest = make_manifest(self.tmp, self.arrays)
        self.group.attrs.update({"complete": True, "n_regions": self.regions, "n_uncertified": self.uncertified,
                                 "manifest": manifest})
        fsync_tree(self.tmp)  # on a shared filesystem, all of it is on disk before the name is
        return self._publish(deep)

    def _publish(self, deep: bool) -> bool:
        """Rename the temporary into place; see :meth:`commit`. Another job may publish, or move
        aside, the same shard at any moment: every step is a rename that either happens whole or
        fails, and each failure is judged again from what is then on disk."""
        aside = []
        try:
            for _ in range(_PUBLISH_ATTEMPTS):
                try:
                    os.rename(self.tmp, self.final)
                except OSError as err:
                    if err.errno not in (errno.EEXIST, errno.ENOTEMPTY) and not self.final.exists():
                        raise
                else:
                    fsync_dir(self.store)
                    return True
                state, _, problem = inspect(self.final, deep)
                if state == "complete":  # another job finished the same shard first
                    self.abort()
                    return False
                moved = self._move_aside(state, problem, deep)
                if moved is False:
                    return False
                if moved is not None:
                    aside.append(moved)
            raise StoreError(f"{self.final}: could not publish {self.tmp.name} after {_PUBLISH_ATTEMPTS} attempts "
                             "(other jobs keep replacing the shard?); the temporary is kept, run the job again")
        finally:
            for p in aside:  # damaged or incomplete copies: the shard is in place now (ours or another job's)
                shutil.rmtree(p, ignore_errors=True)

    def _move_aside(self, state: str, problem, deep: bool):
        """Rename the shard under the final name aside. Returns its new path; ``None`` if it was
        gone already; ``False`` if what was moved is another job's valid shard, published since
        it was judged: it is put back and this copy is discarded."""
        moved = self.store / f"{self.final.name}.damaged-{unique_suffix()}"
        try:
            os.rename(self.final, moved)
        except FileNotFoundError:
            return None
        if inspect(moved, deep)[0] == "complete":  # judged bad, whole now: replaced in between
            try:
                os.rename(moved, self.final)
            except OSError:
                shutil.rmtree(moved, ignore_errors=True)  # a third job published meanwhile: a duplicate
                return None
            self.abort()
            return False
        log.warning("%s: replacing the %s shard %s (%s)", self.store, state, self.final.name,
                    problem.what if problem else "not marked complete")
        return moved

    def abort(self) -> None:
        """Remove this writer's temporary."""
        shutil.rmtree(self.tmp, ignore_errors=True)
