"""``Telemetry``: the one object the proxy calls. Each instance has its own meter and tracer
providers (never the global ones), so several proxies in one process never share a series."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from opentelemetry.trace import Tracer

from ..dialects.base import RequestRoute
from .exporters import Exposition, PrometheusEndpoint, otlp_exporters
from .jsonlog import request_id_from
from .metrics import MetricsRecorder
from .session_span import SessionSpan, session_span
from .tracing import AttemptSpan, RequestSpan, attempt_span, request_span, route_template

SCOPE = "gemini_breaker"


class Telemetry(MetricsRecorder):
    """Metrics (``MetricsRecorder``'s methods), spans and ``/metrics`` for one proxy.

    ``prometheus``: keep the metrics for ``render_metrics``. ``otlp_endpoint``: also export
    metrics (every ``otlp_export_interval`` seconds) and spans over OTLP/HTTP to that base URL.
    ``span_exporter``: an extra span exporter, called synchronously (tests pass an in-memory
    one). ``metric_readers``: extra readers. ``models``: names that may be label values from
    the start (see ``LabelVocabulary``). Without any span exporter, spans are not sampled
    (nearly free) but still carry the trace id into the logs.
    """

    def __init__(
        self,
        service_name: str = "gemini-breaker",
        replica: str | None = None,
        *,
        otlp_endpoint: str | None = None,
        prometheus: bool = True,
        span_exporter: SpanExporter | None = None,
        metric_readers: Sequence[MetricReader] = (),
        otlp_headers: Mapping[str, str] | None = None,
        otlp_export_interval: float = 15.0,
        models: Iterable[str] = (),
    ) -> None:
        attributes = {SERVICE_NAME: service_name}
        if replica:
            attributes[SERVICE_INSTANCE_ID] = replica
        resource = Resource.create(attributes)
        processors: list[SpanProcessor] = []
        self._prometheus = PrometheusEndpoint() if prometheus else None
        readers: list[MetricReader] = [self._prometheus.reader] if self._prometheus else []
        readers.extend(metric_readers)
        if span_exporter is not None:
            processors.append(SimpleSpanProcessor(span_exporter))
        if otlp_endpoint:
            headers = dict(otlp_headers) if otlp_headers else None  # None: OTEL_* env
            spans, reader = otlp_exporters(otlp_endpoint, otlp_export_interval, headers)
            readers.append(reader)
            processors.append(BatchSpanProcessor(spans))
        # Readers that push (OTLP, extra ones): force_flush collects for them only, since a
        # collection the Prometheus reader is not scraped for would queue up inside it.
        self._push_readers = readers[1:] if self._prometheus is not None else list(readers)
        # shutdown_on_exit=False: no atexit hook per instance; the app's lifespan calls
        # shutdown(), which flushes what OTLP still holds.
        self.meter_provider = MeterProvider(
            metric_readers=readers, resource=resource, shutdown_on_exit=False
        )
        self.tracer_provider = TracerProvider(
            resource=resource,
            sampler=ParentBased(ALWAYS_ON) if processors else ALWAYS_OFF,
            shutdown_on_exit=False,
        )
        for processor in processors:
            self.tracer_provider.add_span_processor(processor)
        self.tracer: Tracer = self.tracer_provider.get_tracer(SCOPE)
        # With nothing to export spans to, none is sampled: the spans are made directly.
        self._span_tracer: Tracer | None = self.tracer if processors else None
        self._shutdown_lock = threading.Lock()
        self._closed = False
        super().__init__(self.meter_provider.get_meter(SCOPE), models)

    # -- spans ----------------------------------------------------------------------------------

    def request(
        self,
        http_method: str,
        headers: Iterable[tuple[bytes, bytes]] | Mapping[str, str],
        path: RequestRoute | None = None,
    ) -> AbstractContextManager[RequestSpan]:
        """Around one client request: its span (continuing the ``traceparent`` in
        ``headers``), current for the block, with the request id (the client's
        ``X-Request-Id`` or a new one) bound for the logs. Call ``finish`` on what it yields;
        an exception out of the block finishes it as 500 (499 when cancelled)."""
        headers = headers if isinstance(headers, Mapping) else list(headers)
        return request_span(
            self._span_tracer,
            self,
            http_method,
            headers,
            request_id_from(headers),
            route=route_template(path),
            requested_model=path.model if path else None,
            method=path.method if path else None,
        )

    def session(self, headers: Iterable[tuple[bytes, bytes]], route: str) -> SessionSpan:
        """The span of one Live API session on ``route``; ``end`` it at the close."""
        return session_span(self._span_tracer, headers, route)

    def attempt(
        self,
        model: str,
        number: int,
        *,
        retry: bool = False,
        failover: bool = False,
        probe: bool = False,
        method: str | None = None,
        server_address: str | None = None,
    ) -> AbstractContextManager[AttemptSpan]:
        """Around one upstream attempt (inside ``request``): a child span. ``number`` counts
        the request's attempts from 1; ``retry``: same model again; ``failover``: not the
        requested model; ``probe``: a half-open permit. Report on what it yields."""
        return attempt_span(
            self._span_tracer,
            self,
            model,
            number,
            retry=retry,
            failover=failover,
            probe=probe,
            method=method,
            server_address=server_address,
        )

    # -- export ---------------------------------------------------------------------------------

    def render_metrics(self, accept: str | None = None) -> Exposition | None:
        """The ``/metrics`` answer for this instance (None when built without Prometheus)."""
        if self._prometheus is None:
            return None
        return self._prometheus.render(accept)

    def force_flush(self, timeout_millis: int = 10_000) -> None:
        """Export what is pending now (spans, and metrics to OTLP)."""
        self.tracer_provider.force_flush(timeout_millis)
        for reader in self._push_readers:
            reader.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """Flush and stop the exporters; call once when the app stops (later calls do
        nothing). Recording afterwards is harmless and goes nowhere."""
        with self._shutdown_lock:
            if self._closed:
                return
            self._closed = True
        self.watch_cluster(None)
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()
