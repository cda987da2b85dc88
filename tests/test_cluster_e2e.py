"""The cluster as users run it: three proxy processes sharing one real redis-server, the
simulator upstream, and the real SDK spreading requests over the replicas."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from google.genai import errors

from proxy.cluster.keys import Keys
from proxy.cluster.state import Change, parse_any_event
from proxy.simulator.client import SimulatorControl

from .conftest import calls
from .redis_support import RedisServer, require_redis
from .redis_support import redis_server as redis_server  # the fixture
from .redis_topologies import start_cluster
from .support import QUICK_ATTEMPTS, QUICK_REDIS, eventually, serve_replicas
from .test_sdk_e2e import sdk

PRO, FLASH = "gemini-2.5-pro", "gemini-2.5-flash"
BREAKER = {
    "minimum_calls": 4,
    "failure_rate": 0.5,
    "burst_failures": 3,
    "burst_seconds": 5,
    "open_seconds": 60,
    "half_open_probes": 2,
    "half_open_timeout": 10,
}
Cluster = Callable[..., list[str]]


def replica_starter(
    stack: contextlib.ExitStack, redis_section: dict[str, Any], simulator_url: str, tmp_path: Path
) -> Cluster:
    """Starts replicas of the proxy as separate processes on the Redis that ``redis_section``
    names (a url, a sentinel set or a cluster); ``breaker`` overrides BREAKER, ``admin`` adds
    to the admin section."""

    def start(
        count: int = 3,
        models: dict[str, Any] | None = None,
        admin: dict[str, Any] | None = None,
        **breaker: Any,
    ) -> list[str]:
        config = {
            "upstream": {"base_url": simulator_url},
            "redis": {**redis_section, **QUICK_REDIS},
            "model_defaults": {**QUICK_ATTEMPTS, "breaker": {**BREAKER, **breaker}},
            "models": models or {},
            "routes": {PRO: [PRO, FLASH]},
            "admin": {"allow_unauthenticated_loopback": True, **(admin or {})},
        }
        return serve_replicas(stack, config, tmp_path / "cluster.yaml", count)

    return start


@pytest.fixture
def cluster(redis_server: RedisServer, simulator_url: str, tmp_path: Path) -> Iterator[Cluster]:
    """Starts replicas of the proxy as separate processes sharing one redis-server."""
    with contextlib.ExitStack() as stack:
        yield replica_starter(stack, {"url": redis_server.url}, simulator_url, tmp_path)


def state(url: str) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(url + "/admin/state", timeout=5).json()
    return document


def wait_all(
    replicas: list[str], condition: Callable[[dict[str, Any]], bool], timeout: float = 15.0
) -> list[dict[str, Any]]:
    """Poll every replica's /admin/state until ``condition`` holds on all of them."""
    states: list[dict[str, Any]] = []

    def agreed() -> bool:
        states[:] = [state(url) for url in replicas]
        return all(condition(s) for s in states)

    eventually(agreed, timeout=timeout, what=lambda: f"replicas never agreed: {states}")
    return states


def ask(replica: str, text: str = "hello") -> tuple[str, str, str]:
    """One SDK call; (model that answered, model header, fallbacks header)."""
    response = sdk(replica).models.generate_content(model=PRO, contents=text)
    headers = response.sdk_http_response.headers  # type: ignore[union-attr]
    assert headers is not None
    return (
        response.model_version or "",
        headers["x-gemini-breaker-model"],
        headers["x-gemini-breaker-fallbacks"],
    )


_REQUESTS = itertools.count()


def spread(replicas: list[str], count: int) -> list[tuple[str, str, str]]:
    """``count`` distinct requests over the replicas in turn (identical requests count once
    per breaker window against a model, as a repeated poison request must)."""
    return [
        ask(url, f"request {next(_REQUESTS)}")
        for _, url in zip(range(count), itertools.cycle(replicas))
    ]


def test_outage_moves_every_replica_to_the_fallback(
    cluster: Cluster, simulator: SimulatorControl
) -> None:
    replicas = cluster()
    assert {served for served, _, _ in spread(replicas, 6)} == {PRO}

    simulator.set_faults(PRO, [{"kind": "error", "status": 503}])
    # Every request still succeeds: retried, then failed over within the request.
    assert {served for served, _, _ in spread(replicas, 6)} == {FLASH}
    states = wait_all(
        replicas,
        lambda s: s["breakers"][PRO]["state"] == "open" and s["routes"][PRO]["active"] == FLASH,
    )
    assert len({s["breakers"][PRO]["epoch"] for s in states}) == 1  # one truth, one epoch

    simulator.clear_attempts()
    assert set(spread(replicas, 30)) == {(FLASH, FLASH, "1")}
    assert [a["model"] for a in calls(simulator)] == [FLASH] * 30  # primary left alone


