"""429 is backpressure, not failure: cooldowns per (credential, model), the one waited-out
retry, per-day quotas, and shedding, with the real SDK, the proxy and the simulator."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest
from google.genai import errors

from proxy.app import create_app
from proxy.simulator.client import SimulatorControl

from .conftest import calls, proxy_settings
from .support import free_port, serve
from .test_sdk_e2e import sdk

PRO, FLASH = "gemini-2.5-pro", "gemini-2.5-flash"
BODY = {"contents": [{"parts": [{"text": "hello"}]}]}


@pytest.fixture
def proxy(simulator_url: str) -> Iterator[str]:
    """A fresh replica with the default 429 handling (it waits out delays up to 10 s)."""
    settings = proxy_settings(simulator_url, quota={"max_retry_wait": 10})
    with serve(create_app(settings)) as url:
        yield url


def post(url: str, key: str, timeout: str | None = None) -> httpx.Response:
    headers = {"x-goog-api-key": key}
    if timeout is not None:
        headers["x-server-timeout"] = timeout
    return httpx.post(
        f"{url}/v1beta/models/{PRO}:generateContent", json=BODY, headers=headers, timeout=30
    )


def attempts(simulator: SimulatorControl) -> list[tuple[str, int | None]]:
    return [(a["model"], a["status"]) for a in calls(simulator)]


def test_a_429_is_relayed_then_the_scope_is_shed_locally(
    proxy: str, simulator: SimulatorControl
) -> None:
    simulator.set_faults(PRO, [{"kind": "rate_limited", "retry_delay": 30, "times": 1}])
    first = post(proxy, "key-a")
    assert first.status_code == 429
    assert first.headers["retry-after"] == "30"  # Gemini sends none; the proxy adds it
    body = first.json()["error"]
    assert body["status"] == "RESOURCE_EXHAUSTED"
    assert any(d["@type"].endswith("RetryInfo") for d in body["details"])  # Google's own body

    shed = post(proxy, "key-a")
    assert shed.status_code == 429
    assert shed.headers["x-gemini-breaker-shed"] == "cooldown"
    assert 1 <= int(shed.headers["retry-after"]) <= 30
    assert shed.json()["error"]["status"] == "RESOURCE_EXHAUSTED"

    assert post(proxy, "key-b").status_code == 200  # another credential is not affected
    # Only the first request and key-b's reached the upstream; nothing failed over.
    assert attempts(simulator) == [(PRO, 429), (PRO, 200)]
    state = httpx.get(proxy + "/admin/state").json()
    assert state["breakers"][PRO]["failures"] == 0  # a 429 never counts for the breaker


def test_the_sdk_raises_client_error_429_when_shed(proxy: str, simulator: SimulatorControl) -> None:
    simulator.set_faults(PRO, [{"kind": "rate_limited", "retry_delay": 30, "times": 1}])
    client = sdk(proxy, key="key-sdk")
    for _ in range(2):  # the upstream's 429, then the proxy's own
        with pytest.raises(errors.ClientError) as caught:
            client.models.generate_content(model=PRO, contents="hi")
        assert caught.value.code == 429
        assert caught.value.status == "RESOURCE_EXHAUSTED"


def test_a_short_delay_is_waited_out_and_retried(proxy: str, simulator: SimulatorControl) -> None:
    simulator.set_faults(PRO, [{"kind": "rate_limited", "retry_delay": 2, "times": 1}])
    response = sdk(proxy, key="key-wait").models.generate_content(model=PRO, contents="hi")
    assert response.text
    first, second = calls(simulator)
    assert (first["status"], second["status"]) == (429, 200)
    assert second["wall"] - first["wall"] >= 1.9  # no earlier than the delay Google asked for


def test_a_short_deadline_gets_the_429_at_once(proxy: str, simulator: SimulatorControl) -> None:
    simulator.set_faults(PRO, [{"kind": "rate_limited", "retry_delay": 2, "times": 1}])
    response = post(proxy, "key-hurry", timeout="1")
    assert response.status_code == 429
    assert attempts(simulator) == [(PRO, 429)]


def test_a_per_day_quota_holds_the_scope_and_alerts(
    proxy: str, simulator: SimulatorControl, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    simulator.set_faults(
        PRO, [{"kind": "rate_limited", "per": "day", "retry_info": False, "times": 1}]
    )
    first = post(proxy, "key-daily")
    assert first.status_code == 429
    assert int(first.headers["retry-after"]) > 60  # held until the daily reset
    shed = post(proxy, "key-daily")
    assert shed.headers["x-gemini-breaker-shed"] == "cooldown"
    assert "per-day" in shed.json()["error"]["message"]
    assert attempts(simulator) == [(PRO, 429)]
    assert any("quota alert" in r.getMessage() for r in caplog.records)
    assert httpx.get(proxy + "/admin/state").json()["quota_alerts"] == {PRO: 1}


def test_different_keys_are_limited_independently(proxy: str, simulator: SimulatorControl) -> None:
    simulator.set_quota(PRO, requests_per_second=2)
    busy = [post(proxy, "key-busy").status_code for _ in range(12)]
    calm = [post(proxy, "key-calm").status_code for _ in range(2)]
    assert 429 in busy
    assert calm == [200, 200]
    assert not [a for a in calls(simulator) if a["model"] == FLASH]


def test_shedding_works_with_redis_down(simulator_url: str, simulator: SimulatorControl) -> None:
    settings = proxy_settings(
        simulator_url,
        redis={"url": f"redis://127.0.0.1:{free_port()}/0"},
        quota={"max_retry_wait": 0},
    )
    with serve(create_app(settings)) as proxy:
        assert httpx.get(proxy + "/readyz").json()["store"] == "degraded"
        simulator.set_faults(PRO, [{"kind": "rate_limited", "retry_delay": 30, "times": 1}])
        assert post(proxy, "key-local").status_code == 429
        shed = post(proxy, "key-local")
        assert shed.headers["x-gemini-breaker-shed"] == "cooldown"
        assert attempts(simulator) == [(PRO, 429)]


def test_a_cluster_budget_sheds_before_the_provider_does(
    simulator_url: str, simulator: SimulatorControl
) -> None:
    settings = proxy_settings(simulator_url, models={PRO: {"requests_per_minute": 60}})
    with serve(create_app(settings)) as proxy:
        answers = [post(proxy, "key-budget") for _ in range(6)]
    served = [r for r in answers if r.status_code == 200]
    shed = [r for r in answers if r.status_code == 429]
    assert 1 <= len(served) <= 2  # 60 per minute: one a second, a burst of one
    assert shed and {r.headers["x-gemini-breaker-shed"] for r in shed} == {"budget"}
    assert len(calls(simulator)) == len(served)  # the shed ones never went upstream


def test_spillover_is_opt_in_and_bounded_by_the_next_models_budget(
    simulator_url: str, simulator: SimulatorControl
) -> None:
    settings = proxy_settings(
        simulator_url,
        quota={"max_retry_wait": 0, "spillover_share": 1.0},
        models={FLASH: {"requests_per_minute": 120}},  # two a second, a burst of two
    )
    simulator.set_faults(PRO, [{"kind": "rate_limited", "retry_delay": 30, "times": 1}])
    with serve(create_app(settings)) as proxy:
        assert post(proxy, "key-spill").status_code == 429  # the upstream's own 429
        spilled = [post(proxy, "key-spill") for _ in range(3)]
    assert [r.status_code for r in spilled[:2]] == [200, 200]
    assert {r.headers["x-gemini-breaker-model"] for r in spilled[:2]} == {FLASH}
    assert spilled[2].status_code == 429  # the fallback's budget is spent: shed, not spilled
    assert attempts(simulator) == [(PRO, 429), (FLASH, 200), (FLASH, 200)]
