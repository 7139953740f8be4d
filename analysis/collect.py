"""One tidy per-path table for a whole sweep, computed with Dask: one task per store shard.

    from analysis.collect import collect
    table, stores = collect("runs/sweep", cache_dir="results/sweep/cache")

A sweep is any folder holding training runs; each run folder has ``config.yaml``,
``metrics.csv`` and its discovery stores ``regions/<checkpoint>-<hash>.zarr``
(``jobs/discover.py``). Each shard is read by one task (lazily: nothing is read until the graph
runs: the per-segment arrays, and of the region arrays ``t_start`` and ``slope``, which the kink
measures and sampled counts need; never ``intercept``); the tasks return per-path
partial sums, which a per-store task adds up and turns into the measures of
:meth:`pipeline.store.lines.StoreReader.paths`; each task checks the arrays it reads against the
shard's manifest first, so a damaged shard is an error, never data. With a cache folder the
result is incremental: a store whose fingerprint (attributes, and for each complete shard its
manifest and the size and modification time of each of its files) is unchanged since the last
call is not read again. Run labels and metrics are read afresh every time (a few small
files per run), so a resumed training run's new metrics are never stale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import yaml

from pipeline.config import write_atomic
from pipeline.store.identity import StoreError, is_store, store_attrs, store_geometry
from pipeline.store.placement import check_placement
from pipeline.store.verify import shard_state, shard_status
from pipeline.store.lines import PATH_TABLE_COLUMNS, paths_table, shard_partials

from .config import LOCAL_SCHEDULERS, AnalysisConfig, AnalysisError

__all__ = ["TABLE_COLUMNS", "LABEL_COLUMNS", "MEASURES", "find_stores", "store_fingerprint", "run_labels",
           "collect", "dask_client", "compute_tasks", "compute_checked", "refusing", "stores_info", "stores_report",
           "uncertified_note", "ON_INCOMPLETE_HINT"]

log = logging.getLogger("analysis.collect")

# what identifies a network and its path set, then the per-path measures, then the run's metrics
LABEL_COLUMNS = ["run_id", "dataset", "model", "width", "setting", "noise", "seed", "checkpoint", "paths",
                 "path_set"]
MEASURES = ["density", "density_per_length", "deviation", "total_variation"]
METRIC_COLUMNS = ["train_error", "train_loss", "test_error", "test_loss", "epochs"]
MEASURE_COLUMNS = list(PATH_TABLE_COLUMNS)  # pipeline.store.lines.paths_table
# the table holds certified paths only (a path with a failing segment is left out, counted per
# store in stores.csv as uncertified_paths): its n_uncertified would be 0 everywhere
TABLE_COLUMNS = (LABEL_COLUMNS + [c for c in MEASURE_COLUMNS if c != "n_uncertified"] + METRIC_COLUMNS
                 + ["store", "store_complete"])
CACHE_SCHEMA = 4  # bump when MEASURE_COLUMNS or their meaning change: old caches are then ignored
# how to leave incomplete stores out or count them, for the command line and for Python alike
ON_INCOMPLETE_HINT = ("leave them out (`--on-incomplete skip` on the command line, on_incomplete='skip' in Python) "
                      "or count their complete shards, flagged (`--on-incomplete report`, on_incomplete='report')")
SORT_COLUMNS = ["dataset", "model", "width", "setting", "noise", "seed", "checkpoint", "paths", "path_set",
                "run_id", "path_id"]


def find_stores(root) -> list[Path]:
    """Every discovery store ``<run>/regions/*.zarr`` under ``root``, sorted: segment and plane
    stores alike (:func:`collect` reads the first, :mod:`analysis.planes` the second).

    The walk does not descend into stores (they hold thousands of chunk files) nor into
    ``checkpoints/``; temporaries of an interrupted store creation (``*.zarr.tmp-*``) are not
    stores.

    Raises
    ------
    AnalysisError
        ``root`` does not exist.
    """
    root = Path(root)
    if not root.is_dir():
        raise AnalysisError(f"sweep root {root} does not exist or is not a folder")
    found = []
    for here, dirs, _ in os.walk(root):
        keep = []
        for d in dirs:
            if d.endswith(".zarr"):
                if Path(here).name == "regions" and is_store(Path(here) / d):
                    found.append(Path(here) / d)
            elif ".zarr.tmp-" not in d and d != "checkpoints" and not d.startswith("."):
                keep.append(d)
        dirs[:] = keep
    return sorted(found)



def _geometry(store: Path) -> str:
    try:
        return store_geometry(store_attrs(store))
    except StoreError as err:
        raise AnalysisError(f"{store} cannot be read as a store: {err}") from err


def store_fingerprint(store, status: dict | None = None) -> str:
    """A hash of what a store's per-path table depends on: its attributes and, for each complete
    shard, its index, its manifest and the current size and modification time of each of its
    files (:func:`pipeline.store.verify.shard_state`), so a rewritten, damaged or deleted chunk changes
    it. Reads the shards' metadata only, and stats their data files."""
    store = Path(store)
    status = status or shard_status(store)
    shards = [[i, shard_state(store, i)] for i in status["complete"]]
    blob = json.dumps({"attrs": store_attrs(store), "shards": shards}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _width(model: dict) -> int:
    """The model's base width: ResNet18's ``k``, otherwise the first conv/linear width."""
    if str(model.get("name", "")).lower().startswith("resnet") and model.get("k") is not None:
        return int(model["k"])
    widths = model.get("widths")
    if widths:
        return int(list(widths)[0])
    return int(model.get("k") or 0)


def run_labels(run_dir, attrs: dict) -> dict:
    """Labels and final metrics of the network behind one store.

    Parameters
    ----------
    run_dir : path
        The training run folder: ``config.yaml`` gives ``setting`` (the recipe), ``seed``,
        ``noise`` (``data.label_noise``), dataset and model; the last row of ``metrics.csv``
        gives the train/test error and loss (NaN, with a warning, when it is missing).
    attrs : dict
        The store's attributes: checkpoint and path set.

    Returns
    -------
    dict
        ``LABEL_COLUMNS`` and ``METRIC_COLUMNS``.

    Raises
    ------
    AnalysisError
        The run folder has no ``config.yaml``, so the network cannot be labelled.
    """
    run_dir = Path(run_dir)
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        raise AnalysisError(f"{cfg_file} is missing: a store's run folder must hold the training config "
                            "(setting, seed, noise) to label its networks")
    cfg = yaml.safe_load(cfg_file.read_text()) or {}
    model = cfg.get("model") or attrs.get("model") or {}
    data = cfg.get("data") or attrs.get("dataset") or {}
    if isinstance(data, str):
        data = {"name": data}
    paths = attrs.get("paths") or {}
    labels = {
        "run_id": run_dir.name,
        "dataset": str(data.get("name", "")),
        "model": str(model.get("name", "")),
        "width": _width(model),
        "setting": str(cfg.get("recipe", "vanilla")),
        "noise": float(data.get("label_noise", 0.0)),
        "seed": int(cfg.get("seed", 0)),
        "checkpoint": str(attrs.get("checkpoint") or "final"),
        "paths": f"{paths.get('kind', '?')}/{attrs.get('split') or paths.get('split', '?')}",
        "path_set": str(attrs.get("path_set", "")),
    }
    metrics = {c: np.nan for c in METRIC_COLUMNS}
    mfile = run_dir / "metrics.csv"
    if mfile.is_file():
        m = pd.read_csv(mfile)
        if len(m):
            last = m.iloc[-1]
            metrics = {c: float(last.get(c, np.nan)) for c in METRIC_COLUMNS[:-1]}
            metrics["epochs"] = float(last.get("epoch", len(m)))
    else:
        log.warning("%s is missing: train/test error and loss of run %s are NaN", mfile, run_dir.name)
    return {**labels, **metrics}


@contextmanager
def dask_client(scheduler=None, config: AnalysisConfig = AnalysisConfig()):
    """A ``distributed.Client``: on a new ``LocalCluster`` (``scheduler=None``) or on the running
    scheduler at ``scheduler``. Yields ``None`` for dask's local schedulers (``"synchronous"``...)."""
    if scheduler in LOCAL_SCHEDULERS:
        yield None
        return
    from distributed import Client, LocalCluster

    if scheduler is None:
        quiet = logging.getLogger("distributed")  # a private cluster's start/stop chatter is noise
        level = quiet.level
        quiet.setLevel(max(level, logging.WARNING))
        try:
            with LocalCluster(n_workers=config.n_workers, threads_per_worker=config.threads_per_worker,
                              processes=config.processes, dashboard_address=None,
                              # no dashboard (bokeh is not a dependency); its HTTP server on a free local port
                              scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as cluster, \
                    Client(cluster) as client:
                yield client
        finally:
            quiet.setLevel(level)
    else:
        try:
            client = Client(scheduler, timeout="10s")
        except OSError as err:
            raise AnalysisError(f"cannot reach the Dask scheduler at {scheduler!r} ({err}); start it, "
                                "or leave --scheduler out to run a local cluster") from err
        with client:
            yield client


def compute_tasks(tasks: dict, scheduler, config: AnalysisConfig) -> dict:
    """``{key: dask.delayed}`` computed on the scheduler asked for (:func:`dask_client`)."""
    if not tasks:
        return {}
    import dask

    keys, values = list(tasks), list(tasks.values())
    with dask_client(scheduler, config) as client:
        if client is None:
            results = dask.compute(*values, scheduler=scheduler)
        else:
            results = client.gather(client.compute(values))
    return dict(zip(keys, results))


class Refused(NamedTuple):
    """A task's :class:`StoreError`, returned instead of raised: a task that raises has its
    traceback logged by the Dask worker before the error reaches the caller."""

    message: str


def refusing(fn, *args):
    """``fn(*args)``, or a :class:`Refused` holding its :class:`StoreError` (a damaged shard
    found by the deep check of what a task reads): the unit of work of a Dask graph that never
    prints a traceback for a damaged store."""
    try:
        return fn(*args)
    except StoreError as err:
        return Refused(str(err))


def _unless_refused(fn, parts):
    """``fn(parts)``, unless one of ``parts`` is a :class:`Refused` (then the first of them)."""
    bad = [p for p in parts if isinstance(p, Refused)]
    return bad[0] if bad else fn(parts)


def compute_checked(tasks: dict, scheduler, config: AnalysisConfig, root, what: str = "store") -> dict:
    """:func:`compute_tasks` of tasks built with :func:`refusing`; a task's refusal (a value, or
    an item of a list value, that is a :class:`Refused`) is an :class:`AnalysisError` naming every
    store refused, its shard and array and the command that rewrites it, in one paragraph."""
    computed = compute_tasks(tasks, scheduler, config)
    refused = []
    for value in computed.values():
        items = value if isinstance(value, list) else [value]
        refused += [v.message for v in items if isinstance(v, Refused)][:1]
    if refused:
        raise AnalysisError(f"{len(refused)} {what}(s) under {root} cannot be read: " + " ".join(refused)
                            + f" No table was written; `python -m jobs verify {root} --deep` lists every damaged shard.")
    return computed


def _load_cache(cache_dir: Path | None):
    if cache_dir is None:
        return {}, None
    manifest, table = cache_dir / "manifest.json", cache_dir / "measures.parquet"
    if not (manifest.is_file() and table.is_file()):
        return {}, None
    try:
        meta, measures = json.loads(manifest.read_text()), pd.read_parquet(table)
    except (OSError, ValueError) as err:  # a damaged cache is recomputed, never trusted
        log.warning("cache in %s is unreadable (%s): every store is read again", cache_dir, err)
        return {}, None
    if meta.get("schema") != CACHE_SCHEMA or list(measures.columns) != ["store", *MEASURE_COLUMNS]:
        log.info("cache in %s was written by another version: every store is read again", cache_dir)
        return {}, None
    return meta.get("stores", {}), measures


def _save_cache(cache_dir: Path, fingerprints: dict, measures: pd.DataFrame):
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / "measures.parquet.tmp"
    measures.to_parquet(tmp, index=False)
    os.replace(tmp, cache_dir / "measures.parquet")
    # written last: it vouches for the table
    write_atomic(cache_dir / "manifest.json", json.dumps({"schema": CACHE_SCHEMA, "stores": fingerprints}, indent=1,
                                                         sort_keys=True))


def collect(sweep_root, cache_dir=None, scheduler=None, on_incomplete: str | None = None,
            config: AnalysisConfig = AnalysisConfig()):
    """The per-path table of every store under ``sweep_root``, and a report on every store.

    Parameters
    ----------
    sweep_root : path
        Folder searched for ``<run>/regions/*.zarr`` (:func:`find_stores`).
    cache_dir : path, optional
        Where the per-store measures and their fingerprints are kept between calls; unchanged
        stores are not read again. Without it every store is read.
    scheduler : str, optional
        Overrides ``config.scheduler`` (see :class:`AnalysisConfig`).
    on_incomplete : {"fail", "skip", "report"}, optional
        Overrides ``config.on_incomplete``.
    config : AnalysisConfig

    Returns
    -------
    table : pandas.DataFrame
        One row per (store, path), columns ``TABLE_COLUMNS``, sorted by labels then path id.
    stores : pandas.DataFrame
        One row per store found: ``store`` (relative to ``sweep_root``), ``run_id``,
        ``checkpoint``, ``status`` (complete | incomplete), ``action`` (read | cached |
        skipped), ``n_shards``, ``complete_shards``, ``missing_shards``, ``leftovers``,
        ``n_paths`` (rows in ``table``), ``uncertified_paths`` (paths left out of ``table``: a
        segment's certificate failed; such stores are written with ``on_certificate: warn``).

    Raises
    ------
    AnalysisError
        No store under ``sweep_root`` (the message says where it looked); an incomplete store
        with ``on_incomplete="fail"`` (all of them are named); a run folder without
        ``config.yaml``; two stores of one network with the same path set.
    """
    root = Path(sweep_root)
    scheduler = config.scheduler if scheduler is None else scheduler
    on_incomplete = on_incomplete or config.on_incomplete
    if on_incomplete not in ("fail", "skip", "report"):
        raise ValueError(f"on_incomplete must be fail, skip or report, got {on_incomplete!r}")
    stores = [s for s in find_stores(root) if _geometry(s) == "line"]  # plane stores: analysis/planes.py
    if not stores:
        raise AnalysisError(f"no discovery stores found under {root.resolve()}: looked for "
                            "<run>/regions/*.zarr in every folder below it (run `python -m jobs discover` "
                            "on the sweep's runs first, or pass the sweep's root folder)")
    info = stores_info(root, stores)
    incomplete = {k: v for k, v in info.items() if v["status"]["missing"]}
    if incomplete and on_incomplete == "fail":
        lines = "\n".join(_incomplete_line(k, v["status"]) for k, v in incomplete.items())
        raise AnalysisError(f"{len(incomplete)} incomplete store(s) under {root}:\n{lines}\nresume their "
                            f"discovery jobs (or rewrite each damaged shard as its line says), or {ON_INCOMPLETE_HINT}")
    for k in incomplete:
        log.warning("incomplete store %s (shards %s missing%s): %s", k, incomplete[k]["status"]["missing"],
                    f", of which damaged {incomplete[k]['status']['damaged']}" if incomplete[k]["status"]["damaged"]
                    else "", "skipped" if on_incomplete == "skip" else "its complete shards are counted and flagged")

    use = [k for k in info if not (k in incomplete and on_incomplete == "skip")]
    fingerprints = {k: store_fingerprint(info[k]["path"], info[k]["status"]) for k in use}
    cached_fp, cached = _load_cache(Path(cache_dir) if cache_dir else None)
    have = set(cached["store"].unique()) if cached is not None else set()
    reuse = [k for k in use if cached_fp.get(k) == fingerprints[k] and k in have]
    todo = [k for k in use if k not in reuse]
    if cache_dir:
        log.info("%d store(s) unchanged since the last aggregation, %d to read", len(reuse), len(todo))

    from dask import delayed

    tasks = {}
    for k in todo:
        store = str(info[k]["path"])
        parts = [delayed(refusing, pure=True)(shard_partials, store, i) for i in info[k]["status"]["complete"]]
        tasks[k] = delayed(_unless_refused, pure=True)(paths_table, parts)
    # a shard damaged since it was listed, or damaged so only the deep check sees it, is refused
    computed = compute_checked(tasks, scheduler, config, root)

    frames = []
    for k in use:
        m = cached[cached["store"] == k].drop(columns="store") if k in reuse else computed[k]
        frames.append(m.assign(store=k))
    measures = (pd.concat(frames, ignore_index=True) if frames
                else pd.DataFrame(columns=["store", *MEASURE_COLUMNS]))
    measures = measures[["store", *MEASURE_COLUMNS]]
    if cache_dir:
        _save_cache(Path(cache_dir), fingerprints, measures)

    # a path with a segment whose certificate failed has wrong measures: left out of every table
    bad = measures["n_uncertified"] > 0
    left_out = measures.loc[bad, "store"].value_counts()
    for k, n in left_out.items():
        log.warning("%s: %d path(s) left out of the tables: a segment's certificate failed (stored with "
                    "on_certificate: warn; see its segments' continuity_gap and gap_tol)", k, n)
    measures = measures[~bad]

    labels = pd.DataFrame([{"store": k, **info[k]["labels"], "store_complete": k not in incomplete} for k in use])
    table = measures.merge(labels, on="store", how="left", validate="many_to_one") if len(use) else \
        pd.DataFrame(columns=TABLE_COLUMNS)
    table = table[TABLE_COLUMNS].sort_values(SORT_COLUMNS, kind="mergesort").reset_index(drop=True)
    _check_duplicates(table)

    return table, stores_report(info, incomplete, use, table["store"].value_counts(), reuse, left_out)


def stores_info(root: Path, stores, labels=run_labels) -> dict:
    """``{key: {"path", "status", "attrs", "labels"}}`` of each store (key: its path relative
    to ``root``), ``labels(run_dir, attrs)`` labelling its network.

    Raises
    ------
    AnalysisError
        A store whose status or attributes cannot be read.
    """
    info, hashes = {}, {}  # hashes: checkpoint file -> sha256, shared by a run's stores
    for store in stores:
        try:
            status, attrs = shard_status(store), store_attrs(store)
        except (StoreError, OSError, ValueError) as err:
            raise AnalysisError(f"{store} cannot be read as a store: {err}") from err
        try:
            check_placement(store, attrs, hashes)
        except StoreError as err:
            raise AnalysisError(str(err)) from err
        info[store.relative_to(root).as_posix()] = {"path": store, "status": status, "attrs": attrs,
                                                    "labels": labels(store.parent.parent, attrs)}
    return info


def stores_report(info: dict, incomplete, use, counts, reuse=(), left_out=None) -> pd.DataFrame:
    """One row per store of :func:`stores_info`: status, what was done with it (read, cached or
    skipped), its shards and ``n_paths``, its rows in the table (``counts``: store -> rows),
    ``uncertified_paths`` (``left_out``: store -> rows left out, their certificate failed)."""
    left_out = {} if left_out is None else left_out
    return pd.DataFrame([{
        "store": k, "run_id": v["labels"]["run_id"], "checkpoint": v["labels"]["checkpoint"],
        "status": "incomplete" if k in incomplete else "complete",
        "action": "skipped" if k not in use else ("cached" if k in reuse else "read"),
        "n_shards": v["status"]["n_shards"],
        "complete_shards": len(v["status"]["complete"]),
        "missing_shards": str(v["status"]["missing"]),
        "leftovers": len(v["status"]["leftovers"]),
        "n_paths": int(counts.get(k, 0)),
        "uncertified_paths": int(left_out.get(k, 0)),
    } for k, v in info.items()])


def uncertified_note(stores: pd.DataFrame) -> str | None:
    """The sentence naming each network with paths (or planes) left out of the tables because
    their certificate failed (``stores.csv``'s ``uncertified_paths``); None if there are none."""
    if "uncertified_paths" not in stores.columns:
        return None
    bad = stores[stores["uncertified_paths"].fillna(0) > 0]
    if not len(bad):
        return None
    items = [f"{r.run_id} ({r.checkpoint}): {int(r.uncertified_paths)} {'planes' if 'planes-' in r.store else 'paths'}"
             for r in bad.itertuples()]
    return ("Left out of every table and figure, their certificate failed (the region maps disagree with the "
            "network; stored with on_certificate: warn): " + "; ".join(items))


def _incomplete_line(key: str, status: dict) -> str:
    """One line per incomplete store for the error: the missing shards, and each damaged one
    with what is wrong and how to rewrite it."""
    line = f"  {key}: shards {status['missing']} of {status['n_shards']} missing"
    if status["damaged"]:
        line += f" (damaged: {status['damaged']})" + "".join(f"\n    {status['errors'][i]}" for i in status["damaged"])
    return line


def _check_duplicates(table: pd.DataFrame):
    dup = table.duplicated(["run_id", "checkpoint", "path_set", "path_id"], keep=False)
    if dup.any():
        stores = sorted(table.loc[dup, "store"].unique())
        raise AnalysisError(f"one network has two stores with the same path set: {stores[:4]}; keep one "
                            "(a copied or renamed store?) so no path is counted twice")
