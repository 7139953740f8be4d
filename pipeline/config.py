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
import types
import typing
from pathlib import Path

import yaml

from pipeline.atomic import fsync_dir, write_atomic  # re-exported: the atomic writes live in pipeline/atomic.py

__all__ = ["ConfigError", "from_dict", "check_type", "read_mapping", "to_dict", "identity_dict", "load_config",
           "save_config", "config_hash",
           "write_atomic", "fsync_dir", "local_field", "short_id"]


class ConfigError(ValueError):
    """A configuration file or mapping that does not fit its dataclass."""


def from_dict(cls, data: dict | None, where: str = ""):
    """Build dataclass ``cls`` from a mapping, recursively.

    Unknown keys, and values that do not fit their field's type hint (:func:`check_type`), raise
    :class:`ConfigError` naming the dotted field; so do the range checks of each class's
    ``__post_init__`` (a ``ValueError`` there). ``None`` is every default.
    """
    if data is not None and not isinstance(data, typing.Mapping):
        raise ConfigError(f"{where.rstrip('.') or cls.__name__}: expected a mapping, got {_shown(data)}")
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), fields, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown key '{where}{key}' for {cls.__name__}.{hint} Valid keys: {', '.join(fields)}")
    kwargs = {name: check_type(value, hints[name], f"{where}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{where.rstrip('.') or cls.__name__}: {err}") from err


def _shown(value) -> str:
    """A value as an error message quotes it: its type, then its repr (shortened)."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _type_name(hint) -> str:
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__} fields"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if hint is tuple or origin is tuple:
        return "a list" if not args else f"a list of {_type_name(args[0])}"
    if hint is dict or origin is dict:
        return "a mapping"
    if hint is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    return getattr(hint, "__name__", str(hint))


def check_type(value, hint, field: str):
    """``value`` as field ``field`` of hint ``hint`` holds it, or :class:`ConfigError`.

    YAML gives ``int``, ``float``, ``bool``, ``str``, ``None``, lists and mappings; a field takes
    what its hint says: an int is a number (``lr: 1``) but a bool is neither an int nor a
    number (``max_epochs: true`` is a mistake, not 1), and a number is not a bool. Lists
    become tuples for tuple fields (``tuple[int, ...]`` checks each item), mappings become
    nested dataclasses, ``X | None`` takes null. Values are kept as given (an int in a float
    field stays an int) so that a config's hash does not change.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1 and dataclasses.is_dataclass(options[0]):
            return check_type(value, options[0], field)  # a nested config's errors name its own fields
        for option in options:
            try:
                return check_type(value, option, field)
            except ConfigError as err:
                if len(options) == 1 and not str(err).startswith(f"{field}: expected "):
                    raise  # an item of a list, not the value itself
        raise ConfigError(f"{field}: expected {_type_name(hint)}, got {_shown(value)}")
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, f"{field}.")
    if hint is typing.Any:
        return value
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str)}
    if hint in ok:
        if not ok[hint](value):
            raise ConfigError(f"{field}: expected {_type_name(hint)}, got {_shown(value)}")
        return value
    if origin is typing.Literal:
        if not any(value == a and type(value) is type(a) for a in args):
            raise ConfigError(f"{field}: expected {_type_name(hint)}, got {_shown(value)}")
        return value
    if hint is tuple or origin is tuple:
        if isinstance(value, (str, typing.Mapping)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{field}: expected {_type_name(hint)}, got {_shown(value)}")
        if not args:
            return tuple(value)
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            raise ConfigError(f"{field}: expected a list of {len(items)} items, got {_shown(value)}")
        return tuple(check_type(v, h, f"{field}[{i}]") for i, (v, h) in enumerate(zip(value, items)))
    if hint is dict or origin is dict:
        if not isinstance(value, typing.Mapping):
            raise ConfigError(f"{field}: expected a mapping, got {_shown(value)}")
        if not args:
            return value
        return {check_type(k, args[0], f"{field} key"): check_type(v, args[1], f"{field}.{k}")
                for k, v in value.items()}
    raise TypeError(f"{field}: check_type does not know the type hint {hint!r}: teach it (pipeline/config.py)")


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


def read_mapping(path, what: str = "config") -> dict:
    """The mapping a YAML config file holds, or :class:`ConfigError` naming the file: missing,
    not YAML, empty (an empty file is a mistake more often than a wish for every default, which
    ``{}`` says), or not a mapping (a list, a number)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if data is None:
        raise ConfigError(f"{path} is empty: list the fields that differ from the defaults (write {{}} to mean "
                          "every default)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of field names to values (key: value lines), got "
                          f"{_shown(data)}")
    return data


def load_config(path, cls):
    """The ``cls`` a YAML file describes; every error names the file (:func:`read_mapping`,
    :func:`from_dict`)."""
    path = Path(path)
    data = read_mapping(path)
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
