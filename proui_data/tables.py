"""Validated frozen dataclasses from TOML tables: the one reader behind build recipes and train configs.

Unknown keys are errors (a typo must never fall back to a default silently); values are checked against the
type of the field's default (nested dataclass, fixed-length tuple, bool, int, float, str).
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import tomllib
from pathlib import Path
from typing import Any


def _coerce(default: Any, value: Any, key: str, error: type[ValueError]) -> Any:
    if dataclasses.is_dataclass(default):
        return build_dataclass(type(default), value, key, error)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(default):
            raise error(f"{key}: expected a list of {len(default)} values, got {value!r}")
        return tuple(_coerce(d, v, key, error) for d, v in zip(default, value))
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise error(f"{key}: expected true/false, got {value!r}")
        return value
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error(f"{key}: expected a number, got {value!r}")
        if isinstance(default, int) and not float(value).is_integer():
            raise error(f"{key}: expected an integer, got {value!r}")
        return type(default)(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise error(f"{key}: expected a string, got {value!r}")
    return value


def build_dataclass(cls: type, data: Any, where: str = "", error: type[ValueError] = ValueError) -> Any:
    """`cls(**data)` after checking every key and value; errors name the dotted key."""
    if not isinstance(data, dict):
        raise error(f"{where or 'table'}: expected a table, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise error(f"{where or 'table'}: unknown key(s) {unknown}; known: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        f = known[name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kwargs[name] = _coerce(default, value, f"{where}.{name}" if where else name, error)
    return cls(**kwargs)


def read_toml(path: str | Path | None, default: importlib.resources.abc.Traversable | None, default_name: str,
              error: type[ValueError] = ValueError) -> tuple[dict, str]:
    """(table, name for messages) of a TOML file, or of the shipped `default` when `path` is None."""
    if path is None:
        if default is None or not default.is_file():
            raise error(f"no {default_name} shipped with the package")
        text, where = default.read_text(), default_name
    else:
        p = Path(path)
        if not p.is_file():
            raise error(f"file not found: {p}")
        text, where = p.read_text(), str(p)
    try:
        return tomllib.loads(text), where
    except tomllib.TOMLDecodeError as e:
        raise error(f"{where}: invalid TOML: {e}") from None