def test_primary_serves_again_after_the_half_open_probes(
    cluster: Cluster, simulator: SimulatorControl
) -> None:
    replicas = cluster(open_seconds=1.0, open_max_seconds=2.0)
    simulator.set_faults(PRO, [{"kind": "error", "status": 503}])
    spread(replicas, 6)
    wait_all(replicas, lambda s: s["breakers"][PRO]["state"] == "open")
    simulator.clear_faults()
    simulator.clear_attempts()

    deadline = time.monotonic() + 20
    while not all(s["routes"][PRO]["active"] == PRO for s in map(state, replicas)):
        assert time.monotonic() < deadline, "the primary never came back"
        spread(replicas, 3)
    closed = wait_all(replicas, lambda s: s["breakers"][PRO]["state"] == "closed")
    closed_at = closed[0]["breakers"][PRO]["since_ms"] / 1000
    trips = closed[0]["breakers"][PRO]["trips"]
    before_close = [a for a in calls(simulator, model=PRO) if a["wall"] < closed_at - 0.001]
    # Only probe permits reached the primary while it was not closed: at most N per half-open.
    assert len(before_close) <= BREAKER["half_open_probes"] * max(trips, 1)
    assert {served for served, _, _ in spread(replicas, 9)} == {PRO}


def test_a_flapping_primary_does_not_make_the_cluster_thrash(
    cluster: Cluster, simulator: SimulatorControl, redis_server: RedisServer
) -> None:
    replicas = cluster(open_seconds=0.2, open_max_seconds=30.0, trip_memory_seconds=600.0)
    trips: list[int] = []
    listener = redis.Redis.from_url(redis_server.url).pubsub(ignore_subscribe_messages=True)
    listener.subscribe(Keys().events)
    stop = threading.Event()

    def count_trips() -> None:
        while not stop.is_set():
            message = listener.get_message(timeout=0.1)
            if message is None:
                continue
            change = parse_any_event(message["data"])
            if not isinstance(change, Change):
                continue
            breaker = change.breaker
            if change.changed and breaker and breaker.model == PRO and breaker.state == "open":
                trips.append(breaker.epoch)

    watcher = threading.Thread(target=count_trips, daemon=True)
    watcher.start()
    simulator.set_faults(PRO, [{"kind": "error", "status": 503, "probability": 0.5}])
    started = time.monotonic()
    served = []
    while time.monotonic() - started < 5.0:
        served.extend(model for model, _, _ in spread(replicas, 3))
    elapsed = time.monotonic() - started
    stop.set()
    watcher.join(5)
    listener.close()
    # Waits double on every trip (0.2, 0.4, 0.8 s ...), so trips grow with log(time): a
    # fixed 0.2 s wait would allow elapsed / 0.2 = 25 of them.
    bound = 2 + int(math.log2(elapsed / 0.2 + 1))
    assert 1 <= len(trips) <= bound, (trips, elapsed)
    assert set(served) <= {PRO, FLASH}  # and every request was answered


def test_redis_killed_during_traffic(
    cluster: Cluster, simulator: SimulatorControl, redis_server: RedisServer
) -> None:
    replicas = cluster(open_seconds=30.0)
    with traffic(replicas) as (served, failures):
        eventually(lambda: len(served) >= 20, timeout=20.0)
        redis_server.kill()
        for url in replicas:
            eventually(
                lambda url=url: httpx.get(url + "/readyz").json()["store"] == "degraded",
                timeout=20.0,
            )
        # Fail-static: the per-replica breakers still fail over and trip, with no Redis.
        simulator.set_faults(PRO, [{"kind": "error", "status": 503}])
        wait_all(replicas, lambda s: s["breakers"][PRO]["state"] == "open")
        count = len(served)
        eventually(lambda: len(served) >= count + 20, timeout=20.0)

        simulator.clear_faults()
        redis_server.start()
        for url in replicas:
            eventually(
                lambda url=url: httpx.get(url + "/readyz").json()["store"] == "ok", timeout=20.0
            )
        # Redis came back empty: every replica adopts its state, and they agree again.
        states = wait_all(
            replicas,
            lambda s: s["breakers"][PRO]["state"] == "closed" and s["routes"][PRO]["active"] == PRO,
        )
        assert len({s["breakers"][PRO]["epoch"] for s in states}) == 1
        count = len(served)
        eventually(lambda: len(served) >= count + 10, timeout=20.0)
    assert failures == []


