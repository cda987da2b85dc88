"""Telemetry: metrics read back through the Prometheus text parser, span trees from an
in-memory exporter, JSON log lines, and OTLP export to a local collector stand-in."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import fakeredis
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.cluster.coordinator import Coordinator
from proxy.cluster.state import STATES, ActiveModel, BreakerState, Snapshot
from proxy.config_load import build_settings
from proxy.gemini.paths import parse_path
from proxy.telemetry import (
    BREAKER_STATE_CODES,
    ClusterView,
    JsonFormatter,
    RouteView,
    Telemetry,
    bound_request_id,
    current_request_id,
    request_id_from,
    route_template,
    view_of,
)
from proxy.telemetry.usage import token_counts

PRO, FLASH, LITE = "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"
CHAIN = (PRO, FLASH, LITE)
GENERATE = "/v1beta/models/gemini-2.5-pro:generateContent"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"

Series = dict[frozenset[tuple[str, str]], float]


def scrape(telemetry: Telemetry) -> dict[str, Series]:
    """``/metrics`` parsed by prometheus_client's own parser: sample name -> labels -> value."""
    exposition = telemetry.render_metrics()
    assert exposition is not None
    assert exposition.content_type.startswith("text/plain")
    samples: dict[str, Series] = {}
    for family in text_string_to_metric_families(exposition.body.decode()):
        for sample in family.samples:
            series = samples.setdefault(sample.name, {})
            series[frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: dict[str, Series], name: str, **labels: str) -> float:
    """The value of the one series of ``name`` with exactly these labels."""
    series = samples.get(name, {})
    key = frozenset(labels.items())
    assert key in series, f"{name}{labels} not in {sorted(map(sorted, series))}"
    return series[key]


def view(active: str | None = FLASH, pro: str = "open", degraded: bool = False) -> ClusterView:
    return ClusterView(
        routes={PRO: RouteView(CHAIN, active)},
        breakers={PRO: pro, FLASH: "closed", LITE: "closed"},
        store_degraded=degraded,
    )


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def telemetry(spans: InMemorySpanExporter) -> Iterator[Telemetry]:
    instance = Telemetry("gemini-breaker", "replica-a", span_exporter=spans, models=CHAIN)
    yield instance
    instance.shutdown()


def failover_request(telemetry: Telemetry, headers: dict[str, str] | None = None) -> None:
    """A scripted request: pro fails twice (one retry), the request fails over to flash,
    which answers 200 with usage."""
    path = parse_path(GENERATE)
    assert path is not None
    with telemetry.request("POST", headers or {}, path) as request:
        for number in (1, 2):
            with telemetry.attempt(PRO, number, retry=number > 1, method=path.method) as attempt:
                attempt.responded(503)
                attempt.outcome("failure", error_type="503")
            if number == 1:
                telemetry.retry(PRO, "upstream_error")
        telemetry.failover(PRO, PRO, FLASH, "failure")
        with telemetry.attempt(FLASH, 3, failover=True, method=path.method) as attempt:
            attempt.responded(200)
            attempt.usage(
                {"promptTokenCount": 12, "candidatesTokenCount": 30, "thoughtsTokenCount": 7}
            )
            attempt.outcome("success")
        request.finish(200, FLASH, attempts=3, fallbacks=1)


# -- metrics --------------------------------------------------------------------------------


