"""Structured logs: one JSON object per line, API keys redacted, with the request id and the
trace of the request that logged it."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Final

from opentelemetry import trace

from ..redaction import KEY_IN_URL

REQUEST_ID: Final[ContextVar[str | None]] = ContextVar("gemini_breaker_request_id", default=None)
"""The id of the request being served in this context (None outside a request)."""
REQUEST_ID_HEADER: Final = "x-request-id"

# A client's own request id is kept only when it is short and plain (it reaches every log line).
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD: Final = frozenset(
    {
        *logging.LogRecord("", 0, "", 0, "", None, None).__dict__,
        "message",
        "asctime",
        "taskName",
    }
)


def request_id_from(headers: Iterable[tuple[bytes, bytes]] | Mapping[str, str]) -> str:
    """The client's ``X-Request-Id`` when it sent a plain one, else a new random id."""
    if isinstance(headers, Mapping):
        given = headers.get(REQUEST_ID_HEADER)
    else:
        given = next(
            (v.decode("latin-1") for k, v in headers if k.lower() == REQUEST_ID_HEADER.encode()),
            None,
        )
    if given is not None and _CLIENT_ID.fullmatch(given):
        return given
    return os.urandom(16).hex()  # as random as uuid4().hex, at a seventh of its cost


def current_request_id() -> str | None:
    """The request id bound in this context, if any."""
    return REQUEST_ID.get()


@contextmanager
def bound_request_id(request_id: str) -> Iterator[str]:
    """Bind ``request_id`` for the block: every record logged inside carries it."""
    token = REQUEST_ID.set(request_id)
    try:
        yield request_id
    finally:
        REQUEST_ID.reset(token)


def redact(text: str) -> str:
    """``key=...`` in URLs blanked, as the plain formatter does."""
    return KEY_IN_URL.sub(r"\1REDACTED", text)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, then ``request_id``, ``trace_id`` and ``span_id`` when known, every
    ``extra=`` field, and ``exception`` / ``stack`` when present. Keys in URLs are redacted in
    every string, before encoding (so the output stays valid JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id:
            entry["request_id"] = request_id
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = trace.format_trace_id(context.trace_id)
            entry["span_id"] = trace.format_span_id(context.span_id)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry and not key.startswith("_"):
                entry[key] = _clean(value)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False, separators=(",", ":"))


def _clean(value: object) -> object:
    """A JSON-ready copy of an ``extra`` value with every string redacted."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # JSON has no NaN or Infinity
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(v) for v in value]
    if isinstance(value, bytes):
        return redact(value.decode("utf-8", "replace"))
    return redact(str(value))
