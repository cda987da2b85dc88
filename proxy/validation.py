"""Validation of configuration mappings into frozen dataclasses, with errors naming the key.

Field metadata drives the checks: ``min``, ``max``, ``choices`` (a scalar's allowed values) and
``items`` (a tuple's allowed members). Used by the proxy's and the simulator's configuration.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def build_dataclass(cls: type[T], raw: Any, where: str, base: T | None = None) -> T:
    """``cls`` from a mapping (over ``base`` when given), checking names, types and ranges;
    nested dataclass fields are built the same way."""
    if raw is None:
        return base if base is not None else cls()
    require_mapping(raw, where or "configuration")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    reject_unknown(raw, set(fields), where)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, value in raw.items():
        key = f"{where}.{name}" if where else str(name)
        if dataclasses.is_dataclass(hints[name]):
            inner = getattr(base, name) if base is not None else None
            values[name] = build_dataclass(hints[name], value, key, inner)
        else:
            values[name] = check_value(value, hints[name], fields[name], key)
    try:
        if base is None:
            return cls(**values)
        return dataclasses.replace(base, **values)  # type: ignore[type-var]
    except ValueError as exc:  # checks that involve several keys (__post_init__)
        raise ConfigError(f"{where or 'configuration'}: {exc}") from None


def check_value(value: Any, hint: Any, spec: dataclasses.Field[Any], where: str) -> Any:
    """One scalar (or tuple of strings) checked against its type hint and metadata."""
    args = typing.get_args(hint)
    optional = isinstance(hint, types.UnionType) and type(None) in args
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: must be set")
    kind = next(a for a in args if a is not type(None)) if optional else hint
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        items = spec.metadata.get("items")
        for item in value:
            if items is not None and item not in items:
                raise ConfigError(f"{where}: {item!r} is not one of {', '.join(items)}")
        return tuple(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    if "min" in spec.metadata and value < spec.metadata["min"]:
        raise ConfigError(f"{where}: must be at least {spec.metadata['min']}, got {value!r}")
    if "max" in spec.metadata and value > spec.metadata["max"]:
        raise ConfigError(f"{where}: must be at most {spec.metadata['max']}, got {value!r}")
    if "choices" in spec.metadata and value not in spec.metadata["choices"]:
        raise ConfigError(f"{where}: must be one of {', '.join(spec.metadata['choices'])}")
    return value


def require_mapping(value: Any, where: str) -> None:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys to values")


def reject_unknown(raw: Mapping[str, Any], known: set[str], where: str) -> None:
    for key in raw:
        if key not in known:
            name = f"{where}.{key}" if where else str(key)
            raise ConfigError(f"{name}: unknown key (known: {', '.join(sorted(known))})")


def model_name(name: Any, where: str) -> str:
    """A model name as it appears in a path segment (``gemini-2.5-flash``)."""
    if not isinstance(name, str) or not name or any(c in name for c in "/:?&#% "):
        raise ConfigError(f"{where}: {name!r} is not a model name (like gemini-2.5-flash)")
    return name