def test_metrics_after_a_scripted_failover_parse_with_the_prometheus_parser(
    telemetry: Telemetry,
) -> None:
    telemetry.watch_cluster(lambda: view(active=FLASH, pro="open"))
    failover_request(telemetry)
    failover_request(telemetry)
    telemetry.breaker_transition(PRO, "closed", "open")
    telemetry.shed(FLASH, "cooldown")
    telemetry.shed(FLASH, "cooldown")
    telemetry.shed(LITE, "breakers_open")
    telemetry.credential_alert(LITE, 403)
    telemetry.quota_alert(FLASH)
    telemetry.schema_drift(FLASH, streamed=True)
    telemetry.stream_continuation(FLASH, LITE)
    telemetry.stream_continuation(LITE, None)
    with telemetry.request("GET", {}, parse_path("/v1beta/files/abc")) as request:
        request.finish(404)

    samples = scrape(telemetry)

    # The seed's three metrics, under their documented names and labels.
    for model, position, active in ((PRO, "0", 0), (FLASH, "1", 1), (LITE, "2", 0)):
        assert (
            value(samples, "gemini_breaker_active_model", route=PRO, model=model, position=position)
            == active
        )
    assert (
        value(
            samples,
            "gemini_breaker_failover_events_total",
            route=PRO,
            from_model=PRO,
            to_model=FLASH,
            reason="failure",
        )
        == 2
    )
    generate = {"gen_ai_operation_name": "generate_content", "route": PRO}
    assert (
        value(samples, "gemini_breaker_requests_total", model=FLASH, status_code="200", **generate)
        == 2
    )
    assert (
        value(
            samples,
            "gemini_breaker_requests_total",
            model="",
            status_code="404",
            gen_ai_operation_name="other",
            route="",
        )
        == 1
    )
    # Breakers: numeric state, one series per state, transitions.
    assert value(samples, "gemini_breaker_breaker_state", model=PRO) == BREAKER_STATE_CODES["open"]
    assert value(samples, "gemini_breaker_breaker_state", model=FLASH) == 0
    assert value(samples, "gemini_breaker_breaker_in_state", model=PRO, state="open") == 1
    assert value(samples, "gemini_breaker_breaker_in_state", model=PRO, state="closed") == 0
    assert value(samples, "gemini_breaker_breaker_in_state", model=FLASH, state="closed") == 1
    assert (
        value(
            samples,
            "gemini_breaker_breaker_transitions_total",
            model=PRO,
            from_state="closed",
            to_state="open",
        )
        == 1
    )
    # Retries, sheds, alerts.
    assert value(samples, "gemini_breaker_retries_total", model=PRO, reason="upstream_error") == 2
    assert value(samples, "gemini_breaker_sheds_total", model=FLASH, reason="cooldown") == 2
    assert value(samples, "gemini_breaker_sheds_total", model=LITE, reason="breakers_open") == 1
    assert (
        value(samples, "gemini_breaker_credential_alerts_total", model=LITE, status_code="403") == 1
    )
    assert value(samples, "gemini_breaker_quota_alerts_total", model=FLASH) == 1
    assert value(samples, "gemini_breaker_schema_drift_total", model=FLASH, streamed="true") == 1
    assert (
        value(
            samples,
            "gemini_breaker_stream_continuations_total",
            from_model=FLASH,
            to_model=LITE,
            outcome="continued",
        )
        == 1
    )
    assert (
        value(
            samples,
            "gemini_breaker_stream_continuations_total",
            from_model=LITE,
            to_model="",
            outcome="failed",
        )
        == 1
    )
    # Tokens by type, latency per model, store health.
    for kind, count in (("input", 24), ("output", 60), ("thoughts", 14)):
        assert (
            value(samples, "gemini_breaker_tokens_total", model=FLASH, gen_ai_token_type=kind)
            == count
        )
    per_model = {"gen_ai_operation_name": "generate_content"}
    assert (
        value(samples, "gemini_breaker_upstream_latency_seconds_count", model=PRO, **per_model) == 4
    )
    assert (
        value(samples, "gemini_breaker_upstream_latency_seconds_count", model=FLASH, **per_model)
        == 2
    )
    assert value(samples, "gemini_breaker_store_degraded") == 0
    # The resource names the replica.
    info = next(iter(samples["target_info"]))
    assert ("service_instance_id", "replica-a") in info
    assert ("service_name", "gemini-breaker") in info


def test_histograms_bucket_latency_and_time_to_first_token_in_seconds(
    telemetry: Telemetry,
) -> None:
    telemetry.upstream_latency(FLASH, 0.3, "generateContent")
    telemetry.upstream_latency(FLASH, 3.0, "generateContent")
    telemetry.time_to_first_token(FLASH, 0.05, "streamGenerateContent")
    samples = scrape(telemetry)
    labels = {"model": FLASH, "gen_ai_operation_name": "generate_content"}
    latency = "gemini_breaker_upstream_latency_seconds"
    assert value(samples, f"{latency}_count", **labels) == 2
    assert value(samples, f"{latency}_sum", **labels) == pytest.approx(3.3)
    assert value(samples, f"{latency}_bucket", le="0.32", **labels) == 1
    assert value(samples, f"{latency}_bucket", le="2.56", **labels) == 1
    assert value(samples, f"{latency}_bucket", le="5.12", **labels) == 2
    assert value(samples, f"{latency}_bucket", le="+Inf", **labels) == 2
    first = "gemini_breaker_time_to_first_token_seconds"
    assert value(samples, f"{first}_count", **labels) == 1
    assert value(samples, f"{first}_bucket", le="0.04", **labels) == 0
    assert value(samples, f"{first}_bucket", le="0.06", **labels) == 1


