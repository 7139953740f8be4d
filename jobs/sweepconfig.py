"""A sweep's configuration: one YAML file -> a deterministic list of training runs.

    sweep, base = load_sweep("configs/demo.yaml")
    runs = expand(sweep, base)          # [Run(run_id, variant, config, run_dir), ...]

A sweep file names a base training recipe, named *variants* (dotted-key overrides of the
recipe: ``noise-0.2: {recipe: noisy, data.label_noise: 0.2}``), a grid (for example seeds or
ResNet widths), a discovery config, the checkpoints to analyse and per-stage resources. Each
run is named by its variant and the hash of its training config's identity
(:func:`pipeline.config.config_hash`), under ``<root>/runs/<run-id>/``. (The analysis labels
a network by its training *recipe*, ``config.recipe``: several variants share the recipe
``noisy``.)
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from pipeline.config import ConfigError, config_hash, from_dict, identity_dict, to_dict, write_atomic
from pipeline.stages.discovery import DiscoverConfig
from pipeline.store.placement import SWEEP_RECORD, config_differences
from pipeline.stages.train import TrainConfig

from .lock import LOCK_NAME

__all__ = ["EXECUTORS", "Resources", "SweepConfig", "Run", "load_sweep", "sweep_root", "expand", "discover_config",
           "analysis_config", "claim_root", "load_sweep_folder", "load_sweep_or_folder"]

EXECUTORS = ("slurm", "local", "debug")


@dataclass(frozen=True)
class Resources:
    partition: str | None = None
    gpus: int = 0
    cpus: int = 2
    mem_gb: float = 8.0
    time_min: int = 60
    array_parallelism: int = 32  # the throttle: at most this many tasks of an array at once

    def __post_init__(self):
        for name in ("cpus", "time_min", "array_parallelism"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.gpus < 0:
            raise ValueError(f"gpus must be >= 0, got {self.gpus}")
        if not self.mem_gb > 0:
            raise ValueError(f"mem_gb must be > 0, got {self.mem_gb}")


@dataclass(frozen=True)
class SweepConfig:
    name: str = "sweep"
    root: str = "sweeps/sweep"  # relative paths here are relative to where the command runs (the checkout)
    train: str = "configs/train/digits-vgg8.yaml"  # base recipe
    variants: dict = field(default_factory=lambda: {"vanilla": {}})  # name -> dotted-key overrides of the recipe
    grid: dict = field(default_factory=lambda: {"seed": [0]})  # dotted key -> values (cartesian product)
    discover: str = "configs/discover/digits.yaml"
    analysis: str | None = None  # an analysis config YAML (analysis.config.AnalysisConfig); None: its defaults
    checkpoints: tuple[str, ...] = ("init", "final")
    n_shards: int = 2
    executor: str = "local"
    train_resources: Resources = field(default_factory=Resources)
    discover_resources: Resources = field(default_factory=Resources)
    aggregate_resources: Resources = field(default_factory=lambda: Resources(cpus=2, time_min=30))

    def __post_init__(self):
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}; got {self.executor!r}")
        if not self.variants:
            raise ValueError("a sweep needs at least one variant (e.g. variants: {vanilla: {}})")
        for name, overrides in self.variants.items():
            if overrides is not None and not isinstance(overrides, dict):
                raise ValueError(f"variants.{name}: expected a mapping of dotted keys to values (or {{}} for none), "
                                 f"got {overrides!r}")
        for key, values in self.grid.items():
            if not isinstance(values, (list, tuple)) or not values:
                raise ValueError(f"grid.{key}: expected a non-empty list of values, got {values!r}")
        if not self.checkpoints:
            raise ValueError("checkpoints must name at least one checkpoint (e.g. [init, final])")
        if self.n_shards < 1:
            raise ValueError(f"n_shards must be >= 1, got {self.n_shards}")


@dataclass(frozen=True)
class Run:
    run_id: str
    variant: str  # the sweep's name for the overrides (the training recipe is config.recipe)
    config: TrainConfig
    run_dir: Path


def _set(d: dict, dotted: str, value):
    keys = str(dotted).split(".")
    for i, k in enumerate(keys[:-1]):
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ConfigError(f"'{dotted}' sets a field inside '{'.'.join(keys[:i + 1])}', which the recipe gives "
                              f"the value {d!r}, not a mapping")
    d[keys[-1]] = value


def load_sweep(path, base=None) -> tuple[SweepConfig, Path]:
    """The sweep config and the folder its relative paths are resolved against (default: the
    current directory, as for any command line), after checking the files it names exist."""
    from pipeline.config import read_mapping

    path = Path(path)
    raw = read_mapping(path, "sweep")
    if "settings" in raw and "variants" not in raw:
        raise ConfigError(f"{path}: the key 'settings' is now called 'variants' (the same mapping of names "
                          "to overrides; 'setting' in the analysis is the training recipe): rename it")
    try:
        cfg = from_dict(SweepConfig, raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    base = Path(base or Path.cwd()).resolve()
    for key in ("train", "discover", "analysis"):
        if key == "analysis" and cfg.analysis is None:
            continue
        if not (base / getattr(cfg, key)).is_file():
            raise ConfigError(f"{path}: {key}: {base / getattr(cfg, key)} does not exist (relative paths are "
                              f"resolved against {base}: run from the checkout, or use absolute paths)")
    # every config the sweep names is checked now, before anything is written or submitted
    expand(cfg, base)
    discover_config(cfg, base, cfg.checkpoints[0])
    analysis_config(cfg, base)
    return cfg, base


def sweep_root(arg) -> tuple[Path, "SweepConfig | None"]:
    """A sweep named on the command line, as a sweep YAML or as its root folder: ``(root,
    config or None)``."""
    arg = Path(arg)
    if arg.is_file():
        sweep, base = load_sweep(arg)
        return base / sweep.root, sweep
    if arg.is_dir():
        return arg.resolve(), None
    raise ConfigError(f"{arg}: neither a sweep file (configs/*.yaml) nor a sweep folder")


def load_sweep_folder(folder) -> tuple[SweepConfig, Path]:
    """The sweep a sweep folder holds, as :func:`load_sweep` returns it: the config
    :func:`claim_root` recorded in ``<folder>/sweep.yaml``, rooted at ``folder`` (wherever it
    is now), with its recipe and discovery files found as they were at submission: relative to
    the folder the sweep's relative ``root`` was resolved against, or else the current one.

    Refuses a folder that is not a sweep's, and one whose recipe has changed since (its runs
    would not be the folder's: the counts would be of another sweep).
    """
    folder = Path(folder).resolve()
    recorded = folder / "sweep.yaml"
    if not recorded.is_file():
        raise ConfigError(f"{folder} is not a sweep folder (no sweep.yaml, written when a sweep is submitted): name "
                          "the sweep file instead")
    from pipeline.config import load_config

    cfg = load_config(recorded, SweepConfig)
    base = Path.cwd().resolve()
    parts = Path(cfg.root).parts
    if not Path(cfg.root).is_absolute() and folder.parts[-len(parts):] == parts:
        base = Path(*folder.parts[:-len(parts)])  # the folder the sweep was submitted from
    cfg = replace(cfg, root=str(folder))  # where it is now (root is not part of a sweep's identity)
    for key in ("train", "discover"):
        if not (base / getattr(cfg, key)).is_file():
            raise ConfigError(f"{recorded}: {key}: {base / getattr(cfg, key)} does not exist (the sweep's relative "
                              f"paths are resolved against {base}): run from the folder the sweep was submitted "
                              "from, or name the sweep file")
    runs_file = folder / "runs.txt"
    ids = sorted(r.run_id for r in expand(cfg, base))
    if runs_file.is_file() and runs_file.read_text().split() != ids:
        raise ConfigError(f"{folder}: the training recipe {base / cfg.train} changed since the sweep was submitted "
                          f"(its runs are not those of {runs_file}): name the sweep file, or restore the recipe")
    return cfg, base


def load_sweep_or_folder(arg) -> tuple[SweepConfig, Path]:
    """:func:`load_sweep` of a sweep file, :func:`load_sweep_folder` of a sweep folder."""
    arg = Path(arg)
    if arg.is_dir():
        return load_sweep_folder(arg)
    return load_sweep(arg)


def expand(sweep: SweepConfig, base: Path) -> list[Run]:
    """Every training run of the sweep, in a fixed order, named by variant and config hash."""
    from pipeline.config import read_mapping

    recipe_file = base / sweep.train
    recipe = read_mapping(recipe_file, "training recipe")
    keys = sorted(sweep.grid)
    runs = []
    for variant in sorted(sweep.variants):
        for values in itertools.product(*(sweep.grid[k] for k in keys)):
            try:
                d = copy.deepcopy(recipe)
                for k, v in (sweep.variants[variant] or {}).items():
                    _set(d, k, v)
                for k, v in zip(keys, values):
                    _set(d, k, v)
                cfg = from_dict(TrainConfig, d)
            except ConfigError as err:
                raise ConfigError(f"sweep {sweep.name}, variant '{variant}' of the recipe {recipe_file}: "
                                  f"{err}") from err
            run_id = f"{variant}-{config_hash(cfg)}"
            runs.append(Run(run_id, variant, cfg, base / sweep.root / "runs" / run_id))
    hashes = [config_hash(r.config) for r in runs]
    if len(set(hashes)) != len(hashes):
        same = sorted({r.run_id for r, h in zip(runs, hashes) if hashes.count(h) > 1})
        raise ConfigError(f"sweep {sweep.name}: {', '.join(same)} are the same training config (a variant "
                          "that changes nothing?): each network would be trained twice")
    return runs


def discover_config(sweep: SweepConfig, base: Path, checkpoint: str) -> DiscoverConfig:
    from pipeline.config import load_config

    cfg = load_config(base / sweep.discover, DiscoverConfig)
    return replace(cfg, checkpoint=checkpoint, n_shards=sweep.n_shards)


def analysis_config(sweep: SweepConfig, base: Path) -> dict:
    """The sweep's analysis config as a mapping (checked; ``{}`` for the defaults)."""
    from analysis.config import AnalysisConfig
    from pipeline.config import load_config

    if sweep.analysis is None:
        return {}
    return to_dict(load_config(base / sweep.analysis, AnalysisConfig))


