"""What a replica costs Redis: on closed breakers, commands per interval, not per request.

A coordinator (mirror, flush and reconcile loops, events subscription) runs against a private
redis-server; ``INFO commandstats`` counts every command Redis ran, the ones the Lua scripts
run inside it included. Failures must still reach Redis within the flush interval, carrying
the successes pending with them (they are the failure rate's denominator).
"""

from __future__ import annotations

import time
import uuid

import anyio
import pytest
from redis.asyncio import Redis

from proxy.cluster.connect import store_client
from proxy.cluster.coordinator import FULL_RECONCILE_EVERY, Admission, Coordinator
from proxy.cluster.keys import Keys
from proxy.cluster.state import BreakerParams
from proxy.cluster.store import BreakerStore
from proxy.config import Settings
from proxy.config_load import build_settings
from proxy.pipeline.outcomes import Verdict

from .coordinator_support import DEADLINE, replica
from .redis_support import RedisServer
from .redis_support import redis_server as redis_server  # the fixture
from .support import eventually_async

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

MODEL = "a"
# The per-interval cost on a closed breaker with traffic, from the scripts: one report
# (EVALSHA, TIME, the breaker, the window, evicting the buckets that time skipped, one write)
# and one heartbeat (EVALSHA, TIME, ZADD, the digests, the replicas, the epoch, the pins),
# plus a share of the full reconcile (about 20 commands every FULL_RECONCILE_EVERY intervals)
# and of the subscription's health checks. Anything per request would be thousands.
REPORT_COMMANDS = 10
HEARTBEAT_COMMANDS = 7
FULL_RECONCILE_COMMANDS = 25
PER_INTERVAL = REPORT_COMMANDS + HEARTBEAT_COMMANDS + FULL_RECONCILE_COMMANDS / FULL_RECONCILE_EVERY
# The reconcile right after (re)subscribing may fall inside the measurement, and stop() flushes.
SLACK = 2 * FULL_RECONCILE_COMMANDS + REPORT_COMMANDS


def settings_for(
    url: str, namespace: str, flush: float, reconcile: float, bucket: float = 1.0
) -> Settings:
    return build_settings(
        {
            "redis": {
                "url": url,
                "namespace": namespace,
                "flush_interval": flush,
                "reconcile_interval": reconcile,
            },
            "routes": {"pro": [MODEL, "b"]},
            "model_defaults": {
                "breaker": {"bucket_seconds": bucket, "window_seconds": max(30.0, 2 * bucket)}
            },
        }
    )


async def commands_run(client: Redis) -> int:
    """Every command Redis ran since the last CONFIG RESETSTAT (scripts' own included)."""
    stats = await client.info("commandstats")
    return sum(int(entry["calls"]) for entry in stats.values())


async def window(redis_server: RedisServer, namespace: str) -> tuple[int, int]:
    """The breaker's window as Redis holds it: (calls, failures)."""
    client = Redis.from_url(redis_server.url)
    try:
        store = BreakerStore(client, Keys(namespace))
        breaker = (await store.snapshot()).breakers.get(MODEL)
    finally:
        await client.aclose()
    return (breaker.calls, breaker.failures) if breaker else (0, 0)


def admission(coordinator: Coordinator) -> Admission:
    return Admission(MODEL, coordinator.mirror.breaker(MODEL).epoch, probe=False)


async def test_closed_breakers_cost_commands_per_interval_not_per_request(
    redis_server: RedisServer,
) -> None:
    namespace = f"budget-{uuid.uuid4().hex[:8]}"
    reconcile = 0.25
    settings = settings_for(redis_server.url, namespace, flush=0.02, reconcile=reconcile)
    probe = Redis.from_url(redis_server.url)
    requests = 0
    try:
        async with replica(settings) as coordinator:
            await eventually_async(
                lambda: coordinator.sync.heartbeat_seen is not None, what="a heartbeat"
            )
            await probe.config_resetstat()
            started = time.monotonic()
            # About 1,300 successful requests a second for a few seconds, as the request
            # path records them: admitted from the mirror, outcome tallied.
            for _ in range(200):
                for _ in range(20):
                    granted = await coordinator.admit(MODEL)
                    assert granted is not None
                    coordinator.record(granted, Verdict.SUCCESS)
                    requests += 1
                await anyio.sleep(0.015)
            elapsed = time.monotonic() - started
        used = await commands_run(probe) - 1  # not the INFO call itself
    finally:
        await probe.aclose()

    intervals = elapsed / reconcile + 1
    bound = intervals * PER_INTERVAL + SLACK
    assert used <= bound, f"{used} commands for {requests} requests in {elapsed:.1f} s"
    # Every success reached Redis (the last ones flushed at shutdown).
    assert await window(redis_server, namespace) == (requests, 0)


