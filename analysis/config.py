"""The analysis stage's one config: where the computation runs and what it compares.

    from analysis import AnalysisConfig, aggregate
    aggregate("runs/sweep", "results/sweep", config=AnalysisConfig(on_incomplete="report"))

YAML files (``python -m analysis SWEEP --config my.yaml``) list only the fields that differ;
the resolved config is saved beside the tables as ``analysis_config.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AnalysisConfig", "AnalysisError", "ON_INCOMPLETE", "LOCAL_SCHEDULERS"]

ON_INCOMPLETE = ("fail", "skip", "report")
# dask's single-machine schedulers: no distributed cluster at all (notebooks, debugging)
LOCAL_SCHEDULERS = ("synchronous", "threads", "processes")


class AnalysisError(ValueError):
    """The sweep cannot be aggregated as asked: no stores, an incomplete store, an unlabelled run."""


@dataclass(frozen=True)
class AnalysisConfig:
    """How to aggregate a sweep.

    Parameters
    ----------
    scheduler : str or None
        ``None``: start a ``distributed.LocalCluster`` for this call. An address
        (``tcp://host:8786``): use that running scheduler (its workers must see the sweep's
        files at the same paths). ``"synchronous"``, ``"threads"``, ``"processes"``: dask's
        local schedulers, no cluster.
    n_workers, threads_per_worker, processes : int, int, bool
        Size of the default ``LocalCluster``. Reading a shard is zarr decompression and numpy
        sums, which release the GIL: one worker of two threads in this process is enough for a
        laptop and starts in about a second.
    on_incomplete : {"fail", "skip", "report"}
        A store with missing shards: ``"fail"`` raises before anything is read, naming every
        such store; ``"skip"`` leaves it out of every table; ``"report"`` aggregates its
        complete shards, flags its rows ``store_complete = False`` and lists it under every
        Markdown table. In all three modes it is listed in ``stores.csv``.
    figures : bool
        Draw the figures (tables only when False).
    formats : tuple of str
        Figure file formats.
    trained, init : str
        Checkpoint names of the trained network and of its initialisation.
    noise_reference : tuple of str
        Settings searched, in order, for the clean (``noise == 0``) network each noise level is
        compared with: a noisy-recipe run at ``p = 0`` if the sweep has one, else vanilla.
    path_plots : int
        Paths drawn with their breakpoints (from the first trained store that kept its affine
        maps).
    logits : int
        Logits drawn per path.
    planes : int
        Plane figures per architecture (0: none): every linear region of a trained network on
        the plane through three training images of different classes (``pipeline/engine/planes/``),
        for the first ``planes`` runs with a ``trained`` checkpoint (vanilla first, lowest seed
        first). Runs without checkpoints (a sweep of bare stores) get a note in the report.
    plane_scale : float
        The triangle shrunk towards its first image by this factor, in (0, 1]: a full triangle
        on the demo's networks has about 10^5 regions (a minute each on one core); 0.25 has
        6,000-10,000 (a few seconds).
    plane_seed : int
        Choice of the three images.
    plane_color : {"class", "logit"}
        Fill regions by the predicted class, or by the logit of the class predicted at ``x0``.
    local_complexity : bool
        Also compute the local complexity of Humayun et al. (2024) along every store's paths
        (:mod:`analysis.local_complexity`) into ``local_complexity.parquet``. Off by default: it
        runs every checkpoint again (about 13 s per store of 160 segments on the digits: minutes for
        the demo; cached afterwards).
    lc_radius : float
        Radius of the cross-polytope around each point, in the network's (normalised) input units.
    lc_points : int
        Equally spaced points per segment (one of the sampled pattern counts' 8, 32, 128, 512).
    lc_dirs : int
        Orthonormal directions of the cross-polytope (``2 lc_dirs`` vertices; theirs: 25).
    lc_seed : int
        Draws the directions.
    """

    scheduler: str | None = None
    n_workers: int = 1
    threads_per_worker: int = 2
    processes: bool = False
    on_incomplete: str = "fail"  # never count a partial store without being told to
    figures: bool = True
    formats: tuple[str, ...] = ("png", "pdf")
    trained: str = "final"
    init: str = "init"
    noise_reference: tuple[str, ...] = ("noisy", "vanilla")
    path_plots: int = 2
    logits: int = 3
    planes: int = 1
    plane_scale: float = 0.25
    plane_seed: int = 0
    plane_color: str = "class"
    local_complexity: bool = False  # off: it reruns every checkpoint (see the docstring)
    lc_radius: float = 0.5
    lc_points: int = 32  # one N of the sampled counts, the cheap one that still sees most regions
    lc_dirs: int = 25  # Humayun et al.'s hull_n = 50 vertices
    lc_seed: int = 0

    def __post_init__(self):
        if self.on_incomplete not in ON_INCOMPLETE:
            raise ValueError(f"on_incomplete must be one of {', '.join(ON_INCOMPLETE)}, got {self.on_incomplete!r}")
        if self.n_workers < 1 or self.threads_per_worker < 1:
            raise ValueError("n_workers and threads_per_worker must be >= 1")
        if self.path_plots < 0 or self.logits < 1:
            raise ValueError("path_plots must be >= 0 and logits >= 1")
        if self.planes < 0 or not 0.0 < self.plane_scale <= 1.0 or self.plane_color not in ("class", "logit"):
            raise ValueError("planes must be >= 0, plane_scale in (0, 1] and plane_color 'class' or 'logit'")
        if self.plane_seed < 0:
            raise ValueError(f"plane_seed must be >= 0, got {self.plane_seed}")
        if not self.lc_radius > 0 or self.lc_points < 1 or self.lc_dirs < 1 or self.lc_seed < 0:
            raise ValueError("lc_radius must be > 0, lc_points and lc_dirs >= 1 and lc_seed >= 0")
        bad = [f for f in self.formats if f not in ("png", "pdf", "svg")]
        if bad:
            raise ValueError(f"figure formats must be png, pdf or svg, got {bad}")
