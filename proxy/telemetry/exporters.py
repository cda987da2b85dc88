"""Where telemetry goes: a Prometheus registry of the instance's own (for ``/metrics``), and
OTLP over HTTP when an endpoint is configured."""

from __future__ import annotations

from typing import NamedTuple

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder


class Exposition(NamedTuple):
    """A ``/metrics`` answer."""

    body: bytes
    content_type: str


class PrometheusEndpoint:
    """A metric reader registered in a registry of its own, never prometheus_client's global
    one, so proxies sharing a process (tests) never share series."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.reader = PrometheusMetricReader(
            # Scope labels (otel_scope_name ...) on every series would only add noise; the
            # resource (service.name, service.instance.id) is in target_info.
            scope_info_enabled=False,
            registry=self.registry,
        )

    def render(self, accept: str | None = None) -> Exposition:
        """The text exposition (OpenMetrics when the scraper's ``Accept`` asks for it)."""
        encode, content_type = choose_encoder(accept or "")
        return Exposition(encode(self.registry), content_type)


def otlp_exporters(
    endpoint: str, export_interval: float, headers: dict[str, str] | None = None
) -> tuple[SpanExporter, MetricReader]:
    """OTLP/HTTP (protobuf) exporters for spans and metrics. ``endpoint`` is the collector's
    base URL, as in ``OTEL_EXPORTER_OTLP_ENDPOINT`` (``http://collector:4318``)."""
    # Imported here: the exporters pull in protobuf and requests, needed only when configured.
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    base = endpoint.rstrip("/")
    spans = OTLPSpanExporter(endpoint=f"{base}/v1/traces", headers=headers)
    metrics = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=f"{base}/v1/metrics", headers=headers),
        export_interval_millis=export_interval * 1000,
    )
    return spans, metrics
