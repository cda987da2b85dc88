"""A unary Gemini answer's ``usageMetadata``, read from the end of its body."""

from __future__ import annotations

import re

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
