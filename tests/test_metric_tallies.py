"""Counters summed in the process: exported like any counter, and bounded in label sets."""

from __future__ import annotations

from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from proxy.telemetry import Telemetry
from proxy.telemetry.metrics import MAX_SERIES


def points(reader: InMemoryMetricReader, name: str) -> dict[frozenset[tuple[str, object]], float]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[frozenset[tuple[str, object]], float] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        assert isinstance(point, NumberDataPoint)
                        found[frozenset((point.attributes or {}).items())] = point.value
    return found


def test_counts_accumulate_across_collections() -> None:
    reader = InMemoryMetricReader()
    telemetry = Telemetry(prometheus=False, metric_readers=[reader])
    try:
        telemetry.shed("gemini-2.5-pro", "cooldown")
        assert points(reader, "gemini_breaker_sheds") == {
            frozenset({("model", "gemini-2.5-pro"), ("reason", "cooldown")}): 1
        }
        telemetry.shed("gemini-2.5-pro", "cooldown")
        assert points(reader, "gemini_breaker_sheds") == {
            frozenset({("model", "gemini-2.5-pro"), ("reason", "cooldown")}): 2
        }
    finally:
        telemetry.shutdown()


def test_requests_for_endless_model_names_cannot_grow_the_series_without_bound() -> None:
    """Model names come from request paths: past the limit, new label sets are counted
    together under OpenTelemetry's overflow attribute, and no request goes uncounted."""
    reader = InMemoryMetricReader()
    telemetry = Telemetry(prometheus=False, metric_readers=[reader])
    try:
        for i in range(MAX_SERIES + 50):
            telemetry.count_request(f"model-{i}", 404, route=f"model-{i}", method="generateContent")
        found = points(reader, "gemini_breaker_requests")
        assert len(found) == MAX_SERIES + 1
        assert found[frozenset({("otel.metric.overflow", True)})] == 50
        assert sum(found.values()) == MAX_SERIES + 50
    finally:
        telemetry.shutdown()
