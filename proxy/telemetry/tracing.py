"""Spans: one per client request (continuing the caller's ``traceparent``), one child per
upstream attempt. Attribute names follow the HTTP and GenAI semantic conventions."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from types import TracebackType

from opentelemetry import context as context_api
from opentelemetry.context import Context
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..dialects.base import RequestRoute
from ..dialects.openai import OpenAIRoute
from ..dialects.vertex import VertexPath
from ..gemini.paths import GeminiPath
from . import names
from .jsonlog import REQUEST_ID
from .metrics import MetricsRecorder
from .names import label, operation_name

_PROPAGATED = (b"traceparent", b"tracestate")
_PROPAGATOR = TraceContextTextMapPropagator()


def route_template(path: RequestRoute | None) -> str | None:
    """``http.route`` of a Gemini path: ``/v1beta/models/{model}:generateContent``,
    ``/v1beta/files/{name}``, ``/upload/v1beta/files``; None for a path that is not one."""
    if isinstance(path, VertexPath | OpenAIRoute):
        return path.template
    if not isinstance(path, GeminiPath):
        return None
    head = ("/upload/" if path.upload else "/") + path.version
    if path.model is not None:
        return f"{head}/models/{{model}}" + (f":{path.method}" if path.method else "")
    collection, _, rest = path.resource.partition("/")
    if not rest:
        return f"{head}/{collection}"
    _, colon, method = rest.rpartition(":")
    return f"{head}/{collection}/{{name}}" + (f":{method}" if colon and "/" not in method else "")


def parent_context(headers: Iterable[tuple[bytes, bytes]] | Mapping[str, str]) -> Context:
    """The caller's trace context from its W3C ``traceparent``/``tracestate`` headers (an
    empty context, so a new trace, when there are none or they are malformed)."""
    if isinstance(headers, Mapping):
        carrier = {k.lower(): v for k, v in headers.items()}
    else:
        carrier = {
            k.decode("latin-1").lower(): v.decode("latin-1")
            for k, v in headers
            if k.lower() in _PROPAGATED
        }
    return _PROPAGATOR.extract(carrier)


class RequestSpan:
    """The span of one client request; ``finish`` once the answer's status is known."""

    def __init__(
        self,
        span: Span,
        recorder: MetricsRecorder,
        request_id: str,
        route: str | None,
        method: str | None,
    ) -> None:
        self.span = span
        self.request_id = request_id
        self._recorder = recorder
        self._route = route
        self._method = method
        self._started = time.perf_counter()
        self.finished = False

    def routed(self, route: RequestRoute) -> None:
        """The request's route once its body was read (a dialect that names the model in the
        body): the requested model and the method go on the span and the request's count."""
        self._route = route.model
        self._method = route.method
        span = self.span
        if span.is_recording():
            span.set_attribute(names.GEN_AI_OPERATION_NAME, operation_name(route.method))
            if route.model:
                span.set_attribute(names.GEN_AI_REQUEST_MODEL, label(route.model))

    @property
    def trace_id(self) -> str:
        """The trace id in hex (all zeros when tracing is off)."""
        return format(self.span.get_span_context().trace_id, "032x")

    def finish(
        self,
        status_code: int,
        model: str | None = None,
        *,
        attempts: int | None = None,
        fallbacks: int | None = None,
    ) -> None:
        """The request was answered with ``status_code`` by ``model``: sets the span's
        attributes and counts it in ``gemini_breaker_requests_total`` (once)."""
        if self.finished:
            return
        self.finished = True
        span = self.span
        span.set_attribute(names.HTTP_RESPONSE_STATUS_CODE, status_code)
        if model:
            span.set_attribute(names.GEN_AI_RESPONSE_MODEL, label(model))
        if attempts is not None:
            span.set_attribute(names.REQUEST_ATTEMPTS, attempts)
        if fallbacks is not None:
            span.set_attribute(names.REQUEST_FALLBACKS, fallbacks)
        if status_code >= 500:  # the HTTP server convention: only 5xx is a server span's error
            span.set_attribute(names.ERROR_TYPE, str(status_code))
            span.set_status(Status(StatusCode.ERROR))
        self._recorder.count_request(model, status_code, route=self._route, method=self._method)
        self._recorder.tallies.request(
            self._route, model, status_code, time.perf_counter() - self._started
        )


