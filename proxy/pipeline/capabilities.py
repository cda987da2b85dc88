"""Which models of a chain can serve a request: token limits and unsupported features.

Limits come from configuration, else from what the proxy learned from ``models.get`` (fetched
lazily, once per model) or from an upstream "input too long" 400. An unknown limit never blocks
a model: the upstream's own 400 stays the judge of last resort.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..gemini.features import FEATURES, RequestNeeds

_TOO_LONG = re.compile(r"exceeds the maximum number of tokens", re.IGNORECASE)
_TOO_LONG_NUMBERS = re.compile(
    r"input token count \(?(\d+)\)? exceeds the maximum number of tokens allowed \(?(\d+)\)?",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class ModelCapabilities:
    """What one model can take, as configured; unset limits are learned from Google."""

    input_token_limit: int | None = field(default=None, metadata={"min": 1})
    output_token_limit: int | None = field(default=None, metadata={"min": 1})
    unsupported: tuple[str, ...] = field(default=(), metadata={"items": FEATURES})
    """Request features (see ``proxy.gemini.features``) the model must not be sent."""
    supports_prefill: bool = True
    """Accepts a trailing model turn to continue, which mid-stream continuation relies on."""


@dataclass(frozen=True, slots=True)
class InputTooLong:
    """Gemini's 400 for a request over the model's input limit, with the numbers it gave."""

    token_count: int | None
    token_limit: int | None


def parse_input_too_long(status: int, body: bytes) -> InputTooLong | None:
    """The "input token count (N) exceeds the maximum number of tokens allowed (M)" 400, or
    None when ``status``/``body`` is any other answer."""
    if status != 400:
        return None
    message = _error_message(body)
    if message is None or not _TOO_LONG.search(message):
        return None
    numbers = _TOO_LONG_NUMBERS.search(message)
    if numbers is None:
        return InputTooLong(None, None)
    return InputTooLong(int(numbers.group(1)), int(numbers.group(2)))


def is_input_too_long(status: int, body: bytes) -> bool:
    """Whether the upstream refused the request for having too many input tokens."""
    return parse_input_too_long(status, body) is not None


class CapabilityRegistry:
    """Configured capabilities per model, plus limits learned at run time (per replica)."""

    def __init__(
        self,
        configured: Mapping[str, ModelCapabilities] | None = None,
        default: ModelCapabilities | None = None,
    ) -> None:
        self._configured = dict(configured or {})
        self._default = default or ModelCapabilities()
        self._input: dict[str, int] = {}
        self._output: dict[str, int] = {}
        self._lookups: set[str] = set()

    def configured(self, model: str) -> ModelCapabilities:
        return self._configured.get(model, self._default)

    def input_limit(self, model: str) -> int | None:
        """The configured input limit, else the learned one, else None (unknown)."""
        configured = self.configured(model).input_token_limit
        return configured if configured is not None else self._input.get(model)

    def output_limit(self, model: str) -> int | None:
        configured = self.configured(model).output_token_limit
        return configured if configured is not None else self._output.get(model)

    def claim_lookup(self, model: str) -> bool:
        """True once per model whose limits are worth fetching with ``models.get``; the caller
        then fetches and calls ``learn``, or ``release_lookup`` when the fetch failed."""
        caps = self.configured(model)
        if caps.input_token_limit is not None and caps.output_token_limit is not None:
            return False
        if model in self._lookups:
            return False
        self._lookups.add(model)
        return True

    def release_lookup(self, model: str) -> None:
        """Let a later request claim the lookup again (the fetch failed)."""
        self._lookups.discard(model)

    def learn(self, model: str, models_get_json: Mapping[str, Any]) -> bool:
        """Take ``inputTokenLimit``/``outputTokenLimit`` from a ``GET /v1beta/models/{m}``
        answer; True when either was usable."""
        learned = False
        for key, store in (("inputTokenLimit", self._input), ("outputTokenLimit", self._output)):
            limit = _positive_int(models_get_json.get(key))
            if limit is not None:
                store[model] = limit
                learned = True
        return learned

    def learn_from_error(self, model: str, status: int, body: bytes) -> InputTooLong | None:
        """Parse an "input too long" 400 and remember the limit it names for ``model``."""
        too_long = parse_input_too_long(status, body)
        if too_long is not None and too_long.token_limit:
            # The limit Google enforced outranks the one models.get advertised.
            self._input[model] = too_long.token_limit
        return too_long

    def can_serve(self, model: str, needs: RequestNeeds) -> str | None:
        """None when ``model`` can serve a request with these needs, else why not. When no
        model of a chain can, send the request to the first anyway: Google's 400 is the answer."""
        caps = self.configured(model)
        missing = needs.features.intersection(caps.unsupported)
        if missing:
            return f"{model} does not support {', '.join(sorted(missing))}"
        limit = self.input_limit(model)
        if limit is not None and needs.estimated_input_tokens > limit:
            return (
                f"input of ~{needs.estimated_input_tokens} tokens exceeds {model}'s limit"
                f" of {limit}"
            )
        output = self.output_limit(model)
        wanted = needs.max_output_tokens
        if output is not None and wanted is not None and wanted > output:
            return f"maxOutputTokens {wanted} exceeds {model}'s output limit of {output}"
        return None

    def can_continue(self, model: str, needs: RequestNeeds) -> str | None:
        """Like ``can_serve``, for continuing a broken stream (which needs prefill)."""
        if not self.configured(model).supports_prefill:
            return f"{model} does not accept a prefilled model turn"
        return self.can_serve(model, needs)

    def larger_context(self, chain: Sequence[str], model: str, needs: RequestNeeds) -> str | None:
        """The first model after ``model`` in ``chain`` whose known input limit is larger than
        ``model``'s (when that is known) and that can serve ``needs``; for a 400 "input too
        long". Models with unknown limits are passed over: nothing says they are larger."""
        current = self.input_limit(model)
        start = chain.index(model) + 1 if model in chain else 0
        for candidate in chain[start:]:
            limit = self.input_limit(candidate)
            if candidate == model or limit is None:
                continue
            if current is not None and limit <= current:
                continue
            if self.can_serve(candidate, needs) is None:
                return candidate
        return None


def _error_message(body: bytes) -> str | None:
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if isinstance(parsed, list) and len(parsed) == 1:  # the JSON-array stream form
        parsed = parsed[0]
    error = parsed.get("error") if isinstance(parsed, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else None


def _positive_int(value: Any) -> int | None:
    """proto-JSON sends int32 as a number and int64 as a string; accept both."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None