async def test_a_failure_reaches_redis_within_the_flush_interval_with_pending_successes(
    redis_server: RedisServer,
) -> None:
    # Successes alone would wait a whole reconcile interval and window bucket (a minute
    # here): only the failure can bring them to Redis within the deadline.
    namespace = f"budget-{uuid.uuid4().hex[:8]}"
    settings = settings_for(redis_server.url, namespace, flush=0.05, reconcile=60, bucket=60)
    async with replica(settings) as coordinator:
        for _ in range(30):
            coordinator.record(admission(coordinator), Verdict.SUCCESS)
        coordinator.record(admission(coordinator), Verdict.FAILURE)
        seen: list[tuple[int, int]] = []

        async def arrived() -> bool:
            seen.append(await window(redis_server, namespace))
            return seen[-1] == (31, 1)

        deadline = time.monotonic() + DEADLINE
        while not await arrived():
            assert time.monotonic() < deadline, f"the window stayed at {seen[-1]}"
            await anyio.sleep(0.01)


async def test_a_burst_of_failures_is_reported_at_once(redis_server: RedisServer) -> None:
    # Neither the flush interval nor the reconcile interval comes within the deadline: only
    # the burst itself may trigger the flush, and the breaker trips cluster-wide.
    namespace = f"budget-{uuid.uuid4().hex[:8]}"
    settings = settings_for(redis_server.url, namespace, flush=60, reconcile=120, bucket=120)
    burst = BreakerParams().burst_failures
    async with replica(settings) as coordinator:
        for _ in range(burst):
            coordinator.record(admission(coordinator), Verdict.FAILURE)
        await eventually_async(
            lambda: coordinator.mirror.breaker(MODEL).state == "open", what="the breaker to trip"
        )


async def test_a_missed_event_is_caught_up_by_the_next_heartbeat(
    redis_server: RedisServer,
) -> None:
    # The heartbeat answers the store's epoch counter; a replica that did not hear of a
    # transition sees it moved and reads the state.
    namespace = f"budget-{uuid.uuid4().hex[:8]}"
    settings = settings_for(redis_server.url, namespace, flush=0.05, reconcile=0.1)
    client = store_client(settings.redis)
    # No events subscription: the heartbeat is all this replica has.
    coordinator = Coordinator(settings, client, embedded=True, replica="r1")
    other = Redis.from_url(redis_server.url)
    await coordinator.start()
    try:
        store = BreakerStore(other, Keys(namespace))
        await store.force(MODEL, "open", "ops", "test", BreakerParams())
        await eventually_async(
            lambda: coordinator.mirror.breaker(MODEL).state == "open", what="the mirror to catch up"
        )
    finally:
        await coordinator.stop()
        await client.aclose()
        await other.aclose()


async def test_successes_alone_wait_no_longer_than_a_window_bucket(
    redis_server: RedisServer,
) -> None:
    # A long reconcile interval must not hold successes past their bucket: they would land
    # in the window long after they happened, all at once.
    namespace = f"budget-{uuid.uuid4().hex[:8]}"
    settings = settings_for(redis_server.url, namespace, flush=0.05, reconcile=600, bucket=0.5)
    async with replica(settings) as coordinator:
        for _ in range(30):
            coordinator.record(admission(coordinator), Verdict.SUCCESS)
        seen: list[tuple[int, int]] = []
        deadline = time.monotonic() + DEADLINE
        while (calls := await window(redis_server, namespace)) != (30, 0):
            seen.append(calls)
            assert time.monotonic() < deadline, f"the window stayed at {seen[-1]}"
            await anyio.sleep(0.01)
