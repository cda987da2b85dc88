"""Capability-aware failover (semantic drift): fallbacks that cannot serve a request are
skipped, "input too long" moves to a larger model, and JSON answers are checked."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from proxy.app import create_app
from proxy.simulator import create_simulator_app
from proxy.simulator.client import SimulatorControl
from proxy.simulator.config import build_simulator_config

from .conftest import PASS_THROUGH, calls, proxy_settings
from .support import serve
from .test_failover import wait_for_state

PRO, FLASH, LITE = "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"
SCHEMA = {
    "type": "OBJECT",
    "properties": {"name": {"type": "STRING"}, "minutes": {"type": "INTEGER"}},
    "required": ["name", "minutes"],
}


def generate(url: str, body: dict[str, Any], model: str = PRO) -> httpx.Response:
    return httpx.post(
        f"{url}/v1beta/models/{model}:generateContent",
        json=body,
        headers={"x-goog-api-key": "k"},
        timeout=30,
    )


def ask(text: str, **extra: Any) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}], **extra}


@pytest.fixture
def proxy(simulator_url: str) -> Iterator[str]:
    settings = proxy_settings(
        simulator_url,
        models={LITE: {"capabilities": {"unsupported": ["google_search"]}}},
        routes={PRO: [PRO, LITE, FLASH], "pair": [PRO, LITE]},
    )
    with serve(create_app(settings)) as url:
        yield url


def test_a_fallback_lacking_a_feature_is_skipped(proxy: str, simulator: SimulatorControl) -> None:
    simulator.set_faults(PRO, [{"kind": "error", "status": 503}])
    with_search = generate(proxy, ask("news today", tools=[{"googleSearch": {}}]))
    assert with_search.status_code == 200
    assert with_search.headers["x-gemini-breaker-model"] == FLASH  # flash-lite was skipped
    plain = generate(proxy, ask("hello"))
    assert plain.headers["x-gemini-breaker-model"] == LITE  # it can serve this one
    assert [a["model"] for a in calls(simulator)] == [PRO, FLASH, PRO, LITE]


def test_when_no_fallback_can_serve_the_original_error_stands(
    proxy: str, simulator: SimulatorControl
) -> None:
    simulator.set_faults(PRO, [{"kind": "error", "status": 503}])
    response = httpx.post(
        f"{proxy}/v1beta/models/pair:generateContent",
        json=ask("news today", tools=[{"googleSearch": {}}]),
        headers={"x-goog-api-key": "k"},
    )
    assert response.status_code == 503
    assert response.json()["error"]["message"] == "The model is overloaded. Please try again later."
    assert [a["model"] for a in calls(simulator)] == [PRO]  # never a degraded answer


@pytest.fixture
def small_models() -> Iterator[tuple[str, SimulatorControl]]:
    """A simulator whose pro and flash-lite take only short prompts."""
    config = build_simulator_config(
        {"models": {PRO: {"input_token_limit": 50}, LITE: {"input_token_limit": 40}}}
    )
    with serve(create_simulator_app(config)) as url, SimulatorControl(url) as control:
        yield url, control


def test_input_too_long_moves_to_a_larger_model_once(
    small_models: tuple[str, SimulatorControl],
) -> None:
    simulator_url, simulator = small_models
    settings = proxy_settings(simulator_url, routes={PRO: [PRO, LITE, FLASH]})
    long_prompt = "word " * 200  # about 250 tokens
    with serve(create_app(settings)) as proxy:
        response = generate(proxy, ask(long_prompt))
        assert response.status_code == 200
        assert response.headers["x-gemini-breaker-model"] == FLASH  # lite is smaller still
        assert [a["model"] for a in calls(simulator)] == [PRO, FLASH]
        short = generate(proxy, ask("short"))
        assert short.headers["x-gemini-breaker-model"] == PRO
        # A plain 400 (no model is larger) goes back as it is.
        alone = generate(proxy, ask(long_prompt), model=LITE)
        assert alone.status_code == 400
        assert "exceeds the maximum number of tokens" in alone.json()["error"]["message"]


@pytest.mark.parametrize("mode", ["invalid", "schema"])
def test_json_that_drifts_from_the_schema_moves_to_the_next_model(
    simulator_url: str, simulator: SimulatorControl, mode: str
) -> None:
    settings = proxy_settings(simulator_url, routes={PRO: [PRO, FLASH]})
    body = ask(
        "a recipe",
        generationConfig={"responseMimeType": "application/json", "responseSchema": SCHEMA},
    )
    simulator.set_faults(PRO, [{"kind": "json_drift", "mode": mode}])
    with serve(create_app(settings)) as proxy:
        response = generate(proxy, body)
        assert response.status_code == 200
        assert response.headers["x-gemini-breaker-model"] == FLASH
        assert httpx.get(proxy + "/admin/state").json()["schema_drift"] == {PRO: 1}
        # ... and a failure of that model for its breaker (reported in the background).
        wait_for_state(proxy, lambda state: state["breakers"][PRO]["failures"] == 1)


def test_when_every_model_drifts_the_client_gets_an_error_not_bad_json(
    simulator_url: str, simulator: SimulatorControl
) -> None:
    settings = proxy_settings(simulator_url, routes={PRO: [PRO, FLASH]})
    body = ask(
        "a recipe",
        generationConfig={"responseMimeType": "application/json", "responseSchema": SCHEMA},
    )
    for model in (PRO, FLASH):
        simulator.set_faults(model, [{"kind": "json_drift", "mode": "schema"}])
    with serve(create_app(settings)) as proxy:
        response = generate(proxy, body)
    assert response.status_code == 502
    assert "did not match the requested JSON" in response.json()["error"]["message"]


def test_streamed_drift_is_detected_at_the_end_and_counted(
    simulator_url: str, simulator: SimulatorControl
) -> None:
    settings = proxy_settings(simulator_url, model_defaults=PASS_THROUGH)
    body = ask(
        "a recipe",
        generationConfig={"responseMimeType": "application/json", "responseSchema": SCHEMA},
    )
    simulator.set_faults(PRO, [{"kind": "json_drift", "mode": "schema"}])
    with serve(create_app(settings)) as proxy:
        streamed = httpx.post(
            f"{proxy}/v1beta/models/{PRO}:streamGenerateContent?alt=sse",
            json=body,
            headers={"x-goog-api-key": "k"},
        )
        assert streamed.status_code == 200  # already on its way: it cannot be taken back
        assert httpx.get(proxy + "/admin/state").json()["schema_drift"] == {PRO: 1}
