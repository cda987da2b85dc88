"""Metric names, attribute keys and the small vocabularies the telemetry speaks.

OpenTelemetry names carry no ``_total`` and no unit suffix: the Prometheus exporter adds them
(``gemini_breaker_requests`` is scraped as ``gemini_breaker_requests_total``, the latency
histogram with unit ``s`` as ``gemini_breaker_upstream_latency_seconds``). Attribute keys with
dots (OpenTelemetry semantic conventions) are scraped with underscores.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

# -- metrics (OpenTelemetry names) ------------------------------------------------------------
ACTIVE_MODEL: Final = "gemini_breaker_active_model"
FAILOVER_EVENTS: Final = "gemini_breaker_failover_events"
REQUESTS: Final = "gemini_breaker_requests"
BREAKER_STATE: Final = "gemini_breaker_breaker_state"
BREAKER_IN_STATE: Final = "gemini_breaker_breaker_in_state"
BREAKER_TRANSITIONS: Final = "gemini_breaker_breaker_transitions"
RETRIES: Final = "gemini_breaker_retries"
SHEDS: Final = "gemini_breaker_sheds"
UPSTREAM_LATENCY: Final = "gemini_breaker_upstream_latency"
TIME_TO_FIRST_TOKEN: Final = "gemini_breaker_time_to_first_token"
TOKENS: Final = "gemini_breaker_tokens"
STORE_DEGRADED: Final = "gemini_breaker_store_degraded"
CREDENTIAL_ALERTS: Final = "gemini_breaker_credential_alerts"
QUOTA_ALERTS: Final = "gemini_breaker_quota_alerts"
SCHEMA_DRIFT: Final = "gemini_breaker_schema_drift"
STREAM_CONTINUATIONS: Final = "gemini_breaker_stream_continuations"
DEADLINE_MISSES: Final = "gemini_breaker_deadline_misses"
UPSTREAM_RESENDS: Final = "gemini_breaker_upstream_resends"

# -- attribute keys: the proxy's own label names first, then semantic conventions -------------
MODEL: Final = "model"
STATUS_CODE: Final = "status_code"
ROUTE: Final = "route"
POSITION: Final = "position"
FROM_MODEL: Final = "from_model"
TO_MODEL: Final = "to_model"
REASON: Final = "reason"
STATE: Final = "state"
FROM_STATE: Final = "from_state"
TO_STATE: Final = "to_state"
OUTCOME: Final = "outcome"
STREAMED: Final = "streamed"
DEADLINE: Final = "deadline"

GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
HTTP_REQUEST_METHOD: Final = "http.request.method"
HTTP_ROUTE: Final = "http.route"
HTTP_RESPONSE_STATUS_CODE: Final = "http.response.status_code"
SERVER_ADDRESS: Final = "server.address"
ERROR_TYPE: Final = "error.type"

# This project's span attributes (no convention covers them).
ATTEMPT_NUMBER: Final = "gemini_breaker.attempt"
ATTEMPT_RETRY: Final = "gemini_breaker.retry"
ATTEMPT_FAILOVER: Final = "gemini_breaker.failover"
ATTEMPT_PROBE: Final = "gemini_breaker.probe"
ATTEMPT_OUTCOME: Final = "gemini_breaker.outcome"
REQUEST_ID: Final = "gemini_breaker.request_id"
REQUEST_ATTEMPTS: Final = "gemini_breaker.attempts"
REQUEST_FALLBACKS: Final = "gemini_breaker.fallbacks"
CLOSE_CODE: Final = "gemini_breaker.close_code"
"""The WebSocket close code a Live session ended with (the client's socket)."""
RESUMPTIONS: Final = "gemini_breaker.resumptions"
"""Transparent resumptions a Live session used."""

PROVIDER: Final = "gcp.gemini"
"""``gen_ai.provider.name`` of the Gemini Developer API in the GenAI conventions."""

# -- vocabularies -----------------------------------------------------------------------------
BREAKER_STATE_CODES: Final[Mapping[str, int]] = MappingProxyType(
    {"closed": 0, "half_open": 1, "open": 2, "forced_open": 3, "disabled": 4}
)
"""``gemini_breaker_breaker_state`` values; a state not listed here is reported as -1."""

TOKEN_TYPES: Final = ("input", "output", "thoughts")
"""``gen_ai.token.type`` values: ``input`` and ``output`` are the convention's, ``thoughts``
(Gemini's thinking tokens, billed as output) is this project's."""

_OPERATIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "generateContent": "generate_content",
        "streamGenerateContent": "generate_content",
        "embedContent": "embeddings",
        "batchEmbedContents": "embeddings",
        "countTokens": "count_tokens",
    }
)


LIVE_OPERATION: Final = "live"
"""``gen_ai.operation.name`` of a Live API session."""


def operation_name(method: str | None) -> str:
    """``gen_ai.operation.name`` for a Gemini custom method (``generateContent`` ...); any
    other call (files, caches, batches, metadata) is ``other``, so the value set stays small."""
    if method is None:
        return "other"
    return _OPERATIONS.get(method, "other")


def label(value: str | None) -> str:
    """A label value: empty for none, and never anything that looks like a Google API key
    (keys start with ``AIza``; a client could put anything in a path segment)."""
    if not value:
        return ""
    return "redacted" if "AIza" in value else value