# what makes a sweep folder "this sweep": everything but where and how its jobs run, and how
# its results are summarised (the analysis config changes no run and no store)
_IDENTITY_EXCLUDED = ("executor", "train_resources", "discover_resources", "aggregate_resources", "root", "analysis")


def claim_root(sweep: SweepConfig, base: Path, runs: list[Run]) -> None:
    """Make ``<root>`` this sweep's folder, or refuse if it holds another sweep.

    A folder that holds a different sweep (another name, variants, grid, discovery config,
    checkpoints or shards, or runs from an edited training recipe) would mix two experiments
    in one analysis: nothing is written and the error lists the differences. Executor and
    resources may change between submissions (resume a local sweep on SLURM, for example).
    """
    root = base / sweep.root
    have_file, runs_file = root / "sweep.yaml", root / "runs.txt"
    want = {k: v for k, v in to_dict(sweep).items() if k not in _IDENTITY_EXCLUDED}
    ids = sorted(r.run_id for r in runs)
    if have_file.exists():
        have = {k: v for k, v in (yaml.safe_load(have_file.read_text()) or {}).items() if k not in _IDENTITY_EXCLUDED}
        diff = [k for k in sorted(set(want) | set(have)) if json.dumps(want.get(k), sort_keys=True, default=str)
                != json.dumps(have.get(k), sort_keys=True, default=str)]
        if not diff and runs_file.exists() and runs_file.read_text().split() != ids:
            diff = ["the training runs (the recipe file changed since the sweep was submitted)"]
        if diff:
            detail = "; ".join(d if d.startswith("the ") else f"{d}: folder has {have.get(d)!r}, config has "
                               f"{want.get(d)!r}" for d in diff)
            raise ConfigError(f"{root} already holds another sweep ({have_file}): {detail}. Nothing was written. "
                              "Give this sweep its own root (root: in the sweep file), or move that folder away.")
    elif root.exists() and any(p.name != LOCK_NAME for p in root.iterdir()):  # the lock is this run's
        raise ConfigError(f"{root} exists and is not a sweep folder (no sweep.yaml): nothing was written. Give the "
                          "sweep another root, or empty the folder.")
    asked = discovery_identity(sweep, base)
    record = root / SWEEP_RECORD
    if record.exists():
        differ = config_differences(json.loads(record.read_text()), asked)
        if differ:
            raise ConfigError(f"{root} holds stores discovered with another discovery config than {base / sweep.discover} "
                              f"now gives (folder vs file: {'; '.join(differ)}); the file was edited since the sweep "
                              "was submitted. Nothing was written. Undo the edit, or give this sweep its own root.")
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(have_file, yaml.safe_dump(to_dict(sweep), sort_keys=True))
    write_atomic(runs_file, "\n".join(ids) + "\n")
    write_atomic(record, json.dumps(asked, sort_keys=True, indent=1) + "\n")


def discovery_identity(sweep: SweepConfig, base: Path) -> dict:
    """What every store of the sweep is discovered with (:data:`pipeline.store.placement.SWEEP_RECORD`):
    the identity of its discovery config, less the checkpoint (each store's own)."""
    ident = identity_dict(discover_config(sweep, base, "final"))
    ident.pop("checkpoint", None)
    return ident
