"""Token counts from a Gemini answer's ``usageMetadata``."""

from __future__ import annotations

import re
from collections.abc import Mapping

# usageMetadata field (the API's camelCase, or the SDK's snake_case) -> gen_ai.token.type
_FIELDS = (
    ("promptTokenCount", "prompt_token_count", "input"),
    ("candidatesTokenCount", "candidates_token_count", "output"),
    ("thoughtsTokenCount", "thoughts_token_count", "thoughts"),
)


def token_counts(usage: Mapping[str, object] | None) -> dict[str, int]:
    """Tokens by type (``input``, ``output``, ``thoughts``) present in ``usage``; types the
    answer does not report, or reports as something other than a count, are left out."""
    if not usage:
        return {}
    counts: dict[str, int] = {}
    for camel, snake, kind in _FIELDS:
        value = usage.get(camel, usage.get(snake))
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            counts[kind] = value
    return counts


_USAGE_FIELD = re.compile(
    rb'"(promptTokenCount|candidatesTokenCount|thoughtsTokenCount)"\s*:\s*(\d+)'
)


def usage_from_tail(tail: bytes) -> dict[str, int] | None:
    """The ``usageMetadata`` counts of a unary answer, read from the end of its body (where
    Gemini puts them) without parsing the whole answer; None when it is not there."""
    start = tail.rfind(b'"usageMetadata"')
    if start < 0:
        return None
    end = tail.find(b"}", start)
    found = {
        name.decode(): int(value)
        for name, value in _USAGE_FIELD.findall(tail[start : end if end > 0 else None])
    }
    return found or None