@contextlib.contextmanager
def traffic(replicas: list[str]) -> Iterator[tuple[list[str], list[BaseException]]]:
    """SDK calls spread over the replicas in a thread until the block ends; yields the models
    that served and the failures."""
    served: list[str] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def run() -> None:
        for url in itertools.cycle(replicas):
            if stop.is_set():
                return
            try:
                served.append(ask(url)[0])
            except (errors.APIError, httpx.HTTPError) as exc:
                failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield served, failures
    finally:
        stop.set()
        thread.join(30)


def test_hung_redis_does_not_hold_up_requests(
    cluster: Cluster, simulator: SimulatorControl, redis_server: RedisServer
) -> None:
    replicas = cluster(count=2, open_seconds=30.0)
    assert {served for served, _, _ in spread(replicas, 4)} == {PRO}
    redis_server.pause()
    try:
        # Requests keep being answered while every Redis call hangs until its time bound.
        assert {served for served, _, _ in spread(replicas, 10)} == {PRO}
        for url in replicas:
            eventually(
                lambda url=url: httpx.get(url + "/readyz").json()["store"] == "degraded",
                timeout=20.0,
            )
        simulator.set_faults(PRO, [{"kind": "error", "status": 503}])
        assert {served for served, _, _ in spread(replicas, 10)} == {FLASH}
        wait_all(replicas, lambda s: s["breakers"][PRO]["state"] == "open")
    finally:
        redis_server.resume()
    simulator.clear_faults()
    for url in replicas:
        eventually(lambda url=url: httpx.get(url + "/readyz").json()["store"] == "ok", timeout=20.0)
    # Redis kept its state (closed, the fail-static trips were local): replicas adopt it.
    wait_all(replicas, lambda s: s["routes"][PRO]["active"] == PRO)
    assert {served for served, _, _ in spread(replicas, 4)} == {PRO}


def test_starting_with_redis_down_works(
    cluster: Cluster, simulator: SimulatorControl, redis_server: RedisServer
) -> None:
    redis_server.stop()
    (replica,) = cluster(count=1)
    assert httpx.get(replica + "/readyz").json() == {"status": "ready", "store": "degraded"}
    assert {served for served, _, _ in spread([replica], 3)} == {PRO}
    redis_server.start()
    eventually(lambda: httpx.get(replica + "/readyz").json()["store"] == "ok", timeout=20.0)
    assert state(replica)["store"]["degraded"] is False
    assert {served for served, _, _ in spread([replica], 3)} == {PRO}


def test_a_rate_limit_storm_is_shed_not_failed_over(
    cluster: Cluster, simulator: SimulatorControl
) -> None:
    """The seed's thundering herd: load at 3x the primary's quota must not move to the
    fallback, and after the first 429 the primary sees about its quota, no more."""
    quota, seconds = 5, 4.0
    replicas = cluster()
    simulator.set_quota(PRO, requests_per_second=quota)
    outcomes: list[httpx.Response | BaseException] = []
    storm = threading.Thread(
        target=lambda: outcomes.extend(asyncio.run(open_loop(replicas, 3 * quota, seconds)))
    )
    storm.start()
    raised = None
    while storm.is_alive() and raised is None:  # the SDK's view, during the storm
        try:
            sdk(replicas[0], key="storm-key").models.generate_content(model=PRO, contents="x")
        except errors.ClientError as exc:
            raised = exc
    storm.join(60)

    assert raised is not None and raised.code == 429 and raised.status == "RESOURCE_EXHAUSTED"
    seen = calls(simulator)
    assert not [a for a in seen if a["model"] == FLASH]  # no failover stampede
    limited = [a["wall"] for a in seen if a["status"] == 429]
    assert limited, "the storm never reached the quota"
    after = [a for a in seen if a["wall"] >= limited[0]]
    span = max(a["wall"] for a in seen) - limited[0]
    assert len(after) <= 1.5 * quota * span + quota  # about the quota, not 3x
    responses = [o for o in outcomes if isinstance(o, httpx.Response)]
    assert len(responses) == len(outcomes)  # every request was answered
    shed = [r for r in responses if r.status_code == 429]
    assert shed and all(int(r.headers["retry-after"]) >= 1 for r in shed)
    assert all(r.json()["error"]["status"] == "RESOURCE_EXHAUSTED" for r in shed)
    assert {r.status_code for r in responses} <= {200, 429}


