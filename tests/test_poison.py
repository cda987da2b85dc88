"""Poison requests, end to end: two proxy processes on a real redis-server in front of the
simulator, driven by the real SDK. A request that fails on every model must not open a
breaker for everyone; an outage of the primary must still trip it as fast as before."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.genai import errors

from proxy.app import create_app
from proxy.simulator.client import SimulatorControl
from proxy.simulator.content import POISON_MARKER

from .conftest import calls, proxy_settings
from .redis_support import RedisServer
from .redis_support import redis_server as redis_server  # the fixture
from .support import eventually, serve, serve_replicas
from .test_sdk_e2e import sdk

PRO, FLASH, LITE = "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"
CHAIN = [PRO, FLASH, LITE]
GOOGLE_500 = (
    "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting"
)
POISON_THREADS, POISON_EACH = 4, 500


def start_replicas(
    stack: contextlib.ExitStack, redis_url: str, simulator_url: str, tmp_path: Path, count: int
) -> list[str]:
    """Proxy processes sharing ``redis_url``, with today's default breaker thresholds."""
    config = {
        "upstream": {"base_url": simulator_url},
        "redis": {"url": redis_url, "flush_interval": 0.02, "reconcile_interval": 0.2},
        "model_defaults": {
            "max_attempts": 2,
            "backoff_initial": 0.01,
            "backoff_max": 0.02,
            "headers_timeout": 5,
            "first_event_timeout": 5,
            "breaker": {"open_seconds": 60},
        },
        "routes": {PRO: CHAIN},
        "admin": {"allow_unauthenticated_loopback": True},
    }
    return serve_replicas(stack, config, tmp_path / "poison.yaml", count)


@pytest.fixture
def replicas(
    redis_server: RedisServer, simulator_url: str, simulator: SimulatorControl, tmp_path: Path
) -> Iterator[list[str]]:
    with contextlib.ExitStack() as stack:
        yield start_replicas(stack, redis_server.url, simulator_url, tmp_path, 2)


def admin_state(url: str) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(url + "/admin/state", timeout=5).json()
    return document


class Traffic:
    """Another key's ordinary requests, spread over the replicas in a thread."""

    def __init__(self, replicas: list[str], key: str) -> None:
        self.served: list[tuple[str, str]] = []
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(replicas, key), daemon=True)

    def _run(self, replicas: list[str], key: str) -> None:
        for n, url in zip(itertools.count(), itertools.cycle(replicas)):
            if self._stop.is_set():
                return
            try:
                response = sdk(url, key=key).models.generate_content(
                    model=PRO, contents=f"an ordinary question, number {n}"
                )
            except (errors.APIError, httpx.HTTPError) as exc:
                self.failures.append(exc)
                continue
            headers = response.sdk_http_response.headers  # type: ignore[union-attr]
            assert headers is not None
            self.served.append(
                (headers["x-gemini-breaker-model"], headers["x-gemini-breaker-fallbacks"])
            )

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)


def poison_loop(url: str, count: int) -> list[tuple[int, str, float]]:
    """Send the poison request ``count`` times; (code, message, seconds) of each answer."""
    client = sdk(url, key="poison-key")
    answers = []
    for _ in range(count):
        started = time.monotonic()
        try:
            client.models.generate_content(model=PRO, contents=f"{POISON_MARKER} what is 2 + 2?")
        except errors.APIError as exc:
            answers.append((exc.code, exc.message or "", time.monotonic() - started))
        else:
            answers.append((200, "", time.monotonic() - started))
    return answers


def test_a_poison_request_in_a_loop_opens_no_breaker(
    replicas: list[str], simulator: SimulatorControl
) -> None:
    with Traffic(replicas, "good-key") as good:
        eventually(lambda: len(good.served) >= 20, timeout=15.0, interval=0.02)
        with ThreadPoolExecutor(POISON_THREADS) as pool:
            runs = pool.map(
                poison_loop,
                [replicas[n % len(replicas)] for n in range(POISON_THREADS)],
                [POISON_EACH] * POISON_THREADS,
            )
            answers = [answer for run in runs for answer in run]
        served_during = len(good.served)
    assert served_during > 20
    # The poison client gets the upstream's own error, every time.
    assert len(answers) == POISON_THREADS * POISON_EACH
    assert {(code, message) for code, message, _ in answers} == {(500, GOOGLE_500)}
    # Known poison is answered after one attempt: no chain walk, no retries.
    poison_attempts = [a for a in calls(simulator) if a["fault"] == "poison"]
    # Before a replica knows the request (two sightings, each by every thread at worst), it
    # is tried twice on pro and once on flash.
    first_waves = 2 * len(replicas) * POISON_THREADS * 2
    assert len(answers) <= len(poison_attempts) <= len(answers) + first_waves
    # No breaker opened, nor counted a failure, on any replica.
    for url in replicas:
        state = admin_state(url)
        assert state["transitions"] == []
        for model in CHAIN:
            breaker = state["breakers"][model]
            assert (breaker["state"], breaker["trips"], breaker["failures"]) == ("closed", 0, 0)
    # The other key stayed on its primary, with no error at all.
    assert good.failures == []
    assert set(good.served) == {(PRO, "0")}


