"""Token counts from a Gemini answer's ``usageMetadata`` (or a usage in its names)."""

from __future__ import annotations

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
