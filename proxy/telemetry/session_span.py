"""The span of one Live API session: a server span from the upgrade to the close (continuing
the caller's ``traceparent``), with the route, the requested and serving model, the close code
and the resumptions. A session is not an HTTP request, so it is not counted in
``gemini_breaker_requests_total`` (its own counters are the ``gemini_breaker_live_*`` ones)."""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from . import names
from .names import label
from .tracing import parent_context, quiet_span

SERVER_ERROR_CLOSES = frozenset({1011, 1013, 1014})
"""Close codes that are the server's fault (internal error, try again later, bad gateway)."""


class SessionSpan:
    """One session's span; ``requested`` once the setup names the model, ``end`` at the close."""

    __slots__ = ("span",)

    def __init__(self, span: Span) -> None:
        self.span = span

    def requested(self, model: str) -> None:
        self.span.set_attribute(names.GEN_AI_REQUEST_MODEL, label(model))

    def end(self, close_code: int, model: str | None, resumptions: int) -> None:
        span = self.span
        span.set_attribute(names.CLOSE_CODE, close_code)
        span.set_attribute(names.RESUMPTIONS, resumptions)
        if model:
            span.set_attribute(names.GEN_AI_RESPONSE_MODEL, label(model))
        if close_code in SERVER_ERROR_CLOSES:
            span.set_attribute(names.ERROR_TYPE, str(close_code))
            span.set_status(Status(StatusCode.ERROR))
        span.end()


def session_span(
    tracer: Tracer | None, headers: Iterable[tuple[bytes, bytes]], route: str
) -> SessionSpan:
    """Start the span of a session on ``route`` (its path: Live paths have no parameters).
    ``tracer`` None: tracing is off, and the span is a ``quiet_span``."""
    parent = parent_context(headers)
    if tracer is None:
        return SessionSpan(quiet_span(parent))
    span = tracer.start_span(
        f"WEBSOCKET {route}",
        context=parent,
        kind=SpanKind.SERVER,
        attributes={
            names.HTTP_ROUTE: route,
            names.GEN_AI_OPERATION_NAME: names.LIVE_OPERATION,
        },
    )
    return SessionSpan(span)