def test_an_outage_of_the_primary_still_trips_as_fast_as_before(
    replicas: list[str], simulator: SimulatorControl
) -> None:
    keys = ["key-a", "key-b", "key-c"]
    # Every key was served a moment ago: the per-key cap is in force when the outage starts.
    for n, (url, key) in enumerate(zip(itertools.cycle(replicas), keys)):
        sdk(url, key=key).models.generate_content(model=PRO, contents=f"warm-up {n}")
    simulator.set_faults(PRO, [{"kind": "error", "status": 500}])
    # Today's burst threshold is 5 failures in 2 s at half the calls or more; each request
    # fails twice on the primary, so the third distinct request (6 failures to the warm-up's
    # 3 successes) trips it, whichever replica and key it came from: every failure counted.
    served = []
    for n, (url, key) in enumerate(zip(itertools.cycle(replicas), keys)):
        response = sdk(url, key=key).models.generate_content(model=PRO, contents=f"outage {n}")
        served.append(response.model_version)
    assert served == [FLASH] * 3
    for url in replicas:
        eventually(
            lambda url=url: admin_state(url)["breakers"][PRO]["state"] == "open",
            timeout=15.0,
            interval=0.02,
        )
        assert admin_state(url)["routes"][PRO]["active"] == FLASH
    assert admin_state(replicas[0])["transitions"][-1]["reason"].startswith("burst: 6 failures")
    simulator.clear_attempts()
    for n, (url, key) in enumerate(zip(itertools.cycle(replicas), keys * 2)):
        response = sdk(url, key=key).models.generate_content(model=PRO, contents=f"after {n}")
        assert response.model_version == FLASH
    assert [a["model"] for a in calls(simulator)] == [FLASH] * 6  # the primary left alone


def test_every_model_failing_every_request_still_opens_every_breaker(
    replicas: list[str], simulator: SimulatorControl
) -> None:
    """Different requests all failing on every model is an outage, not a poison request."""
    for model in CHAIN:
        simulator.set_faults(model, [{"kind": "error", "status": 500}])
    for n, url in zip(range(3), itertools.cycle(replicas)):
        with pytest.raises(errors.ServerError):
            sdk(url).models.generate_content(model=PRO, contents=f"anything {n}")
    for url in replicas:
        eventually(
            lambda url=url: all(admin_state(url)["breakers"][m]["state"] == "open" for m in CHAIN),
            timeout=15.0,
            interval=0.02,
        )


def test_streamed_poison_and_bodies_google_rejects_count_nothing(
    replicas: list[str], simulator: SimulatorControl
) -> None:
    with Traffic(replicas, "good-key") as good:
        eventually(lambda: len(good.served) >= 10, timeout=15.0, interval=0.02)
        client = sdk(replicas[0], key="poison-key")
        for _ in range(20):
            with pytest.raises(errors.ServerError) as caught:
                list(
                    client.models.generate_content_stream(
                        model=PRO, contents=f"{POISON_MARKER} stream it"
                    )
                )
            assert caught.value.code == 500
        # The body of the field report: JSON nested 5,000 levels deep is Google's 400.
        deep = b'{"contents": ' + b"[" * 5000 + b"]" * 5000 + b"}"
        for _ in range(10):
            response = httpx.post(
                f"{replicas[1]}/v1beta/models/{PRO}:generateContent",
                content=deep,
                headers={"x-goog-api-key": "poison-key", "content-type": "application/json"},
                timeout=10,
            )
            assert response.status_code == 400
            assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    poison_attempts = [a for a in calls(simulator) if a["fault"] == "poison"]
    # Twice pro, pro, flash (then it is known poison), then one attempt each.
    assert len(poison_attempts) == 20 + 4
    assert len(calls(simulator, model=FLASH)) == 2 and calls(simulator, model=LITE) == []
    for url in replicas:
        state = admin_state(url)
        assert [state["breakers"][m]["failures"] for m in CHAIN] == [0, 0, 0]
    assert good.failures == []
    assert set(good.served) == {(PRO, "0")}


def test_a_different_failure_on_the_next_model_is_evidence_not_poison(
    simulator_url: str, simulator: SimulatorControl
) -> None:
    """Only the same failure on two models marks the request: 500 on pro and 503 on flash is
    two broken models, and both count (one replica on the embedded store)."""
    settings = proxy_settings(
        simulator_url,
        model_defaults={
            "max_attempts": 1,
            "breaker": {"burst_failures": 1000, "minimum_calls": 1000},
        },
        redis={"flush_interval": 0.02},
    )
    simulator.set_faults(PRO, [{"kind": "error", "status": 500}])
    simulator.set_faults(FLASH, [{"kind": "error", "status": 503}])
    with serve(create_app(settings)) as url:
        client = sdk(url)
        for n in range(3):
            response = client.models.generate_content(model=PRO, contents=f"question {n}")
            assert response.model_version == LITE
        eventually(
            lambda: [admin_state(url)["breakers"][m]["failures"] for m in CHAIN] == [3, 3, 0],
            timeout=15.0,
            interval=0.02,
        )
    assert [a["model"] for a in calls(simulator)] == CHAIN * 3
