"""Counters summed in the process: exported like any counter, and bounded in label sets."""

from __future__ import annotations

from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from proxy.telemetry import Telemetry
from proxy.telemetry.vocabulary import MAX_LEARNED_MODELS

PRO = "gemini-2.5-pro"


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
    telemetry = Telemetry(prometheus=False, metric_readers=[reader], models=[PRO])
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


def test_model_route_and_status_labels_come_from_bounded_sets() -> None:
    """Model names come from request paths: only configured names and names the upstream
    served become labels; any other name, and any unusual status, is counted as ``other``,
    and no request goes uncounted."""
    reader = InMemoryMetricReader()
    telemetry = Telemetry(prometheus=False, metric_readers=[reader], models=[PRO])
    try:
        for i in range(5000):
            telemetry.count_request(f"model-{i}", 404, route=f"model-{i}", method="generateContent")
            telemetry.shed(f"model-{i}", "cooldown")
        telemetry.count_request(PRO, 200, route=PRO, method="generateContent")
        telemetry.count_request(PRO, 299, route=PRO, method=f"method{i}")
        found = points(reader, "gemini_breaker_requests")
        generate = ("gen_ai.operation.name", "generate_content")
        assert found == {
            frozenset(
                {("model", "other"), ("status_code", "404"), ("route", "other"), generate}
            ): 5000,
            frozenset({("model", PRO), ("status_code", "200"), ("route", PRO), generate}): 1,
            frozenset(
                {
                    ("model", PRO),
                    ("status_code", "other"),
                    ("route", PRO),
                    ("gen_ai.operation.name", "other"),
                }
            ): 1,
        }
        assert points(reader, "gemini_breaker_sheds") == {
            frozenset({("model", "other"), ("reason", "cooldown")}): 5000
        }
    finally:
        telemetry.shutdown()


def test_a_model_the_upstream_served_becomes_a_label_up_to_a_bound() -> None:
    reader = InMemoryMetricReader()
    telemetry = Telemetry(prometheus=False, metric_readers=[reader])
    try:
        with telemetry.attempt("gemini-3.1-flash-lite", 1) as attempt:
            attempt.responded(404)  # not evidence: any name gets a 404
        telemetry.shed("gemini-3.1-flash-lite", "cooldown")
        with telemetry.attempt("gemini-3.1-flash-lite", 1) as attempt:
            attempt.responded(200)
        telemetry.shed("gemini-3.1-flash-lite", "cooldown")
        assert points(reader, "gemini_breaker_sheds") == {
            frozenset({("model", "other"), ("reason", "cooldown")}): 1,
            frozenset({("model", "gemini-3.1-flash-lite"), ("reason", "cooldown")}): 1,
        }
        for i in range(MAX_LEARNED_MODELS + 10):
            telemetry.vocabulary.learn(f"served-{i}")
        assert telemetry.vocabulary.model(f"served-{MAX_LEARNED_MODELS - 2}") != "other"
        assert telemetry.vocabulary.model(f"served-{MAX_LEARNED_MODELS + 5}") == "other"
    finally:
        telemetry.shutdown()