class AttemptSpan:
    """The span of one upstream attempt; it also times latency and first token."""

    def __init__(
        self, span: Span, recorder: MetricsRecorder, model: str, method: str | None
    ) -> None:
        self.span = span
        self.model = model
        self._recorder = recorder
        self._method = method
        self._started = time.perf_counter()
        recorder.tallies.add("", model, "attempts")
        self._responded_after: float | None = None
        self._first_token = False
        self.outcome_set = False

    def responded(self, status_code: int) -> None:
        """The upstream's response headers arrived: times upstream latency (once), recorded
        when the attempt ends, so the histogram's cost is not on the answer's way back."""
        if self._responded_after is not None:
            return
        self._responded_after = time.perf_counter() - self._started
        self.span.set_attribute(names.HTTP_RESPONSE_STATUS_CODE, status_code)
        if 200 <= status_code < 300:
            self._recorder.vocabulary.learn(self.model)  # the upstream lists it

    def record_latency(self) -> None:
        """Record the upstream latency timed by ``responded`` (at the attempt's end)."""
        if self._responded_after is not None:
            self._recorder.upstream_latency(self.model, self._responded_after, self._method)

    def first_token(self) -> None:
        """A stream's first content event arrived: records time to first token (once)."""
        if self._first_token:
            return
        self._first_token = True
        self._recorder.time_to_first_token(
            self.model, time.perf_counter() - self._started, self._method
        )

    def usage(self, usage: Mapping[str, object] | None) -> None:
        """The answer's (final) ``usageMetadata``: counted, and put on the span
        (``gen_ai.usage.output_tokens`` includes thinking tokens, as they are billed)."""
        counts = self._recorder.token_usage(self.model, usage)
        if "input" in counts:
            self.span.set_attribute(names.GEN_AI_USAGE_INPUT_TOKENS, counts["input"])
        if "output" in counts or "thoughts" in counts:
            output = counts.get("output", 0) + counts.get("thoughts", 0)
            self.span.set_attribute(names.GEN_AI_USAGE_OUTPUT_TOKENS, output)

    def outcome(self, outcome: str, *, error_type: str | None = None) -> None:
        """How the attempt ended (a ``Verdict`` value such as ``success``, ``failure``,
        ``rate_limited``); ``error_type`` (``timeout``, ``503`` ...) marks the span failed."""
        self.outcome_set = True
        self.span.set_attribute(names.ATTEMPT_OUTCOME, outcome)
        if error_type is not None:
            self.span.set_attribute(names.ERROR_TYPE, error_type)
            self.span.set_status(Status(StatusCode.ERROR))


def quiet_span(parent: Context | None = None) -> Span:
    """The span the SDK's tracer would return for a span its sampler drops (tracing off),
    made directly: the SDK's ``start_span`` costs about 15 us even then. It continues the
    parent's trace (so logs still carry the caller's trace id) with a span id of its own."""
    parent_context = get_current_span(parent).get_span_context()
    trace_id = parent_context.trace_id if parent_context.is_valid else _random_id(128)
    return NonRecordingSpan(
        SpanContext(
            trace_id,
            _random_id(64),
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.DEFAULT),
            trace_state=parent_context.trace_state,
        )
    )


def _random_id(bits: int) -> int:
    while True:  # zero is the invalid id
        value = random.getrandbits(bits)
        if value:
            return value


