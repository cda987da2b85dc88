"""JSON mode: deterministic answers that conform to the response schema, and drifted ones.

A request is in JSON mode when ``generationConfig.responseMimeType`` is ``application/json``.
Its schema is ``responseJsonSchema`` (JSON Schema: lower-case ``type``, possibly a list,
``const``, ``prefixItems``, local ``$ref`` into ``$defs``) or else ``responseSchema`` (Gemini's
OpenAPI subset: upper-case ``type``, ``propertyOrdering``, ``nullable``); both are read with
``properties``, ``required``, ``items``, ``enum``, ``anyOf``/``oneOf``, ``allOf``,
``minItems``/``maxItems`` and ``minimum``/``maximum``, in camelCase or snake_case. Without a
schema the answer is ``{"answer": <the plain-text answer>}``.

Every value comes from a hash of a seed (the prompt) and the value's path in the document, so
the same prompt gets the same JSON whichever model answers. Every property is filled in,
arrays get one or two items, enums pick a member. Deep inside a recursive schema only required
properties and ``minItems`` items are filled in, so the document stays finite.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

JSON_MIME_TYPE = "application/json"
DRIFT_MODES = ("invalid", "schema")
_MAX_DEPTH = 16
_WORDS = (
    "amber",
    "breaker",
    "cobalt",
    "delta",
    "ember",
    "falcon",
    "granite",
    "harbor",
    "indigo",
    "juniper",
    "kestrel",
    "lantern",
    "meadow",
    "nimbus",
    "orchid",
    "pebble",
)
_CAMEL_HUMP = re.compile(r"(?<!^)(?=[A-Z])")
# A value of each JSON type, tried in order when a value of the wrong type is needed.
_WRONG_VALUES: tuple[tuple[str, Any], ...] = (
    ("string", "drift"),
    ("object", {"drift": True}),
    ("array", ["drift"]),
    ("boolean", True),
    ("integer", 7),
)


@dataclass(frozen=True, slots=True)
class JsonRequest:
    """What a JSON-mode request asks for."""

    schema: Mapping[str, Any] | None
    """``responseJsonSchema`` or ``responseSchema``; None when neither is given."""


def json_request(config: Any) -> JsonRequest | None:
    """The JSON mode of a ``generationConfig``, or None when the request wants text."""
    if not isinstance(config, Mapping):
        return None
    mime = get_field(config, "responseMimeType")
    if not isinstance(mime, str) or mime.strip().lower() != JSON_MIME_TYPE:
        return None
    schema = get_field(config, "responseJsonSchema")
    if not isinstance(schema, Mapping):
        schema = get_field(config, "responseSchema")
    return JsonRequest(schema if isinstance(schema, Mapping) else None)


def render(request: JsonRequest, seed: bytes, plain: str, drift: str | None = None) -> str:
    """The answer's JSON text; ``drift`` (one of ``DRIFT_MODES``) breaks it on purpose."""
    schema = request.schema
    if schema is None:
        schema = {"type": "object", "properties": {"answer": {}}, "required": ["answer"]}
        value: Any = {"answer": plain}
    else:
        value = _Generator(schema, seed).value(schema, "$", 0)
    if drift == "schema":
        value = _Generator(schema, seed).violate(schema, value)
    text = json.dumps(value, ensure_ascii=False)
    return _truncate(text) if drift == "invalid" else text


def get_field(mapping: Mapping[str, Any], camel: str) -> Any:
    """``mapping[camel]``, else its snake_case spelling (Google's parser accepts both)."""
    if camel in mapping:
        return mapping[camel]
    return mapping.get(_CAMEL_HUMP.sub("_", camel).lower())