async def open_loop(replicas: list[str], rate: float, seconds: float) -> list[Any]:
    """Send at a fixed rate whatever the answers, round-robin over the replicas."""
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(timeout=30) as client:
        start, tasks = loop.time(), []
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))  # pacing the load
            tasks.append(
                asyncio.ensure_future(
                    client.post(
                        f"{replicas[i % len(replicas)]}/v1beta/models/{PRO}:generateContent",
                        json={"contents": [{"parts": [{"text": f"storm {i}"}]}]},
                        headers={"x-goog-api-key": "storm-key"},
                    )
                )
            )
        return await asyncio.gather(*tasks, return_exceptions=True)


def test_a_model_budget_is_shared_by_the_whole_cluster(
    cluster: Cluster, simulator: SimulatorControl
) -> None:
    replicas = cluster(models={PRO: {"requests_per_minute": 60}})
    answers = [
        httpx.post(
            f"{url}/v1beta/models/{PRO}:generateContent",
            json={"contents": [{"parts": [{"text": "budget"}]}]},
            headers={"x-goog-api-key": "budget-key"},
        )
        for url in replicas * 3
    ]
    served = [r for r in answers if r.status_code == 200]
    # One a second for the cluster, not per replica: a quick round of 9 gets one or two.
    assert 1 <= len(served) <= 2
    assert {r.headers.get("x-gemini-breaker-shed") for r in answers if r.status_code == 429} == {
        "budget"
    }
    assert len(calls(simulator, model=PRO)) == len(served)


@pytest.fixture
def cluster_on_redis_cluster(simulator_url: str, tmp_path: Path) -> Iterator[Cluster]:
    """Proxy replicas on a three-node Redis Cluster (``redis.cluster.nodes``)."""
    require_redis()
    nodes_dir = tmp_path / "redis-cluster"
    nodes_dir.mkdir()
    with contextlib.ExitStack() as stack:
        topology = stack.enter_context(start_cluster(nodes_dir))
        redis_section = {"cluster": {"nodes": topology.nodes}}
        yield replica_starter(stack, redis_section, simulator_url, tmp_path)


def test_failover_and_recovery_on_a_redis_cluster(
    cluster_on_redis_cluster: Cluster, simulator: SimulatorControl
) -> None:
    replicas = cluster_on_redis_cluster(open_seconds=1.0, open_max_seconds=2.0)
    assert all(httpx.get(url + "/readyz").json()["store"] == "ok" for url in replicas)
    assert {served for served, _, _ in spread(replicas, 6)} == {PRO}

    simulator.set_faults(PRO, [{"kind": "error", "status": 503}])
    assert {served for served, _, _ in spread(replicas, 6)} == {FLASH}
    states = wait_all(
        replicas,
        lambda s: s["breakers"][PRO]["state"] == "open" and s["routes"][PRO]["active"] == FLASH,
    )
    assert len({s["breakers"][PRO]["epoch"] for s in states}) == 1  # one truth, one epoch

    simulator.clear_faults()
    deadline = time.monotonic() + 20
    while not all(s["routes"][PRO]["active"] == PRO for s in map(state, replicas)):
        assert time.monotonic() < deadline, "the primary never came back"
        spread(replicas, 3)
    closed = wait_all(replicas, lambda s: s["breakers"][PRO]["state"] == "closed")
    assert len({s["breakers"][PRO]["epoch"] for s in closed}) == 1
    # An operator action on one replica reaches the others through the events channel.
    httpx.post(
        replicas[0] + f"/admin/breakers/{FLASH}/force_open", json={"reason": "drill"}
    ).raise_for_status()
    wait_all(replicas, lambda s: s["breakers"][FLASH]["state"] == "forced_open")
    assert not any(httpx.get(url + "/readyz").json()["store"] == "degraded" for url in replicas)