def test_attempt_times_first_token_once(telemetry: Telemetry) -> None:
    with telemetry.attempt(FLASH, 1, method="streamGenerateContent") as attempt:
        attempt.responded(200)
        attempt.responded(200)
        attempt.first_token()
        attempt.first_token()
    samples = scrape(telemetry)
    labels = {"model": FLASH, "gen_ai_operation_name": "generate_content"}
    assert value(samples, "gemini_breaker_upstream_latency_seconds_count", **labels) == 1
    assert value(samples, "gemini_breaker_time_to_first_token_seconds_count", **labels) == 1


def test_cluster_gauges_follow_the_snapshot_at_each_scrape(telemetry: Telemetry) -> None:
    assert "gemini_breaker_active_model" not in scrape(telemetry)  # nothing to observe yet
    current = {"view": view(active=PRO, pro="closed")}
    telemetry.watch_cluster(lambda: current["view"])
    samples = scrape(telemetry)
    assert value(samples, "gemini_breaker_active_model", route=PRO, model=PRO, position="0") == 1
    assert value(samples, "gemini_breaker_breaker_state", model=PRO) == 0

    current["view"] = view(active=None, pro="forced_open", degraded=True)
    samples = scrape(telemetry)
    assert samples["gemini_breaker_active_model"]
    assert set(samples["gemini_breaker_active_model"].values()) == {0}  # no model admits
    assert value(samples, "gemini_breaker_breaker_state", model=PRO) == 3
    assert value(samples, "gemini_breaker_store_degraded") == 1

    current["view"] = ClusterView(breakers={PRO: "someday"})  # a state this module never heard of
    samples = scrape(telemetry)
    assert value(samples, "gemini_breaker_breaker_state", model=PRO) == -1
    assert value(samples, "gemini_breaker_breaker_in_state", model=PRO, state="someday") == 1