def _truncate(text: str) -> str:
    """The text cut about a third short, the way a broken answer ends: never valid JSON."""
    cut = text[: max(1, len(text) * 2 // 3)]
    try:
        json.loads(cut)
    except ValueError:
        return cut
    return cut + " ..."  # a scalar prefix ("12" of "123") would still parse


class _Generator:
    """Values for one schema document (the root resolves ``$ref``), from one seed."""

    __slots__ = ("root", "seed")

    def __init__(self, root: Mapping[str, Any], seed: bytes) -> None:
        self.root = root
        self.seed = seed

    def value(self, schema: Any, path: str, depth: int) -> Any:
        """A value that conforms to ``schema``."""
        schema = self.resolve(schema, depth)
        if depth > 2 * _MAX_DEPTH:
            return None
        n = self.number(path)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[n % len(enum)]
        kind = _type(schema)
        if kind == "object":
            properties = schema.get("properties")
            if not isinstance(properties, Mapping):
                return {}
            names = _ordered(schema, properties)
            if depth >= _MAX_DEPTH:  # deep in a recursive schema: only what must be there
                required = schema.get("required")
                names = [n for n in names if isinstance(required, list) and n in required]
            return {
                name: self.value(properties[name], f"{path}.{name}", depth + 1) for name in names
            }
        if kind == "array":
            return self.array(schema, path, depth, n)
        if kind == "integer":
            low, high = _bounds(schema)
            return low + n % (high - low + 1)
        if kind == "number":
            low, high = _bounds(schema)
            return round(low + (n % 10_000) / 10_000 * (high - low), 2)
        if kind == "boolean":
            return n % 2 == 0
        if kind == "null":
            return None
        return f"{_WORDS[n % len(_WORDS)]} {_WORDS[(n >> 8) % len(_WORDS)]}"

    def array(self, schema: Mapping[str, Any], path: str, depth: int, n: int) -> list[Any]:
        prefix = get_field(schema, "prefixItems")
        if isinstance(prefix, list) and prefix:
            return [self.value(s, f"{path}[{i}]", depth + 1) for i, s in enumerate(prefix)]
        low = _count(get_field(schema, "minItems"))
        high = _count(get_field(schema, "maxItems"))
        size = 1 + n % 2 if depth < _MAX_DEPTH else 0
        if high is not None:
            size = min(size, high)
        if low is not None:
            size = max(size, low)
        items = schema.get("items")
        return [self.value(items, f"{path}[{i}]", depth + 1) for i in range(size)]

    def violate(self, schema: Any, value: Any) -> Any:
        """``value`` changed so it no longer conforms: a required property dropped, else a
        property (or the whole value) of the wrong type."""
        resolved = self.resolve(schema, 0)
        if isinstance(value, dict):
            required = resolved.get("required")
            for name in required if isinstance(required, list) else ():
                if name in value:
                    return {key: item for key, item in value.items() if key != name}
            properties = resolved.get("properties")
            for name in value:
                if isinstance(properties, Mapping) and _constrains(properties.get(name)):
                    return {**value, name: self.wrong(properties[name])}
        return self.wrong(schema)

    def wrong(self, schema: Any) -> Any:
        """A value of a type that none of the schema's alternatives admits."""
        for _ in range(_MAX_DEPTH):
            ref = schema.get("$ref") if isinstance(schema, Mapping) else None
            if not isinstance(ref, str):
                break
            schema = self.lookup(ref)
        if not isinstance(schema, Mapping):
            return _WRONG_VALUES[0][1]
        branches = get_field(schema, "anyOf") or schema.get("oneOf")
        options = branches if isinstance(branches, list) and branches else [schema]
        types = {_type(self.resolve(option, 0), default="") for option in options}
        if "number" in types:
            types.add("integer")
        return next((value for name, value in _WRONG_VALUES if name not in types), None)

    def resolve(self, schema: Any, depth: int) -> Mapping[str, Any]:
        """The schema behind ``$ref``, ``allOf`` and the first non-null ``anyOf``/``oneOf``."""
        for _ in range(_MAX_DEPTH):
            if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
                return {}
            ref = schema.get("$ref")
            if isinstance(ref, str):
                schema = self.lookup(ref)
                continue
            parts = get_field(schema, "allOf")
            if isinstance(parts, list) and parts:
                rest = {k: v for k, v in schema.items() if k not in ("allOf", "all_of")}
                schema = _merge([rest, *(self.resolve(part, depth + 1) for part in parts)])
                continue
            branches = get_field(schema, "anyOf") or schema.get("oneOf")
            if isinstance(branches, list) and branches and "type" not in schema:
                usable = [b for b in branches if _type(b, default="") != "null"]
                schema = (usable or branches)[0]
                continue
            return schema
        return {}

    def lookup(self, ref: str) -> Any:
        """A local reference such as ``#/$defs/Item``; None when it does not resolve."""
        node: Any = self.root
        if not ref.startswith("#"):
            return None
        for token in ref[1:].split("/")[1:]:
            token = token.replace("~1", "/").replace("~0", "~")
            node = node.get(token) if isinstance(node, Mapping) else None
        return node

    def number(self, path: str) -> int:
        digest = hashlib.sha256(self.seed + path.encode()).digest()
        return int.from_bytes(digest[:8], "big")


def _type(schema: Mapping[str, Any], default: str = "string") -> str:
    """The schema's type in lower case (the first non-null one of a list), else inferred."""
    declared = schema.get("type")
    names = declared if isinstance(declared, list) else [declared]
    lowered = [n.lower() for n in names if isinstance(n, str)]
    usable = [n for n in lowered if n != "null"] or lowered
    if usable:
        return str(usable[0])
    if "properties" in schema:
        return "object"
    if "items" in schema or get_field(schema, "prefixItems") is not None:
        return "array"
    return default


def _constrains(schema: Any) -> bool:
    """Whether some value would break the schema (``{}`` admits anything)."""
    if not isinstance(schema, Mapping):
        return False
    keys = ("type", "enum", "const", "$ref", "anyOf", "any_of", "oneOf", "properties", "items")
    return any(key in schema for key in keys)


def _ordered(schema: Mapping[str, Any], properties: Mapping[str, Any]) -> list[str]:
    """Property names: those ``propertyOrdering`` lists first, then the rest as given."""
    ordering = get_field(schema, "propertyOrdering")
    first = [n for n in ordering if n in properties] if isinstance(ordering, list) else []
    return first + [name for name in properties if name not in first]


def _merge(schemas: list[Mapping[str, Any]]) -> dict[str, Any]:
    """``allOf``, read as one schema: later keys win, properties and required add up."""
    merged: dict[str, Any] = {}
    properties: dict[str, Any] = {}
    required: list[Any] = []
    for schema in schemas:
        merged.update(schema)
        found = schema.get("properties")
        properties.update(found if isinstance(found, Mapping) else {})
        needed = schema.get("required")
        required += needed if isinstance(needed, list) else []
    if properties:
        merged["properties"] = properties
    if required:
        merged["required"] = required
    return merged


def _bounds(schema: Mapping[str, Any]) -> tuple[int, int]:
    """Whole numbers within ``minimum``/``maximum``; 0..99 when neither is given."""
    low, high = _number(schema.get("minimum")), _number(schema.get("maximum"))
    start = 0 if high is None else math.floor(high) - 99
    if low is not None:
        start = math.ceil(low)
    end = start + 99 if high is None else math.floor(high)
    return start, max(start, end)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _count(value: Any) -> int | None:
    """A non-negative count; proto-JSON may send int64 fields such as ``minItems`` as strings."""
    number = _number(value)
    return int(number) if number is not None and number >= 0 else None
