"""Deadlines end to end: the real SDK through the proxy to the simulator, whose upstream goes
silent before the headers, or after them before the first event, or generates slowly."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
from google.genai import errors, types

from proxy.app import create_app
from proxy.simulator import create_simulator_app
from proxy.simulator.client import SimulatorControl
from proxy.simulator.config import build_simulator_config

from .conftest import PASS_THROUGH, calls, proxy_settings
from .support import serve
from .test_sdk_e2e import sdk
from .test_telemetry_e2e import samples, value

PRO, FLASH, LITE = "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"
PROMPT = "Explain how a circuit breaker protects a service"
MISSES = "gemini_breaker_deadline_misses_total"
# Headers then nothing, and nothing at all (not even headers).
SILENCES = [{"kind": "stall", "after_chunks": 0}, {"kind": "hang"}]

T = TypeVar("T")


def within(seconds: float, call: Callable[[], T]) -> T:
    """``call()``'s result, failing the test if it takes longer than ``seconds`` (the call is
    left to end on its own: the proxy's request deadline bounds it)."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(call).result(timeout=seconds)
    finally:
        pool.shutdown(wait=False)


def stream_models(url: str) -> list[str | None]:
    chunks = sdk(url).models.generate_content_stream(model=PRO, contents=PROMPT)
    return [chunk.model_version for chunk in chunks]


def misses(url: str, model: str, deadline: str) -> float:
    found = samples(httpx.get(url + "/metrics").text)
    try:
        return value(found, MISSES, model=model, deadline=deadline)
    except AssertionError:
        return 0.0


def proxy_with(upstream: str, **models: dict[str, Any]) -> Iterator[str]:
    settings = proxy_settings(
        upstream,
        server={"request_deadline": 90},
        model_defaults={**PASS_THROUGH, "stall_timeout": 5},
        models=models,
    )
    return serve(create_app(settings))


@pytest.mark.parametrize("silence", SILENCES, ids=["no_first_event", "no_headers"])
def test_a_silent_primary_fails_over_at_its_first_event_ceiling(
    simulator_url: str, simulator: SimulatorControl, silence: dict[str, Any]
) -> None:
    simulator.set_faults(PRO, [silence])
    with proxy_with(simulator_url, **{PRO: {"first_event_timeout": 1.0}}) as proxy:
        started = time.monotonic()
        models = within(30, lambda: stream_models(proxy))
        elapsed = time.monotonic() - started
        assert set(models) == {FLASH}
        # Tried once: a missed deadline is not retried on the same model.
        assert [a["model"] for a in calls(simulator)] == [PRO, FLASH]
        assert elapsed >= 1.0
        assert misses(proxy, PRO, "first_event") == 1


@pytest.mark.parametrize("silence", SILENCES, ids=["no_first_event", "no_headers"])
def test_a_model_learned_as_fast_is_abandoned_at_its_learned_deadline(
    simulator_url: str, simulator: SimulatorControl, silence: dict[str, Any]
) -> None:
    learning = {"min_samples": 10, "floor": 0.5, "factor": 3}
    pro = {"first_event_timeout": 60.0, "first_event_learning": learning}
    with proxy_with(simulator_url, **{PRO: pro}) as proxy:
        for _ in range(10):  # warm-up: the simulator starts its streams at once
            assert set(stream_models(proxy)) == {PRO}
        simulator.set_faults(PRO, [{**silence, "times": 1}])
        # Far below the 60 s ceiling, and generous for the learned ~0.5-2 s on a busy machine.
        models = within(20, lambda: stream_models(proxy))
        assert set(models) == {FLASH}
        assert [a["model"] for a in calls(simulator)][-2:] == [PRO, FLASH]
        assert misses(proxy, PRO, "learned") == 1
        assert misses(proxy, PRO, "first_event") == 0
        # The model answers again: it is waited for as before.
        assert set(stream_models(proxy)) == {PRO}


@pytest.fixture(scope="module")
def slow_simulator() -> Iterator[str]:
    """Every model generates one word per 0.1 s, so an answer takes more than a second."""
    config = build_simulator_config({"chunk_words": 1, "chunk_interval": 0.1})
    with serve(create_simulator_app(config)) as url:
        yield url


def slow_proxy(upstream: str) -> Iterator[str]:
    # A 0.5 s unary ceiling: only the maxOutputTokens budget lets a longer answer through.
    short = {"first_event_timeout": 0.3, "unary_timeout": 0.5, "min_tokens_per_second": 100}
    return proxy_with(upstream, **{model: short for model in (PRO, FLASH, LITE)})


def test_a_long_unary_generation_is_budgeted_by_its_max_output_tokens(
    slow_simulator: str,
) -> None:
    whole = sdk(slow_simulator).models.generate_content(model=PRO, contents=PROMPT).text
    assert whole
    config = types.GenerateContentConfig(max_output_tokens=500)  # 0.3 + 500/100 = 5.3 s
    with slow_proxy(slow_simulator) as proxy:
        started = time.monotonic()
        response = within(
            30,
            lambda: sdk(proxy).models.generate_content(model=PRO, contents=PROMPT, config=config),
        )
        assert time.monotonic() - started > 0.5  # it did take longer than the unary ceiling
        assert response.model_version == PRO
        assert response.text == whole
        headers = response.sdk_http_response.headers if response.sdk_http_response else {}
        assert headers["x-gemini-breaker-attempts"] == "1"
        # The snake_case spelling counts the same.
        snake = httpx.post(
            f"{proxy}/v1beta/models/{PRO}:generateContent",
            headers={"x-goog-api-key": "test-key"},
            json={
                "contents": [{"parts": [{"text": PROMPT}]}],
                "generation_config": {"max_output_tokens": 500},
            },
            timeout=30,
        )
        assert snake.status_code == 200
        assert snake.headers["x-gemini-breaker-model"] == PRO


def test_a_unary_answer_without_max_output_tokens_gets_the_unary_ceiling(
    slow_simulator: str,
) -> None:
    with slow_proxy(slow_simulator) as proxy:
        with pytest.raises(errors.ServerError) as caught:
            within(30, lambda: sdk(proxy).models.generate_content(model=PRO, contents=PROMPT))
        assert caught.value.code == 504
        assert misses(proxy, PRO, "first_event") == 1


def test_the_metric_names_the_headers_and_gap_deadlines(
    simulator_url: str, simulator: SimulatorControl
) -> None:
    quick = {"headers_timeout": 0.5, "stall_timeout": 0.5}
    with proxy_with(simulator_url, **{PRO: quick}) as proxy:
        gemini = sdk(proxy)
        simulator.set_faults(PRO, [{"kind": "hang", "times": 1}])
        counted = within(30, lambda: gemini.models.count_tokens(model=PRO, contents=PROMPT))
        assert counted.total_tokens
        assert misses(proxy, PRO, "headers") == 1
        simulator.set_faults(PRO, [{"kind": "stall", "after_chunks": 1, "times": 1}])
        models = within(30, lambda: stream_models(proxy))
        assert models[0] == PRO and models[-1] == FLASH  # continued on the fallback
        assert misses(proxy, PRO, "gap") == 1
        assert misses(proxy, PRO, "first_event") == 0
