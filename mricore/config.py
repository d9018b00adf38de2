"""Typed YAML config: files map onto small dataclasses, checked at load.

- Unknown keys fail with a close-match hint naming the file and dotted key.
- Types are checked (int/float/str/bool, lists, tuples, nested dataclasses, Optional, Literal).
- Cross-field rules live in each dataclass's `validate()` and raise `ConfigError`.
- `--set a.b=value` overrides are parsed as YAML scalars and applied before checking.
- Paths (keys named in PATH_KEYS, e.g. data.root, output_dir, members): a relative path is relative to
  where it is written, the config file's folder for a value in the file and the working directory
  for a `--set` value (as for every path typed on a command line); the loaded config holds them
  absolute, so its saved copy means the same wherever it is read. Defaults are relative to the
  working directory.
- Loaded configs are frozen dataclasses: a change is a new object (`dataclasses.replace`).
- The resolved config is written beside every output with `save_config`.

Example:
    >>> @dataclass
    ... class Train:
    ...     epochs: int = 10
    >>> from_dict(Train, {"epochs": 3}, "x.yaml").epochs
    3
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from .errors import ConfigError

# Config keys (the last part of a dotted key, at any depth) whose values are paths or lists of paths.
PATH_KEYS = frozenset({"root", "output_dir", "splits_file", "init_from", "members", "clinical", "teacher",
                       "locator", "cache_dir", "segment_config"})

# Numbers in exponent notation without a dot (1e-3), which YAML 1.1 leaves as strings.
_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, where: str, key: str):
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {key}", f"must be one of {list(args)}", repr(value),
                              f"use one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key}", "must be a mapping", type(value).__name__, "write key: value lines below it")
        return from_dict(tp, value, where, prefix=key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {key}", f"must be a list ({_type_name(tp)})", repr(value), "write [a, b]")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: {key}", f"must have {len(args)} items", len(value), f"write {len(args)} values in [ ]")
            return tuple(_coerce(v, a, where, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        out = [_coerce(v, inner, where, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key}", "must be a mapping", type(value).__name__, "write key: value lines below it")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, where, key): _coerce(v, vt, where, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            # PyYAML (YAML 1.1) reads 1e-3 as a string (it wants 1.0e-3); accept what people write.
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key}", "must be a number", repr(value), "e.g. 0.5 or 1.0e-3")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key}", "must be an integer", repr(value), "write a whole number without quotes")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key}", "must be true or false", repr(value), "write true or false without quotes")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key}", "must be a string", repr(value), "quote it")
        return value
    return value


def from_dict(cls, data: dict, where: str = "config", prefix: str = ""):
    """Build dataclass `cls` from a mapping, checking keys and types; then call `validate()`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(where, "top level must be a mapping", type(data).__name__, "write key: value lines")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for k in data:
        if k not in fields:
            close = difflib.get_close_matches(str(k), list(fields), n=1)
            hint = f"did you mean '{prefix}{close[0]}'?" if close else f"valid keys: {sorted(fields)}"
            raise ConfigError(f"{where}", f"unknown key '{prefix}{k}'", repr(k), hint)
    kwargs = {k: _coerce(v, hints[k], where, prefix + k) for k, v in data.items()}
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(where)
    return obj


def to_dict(obj) -> dict:
    """Dataclass to plain, YAML-able dict (tuples become lists)."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(obj)


def parse_overrides(items: list[str] | None) -> dict:
    """['train.epochs=5', 'model.name=unet'] -> nested dict; values parsed as YAML scalars."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item}", "must be key=value", item, "e.g. --set train.epochs=5")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {item}", "the key must be dotted names", repr(key), "e.g. --set train.epochs=5")
        d = out
        for i, p in enumerate(parts[:-1]):
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                raise ConfigError(f"--set {item}", "a key is set both as a value and as a section",
                                  ".".join(parts[:i + 1]), "give each key once")
        if isinstance(d.get(parts[-1]), dict):
            raise ConfigError(f"--set {item}", "a key is set both as a section and as a value", key, "give each key once")
        try:
            d[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item}", "the value is not valid YAML", str(e).splitlines()[0],
                              "quote it, e.g. --set 'name=\"a: b\"'") from None
    return out


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_paths(data, base: Path):
    """`data` (a parsed config mapping) with every relative path under a PATH_KEYS key made absolute
    against `base`; other values, and values of the wrong type (from_dict reports them), unchanged."""
    def one(v):
        return str((base / v).resolve()) if isinstance(v, str) and v and not Path(v).is_absolute() else v

    if not isinstance(data, dict):
        return data
    out = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out[k] = resolve_paths(v, base)
        elif k in PATH_KEYS:
            out[k] = [one(x) for x in v] if isinstance(v, list) else one(v)
        else:
            out[k] = v
    return out


def load_config(cls, path: str | Path | None = None, overrides: list[str] | None = None):
    """Load YAML `path` (or defaults when None), apply `--set` overrides, check, return a `cls`.
    Relative paths: see PATH_KEYS (the config file's folder for the file, the working directory for
    overrides)."""
    data: dict = {}
    where = "defaults"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.exists():
            raise ConfigError(path, "config file does not exist", "nothing at that path", "check the path (configs/...)")
        if not path.is_file():
            raise ConfigError(path, "config must be a YAML file", "a folder", "pass configs/<kind>/<name>.yaml")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except UnicodeDecodeError:
            raise ConfigError(path, "config must be a UTF-8 YAML text file", "binary content", "pass a .yaml file") from None
        except yaml.YAMLError as e:
            raise ConfigError(path, "not valid YAML", str(e).splitlines()[0], "fix the syntax") from None
        data = resolve_paths(data, path.resolve().parent)
    if overrides:
        data = deep_merge(data, resolve_paths(parse_overrides(overrides), Path.cwd()))
        where += " (with --set)"
    return from_dict(cls, data, where)


def save_config(obj, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically)."""
    from .outputs import write_text

    return write_text(yaml.safe_dump(to_dict(obj), sort_keys=False), path)
