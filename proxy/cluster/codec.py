"""One codec for the documents the Lua scripts answer and publish: frozen dataclasses to and
from JSON values, driven by each class's field types.

Strict on the way in (a wrong type, a missing field without a default, or an unknown state is a
``PayloadError``); fields the JSON has and the class lacks are ignored. A field with
``metadata=KEY`` is the key its object is stored under in the enclosing JSON object (or, for
an object held by a field, the enclosing object's field of that name), so it is not written.
A class with a ``KIND`` carries it as ``kind``: the events channel says what each message is.
The scripts' cjson writes an empty table as {} on Redis and as [] on fakeredis, so an empty
list reads as an empty object and an empty object as an empty list.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any, TypeVar

from ..errors import ClusterError

T = TypeVar("T")

KEY: Mapping[str, bool] = types.MappingProxyType({"key": True})
"""Field metadata: the field is the key its object is stored under."""


class PayloadError(ClusterError, ValueError):
    """A script answer or event payload does not have the expected shape."""


def loads(payload: bytes | str) -> object:
    """Parse a script answer; malformed JSON is a ``PayloadError``."""
    try:
        return json.loads(payload)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise PayloadError(f"not JSON: {exc}") from exc


def decode(cls: type[T], value: object, key: str | None = None) -> T:
    """``value`` (parsed JSON) as a ``cls``; ``key``: the key it was stored under."""
    return _decode_class(cls, value, cls.__name__, key, None)


def encode(obj: object) -> Any:
    """A dataclass (or a value inside one) as JSON-ready values, in the scripts' shape."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        document: dict[str, Any] = {}
        kind = getattr(obj, "KIND", None)
        if kind is not None:
            document["kind"] = kind
        for f in dataclasses.fields(obj):
            if not f.metadata.get("key"):
                document[f.name] = encode(getattr(obj, f.name))
        return document
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Mapping):
        return {k: encode(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [encode(v) for v in obj]
    return obj


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode_class(
    cls: type[T], value: object, where: str, key: str | None, outer: Mapping[str, Any] | None
) -> T:
    obj = _object(value, where)
    kind = getattr(cls, "KIND", None)
    if kind is not None and obj.get("kind", kind) != kind:
        raise PayloadError(f"{where}: a {obj.get('kind')!r} message, expected {kind!r}")
    hints = _hints(typing.cast(type, cls))
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init:
            continue
        if f.metadata.get("key"):
            values[f.name] = key if key is not None else (outer or {}).get(f.name)
            if not isinstance(values[f.name], str):
                raise PayloadError(f"{where}: no key for {f.name}")
        elif f.name in obj:
            values[f.name] = _read(hints[f.name], obj[f.name], f"{where}.{f.name}", obj)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise PayloadError(f"{where}.{f.name}: missing")
    return cls(**values)


def _read(hint: Any, value: object, where: str, outer: Mapping[str, Any]) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _read(inner, value, where, outer)
    if hint is bool:
        if not isinstance(value, bool):
            raise PayloadError(f"{where}: expected a boolean, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise PayloadError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PayloadError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise PayloadError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            raise PayloadError(f"{where}: unknown {hint.__name__} {value!r}") from None
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _decode_class(typing.cast(type, hint), value, where, None, outer)
    if origin is dict:
        item: Any = args[1]
        keyed = isinstance(item, type) and dataclasses.is_dataclass(item)
        return {
            k: _decode_class(item, v, f"{where}.{k}", k, None)
            if keyed
            else _read(item, v, f"{where}.{k}", outer)
            for k, v in _object(value, where).items()
        }
    if origin in (tuple, list):
        items = [] if value == {} else value
        if not isinstance(items, list):
            raise PayloadError(f"{where}: expected a list, got {type(value).__name__}")
        read = [_read(args[0], v, f"{where}[]", outer) for v in items]
        return tuple(read) if origin is tuple else read
    if hint is Any:
        return value
    raise TypeError(f"{where}: the codec cannot read {hint!r}")  # a programming error


def _object(value: object, where: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if value == []:
        return {}
    raise PayloadError(f"{where}: expected an object, got {type(value).__name__}")