class _RequestScope:
    """The block around one client request: its span current, its request id bound."""

    __slots__ = ("_context_token", "_handle", "_id_token")

    def __init__(self, handle: RequestSpan) -> None:
        self._handle = handle

    def __enter__(self) -> RequestSpan:
        self._id_token = REQUEST_ID.set(self._handle.request_id)
        self._context_token = context_api.attach(set_span_in_context(self._handle.span))
        return self._handle

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        handle = self._handle
        try:
            if isinstance(exc, asyncio.CancelledError):
                handle.finish(499)  # the client went away (nginx's "client closed request")
            elif exc is not None:
                handle.span.record_exception(exc)
                handle.finish(500)
        finally:
            context_api.detach(self._context_token)
            handle.span.end()
            REQUEST_ID.reset(self._id_token)


def request_span(
    tracer: Tracer | None,
    recorder: MetricsRecorder,
    http_method: str,
    headers: Iterable[tuple[bytes, bytes]] | Mapping[str, str],
    request_id: str,
    *,
    route: str | None,
    requested_model: str | None,
    method: str | None,
) -> AbstractContextManager[RequestSpan]:
    """Open the request's span (current for the block) with the request id bound.
    ``tracer`` None: tracing is off, and the span is a ``quiet_span``."""
    if tracer is None:
        span = quiet_span(parent_context(headers))
    else:
        attributes: dict[str, str] = {
            names.HTTP_REQUEST_METHOD: http_method,
            names.REQUEST_ID: request_id,
            names.GEN_AI_OPERATION_NAME: operation_name(method),
        }
        if route is not None:
            attributes[names.HTTP_ROUTE] = route
        if requested_model:
            attributes[names.GEN_AI_REQUEST_MODEL] = label(requested_model)
        span = tracer.start_span(
            f"{http_method} {route}" if route else http_method,
            context=parent_context(headers),
            kind=SpanKind.SERVER,
            attributes=attributes,
        )
    return _RequestScope(RequestSpan(span, recorder, request_id, requested_model, method))


class _AttemptScope:
    """The block around one upstream attempt: its span current."""

    __slots__ = ("_context_token", "_handle")

    def __init__(self, handle: AttemptSpan) -> None:
        self._handle = handle

    def __enter__(self) -> AttemptSpan:
        self._context_token = context_api.attach(set_span_in_context(self._handle.span))
        return self._handle

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        handle = self._handle
        try:
            if isinstance(exc, asyncio.CancelledError):
                if not handle.outcome_set:
                    handle.outcome("cancelled")
            elif exc is not None:
                handle.span.record_exception(exc)
                if not handle.outcome_set:
                    handle.outcome("error", error_type=type(exc).__qualname__)
        finally:
            context_api.detach(self._context_token)
            handle.record_latency()
            handle.span.end()


def attempt_span(
    tracer: Tracer | None,
    recorder: MetricsRecorder,
    model: str,
    number: int,
    *,
    retry: bool,
    failover: bool,
    probe: bool,
    method: str | None,
    server_address: str | None,
) -> AbstractContextManager[AttemptSpan]:
    """Open an upstream attempt's span as a child of the current (request) span.
    ``tracer`` None: tracing is off, and the span is a ``quiet_span``."""
    if tracer is None:
        return _AttemptScope(AttemptSpan(quiet_span(), recorder, model, method))
    operation = operation_name(method)
    attributes: dict[str, str | int | bool] = {
        names.GEN_AI_OPERATION_NAME: operation,
        names.GEN_AI_PROVIDER_NAME: names.PROVIDER,
        names.GEN_AI_REQUEST_MODEL: label(model),
        names.ATTEMPT_NUMBER: number,
        names.ATTEMPT_RETRY: retry,
        names.ATTEMPT_FAILOVER: failover,
        names.ATTEMPT_PROBE: probe,
    }
    if server_address:
        attributes[names.SERVER_ADDRESS] = server_address
    span = tracer.start_span(
        f"{operation} {label(model)}", kind=SpanKind.CLIENT, attributes=attributes
    )
    return _AttemptScope(AttemptSpan(span, recorder, model, method))
