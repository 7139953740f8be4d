"""Frozen dataclass configs loaded from YAML: unknown keys are errors that name the closest one.

    cfg = load_config("configs/train/digits-vgg8.yaml", TrainConfig)
    save_config(cfg, run_dir / "config.yaml")   # the resolved config, beside its results

Defaults live in the dataclasses (with a comment on why); YAML files list what differs.
Nested dataclass fields take nested mappings.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import typing
from pathlib import Path

import yaml

from pipeline.atomic import fsync_dir, write_atomic  # re-exported: the atomic writes live in pipeline/atomic.py

__all__ = ["ConfigError", "from_dict", "to_dict", "identity_dict", "load_config", "save_config", "config_hash",
           "write_atomic", "fsync_dir", "local_field", "short_id"]


class ConfigError(ValueError):
    """A configuration file or mapping that does not fit its dataclass."""


def from_dict(cls, data: dict | None, where: str = ""):
    """Build dataclass ``cls`` from a mapping, recursively; unknown keys raise :class:`ConfigError`."""
    if data is not None and not isinstance(data, typing.Mapping):
        raise ConfigError(f"{where.rstrip('.') or cls.__name__}: expected a mapping, got {type(data).__name__}")
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, fields, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown key '{where}{key}' for {cls.__name__}.{hint} Valid keys: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        optional = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is not None and len(optional) == 1 and dataclasses.is_dataclass(optional[0]):
            hint = optional[0]  # ``SomeConfig | None``: a mapping is that config
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value, f"{where}{name}.")
        elif hint in (tuple, typing.Tuple) or typing.get_origin(hint) is tuple:
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where.rstrip('.') or cls.__name__}: {err}") from err


def to_dict(cfg) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=list))


def local_field(default, **kwargs):
    """A config field that cannot change a result (where a dataset lives, whether it may be
    downloaded, how many segments are in flight): kept in the saved config, left out of
    :func:`identity_dict` and so of :func:`config_hash`, run names and store identities."""
    return dataclasses.field(default=default, metadata={"identity": False}, **kwargs)


def identity_dict(cfg) -> dict:
    """``to_dict(cfg)`` without the fields declared with :func:`local_field`, recursively: what
    makes two configs the same experiment."""
    out = {}
    for f in dataclasses.fields(cfg):
        if not f.metadata.get("identity", True):
            continue
        value = getattr(cfg, f.name)
        out[f.name] = identity_dict(value) if dataclasses.is_dataclass(value) else value
    return json.loads(json.dumps(out, default=list))


def load_config(path, cls):
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    try:
        return from_dict(cls, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def save_config(cfg, path) -> None:
    write_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=True))


def config_hash(cfg, length: int = 12) -> str:
    """A short, stable name for a config: md5 of the sorted JSON of :func:`identity_dict` (same
    experiment, same name, wherever its files live)."""
    blob = json.dumps(identity_dict(cfg), sort_keys=True)
    return hashlib.md5(blob.encode()).hexdigest()[:length]


def short_id(cfg, cls, who: str = "short_id") -> str:
    """8 hex digits naming ``cfg``, a ``cls`` or a mapping of its fields (:func:`config_hash`)."""
    if isinstance(cfg, dict):
        cfg = from_dict(cls, cfg)
    if not isinstance(cfg, cls):
        raise TypeError(f"{who} takes a {cls.__name__} or a mapping of its fields, got {type(cfg).__name__}")
    return config_hash(cfg, 8)
