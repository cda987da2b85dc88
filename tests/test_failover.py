"""Classification, retries, failover and breakers on one replica (the embedded store), with the
real SDK against the real proxy and the simulator. The outcome table of
docs/decisions/failover.md is what these tests hold the proxy to."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google.genai import errors, types

from proxy.app import create_app
from proxy.simulator.client import SimulatorControl

from .conftest import calls, proxy_settings
from .support import eventually, serve
from .test_sdk_e2e import sdk

PRO, FLASH, LITE = "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"
BREAKER = {
    "minimum_calls": 4,
    "failure_rate": 0.5,
    "burst_failures": 3,
    "burst_seconds": 5,
    "open_seconds": 30,
    "half_open_probes": 2,
}


@pytest.fixture
def proxy(simulator_url: str) -> Iterator[str]:
    """A fresh single replica (fresh breakers) on the embedded store."""
    settings = proxy_settings(
        simulator_url,
        model_defaults={
            "max_attempts": 2,
            "backoff_initial": 0.01,
            "backoff_max": 0.02,
            "first_event_timeout": 1.0,
            "unary_timeout": 1.0,
            "breaker": BREAKER,
        },
        redis={"flush_interval": 0.02},
    )
    with serve(create_app(settings)) as url:
        yield url


def served(response: Any) -> tuple[str, str, str]:
    headers = response.sdk_http_response.headers
    return (
        headers["x-gemini-breaker-model"],
        headers["x-gemini-breaker-fallbacks"],
        headers["x-gemini-breaker-attempts"],
    )


def models_tried(simulator: SimulatorControl) -> list[str]:
    return [a["model"] for a in calls(simulator)]


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "error", "status": 500},
        {"kind": "error", "status": 503},
        {"kind": "error", "status": 504},
        {"kind": "reset"},
    ],
)
def test_failures_are_retried_then_fail_over(
    proxy: str, simulator: SimulatorControl, fault: dict[str, Any]
) -> None:
    simulator.set_faults(PRO, [fault])
    gemini = sdk(proxy)
    response = gemini.models.generate_content(model=PRO, contents="hello")
    assert response.model_version == FLASH
    assert served(response) == (FLASH, "1", "3")
    tried = models_tried(simulator)
    if fault["kind"] == "reset":
        # A reset on a reused connection looks like a close that crossed the request: it is
        # resent once on a new connection (which the fault resets too) within the attempt.
        assert tried[-1] == FLASH and set(tried[:-1]) == {PRO} and 2 <= len(tried[:-1]) <= 4
    else:
        assert tried == [PRO, PRO, FLASH]


def test_an_upstream_that_never_answers_fails_over_without_a_retry(
    proxy: str, simulator: SimulatorControl
) -> None:
    # Waiting the whole deadline again on the same model would double the client's wait.
    simulator.set_faults(PRO, [{"kind": "hang"}])
    response = sdk(proxy).models.generate_content(model=PRO, contents="hello")
    assert response.model_version == FLASH
    assert served(response) == (FLASH, "1", "2")
    assert models_tried(simulator) == [PRO, FLASH]


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ({"kind": "error", "status": 401}, 401),
        ({"kind": "error", "status": 403}, 403),
        ({"kind": "input_too_long"}, 400),
        ({"kind": "error", "status": 404}, 404),
    ],
)
def test_client_side_errors_pass_through_without_retry_or_failover(
    proxy: str, simulator: SimulatorControl, fault: dict[str, Any], code: int
) -> None:
    simulator.set_faults(PRO, [fault])
    gemini = sdk(proxy)
    for _ in range(6):  # more than enough to trip a breaker if these counted as failures
        with pytest.raises(errors.ClientError) as caught:
            gemini.models.generate_content(model=PRO, contents="hello")
        assert caught.value.code == code
    assert models_tried(simulator) == [PRO] * 6
    state = httpx.get(proxy + "/admin/state").json()
    assert state["breakers"][PRO]["state"] == "closed"
    assert state["breakers"][PRO]["failures"] == 0


def test_credential_errors_raise_an_alert(
    proxy: str, simulator: SimulatorControl, caplog: pytest.LogCaptureFixture
) -> None:
    simulator.set_faults(PRO, [{"kind": "error", "status": 403}])
    with pytest.raises(errors.ClientError):
        sdk(proxy).models.generate_content(model=PRO, contents="hello")
    assert any("credential alert" in r.getMessage() for r in caplog.records)
    assert httpx.get(proxy + "/admin/state").json()["credential_alerts"] == {PRO: 1}


def test_streams_fail_over_before_the_first_byte(proxy: str, simulator: SimulatorControl) -> None:
    simulator.set_faults(PRO, [{"kind": "error", "status": 503}])
    chunks = list(sdk(proxy).models.generate_content_stream(model=PRO, contents="hello there"))
    assert {c.model_version for c in chunks} == {FLASH}
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP  # type: ignore[index]


def test_breaker_opens_and_the_primary_is_left_alone(
    proxy: str, simulator: SimulatorControl
) -> None:
    simulator.set_faults(PRO, [{"kind": "error", "status": 503}])
    gemini = sdk(proxy)
    gemini.models.generate_content(model=PRO, contents="one")
    gemini.models.generate_content(model=PRO, contents="two")  # 4 failures: burst trips
    state = wait_for_state(proxy, lambda s: s["breakers"][PRO]["state"] == "open")
    assert state["routes"][PRO]["active"] == FLASH
    simulator.clear_attempts()
    for _ in range(10):
        response = gemini.models.generate_content(model=PRO, contents="more")
        assert served(response) == (FLASH, "1", "1")
    assert models_tried(simulator) == [FLASH] * 10


def test_persistent_failure_of_a_single_model_route(
    proxy: str, simulator: SimulatorControl
) -> None:
    simulator.set_faults(LITE, [{"kind": "error", "status": 503}])
    with pytest.raises(errors.ServerError) as caught:
        sdk(proxy).models.generate_content(model=LITE, contents="hello")
    assert caught.value.code == 503
    assert caught.value.message == "The model is overloaded. Please try again later."
    assert models_tried(simulator) == [LITE, LITE]  # max_attempts, then Google's own error


def test_every_model_open_sheds_with_retry_after(proxy: str, simulator: SimulatorControl) -> None:
    for model in (PRO, FLASH, LITE):
        simulator.set_faults(model, [{"kind": "error", "status": 503}])
    gemini = sdk(proxy)
    # Distinct requests: one request failing everywhere again and again is its own fault
    # (see test_poison.py), while different requests all failing is an outage.
    for n in range(3):
        with pytest.raises(errors.ServerError):
            gemini.models.generate_content(model=PRO, contents=f"x{n}")
    wait_for_state(
        proxy, lambda s: all(s["breakers"][m]["state"] == "open" for m in (PRO, FLASH, LITE))
    )
    simulator.clear_attempts()
    response = httpx.post(
        proxy + f"/v1beta/models/{PRO}:generateContent",
        json={"contents": [{"parts": [{"text": "x"}]}]},
        headers={"x-goog-api-key": "k"},
    )
    assert response.status_code == 503
    assert response.json()["error"]["status"] == "UNAVAILABLE"
    assert 1 <= int(response.headers["retry-after"]) <= 30
    assert calls(simulator) == []


def test_client_deadline_caps_the_request(proxy: str, simulator: SimulatorControl) -> None:
    simulator.set_faults(PRO, [{"kind": "hang"}])
    response = httpx.post(
        proxy + f"/v1beta/models/{PRO}:generateContent",
        json={"contents": [{"parts": [{"text": "x"}]}]},
        headers={"x-goog-api-key": "k", "x-server-timeout": "0.3"},
    )
    assert response.status_code == 504
    assert response.json()["error"]["status"] == "DEADLINE_EXCEEDED"
    assert models_tried(simulator) == [PRO]  # the deadline, not the model, ended it: no failover
    state = httpx.get(proxy + "/admin/state").json()
    assert state["breakers"][PRO]["failures"] == 0


def test_admin_state_requires_the_token_when_configured(simulator_url: str) -> None:
    settings = proxy_settings(simulator_url, admin={"token": "s3cret-admin-token"})
    with serve(create_app(settings)) as url:
        missing = httpx.get(url + "/admin/state")
        assert missing.status_code == 401
        assert missing.json()["error"]["status"] == "UNAUTHENTICATED"
        wrong = httpx.get(url + "/admin/state", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 403
        assert "s3cret" not in wrong.text
        ok = httpx.get(url + "/admin/state", headers={"authorization": "Bearer s3cret-admin-token"})
        assert ok.status_code == 200
        assert ok.json()["routes"][PRO]["chain"] == [PRO, FLASH, LITE]
        assert ok.json()["store"] == {
            "mode": "embedded",
            "degraded": False,
            "namespace": ok.json()["store"]["namespace"],
        }


def wait_for_state(url: str, condition: Any, timeout: float = 10.0) -> dict[str, Any]:
    """Poll /admin/state until ``condition`` holds (the breaker flush is asynchronous)."""
    state: dict[str, Any] = {}

    def matched() -> bool:
        state.clear()
        state.update(httpx.get(url + "/admin/state").json())
        return bool(condition(state))

    eventually(
        matched, timeout=timeout, interval=0.02, what=lambda: f"state never matched: {state}"
    )
    return state


def test_logs_say_the_store_is_not_shared(
    simulator_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with serve(create_app(proxy_settings(simulator_url))):
        pass
    assert any("NOT shared" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ({"kind": "error", "status": 400}, 400),
        ({"kind": "error", "status": 401}, 401),
        ({"kind": "error", "status": 404}, 404),
        ({"kind": "error", "status": 429}, 429),
    ],
    ids=["400", "401", "404", "429"],
)
def test_a_probe_that_learns_nothing_hands_its_permit_back(
    simulator_url: str, simulator: SimulatorControl, fault: dict[str, Any], code: int
) -> None:
    """A half-open breaker with one probe permit: the request it admits is answered with an
    error that says nothing of the model's health. The permit is handed back uncounted, so
    the next request probes and closes the breaker (rather than the breaker admitting nothing
    until the permit is taken as lost, and then reopening)."""
    settings = proxy_settings(
        simulator_url,
        model_defaults={
            "max_attempts": 1,
            "breaker": {
                **BREAKER,
                "open_seconds": 0,
                "half_open_probes": 1,
                "half_open_timeout": 60,
            },
        },
    )
    with serve(create_app(settings)) as url:
        opened = httpx.post(f"{url}/admin/breakers/{PRO}/open", json={"reason": "test"})
        assert opened.status_code == 200, opened.text
        simulator.set_faults(PRO, [{**fault, "times": 1}])
        with pytest.raises(errors.APIError) as caught:
            sdk(url, key="probe-key").models.generate_content(model=PRO, contents="hello")
        assert caught.value.code == code
        # The permit goes back as the first request ends, just after its answer: until then
        # the next requests go to flash. (Another key: a 429 cools the first key down on pro.)
        other = sdk(url, key="other-key")
        eventually(
            lambda: served(other.models.generate_content(model=PRO, contents="hi"))[0] == PRO,
            what="a request served by pro, the probe",
        )
        wait_for_state(url, lambda s: s["breakers"][PRO]["state"] == "closed")
