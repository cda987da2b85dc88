"""Checking a JSON answer against the schema the request asked for.

Two dialects: Gemini's OpenAPI-subset ``responseSchema`` (``type`` OBJECT/ARRAY/STRING/INTEGER/
NUMBER/BOOLEAN/NULL in any case, ``properties``, ``required``, ``items``, ``enum``, ``nullable``,
``minItems``/``maxItems``, ``anyOf``) and the JSON Schema subset of ``responseJsonSchema`` (also
type lists, ``const``, ``additionalProperties``, ``prefixItems``, ``oneOf`` read as ``anyOf`` as
Gemini does, and local ``$ref`` such as ``#/$defs/x``). snake_case keywords are accepted too.

The check is deliberately permissive: unknown keywords, unresolvable references and anything
deeper than ``MAX_DEPTH`` are accepted, because a false "schema drift" would fail a healthy model
over to a weaker one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from .features import Dialect, RequestNeeds, get_field

MAX_DEPTH = 64
"""Schema and value nesting checked; anything deeper is accepted unchecked."""
MAX_STEPS = 100_000
"""Schema nodes visited per ``validate`` call, so nested ``anyOf`` cannot blow up."""
MAX_PROBLEMS = 20


def validate(value: Any, schema: Any, dialect: Dialect) -> list[str]:
    """Problems of ``value`` (parsed JSON) against ``schema``, each naming the path
    (``$.items[2].name: expected string, got integer``); empty when it is valid."""
    return _Validator(schema, dialect).check(value, schema, "$", 0)


def check_json_answer(text: str, needs: RequestNeeds) -> str | None:
    """Why an answer's text fails the request's JSON contract, or None when it holds (or the
    request asked for no JSON). ``text`` is the answer's concatenated non-thought text; callers
    skip answers that carry none (a function call, say)."""
    if not needs.expects_json:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        return f"the answer is not valid JSON: {exc}"
    except RecursionError:
        return None  # valid JSON, just too deep for this parser: not evidence of drift
    if needs.json_schema is None:
        return None
    problems = validate(value, needs.json_schema.schema, needs.json_schema.dialect)
    if not problems:
        return None
    return "the answer does not match the response schema: " + "; ".join(problems[:3])


class _Validator:
    """One validation: the root (for ``$ref``), the dialect and the step budget."""

    __slots__ = ("dialect", "root", "steps")

    def __init__(self, root: Any, dialect: Dialect) -> None:
        self.root = root
        self.dialect = dialect
        self.steps = 0

    def check(self, value: Any, schema: Any, path: str, depth: int) -> list[str]:
        self.steps += 1
        if depth > MAX_DEPTH or self.steps > MAX_STEPS:
            return []
        if schema is False:
            return [f"{path}: no value is allowed here"]
        if not isinstance(schema, Mapping):
            return []  # true, or not a schema at all: accept
        problems: list[str] = []
        ref = schema.get("$ref")
        if isinstance(ref, str):
            target = self.resolve(ref)
            if target is not None:
                problems += self.check(value, target, path, depth + 1)
        if value is None and self.dialect == "openapi" and schema.get("nullable") is True:
            return problems
        problems += self.type_problems(value, schema, path)
        if problems:
            return problems  # the other keywords would only repeat the type mismatch
        problems += self.value_problems(value, schema, path, depth)
        if isinstance(value, Mapping):
            problems += self.object_problems(value, schema, path, depth)
        elif isinstance(value, list):
            problems += self.array_problems(value, schema, path, depth)
        return problems[:MAX_PROBLEMS]

    def type_problems(self, value: Any, schema: Mapping[str, Any], path: str) -> list[str]:
        declared = schema.get("type")
        given: list[Any] = declared if isinstance(declared, list) else [declared]
        # Unknown names (TYPE_UNSPECIFIED, say) are ignored; Gemini's enum is upper case.
        names = [n.lower() for n in given if isinstance(n, str) and n.lower() in _TYPE_NAMES]
        if not names or any(_has_type(value, name) for name in names):
            return []
        return [f"{path}: expected {' or '.join(names)}, got {_json_type(value)}"]

    def value_problems(
        self, value: Any, schema: Mapping[str, Any], path: str, depth: int
    ) -> list[str]:
        problems: list[str] = []
        enum = schema.get("enum")
        if isinstance(enum, list) and not any(self.enum_match(value, e) for e in enum):
            problems.append(f"{path}: {_short(value)} is not one of the enum values")
        const_given = self.dialect == "jsonschema" and "const" in schema
        if const_given and not _json_equal(value, schema["const"]):
            problems.append(f"{path}: {_short(value)} is not the const value")
        alternatives = [get_field(schema, "anyOf")]
        if self.dialect == "jsonschema":
            alternatives.append(get_field(schema, "oneOf"))  # Gemini reads oneOf as anyOf
        for options in alternatives:
            if not isinstance(options, list) or not options:
                continue
            failures = [self.check(value, option, path, depth + 1) for option in options]
            if all(failures):
                first = failures[0][0] if failures[0] else ""
                problems.append(f"{path}: matches none of the alternatives ({first})")
        return problems

    def object_problems(
        self, value: Mapping[str, Any], schema: Mapping[str, Any], path: str, depth: int
    ) -> list[str]:
        problems: list[str] = []
        required = schema.get("required")
        if isinstance(required, list):
            for name in required:
                if isinstance(name, str) and name not in value:
                    problems.append(f"{path}: missing required property {name!r}")
        properties = schema.get("properties")
        properties = properties if isinstance(properties, Mapping) else {}
        for name, item in value.items():
            if name in properties:
                problems += self.check(item, properties[name], _key_path(path, name), depth + 1)
        additional = get_field(schema, "additionalProperties")
        # patternProperties is not checked, so extra names may be legitimate under it.
        if self.dialect == "jsonschema" and "patternProperties" not in schema:
            extra = [name for name in value if name not in properties]
            if additional is False and extra:
                problems.append(f"{path}: unexpected properties {', '.join(map(repr, extra))}")
            elif isinstance(additional, Mapping):
                for name in extra:
                    sub = _key_path(path, name)
                    problems += self.check(value[name], additional, sub, depth + 1)
        return problems

    def array_problems(
        self, value: list[Any], schema: Mapping[str, Any], path: str, depth: int
    ) -> list[str]:
        problems: list[str] = []
        low = _count(get_field(schema, "minItems"))
        high = _count(get_field(schema, "maxItems"))
        if low is not None and len(value) < low:
            problems.append(f"{path}: {len(value)} items, fewer than minItems {low}")
        if high is not None and len(value) > high:
            problems.append(f"{path}: {len(value)} items, more than maxItems {high}")
        start = 0
        prefix = get_field(schema, "prefixItems") if self.dialect == "jsonschema" else None
        if isinstance(prefix, list):
            for index, (item, sub) in enumerate(zip(value, prefix, strict=False)):
                problems += self.check(item, sub, f"{path}[{index}]", depth + 1)
            start = len(prefix)  # ``items`` covers only what follows the prefix
        items = schema.get("items")
        if isinstance(items, Mapping) or items is False:
            for index in range(start, len(value)):
                problems += self.check(value[index], items, f"{path}[{index}]", depth + 1)
                if len(problems) >= MAX_PROBLEMS:
                    break
        return problems

    def enum_match(self, value: Any, allowed: Any) -> bool:
        if _json_equal(value, allowed):
            return True
        # Gemini's OpenAPI enums are strings even for numbers; the answer may carry the number.
        return (
            self.dialect == "openapi"
            and isinstance(allowed, str)
            and not isinstance(value, str)
            and json.dumps(value) == allowed
        )

    def resolve(self, ref: str) -> Any:
        """A local reference (``#``, ``#/$defs/x``, ``#/definitions/x``); None otherwise."""
        if not ref.startswith("#"):
            return None
        node: Any = self.root
        for raw in ref[1:].split("/")[1:]:
            token = unquote(raw).replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and token in node:
                node = node[token]
            elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
                node = node[int(token)]
            else:
                return None
        return node


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_TYPE_NAMES = ("object", "array", "string", "integer", "number", "boolean", "null")


def _has_type(value: Any, name: str) -> bool:
    match name:
        case "object":
            return isinstance(value, Mapping)
        case "array":
            return isinstance(value, list)
        case "string":
            return isinstance(value, str)
        case "integer":
            return _is_integer(value)
        case "number":
            return _is_number(value)
        case "boolean":
            return isinstance(value, bool)
        case _:
            return value is None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if _is_integer(value):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _json_equal(a: Any, b: Any) -> bool:
    """Equality as JSON sees it: ``true`` is not ``1``, ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


def _count(value: Any) -> int | None:
    """A non-negative count; proto-JSON sends int64 fields such as ``minItems`` as strings."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _key_path(path: str, name: str) -> str:
    return f"{path}.{name}" if name.isidentifier() else f"{path}[{json.dumps(name)}]"


def _short(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (RecursionError, TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def json_answer_problem(body: bytes, needs: RequestNeeds) -> str | None:
    """Why a unary JSON-mode answer (the whole response body) is not the JSON that was asked
    for, or None. Answers with no text to check (a blocked prompt, a function call) pass."""
    try:
        response = json.loads(body)
    except ValueError:
        return "the response body is not JSON"
    candidates = response.get("candidates") if isinstance(response, dict) else None
    if not isinstance(candidates, list) or not candidates or not isinstance(candidates[0], dict):
        return None
    content = candidates[0].get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    texts = [
        part["text"]
        for part in parts or []
        if isinstance(part, dict) and isinstance(part.get("text"), str) and not part.get("thought")
    ]
    if not texts:
        return None
    return check_json_answer("".join(texts), needs)
