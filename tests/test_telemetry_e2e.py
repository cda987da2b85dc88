"""Telemetry of the running proxy: /metrics after a scripted failover, and the span tree of a
request that failed over, continuing the caller's traceparent."""

from __future__ import annotations

import httpx
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from proxy.app import create_app
from proxy.simulator.client import SimulatorControl
from proxy.telemetry import Telemetry

from .conftest import proxy_settings
from .support import serve
from .test_failover import wait_for_state

PRO, FLASH = "gemini-2.5-pro", "gemini-2.5-flash"
BODY = {"contents": [{"parts": [{"text": "hello"}]}]}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``, as PromQL's
    ``sum`` would give (series exported at 0 from start-up add nothing); there must be one."""
    matches = [
        found
        for (sample, tags), found in metrics.items()
        if sample == name and set(labels.items()) <= set(tags)
    ]
    assert matches, (name, labels)
    return sum(matches)


def test_metrics_after_a_failover(simulator_url: str, simulator: SimulatorControl) -> None:
    settings = proxy_settings(
        simulator_url,
        model_defaults={"max_attempts": 1, "breaker": {"burst_failures": 2, "minimum_calls": 2}},
        routes={PRO: [PRO, FLASH]},
        redis={"flush_interval": 0.02},
    )
    simulator.set_faults(PRO, [{"kind": "error", "status": 503}])
    prompt_tokens = answer_tokens = 0
    with serve(create_app(settings)) as proxy:
        for _ in range(2):
            response = httpx.post(
                f"{proxy}/v1beta/models/{PRO}:generateContent",
                json=BODY,
                headers={"x-goog-api-key": "k"},
            )
            assert response.headers["x-gemini-breaker-model"] == FLASH
            prompt_tokens += response.json()["usageMetadata"]["promptTokenCount"]
            answer_tokens += response.json()["usageMetadata"]["candidatesTokenCount"]
        wait_for_state(proxy, lambda s: s["breakers"][PRO]["state"] == "open")
        text = httpx.get(proxy + "/metrics").text
    assert "AIza" not in text and "x-goog-api-key" not in text
    metrics = samples(text)
    assert value(metrics, "gemini_breaker_requests_total", model=FLASH, status_code="200") == 2
    assert (
        value(
            metrics,
            "gemini_breaker_failover_events_total",
            route=PRO,
            from_model=PRO,
            to_model=FLASH,
        )
        == 2
    )
    assert value(metrics, "gemini_breaker_active_model", route=PRO, model=FLASH) == 1
    assert value(metrics, "gemini_breaker_active_model", route=PRO, model=PRO) == 0
    assert (
        value(
            metrics,
            "gemini_breaker_breaker_transitions_total",
            model=PRO,
            from_state="closed",
            to_state="open",
        )
        == 1
    )
    assert value(metrics, "gemini_breaker_store_degraded") == 0
    assert value(metrics, "gemini_breaker_upstream_latency_seconds_count", model=PRO) == 2
    # Token usage, read from the end of each unary answer (two answers from flash).
    tokens = "gemini_breaker_tokens_total"
    assert value(metrics, tokens, model=FLASH, gen_ai_token_type="input") == prompt_tokens
    assert value(metrics, tokens, model=FLASH, gen_ai_token_type="output") == answer_tokens


def test_a_request_span_with_a_child_per_attempt(
    simulator_url: str, simulator: SimulatorControl
) -> None:
    exporter = InMemorySpanExporter()
    telemetry = Telemetry("gemini-breaker", "replica-test", span_exporter=exporter)
    settings = proxy_settings(
        simulator_url, model_defaults={"max_attempts": 1}, routes={PRO: [PRO, FLASH]}
    )
    simulator.set_faults(PRO, [{"kind": "error", "status": 503}])
    with serve(create_app(settings, telemetry=telemetry)) as proxy:
        response = httpx.post(
            f"{proxy}/v1beta/models/{PRO}:generateContent",
            json=BODY,
            headers={
                "x-goog-api-key": "k",
                "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01",
            },
        )
        assert response.status_code == 200
    telemetry.force_flush()
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    attempts = sorted(
        (s for s in spans if s.kind is SpanKind.CLIENT), key=lambda s: s.start_time or 0
    )
    assert f"{server.context.trace_id:032x}" == TRACE_ID  # continues the caller's trace
    assert [s.attributes["gen_ai.request.model"] for s in attempts] == [PRO, FLASH]  # type: ignore[index]
    assert all(
        s.parent is not None and s.parent.span_id == server.context.span_id for s in attempts
    )