def test_a_failing_cluster_source_leaves_the_rest_of_the_scrape_intact(
    telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> ClusterView:
        raise RuntimeError("mirror exploded")

    telemetry.watch_cluster(broken)
    telemetry.shed(FLASH, "throttle")
    with caplog.at_level(logging.WARNING, "gemini_breaker.telemetry"):
        samples = scrape(telemetry)
    assert value(samples, "gemini_breaker_sheds_total", model=FLASH, reason="throttle") == 1
    assert "gemini_breaker_active_model" not in samples
    assert "cluster view" in caplog.text


def test_two_instances_share_no_values() -> None:
    first, second = Telemetry(replica="a", models=CHAIN), Telemetry(replica="b", models=CHAIN)
    try:
        first.watch_cluster(lambda: view(active=FLASH))
        second.watch_cluster(lambda: view(active=PRO, pro="closed"))
        first.count_request(FLASH, 200, route=PRO, method="generateContent")
        first.count_request(FLASH, 200, route=PRO, method="generateContent")
        second.count_request(PRO, 500, route=PRO, method="generateContent")
        one, two = scrape(first), scrape(second)
        labels = {"route": PRO, "gen_ai_operation_name": "generate_content"}
        assert (
            value(one, "gemini_breaker_requests_total", model=FLASH, status_code="200", **labels)
            == 2
        )
        assert list(one["gemini_breaker_requests_total"].values()) == [2]
        assert list(two["gemini_breaker_requests_total"].values()) == [1]
        assert value(two, "gemini_breaker_requests_total", model=PRO, status_code="500", **labels)
        assert value(one, "gemini_breaker_active_model", route=PRO, model=FLASH, position="1") == 1
        assert value(two, "gemini_breaker_active_model", route=PRO, model=FLASH, position="1") == 0
        assert ("service_instance_id", "b") in next(iter(two["target_info"]))
        # Nothing went to prometheus_client's process-wide registry.
        assert b"gemini_breaker" not in generate_latest(REGISTRY)
    finally:
        first.shutdown()
        second.shutdown()
    # Shut down, an instance leaves nothing registered anywhere, and may be shut down again.
    first.shutdown()
    fresh = Telemetry(models=CHAIN)
    try:
        assert "gemini_breaker_requests_total" not in scrape(fresh)
    finally:
        fresh.shutdown()


def test_no_api_key_ever_becomes_a_label(telemetry: Telemetry) -> None:
    key = "AIzaSyDUMMYDUMMYDUMMYDUMMYDUMMYDUMMY12"
    telemetry.count_request(key, 200, route=key, method="generateContent")
    telemetry.shed(key, "cooldown")
    exposition = telemetry.render_metrics()
    assert exposition is not None
    assert b"AIza" not in exposition.body
    assert value(scrape(telemetry), "gemini_breaker_sheds_total", model="other", reason="cooldown")
    telemetry.vocabulary.know([key])  # not even a configured name shows a key
    telemetry.vocabulary.learn(key)
    telemetry.shed(key, "cooldown")
    assert b"AIza" not in telemetry.render_metrics().body  # type: ignore[union-attr]


def test_alert_counts_are_kept_per_model_label_so_unknown_names_cannot_grow_them(
    telemetry: Telemetry,
) -> None:
    telemetry.credential_alert(PRO, 401)
    for n in range(50):  # names a caller made up: one entry between them
        telemetry.credential_alert(f"made-up-{n}", 403)
        telemetry.schema_drift(f"made-up-{n}")
    telemetry.quota_alert(FLASH)
    telemetry.quota_alert(FLASH)

    alerts = telemetry.alerts
    assert dict(alerts.credential) == {PRO: 1, "other": 50}
    assert dict(alerts.schema_drift) == {"other": 50}
    assert dict(alerts.quota) == {FLASH: 2}


def test_openmetrics_when_the_scraper_asks_and_nothing_without_prometheus() -> None:
    telemetry = Telemetry(models=CHAIN)
    quiet = Telemetry(prometheus=False)
    try:
        telemetry.quota_alert(FLASH)
        exposition = telemetry.render_metrics("application/openmetrics-text;version=1.0.0")
        assert exposition is not None
        assert exposition.content_type.startswith("application/openmetrics-text")
        assert exposition.body.rstrip().endswith(b"# EOF")
        assert b'gemini_breaker_quota_alerts_total{model="gemini-2.5-flash"} 1.0' in exposition.body
        assert quiet.render_metrics() is None
        quiet.quota_alert(FLASH)  # still callable
    finally:
        telemetry.shutdown()
        quiet.shutdown()


def test_extra_metric_readers_see_the_same_metrics() -> None:
    reader = InMemoryMetricReader()
    telemetry = Telemetry(prometheus=False, metric_readers=[reader], models=CHAIN)
    try:
        telemetry.retry(PRO, "timeout")
        data = reader.get_metrics_data()
        assert data is not None
        metrics = {
            metric.name: metric
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }
        point = next(iter(metrics["gemini_breaker_retries"].data.data_points))
        assert isinstance(point, NumberDataPoint)
        assert point.value == 1
        assert dict(point.attributes or {}) == {"model": PRO, "reason": "timeout"}
    finally:
        telemetry.shutdown()


def test_breaker_state_codes_cover_every_breaker_state() -> None:
    assert set(BREAKER_STATE_CODES) == set(STATES)
    assert sorted(BREAKER_STATE_CODES.values()) == list(range(len(STATES)))


def test_view_of_a_coordinator_reads_its_mirror() -> None:
    settings = build_settings({"routes": {PRO: list(CHAIN)}})
    coordinator = Coordinator(
        settings, fakeredis.FakeAsyncRedis(), embedded=True, replica="replica-a"
    )
    assert view_of(None) is None
    assert view_of(coordinator) == ClusterView(
        routes={}, breakers=dict.fromkeys(CHAIN, "closed"), store_degraded=False
    )
    opened = BreakerState.initial(PRO)
    opened = BreakerState(**{**{f: getattr(opened, f) for f in opened.__slots__}, "state": "open"})
    coordinator.mirror.adopt(
        Snapshot(
            now_ms=1,
            epoch=2,
            breakers={PRO: opened},
            active={PRO: ActiveModel(PRO, FLASH, 2)},
            routes={PRO: CHAIN},
            digests={},
        )
    )
    seen = view_of(coordinator)
    assert seen is not None
    assert seen.routes == {PRO: RouteView(CHAIN, FLASH)}
    assert seen.breakers == {PRO: "open", FLASH: "closed", LITE: "closed"}


# -- traces ---------------------------------------------------------------------------------


def by_name(spans: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in spans.get_finished_spans():
        found.setdefault(span.name, []).append(span)
    return found


def test_spans_form_a_request_tree_inside_the_callers_trace(
    telemetry: Telemetry, spans: InMemorySpanExporter
) -> None:
    failover_request(telemetry, {"traceparent": TRACEPARENT, "x-request-id": "req-42"})
    finished = spans.get_finished_spans()
    assert len(finished) == 4
    named = by_name(spans)
    [request] = named["POST /v1beta/models/{model}:generateContent"]
    assert request.kind is SpanKind.SERVER
    assert request.parent is not None and request.parent.is_remote
    assert format(request.parent.span_id, "016x") == PARENT_SPAN_ID
    assert request.context is not None
    assert {format(span.context.trace_id, "032x") for span in finished if span.context} == {
        TRACE_ID
    }
    attributes = dict(request.attributes or {})
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.route"] == "/v1beta/models/{model}:generateContent"
    assert attributes["http.response.status_code"] == 200
    assert attributes["gen_ai.request.model"] == PRO
    assert attributes["gen_ai.response.model"] == FLASH
    assert attributes["gemini_breaker.request_id"] == "req-42"
    assert attributes["gemini_breaker.attempts"] == 3

    attempts = sorted(
        named[f"generate_content {PRO}"] + named[f"generate_content {FLASH}"],
        key=lambda span: str(dict(span.attributes or {})["gemini_breaker.attempt"]),
    )
    assert len(attempts) == 3
    for span in attempts:
        assert span.kind is SpanKind.CLIENT
        assert span.parent is not None
        assert span.parent.span_id == request.context.span_id
    first, second, third = (dict(span.attributes or {}) for span in attempts)
    assert first["gen_ai.request.model"] == PRO and first["gemini_breaker.retry"] is False
    assert second["gemini_breaker.retry"] is True
    assert first["gemini_breaker.outcome"] == "failure" and first["error.type"] == "503"
    assert attempts[0].status.status_code is StatusCode.ERROR
    assert third["gen_ai.request.model"] == FLASH
    assert third["gemini_breaker.failover"] is True
    assert third["gemini_breaker.outcome"] == "success"
    assert third["gen_ai.provider.name"] == "gcp.gemini"
    assert third["gen_ai.usage.input_tokens"] == 12
    assert third["gen_ai.usage.output_tokens"] == 37  # candidates + thoughts
    assert attempts[2].status.status_code is StatusCode.UNSET


@pytest.mark.parametrize(
    "headers",
    [{}, {"traceparent": "00-not-a-trace-01"}, {"traceparent": f"00-{'0' * 32}-{'1' * 16}-01"}],
    ids=["none", "malformed", "zero trace id"],
)
def test_without_a_valid_traceparent_a_request_starts_its_own_trace(
    telemetry: Telemetry, spans: InMemorySpanExporter, headers: dict[str, str]
) -> None:
    with telemetry.request("POST", headers, parse_path(GENERATE)) as request:
        request.finish(200, PRO)
    [span] = spans.get_finished_spans()
    assert span.parent is None
    assert span.context is not None and span.context.trace_id != 0


def test_traceparent_is_read_from_asgi_headers(
    telemetry: Telemetry, spans: InMemorySpanExporter
) -> None:
    headers = [(b"content-type", b"application/json"), (b"traceparent", TRACEPARENT.encode())]
    with telemetry.request("POST", headers, parse_path(GENERATE)) as request:
        assert request.trace_id == TRACE_ID
        request.finish(200, PRO)
    [span] = spans.get_finished_spans()
    assert span.context is not None and format(span.context.trace_id, "032x") == TRACE_ID


def test_a_5xx_answer_marks_the_request_span_failed(
    telemetry: Telemetry, spans: InMemorySpanExporter
) -> None:
    with telemetry.request("POST", {}, parse_path(GENERATE)) as request:
        request.finish(503)
        request.finish(200)  # only the first finish counts
    [span] = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["error.type"] == "503"
    samples = scrape(telemetry)
    assert list(samples["gemini_breaker_requests_total"].values()) == [1]


def test_an_exception_or_cancellation_finishes_the_request(
    telemetry: Telemetry, spans: InMemorySpanExporter
) -> None:
    with (
        pytest.raises(RuntimeError),
        telemetry.request("POST", {}, parse_path(GENERATE)),
        telemetry.attempt(PRO, 1, method="generateContent"),
    ):
        raise RuntimeError("boom")
    with (
        pytest.raises(asyncio.CancelledError),
        telemetry.request("POST", {}, parse_path(GENERATE)),
        telemetry.attempt(PRO, 1, method="generateContent"),
    ):
        raise asyncio.CancelledError
    named = by_name(spans)
    failed_attempt, cancelled_attempt = named[f"generate_content {PRO}"]
    assert dict(failed_attempt.attributes or {})["error.type"] == "RuntimeError"
    assert dict(cancelled_attempt.attributes or {})["gemini_breaker.outcome"] == "cancelled"
    failed, cancelled = named["POST /v1beta/models/{model}:generateContent"]
    assert failed.events and failed.events[0].name == "exception"
    assert dict(failed.attributes or {})["http.response.status_code"] == 500
    assert dict(cancelled.attributes or {})["http.response.status_code"] == 499
    samples = scrape(telemetry)
    status_codes = {
        dict(labels)["status_code"] for labels in samples["gemini_breaker_requests_total"]
    }
    assert status_codes == {"500", "499"}


@pytest.mark.anyio
async def test_concurrent_requests_keep_their_own_trees(
    telemetry: Telemetry, spans: InMemorySpanExporter
) -> None:
    async def one(number: int) -> None:
        traceparent = f"00-{number:032x}-{PARENT_SPAN_ID}-01"
        with telemetry.request("POST", {"traceparent": traceparent}, parse_path(GENERATE)) as req:
            assert current_request_id() == req.request_id
            await asyncio.sleep(0.01)
            with telemetry.attempt(PRO, 1) as attempt:
                await asyncio.sleep(0.01)
                attempt.outcome("success")
            req.finish(200, PRO)

    await asyncio.gather(*(one(n) for n in range(1, 6)))
    assert current_request_id() is None
    finished = spans.get_finished_spans()
    assert len(finished) == 10
    requests = {span.context.span_id: span for span in finished if span.kind is SpanKind.SERVER}
    for span in finished:
        if span.kind is SpanKind.CLIENT:
            assert span.parent is not None
            parent = requests[span.parent.span_id]
            assert span.context is not None and parent.context is not None
            assert span.context.trace_id == parent.context.trace_id


def test_without_an_exporter_spans_cost_nothing_but_still_carry_a_trace_id() -> None:
    telemetry = Telemetry(models=CHAIN)
    try:
        with telemetry.request("POST", {"traceparent": TRACEPARENT}, parse_path(GENERATE)) as req:
            assert not req.span.is_recording()
            assert req.trace_id == TRACE_ID
            req.finish(200, PRO)
        assert value(
            scrape(telemetry),
            "gemini_breaker_requests_total",
            model=PRO,
            status_code="200",
            route=PRO,
            gen_ai_operation_name="generate_content",
        )
    finally:
        telemetry.shutdown()


@pytest.mark.parametrize(
    ("path", "template"),
    [
        (GENERATE, "/v1beta/models/{model}:generateContent"),
        (
            "/gemini/v1/models/gemini-2.5-flash:streamGenerateContent",
            "/v1/models/{model}:streamGenerateContent",
        ),
        ("/v1beta/models/gemini-2.5-flash", "/v1beta/models/{model}"),
        ("/v1beta/models", "/v1beta/models"),
        ("/v1beta/files/abc-123", "/v1beta/files/{name}"),
        ("/upload/v1beta/files", "/upload/v1beta/files"),
        ("/v1beta/batches/xyz:cancel", "/v1beta/batches/{name}:cancel"),
        ("/v1beta/tunedModels/t/operations/o", "/v1beta/tunedModels/{name}"),
    ],
)
def test_route_templates_hide_names_and_prefixes(path: str, template: str) -> None:
    assert route_template(parse_path(path)) == template


def test_route_template_of_a_foreign_path_is_none() -> None:
    assert route_template(None) is None


# -- logs -----------------------------------------------------------------------------------


def log_lines(formatter: logging.Formatter, emit: object) -> list[dict[str, object]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("gemini_breaker.test_telemetry")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        assert callable(emit)
        emit(logger)
    finally:
        logger.handlers[:] = []
        logger.propagate = True
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_logs_are_one_object_per_line_with_keys_redacted() -> None:
    url = 'https://generativelanguage.googleapis.com/v1beta/models?alt=sse&key=AIzaSECRET"x'

    def emit(logger: logging.Logger) -> None:
        logger.info("GET %s", url, extra={"status": 200, "upstream": url, "tags": [url, 1.5]})
        with bound_request_id("req-7"):
            logger.warning('line\nbreak "quoted" ключ', extra={"weird": float("nan")})
        try:
            raise ValueError(f"failed {url}")
        except ValueError:
            logger.exception("boom")

    first, second, third = log_lines(JsonFormatter(), emit)
    assert first["level"] == "INFO"
    assert first["logger"] == "gemini_breaker.test_telemetry"
    assert str(first["time"]).endswith("Z")
    assert "key=REDACTED" in str(first["message"])
    assert first["status"] == 200
    assert first["upstream"] == str(first["message"])[4:]
    assert isinstance(first["tags"], list) and first["tags"][1] == 1.5
    assert "request_id" not in first
    assert second["request_id"] == "req-7"
    assert second["message"] == 'line\nbreak "quoted" ключ'
    assert second["weird"] == "nan"
    assert "key=REDACTED" in str(third["exception"])
    assert "ValueError" in str(third["exception"])
    for line in (first, second, third):
        assert "AIzaSECRET" not in json.dumps(line)


def test_json_logs_carry_the_request_and_its_trace(
    telemetry: Telemetry, spans: InMemorySpanExporter
) -> None:
    def emit(logger: logging.Logger) -> None:
        headers = {"traceparent": TRACEPARENT, "x-request-id": "abc-1"}
        with telemetry.request("POST", headers, parse_path(GENERATE)) as request:
            logger.info("inside")
            with telemetry.attempt(PRO, 1, method="generateContent"):
                logger.info("attempt", extra={"request_id": "explicit"})
            request.finish(200, PRO)
        logger.info("outside")

    inside, attempt, outside = log_lines(JsonFormatter(), emit)
    assert inside["request_id"] == "abc-1"
    assert inside["trace_id"] == TRACE_ID
    named = by_name(spans)
    [request] = named["POST /v1beta/models/{model}:generateContent"]
    [child] = named[f"generate_content {PRO}"]
    assert request.context is not None and child.context is not None
    assert inside["span_id"] == format(request.context.span_id, "016x")
    assert attempt["span_id"] == format(child.context.span_id, "016x")
    assert attempt["request_id"] == "explicit"
    assert "request_id" not in outside and "trace_id" not in outside


def test_request_ids_keep_a_plain_client_id_and_replace_anything_else() -> None:
    assert request_id_from({"x-request-id": "abc-1.2:3_4"}) == "abc-1.2:3_4"
    assert request_id_from([(b"X-Request-Id", b"from-asgi")]) == "from-asgi"
    generated = {
        request_id_from({}),
        request_id_from({"x-request-id": "has space"}),
        request_id_from({"x-request-id": "x" * 200}),
        request_id_from({"x-request-id": "key=AIza\nnewline"}),
    }
    assert len(generated) == 4
    assert all(len(rid) == 32 and int(rid, 16) >= 0 for rid in generated)


def test_token_counts_read_camel_and_snake_case_and_ignore_junk() -> None:
    assert token_counts({"promptTokenCount": 3, "candidatesTokenCount": 4}) == {
        "input": 3,
        "output": 4,
    }
    assert token_counts({"prompt_token_count": 5, "thoughts_token_count": 6}) == {
        "input": 5,
        "thoughts": 6,
    }
    assert token_counts({"promptTokenCount": "7", "candidatesTokenCount": True}) == {}
    assert token_counts(None) == {}


# -- OTLP -----------------------------------------------------------------------------------


class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, str]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        assert body
        self.received.append((self.path, self.headers.get("content-type", "")))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_otlp_exports_spans_and_metrics_to_the_configured_endpoint() -> None:
    received: list[tuple[str, str]] = []
    handler = type("Collector", (_Collector,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        telemetry = Telemetry(
            replica="r",
            otlp_endpoint=f"http://127.0.0.1:{server.server_port}/",
            prometheus=False,
            otlp_export_interval=3600,
            models=CHAIN,
        )
        with telemetry.request("POST", {}, parse_path(GENERATE)) as request:
            with telemetry.attempt(PRO, 1):
                pass
            request.finish(200, PRO)
        telemetry.force_flush()
        telemetry.shutdown()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    paths = {path for path, _ in received}
    assert paths == {"/v1/traces", "/v1/metrics"}
    assert {content_type for _, content_type in received} == {"application/x-protobuf"}
