"""The breaker scripts, each test run against fakeredis, a real redis-server and a real
three-node Redis Cluster (every key shares one hash tag, so every script runs on one node).

Time comes from Redis ``TIME`` only, so nothing here controls the clock: waits are tiny and
always lower bounds (a sleep guarantees at least that much time passed), and expected values
are computed from the ``now_ms`` each answer carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import fakeredis
import pytest
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from proxy.cluster import (
    CLOSED,
    DISABLED,
    FORCED_OPEN,
    HALF_OPEN,
    OPEN,
    Acquired,
    ActiveModel,
    BreakerParams,
    BreakerState,
    BreakerStore,
    Change,
    Keys,
    Outcome,
    PayloadError,
    StoreError,
    parse_event,
)
from proxy.cluster.codec import decode, encode
from proxy.cluster.state import (
    AuditEntry,
    Pin,
    PinChange,
    QuotaParams,
    ReplicaSeen,
    Snapshot,
    parse_any_event,
)

from .redis_support import RedisServer, require_redis, start_redis
from .redis_support import redis_server as redis_server  # the fixture
from .redis_topologies import ClusterTopology, start_cluster

pytestmark = pytest.mark.anyio

BACKENDS = [
    "fakeredis",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("cluster", marks=pytest.mark.redis),
]
Client = Redis | RedisCluster
DEADLINE = 10.0  # seconds any polling loop may take before the test fails


def params(**overrides: Any) -> BreakerParams:
    """Parameters that never trip or time out by accident; each test sets what it exercises."""
    base: dict[str, Any] = {
        "window_seconds": 30.0,
        "bucket_seconds": 1.0,
        "minimum_calls": 10,
        "failure_rate": 0.5,
        "burst_failures": 1_000_000,
        "burst_seconds": 2.0,
        "open_seconds": 60.0,
        "open_max_seconds": 600.0,
        "trip_memory_seconds": 600.0,
        "half_open_probes": 3,
        "half_open_timeout": 60.0,
    }
    return BreakerParams(**{**base, **overrides})


class Backend:
    """Clients of one Redis (real or fake), all working in a fresh namespace."""

    def __init__(self, factory: Callable[[], Client]) -> None:
        self.namespace = f"test-{uuid.uuid4().hex[:12]}"
        self.keys = Keys(self.namespace)
        self._factory = factory
        self._clients: list[Client] = []
        self.redis = self.client()
        self.store = BreakerStore(self.redis, self.keys)

    def client(self) -> Client:
        client = self._factory()
        self._clients.append(client)
        return client

    def new_store(self) -> BreakerStore:
        """A store on its own client (its own connection)."""
        return BreakerStore(self.client(), self.keys)

    async def pubsub(self, **options: Any) -> PubSub:
        """A pub/sub on its own client; on a cluster, on the node owning the events channel's
        slot (the node every script of the namespace runs on)."""
        client = self.client()
        if isinstance(client, RedisCluster):
            await client.initialize()
            node = client.get_node_from_key(self.keys.events)
            return client.pubsub(node=node, **options)
        return client.pubsub(**options)

    async def close(self) -> None:
        for client in self._clients:
            await client.aclose()


@pytest.fixture(scope="module")
def real_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    require_redis()
    with start_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterTopology]:
    require_redis()
    with start_cluster(tmp_path_factory.mktemp("cluster")) as topology:
        yield topology


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[Backend]:
    factory: Callable[[], Client]
    if request.param == "redis":
        url = request.getfixturevalue("real_redis").url
        factory = lambda: Redis.from_url(url)  # noqa: E731
    elif request.param == "cluster":
        seeds = [
            ClusterNode("127.0.0.1", s.port)
            for s in request.getfixturevalue("real_cluster").servers
        ]
        factory = lambda: RedisCluster(startup_nodes=seeds)  # noqa: E731
    else:
        server = fakeredis.FakeServer()
        # Text replies here, bytes on the real server: the store must take both.
        factory = lambda: fakeredis.FakeAsyncRedis(server=server, decode_responses=True)  # noqa: E731
    backend = Backend(factory)
    try:
        yield backend
    finally:
        await backend.close()


@pytest.fixture
def store(backend: Backend) -> BreakerStore:
    return backend.store


# Helpers


async def breaker(store: BreakerStore, model: str) -> BreakerState:
    snapshot = await store.snapshot()
    return snapshot.breakers.get(model, BreakerState.initial(model))


async def report(store: BreakerStore, model: str, epoch: int, calls: int, failures: int,
                 p: BreakerParams) -> Change:  # fmt: skip
    [change] = await store.report([Outcome(model, epoch, calls, failures)], {model: p})
    return change


async def trip(store: BreakerStore, model: str, p: BreakerParams) -> Change:
    """Open a closed breaker by failure rate."""
    current = await breaker(store, model)
    change = await report(store, model, current.epoch, p.minimum_calls, p.minimum_calls, p)
    assert change.changed
    assert change.breaker is not None and change.breaker.state == OPEN
    return change


def opened(change: Change) -> BreakerState:
    b = change.breaker
    assert b is not None and b.state == OPEN, b
    return b


def wait_ms(b: BreakerState) -> int:
    return b.open_until_ms - b.since_ms


async def wait_for_redis_time(store: BreakerStore, until_ms: int) -> None:
    deadline = time.monotonic() + DEADLINE
    while (now := (await store.snapshot()).now_ms) < until_ms:
        assert time.monotonic() < deadline, "Redis time never reached the wait's end"
        await anyio.sleep((until_ms - now) / 1000 + 0.001)


async def until_half_open(store: BreakerStore, model: str, p: BreakerParams) -> Acquired:
    """Acquire until the open wait is over; returns the acquire that moved to half-open."""
    deadline = time.monotonic() + DEADLINE
    while True:
        acquired = await store.acquire(model, p)
        b = acquired.change.breaker
        assert b is not None
        if b.state != OPEN:
            assert b.state == HALF_OPEN and acquired.change.changed and acquired.permit
            return acquired
        assert not acquired.permit and not acquired.change.changed
        assert time.monotonic() < deadline, "the breaker never left open"
        await anyio.sleep(max(b.open_until_ms - acquired.change.now_ms, 1) / 1000)


class Events:
    """Subscriber on the events channel, ready before the first publish."""

    def __init__(self, pubsub: PubSub) -> None:
        self._pubsub = pubsub

    @classmethod
    async def open(cls, backend: Backend) -> Events:
        pubsub = await backend.pubsub()
        await pubsub.subscribe(backend.keys.events)
        # Wait for the confirmation: only then are later publishes sure to reach us.
        deadline = time.monotonic() + DEADLINE
        while (message := await pubsub.get_message(timeout=1.0)) is None:
            assert time.monotonic() < deadline
        assert message["type"] == "subscribe"
        return cls(pubsub)

    async def take(self, count: int) -> list[Change]:
        changes: list[Change] = []
        deadline = time.monotonic() + DEADLINE
        while len(changes) < count:
            assert time.monotonic() < deadline, f"got {len(changes)} of {count} events"
            message = await self._pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == "message":
                changes.append(parse_event(message["data"]))
        return changes

    async def extra(self) -> Any:
        return await self._pubsub.get_message(timeout=0.2)

    async def close(self) -> None:
        await self._pubsub.aclose()


# Pure Python parts


def test_keys_share_one_slot() -> None:
    keys = Keys("prod")
    names = [
        keys.epoch,
        keys.breaker("gemini-2.5-pro"),
        keys.window("gemini-2.5-flash"),
        keys.models,
        keys.routes,
        keys.route_digests,
        keys.active,
        keys.events,
        keys.pins,
        keys.audit,
        keys.replicas,
    ]
    assert all(name.startswith("gb:{prod}:") for name in names)
    assert len(set(names)) == len(names)
    assert {key_slot(name.encode()) for name in names} == {key_slot(b"{prod}")}
    for bad in ("", "a{b", "a}b"):
        with pytest.raises(ValueError):
            Keys(bad)


def test_params_are_validated_and_sent_in_milliseconds() -> None:
    p = BreakerParams()
    assert p.buckets == 30
    assert p.script_params() == {
        "window_ms": 30000,
        "bucket_ms": 1000,
        "minimum_calls": 10,
        "failure_rate": 0.5,
        "burst_failures": 5,
        "burst_ms": 2000,
        "open_ms": 5000,
        "open_max_ms": 300000,
        "trip_memory_ms": 600000,
        "probes": 3,
        "probe_timeout_ms": 30000,
    }
    assert BreakerParams(window_seconds=0.25, bucket_seconds=0.05).buckets == 5
    for bad in (
        {"bucket_seconds": 0},
        {"window_seconds": 1, "bucket_seconds": 2},
        {"window_seconds": 100, "bucket_seconds": 0.001},
        {"failure_rate": 1.5},
        {"minimum_calls": 0},
        {"half_open_probes": 0},
        {"open_seconds": 10, "open_max_seconds": 5},
    ):
        with pytest.raises(ValueError):
            BreakerParams(**bad)
    with pytest.raises(ValueError):
        Outcome("m", 0, calls=1, failures=2)


def test_events_parse_from_the_scripts_json() -> None:
    b = replace(BreakerState.initial("m"), state=OPEN, epoch=7, reason="r")
    change = Change(12, b, {"r": ActiveModel("r", None, 7)}, True)
    assert parse_event(json.dumps(encode(change)).encode()) == change
    assert parse_any_event(json.dumps(encode(change))) == change
    # fakeredis's cjson writes an empty object as [].
    assert parse_event('{"now_ms": 1, "breaker": null, "active": [], "changed": false}') == (
        Change(1, None, {}, False)
    )
    for junk in (b"not json", "[]", '{"now_ms": 1}', '{"now_ms": "1"}'):
        with pytest.raises(PayloadError):
            parse_event(junk)
    # Each event says what it is: one of another kind, or of none, is not guessed at.
    pin_event = json.dumps({**encode(change), "kind": "pin"})
    with pytest.raises(PayloadError):
        parse_event(pin_event)
    unnamed = json.dumps({k: v for k, v in encode(change).items() if k != "kind"})
    for junk in (unnamed, json.dumps({**encode(change), "kind": "gossip"})):
        with pytest.raises(PayloadError):
            parse_any_event(junk)
    # A breaker state outside the enumeration is refused.
    with pytest.raises(PayloadError):
        parse_event(json.dumps({**encode(change), "breaker": {**encode(b), "state": "ajar"}}))


# The scripts


async def test_untouched_model_reads_closed(store: BreakerStore) -> None:
    snapshot = await store.snapshot()
    assert (snapshot.epoch, snapshot.breakers, snapshot.active) == (0, {}, {})
    acquired = await store.acquire("m", params())
    assert acquired.permit and not acquired.change.changed
    assert acquired.change.breaker == BreakerState.initial("m")
    assert (await store.snapshot()).breakers == {"m": BreakerState.initial("m")}


async def test_window_matches_brute_force(store: BreakerStore) -> None:
    p = params(window_seconds=0.25, bucket_seconds=0.05, minimum_calls=10**9, burst_failures=10**9)
    bucket_ms, slots = 50, p.buckets
    rng = random.Random(20240601)
    events: list[tuple[int, int, int]] = []  # (bucket index, calls, failures)
    head = 0  # newest bucket index written; a clock stepping back counts as no time passing

    def expected(cur: int) -> tuple[int, int]:
        live = [(c, f) for b, c, f in events if b > cur - slots]
        return sum(c for c, _ in live), sum(f for _, f in live)

    for step in range(100):
        outcomes = []
        for _ in range(rng.randint(1, 3)):
            calls = rng.randint(0, 4)
            outcomes.append(Outcome("m", 0, calls, rng.randint(0, calls)))
        changes = await store.report(outcomes, {"m": p})
        for outcome, change in zip(outcomes, changes, strict=True):
            assert change.breaker is not None
            assert change.breaker.state == CLOSED and not change.changed
            head = max(head, change.now_ms // bucket_ms)
            events.append((head, outcome.calls, outcome.failures))
            assert (change.breaker.calls, change.breaker.failures) == expected(head), step
        if step % 7 == 0:
            snapshot = await store.snapshot()
            seen = snapshot.breakers["m"]
            cur = max(head, snapshot.now_ms // bucket_ms)
            assert (seen.calls, seen.failures) == expected(cur), step
        pause = rng.choice([0.0, 0.0, 0.005, 0.01, 0.02, 0.04, 0.07])
        if rng.random() < 0.03:
            pause = 0.3  # longer than the window: everything falls out
        await anyio.sleep(pause)
    assert sum(c for _, c, _ in events) > 0


async def test_window_restarts_when_its_geometry_changes(store: BreakerStore) -> None:
    coarse, fine = params(bucket_seconds=1.0), params(bucket_seconds=0.5)
    assert (await report(store, "a", 0, 3, 1, coarse)).breaker == replace(
        BreakerState.initial("a"), calls=3, failures=1
    )
    change = await report(store, "a", 0, 2, 0, fine)
    assert change.breaker is not None and (change.breaker.calls, change.breaker.failures) == (2, 0)


async def test_trip_by_failure_rate_needs_minimum_calls(store: BreakerStore) -> None:
    p = params(minimum_calls=10, failure_rate=0.5)
    change = await report(store, "a", 0, 9, 9, p)
    assert not change.changed and change.breaker is not None
    assert (change.breaker.state, change.breaker.calls, change.breaker.failures) == (CLOSED, 9, 9)

    b = opened(await report(store, "a", 0, 1, 0, p))
    assert b.reason == "failure rate 90% over 10 calls"
    assert (b.trips, b.calls, b.failures) == (1, 0, 0)
    assert b.epoch > 0 and wait_ms(b) == 60_000

    # Below the rate nothing trips, however many calls.
    change = await report(store, "b", 0, 40, 19, p)
    assert change.breaker is not None and change.breaker.state == CLOSED


async def test_trip_by_burst(store: BreakerStore) -> None:
    # A burst span much longer than a pause between two awaits, even on a busy machine.
    p = params(minimum_calls=10**6, burst_failures=5, burst_seconds=10.0, bucket_seconds=1.0)
    change = await report(store, "a", 0, 4, 4, p)
    assert not change.changed
    b = opened(await report(store, "a", 0, 1, 1, p))
    assert b.reason == "burst: 5 failures in 10 s"

    # Enough failures, but too few of the burst's calls: no trip.
    change = await report(store, "b", 0, 30, 8, p)
    assert change.breaker is not None and change.breaker.state == CLOSED


async def test_stale_epoch_report_changes_nothing(store: BreakerStore) -> None:
    p = params()
    tripped = opened(await trip(store, "a", p))
    # Results of the tripped epoch, arriving while open.
    change = await report(store, "a", tripped.epoch, 50, 50, p)
    assert not change.changed and change.breaker == tripped

    closed = (await store.force("a", "close", "ops", "fixed", p)).breaker
    assert closed is not None and closed.epoch > tripped.epoch
    before = await store.snapshot()
    for stale in (0, tripped.epoch):
        change = await report(store, "a", stale, 100, 100, p)
        assert not change.changed and change.breaker == closed
    after = await store.snapshot()
    assert (after.epoch, after.breakers, after.active) == (
        before.epoch,
        before.breakers,
        before.active,
    )
    # The current epoch counts.
    change = await report(store, "a", closed.epoch, 1, 0, p)
    assert change.breaker is not None and change.breaker.calls == 1


async def test_open_rejects_until_the_wait_is_over(store: BreakerStore) -> None:
    p = params(open_seconds=60)
    b = opened(await trip(store, "a", p))
    acquired = await store.acquire("a", p)
    assert not acquired.permit and not acquired.change.changed
    assert acquired.change.breaker == b


async def test_open_wait_doubles_up_to_the_cap(store: BreakerStore) -> None:
    p = params(open_seconds=0.02, open_max_seconds=0.1, half_open_probes=1)
    b = opened(await trip(store, "a", p))
    assert (b.trips, wait_ms(b)) == (1, 20)
    waits = []
    for _ in range(4):
        acquired = await until_half_open(store, "a", p)
        half = acquired.change.breaker
        assert half is not None and half.epoch > b.epoch and half.probes_issued == 1
        b = opened(await store.probe_done("a", half.epoch, False, p))
        assert b.reason == "half-open probe failed" and b.probes_failed == 1
        waits.append((b.trips, wait_ms(b)))
    assert waits == [(2, 40), (3, 80), (4, 100), (5, 100)]


async def test_trip_memory(store: BreakerStore) -> None:
    remember = params(open_seconds=1, open_max_seconds=100, trip_memory_seconds=600)
    assert wait_ms(opened(await trip(store, "a", remember))) == 1000
    await store.force("a", "close", "ops", "", remember)
    b = opened(await trip(store, "a", remember))
    assert (b.trips, wait_ms(b)) == (2, 2000)

    forget = replace(remember, trip_memory_seconds=0.05)
    await store.force("a", "close", "ops", "", forget)
    await anyio.sleep(0.15)  # closed longer than the memory
    b = opened(await trip(store, "a", forget))
    assert (b.trips, wait_ms(b)) == (1, 1000)

    await store.force("a", "close", "ops", "", remember)
    assert opened(await trip(store, "a", remember)).trips == 2
    reset = (await store.force("a", "reset", "ops", "", remember)).breaker
    assert reset is not None and (reset.state, reset.trips) == (CLOSED, 0)
    assert opened(await trip(store, "a", remember)).trips == 1


async def test_half_open_closes_only_after_n_successes(store: BreakerStore) -> None:
    p = params(open_seconds=0.01, half_open_probes=3)
    tripped = opened(await trip(store, "a", p))
    half = (await until_half_open(store, "a", p)).change.breaker
    assert half is not None and (half.probes_issued, half.trips) == (1, 1)
    epoch = half.epoch

    change = await store.probe_done("a", epoch, True, p)
    assert not change.changed and change.breaker is not None
    assert (change.breaker.state, change.breaker.probes_ok) == (HALF_OPEN, 1)
    # Nothing outstanding: a second report without a permit is ignored.
    change = await store.probe_done("a", epoch, True, p)
    assert change.breaker is not None and change.breaker.probes_ok == 1

    for issued in (2, 3):
        acquired = await store.acquire("a", p)
        assert acquired.permit and not acquired.change.changed
        assert acquired.change.breaker is not None
        assert (acquired.change.breaker.probes_issued, acquired.change.breaker.epoch) == (
            issued,
            epoch,
        )
    assert not (await store.acquire("a", p)).permit

    change = await store.probe_done("a", tripped.epoch, True, p)  # stale epoch
    assert change.breaker is not None and change.breaker.probes_ok == 1
    change = await store.probe_done("a", epoch, True, p)
    assert change.breaker is not None and change.breaker.state == HALF_OPEN
    change = await store.probe_done("a", epoch, True, p)
    closed = change.breaker
    assert change.changed and closed is not None and closed.state == CLOSED
    assert closed.epoch > epoch and closed.trips == 1 and closed.calls == 0

    change = await store.probe_done("a", epoch, False, p)  # late, after closing
    assert not change.changed and change.breaker == closed


async def test_failed_probe_reopens_with_doubled_wait(store: BreakerStore) -> None:
    p = params(open_seconds=0.01, open_max_seconds=10, half_open_probes=2)
    assert wait_ms(opened(await trip(store, "a", p))) == 10
    half = (await until_half_open(store, "a", p)).change.breaker
    assert half is not None
    change = await store.probe_done("a", half.epoch, False, p)
    b = opened(change)
    assert change.changed and b.epoch > half.epoch
    assert (b.trips, wait_ms(b), b.reason) == (2, 20, "half-open probe failed")


async def test_a_released_probe_permit_goes_to_the_next_request(store: BreakerStore) -> None:
    """A probe whose request was the client's fault hands its permit back: the next request
    gets it, and the breaker is not taken to have lost a probe."""
    p = params(open_seconds=0.01, half_open_probes=1, half_open_timeout=60)
    tripped = opened(await trip(store, "a", p))
    half = (await until_half_open(store, "a", p)).change.breaker
    assert half is not None and half.probes_issued == 1
    assert not (await store.acquire("a", p)).permit
    stale = await store.probe_release("a", tripped.epoch)  # another epoch's: ignored
    assert stale.breaker is not None and stale.breaker.probes_issued == 1
    released = await store.probe_release("a", half.epoch)
    assert not released.changed and released.breaker is not None
    assert (released.breaker.state, released.breaker.probes_issued) == (HALF_OPEN, 0)
    again = await store.probe_release("a", half.epoch)  # nothing outstanding: ignored
    assert again.breaker is not None and again.breaker.probes_issued == 0
    acquired = await store.acquire("a", p)
    assert acquired.permit and acquired.change.breaker is not None
    assert acquired.change.breaker.probes_issued == 1
    closed = (await store.probe_done("a", half.epoch, True, p)).breaker
    assert closed is not None and closed.state == CLOSED


async def test_lost_probes_reopen_after_the_timeout(store: BreakerStore) -> None:
    patient = params(open_seconds=0.01, half_open_probes=2, half_open_timeout=60)
    hasty = replace(patient, half_open_timeout=0.05)

    # Reported probes are never lost, however long ago they went out.
    opened(await trip(store, "a", patient))
    half = (await until_half_open(store, "a", patient)).change.breaker
    assert half is not None
    await store.probe_done("a", half.epoch, True, patient)
    await anyio.sleep(0.1)
    acquired = await store.acquire("a", hasty)
    assert acquired.permit and not acquired.change.changed

    # Permits out and unreported past the timeout: reopen with the next wait.
    opened(await trip(store, "b", patient))
    half = (await until_half_open(store, "b", patient)).change.breaker
    assert half is not None
    assert (await store.acquire("b", patient)).permit
    denied = await store.acquire("b", patient)
    assert not denied.permit and not denied.change.changed
    await anyio.sleep(0.1)
    lost = await store.acquire("b", hasty)
    b = opened(lost.change)
    assert not lost.permit and lost.change.changed
    assert (b.reason, b.trips, wait_ms(b)) == ("half-open probes lost", 2, 20)
    late = await store.probe_done("b", half.epoch, True, patient)
    assert not late.changed and late.breaker == b


async def test_concurrent_acquires_get_exactly_n_permits(backend: Backend) -> None:
    p = params(open_seconds=0.05, half_open_probes=3)
    stores = [backend.new_store() for _ in range(50)]
    b = opened(await trip(backend.store, "a", p))
    await wait_for_redis_time(backend.store, b.open_until_ms)

    results = await asyncio.gather(*(s.acquire("a", p) for s in stores))
    assert sum(r.permit for r in results) == 3
    assert sum(r.change.changed for r in results) == 1
    epochs = {r.change.breaker.epoch for r in results if r.change.breaker is not None}
    assert len(epochs) == 1 and epochs.pop() > b.epoch
    final = await breaker(backend.store, "a")
    assert (final.state, final.probes_issued) == (HALF_OPEN, 3)


async def test_forced_open_and_disabled(store: BreakerStore) -> None:
    p = params(open_seconds=0.01)
    forced = (await store.force("a", "force_open", "alice", "maintenance", p)).breaker
    assert forced is not None and forced.state == FORCED_OPEN
    assert (forced.forced_by, forced.reason) == ("alice", "maintenance")
    assert not forced.admits_without_redis
    await anyio.sleep(0.03)  # far beyond open_seconds: forced_open does not time out
    acquired = await store.acquire("a", p)
    assert not acquired.permit and acquired.change.breaker == forced
    assert not (await report(store, "a", forced.epoch, 1, 0, p)).changed

    disabled = (await store.force("a", "disable", "bob", "noisy", p)).breaker
    assert disabled is not None and disabled.state == DISABLED and disabled.admits_without_redis
    assert disabled.epoch > forced.epoch and disabled.forced_by == "bob"
    assert (await store.acquire("a", p)).permit
    change = await report(store, "a", disabled.epoch, 100, 100, p)
    assert not change.changed and change.breaker == disabled

    # open: the wait of the next trip, every time.
    first = opened(await store.force("a", "open", "carol", "drill", p))
    second = opened(await store.force("a", "open", "carol", "drill", p))
    assert (first.trips, wait_ms(first), second.trips, wait_ms(second)) == (1, 10, 2, 20)
    assert (second.forced_by, second.reason) == ("carol", "drill")

    closed = (await store.force("a", "close", "dave", "done", p)).breaker
    assert closed is not None and (closed.state, closed.trips, closed.forced_by) == (
        CLOSED,
        2,
        "dave",
    )
    with pytest.raises(ValueError):
        await store.force("a", "explode", "eve", "", p)


async def test_active_model_follows_the_chain(store: BreakerStore) -> None:
    p = params(open_seconds=0.01)
    routes = {"pro": ["a", "b", "c"], "solo": ["c"], "other": ["x"]}
    snapshot = await store.register_routes(routes, "r1", "d1", {})
    assert {r: a.model for r, a in snapshot.active.items()} == {
        "pro": "a",
        "solo": "c",
        "other": "x",
    }

    def models(change: Change) -> dict[str, str | None]:
        for active in change.active.values():
            assert active.epoch == (change.breaker.epoch if change.breaker else -1)
        return {route: active.model for route, active in change.active.items()}

    assert models(await trip(store, "a", p)) == {"pro": "b"}
    assert models(await store.force("b", "force_open", "ops", "", p)) == {"pro": "c"}
    assert models(await store.force("c", "open", "ops", "", p)) == {"pro": None, "solo": None}
    # Half-open is not active.
    assert models((await until_half_open(store, "c", p)).change) == {"pro": None, "solo": None}
    assert models(await store.force("b", "disable", "ops", "", p)) == {"pro": "b"}
    assert models(await store.force("a", "reset", "ops", "", p)) == {"pro": "a"}

    snapshot = await store.snapshot()
    assert {r: a.model for r, a in snapshot.active.items()} == {
        "pro": "a",
        "solo": None,
        "other": "x",
    }
    assert snapshot.active["pro"].epoch == snapshot.breakers["a"].epoch == snapshot.epoch


async def test_every_transition_is_published(backend: Backend) -> None:
    store, p = backend.store, params(open_seconds=0.01, half_open_probes=1)
    events = await Events.open(backend)
    try:
        returned: list[Change] = []

        async def keep(change: Change) -> None:
            if change.changed:
                returned.append(change)

        snapshot = await store.register_routes({"r": ["a", "b"]}, "r1", "d1", {})
        await keep(await trip(store, "a", p))
        half = await until_half_open(store, "a", p)
        await keep(half.change)
        assert half.change.breaker is not None
        await keep(await store.probe_done("a", half.change.breaker.epoch, True, p))
        await keep(await report(store, "b", 0, 1, 0, p))  # no transition
        await keep(await store.force("b", "force_open", "ops", "why", p))
        await keep((await store.acquire("b", p)).change)  # denied, no transition
        await keep(await store.force("b", "reset", "ops", "", p))
        await store.register_routes({"r": ["a", "b"]}, "r2", "d1", {})  # nothing moves

        published = await events.take(1 + len(returned))
        assert await events.extra() is None
    finally:
        await events.close()

    routes_event, breaker_events = published[0], published[1:]
    assert routes_event.breaker is None and routes_event.changed
    assert routes_event.active == snapshot.active
    assert breaker_events == returned
    assert [c.breaker.state for c in returned if c.breaker] == [
        OPEN,
        HALF_OPEN,
        CLOSED,
        FORCED_OPEN,
        CLOSED,
    ]
    epochs = [routes_event.active["r"].epoch] + [c.breaker.epoch for c in returned if c.breaker]
    assert epochs == sorted(set(epochs))
    assert (await store.snapshot()).epoch == epochs[-1]


async def test_register_routes_snapshot_and_seed(backend: Backend) -> None:
    store, p = backend.store, params()
    routes = {"pro": ("a", "b", "c"), "fast": ("b",)}
    first = await store.register_routes(routes, "r1", "d1", {"a": p, "extra": p})
    assert first.routes == routes
    assert first.digests == {"r1": "d1"}
    assert first.breakers == {m: BreakerState.initial(m) for m in ("a", "b", "c", "extra")}
    assert first.active == {
        "pro": ActiveModel("pro", "a", first.epoch),
        "fast": ActiveModel("fast", "b", first.epoch),
    }

    second = await store.register_routes(routes, "r2", "d2", {})
    assert second.active == first.active  # unchanged routes keep their epoch
    assert second.digests == {"r1": "d1", "r2": "d2"}
    assert replace(await store.snapshot(), now_ms=0) == replace(second, now_ms=0)

    opened(await trip(store, "a", p))
    moved = await store.register_routes({"pro": ["c", "a"]}, "r1", "d3", {})
    assert moved.routes["pro"] == ("c", "a")
    assert moved.active["pro"] == ActiveModel("pro", "c", moved.epoch)
    assert moved.active["fast"] == first.active["fast"]
    assert moved.breakers["a"].state == OPEN
    assert decode(Snapshot, json.loads(json.dumps(encode(moved)))) == moved

    with pytest.raises(ValueError):
        await store.register_routes({"empty": []}, "r1", "d", {})

    # Seeding another store (as a replica does for its in-process fallback) copies it all.
    other = BreakerStore(backend.redis, Keys(backend.namespace + "-copy"))
    seeded = await other.seed(moved)
    assert replace(seeded, now_ms=0) == replace(moved, now_ms=0)
    change = await store.force("b", "open", "ops", "", p)
    assert change.breaker is not None and change.breaker.epoch > moved.epoch
    later = await other.force("b", "open", "ops", "", p)
    assert later.breaker is not None and later.breaker.epoch > moved.epoch


async def test_scripts_survive_a_flushed_script_cache(
    store: BreakerStore, backend: Backend
) -> None:
    p = params()
    await store.snapshot()
    await backend.redis.script_flush()
    changes = await store.report([Outcome("a", 0, 1, 0), Outcome("a", 0, 1, 1)], {})
    assert [c.breaker.calls for c in changes if c.breaker] == [1, 2]
    await backend.redis.script_flush()
    assert (await store.acquire("a", p)).permit


async def test_script_errors_raise_store_error(store: BreakerStore, backend: Backend) -> None:
    await backend.redis.set(backend.keys.breaker("a"), "not a hash")
    with pytest.raises(StoreError):
        await store.acquire("a", params())
    with pytest.raises(StoreError):
        await store.report([Outcome("a", 0, 1, 0)], {})


@pytest.mark.redis
async def test_store_works_across_a_redis_restart(redis_server: RedisServer) -> None:
    client = Redis.from_url(redis_server.url)
    try:
        store = BreakerStore(client, Keys("restart"))
        opened(await trip(store, "a", params()))
        port = redis_server.port
        redis_server.kill()
        redis_server.start()
        assert redis_server.port == port
        # A pooled connection to the old process may fail once (a from_url client does not
        # retry); the next call reconnects, and the scripts reload on NOSCRIPT.
        with contextlib.suppress(RedisConnectionError):
            await store.acquire("a", params())
        assert (await store.acquire("a", params())).permit  # nothing was persisted
        change = await report(store, "a", 0, 1, 0, params())
        assert change.breaker is not None and change.breaker.calls == 1
    finally:
        await client.aclose()


def test_redis_support_restarts_on_the_same_port(tmp_path: Path) -> None:
    require_redis()
    with start_redis(tmp_path) as server:
        port, pid = server.port, server.pid
        server.stop()
        assert not server.running
        server.start()
        assert (server.port, server.running) == (port, True) and server.pid != pid
    assert not server.running


# Quota scripts (429 cooldowns) and the cluster budget (GCRA)


async def test_quota_feedback_cools_down_and_halves_once_per_cooldown(store: BreakerStore) -> None:
    quota = QuotaParams(decrease=0.5, recovery_per_second=0.1, min_scale=0.1)
    first = await store.quota_feedback("k1", "m", 5.0, False, "PerMinute", quota)
    assert first.quota.until_ms - first.now_ms == 5000
    assert first.quota.scale == 0.5
    # Another 429 from a request already in flight: the cooldown extends, no second halving.
    second = await store.quota_feedback("k1", "m", 8.0, False, "", quota)
    assert second.quota.scale == 0.5
    assert second.quota.until_ms == second.now_ms + 8000
    assert second.quota.quota_id == "PerMinute"  # kept from the first
    assert second.quota.epoch > first.quota.epoch
    # The scale recovers additively from the cooldown's end, computed, not stored.
    assert second.quota.scale_at(second.quota.scale_from_ms + 2000, 0.1) == pytest.approx(0.7)
    _, epoch, quotas = await store.quota_snapshot()
    assert [(q.scope, q.model, q.until_ms) for q in quotas] == [("k1", "m", second.quota.until_ms)]
    assert epoch >= second.quota.epoch
    other = await store.quota_feedback("k2", "m", 1.0, True, "PerDay", quota)
    assert other.quota.per_day and other.quota.scale == 0.5  # scopes are independent


async def test_quota_feedback_is_published(backend: Backend) -> None:
    listener = await backend.pubsub(ignore_subscribe_messages=True)
    await listener.subscribe(backend.keys.events)
    change = await backend.store.quota_feedback("k", "m", 1.0, False, "", QuotaParams())
    deadline = time.monotonic() + DEADLINE
    message = None
    while message is None and time.monotonic() < deadline:
        message = await listener.get_message(timeout=1.0)
    await listener.aclose()
    assert message is not None
    assert parse_any_event(message["data"]) == change


async def test_expired_quota_conditions_are_forgotten(store: BreakerStore) -> None:
    quota = QuotaParams(decrease=1.0, recovery_per_second=1.0)  # nothing to recover
    await store.quota_feedback("k", "m", 0.001, False, "", quota)
    deadline = time.monotonic() + DEADLINE
    while (await store.quota_snapshot())[2]:
        assert time.monotonic() < deadline, "the condition never expired"
        await anyio.sleep(0.05)


async def test_budget_admits_a_burst_then_says_when(store: BreakerStore) -> None:
    admitted = [await store.spend_budget("m", 120, 0, 1) for _ in range(4)]
    # 120 per minute with a one-second burst allowance: two at once, then a wait of ~0.5 s.
    assert admitted[:2] == [0.0, 0.0]
    assert all(0 < wait <= 0.5 for wait in admitted[2:])


async def test_token_budget_counts_tokens(store: BreakerStore) -> None:
    assert await store.spend_budget("t", 0, 6000, 100) == 0.0  # 100 tokens/s: a burst of 100
    wait = await store.spend_budget("t", 0, 6000, 50)
    assert wait == pytest.approx(0.5, abs=0.1)  # 50 more tokens come back in half a second


async def test_the_share_is_cut_at_most_once_per_interval(store: BreakerStore) -> None:
    eager = QuotaParams(decrease=0.5, decrease_interval=0.0, recovery_per_second=0.001)
    patient = QuotaParams(decrease=0.5, decrease_interval=60.0, recovery_per_second=0.001)
    await store.quota_feedback("e", "m", 0.001, False, "", eager)
    await anyio.sleep(0.01)  # the first cooldown is over
    assert (await store.quota_feedback("e", "m", 0.001, False, "", eager)).quota.scale < 0.3
    await store.quota_feedback("p", "m", 0.001, False, "", patient)
    await anyio.sleep(0.01)
    assert (await store.quota_feedback("p", "m", 0.001, False, "", patient)).quota.scale > 0.49


# Operator surface: pins, the audit stream, heartbeats


async def audit_of(store: BreakerStore, limit: int = 100) -> list[AuditEntry]:
    return await store.audit(limit)


async def test_a_pin_picks_the_active_model_while_its_breaker_admits(store: BreakerStore) -> None:
    p = params()
    await store.register_routes({"pro": ["a", "b", "c"], "other": ["b"]}, "r1", "d1", {})
    pinned = await store.pin("pro", "b", 60, "alice", "a is slow", via="replica-1")
    assert pinned.changed and pinned.action == "pin" and pinned.route == "pro"
    assert pinned.pin == Pin("pro", "b", pinned.now_ms + 60_000, pinned.now_ms, "alice",
                             "a is slow", pinned.epoch)  # fmt: skip
    assert pinned.active == {"pro": ActiveModel("pro", "b", pinned.epoch)}
    snapshot = await store.snapshot()
    assert snapshot.pins == {"pro": pinned.pin}
    assert snapshot.active["pro"].model == "b" and snapshot.epoch == pinned.epoch

    # The breaker still guards the pinned model: not admitting, the chain decides.
    forced = await store.force("b", "force_open", "ops", "broken", p)
    assert {r: a.model for r, a in forced.active.items()} == {"pro": "a", "other": None}
    closed = await store.force("b", "close", "ops", "fixed", p)
    assert {r: a.model for r, a in closed.active.items()} == {"pro": "b", "other": "b"}
    opened(await store.force("b", "open", "ops", "drill", p))
    assert (await store.snapshot()).active["pro"].model == "a"
    await store.force("b", "reset", "ops", "", p)

    # A new pin replaces the old one; unpinning goes back to the chain.
    again = await store.pin("pro", "c", 60, "bob", "try c")
    assert again.epoch > pinned.epoch and again.active["pro"].model == "c"
    unpinned = await store.unpin("pro", "carol", "done")
    assert unpinned.changed and unpinned.pin is None and unpinned.epoch > again.epoch
    assert unpinned.active == {"pro": ActiveModel("pro", "a", unpinned.epoch)}
    assert (await store.snapshot()).pins == {}
    # Unpinning a route without a pin changes nothing (still audited).
    nothing = await store.unpin("pro", "carol", "again")
    assert not nothing.changed and nothing.active == {} and nothing.epoch == unpinned.epoch


async def test_pins_are_validated(store: BreakerStore) -> None:
    await store.register_routes({"pro": ["a", "b"]}, "r1", "d1", {})
    with pytest.raises(StoreError, match="not in the chain"):
        await store.pin("pro", "z", 60, "ops", "")
    with pytest.raises(StoreError, match="unknown route"):
        await store.pin("nope", "a", 60, "ops", "")
    for ttl in (0, -1, 7 * 86400 + 1):
        with pytest.raises(ValueError):
            await store.pin("pro", "a", ttl, "ops", "")
    assert (await store.snapshot()).pins == {}


async def test_an_expired_pin_is_dropped_by_the_snapshot(backend: Backend) -> None:
    store = backend.store
    await store.register_routes({"pro": ["a", "b"]}, "r1", "d1", {})
    pinned = await store.pin("pro", "b", 0.05, "ops", "short")
    listener = await backend.pubsub(ignore_subscribe_messages=True)
    await listener.subscribe(backend.keys.events)
    try:
        await wait_for_redis_time(store, pinned.pin.until_ms if pinned.pin else 0)
        snapshot = await store.snapshot()
        assert snapshot.pins == {}
        assert snapshot.active["pro"].model == "a"
        assert snapshot.active["pro"].epoch == snapshot.epoch > pinned.epoch
        deadline = time.monotonic() + DEADLINE
        event = None
        while not isinstance(event, PinChange):
            assert time.monotonic() < deadline, "no expiry event"
            message = await listener.get_message(timeout=1.0)
            if message is not None:
                event = parse_any_event(message["data"])
        assert (event.action, event.pin, event.changed) == ("expire", None, True)
        assert event.active["pro"] == snapshot.active["pro"]
    finally:
        await listener.aclose()
    [expired, *_] = await audit_of(store)
    assert (expired.action, expired.target, expired.by) == ("pin_expired", "pro", "gemini-breaker")
    assert expired.result == {"unpinned": "b", "active": {"pro": "a"}}
    assert "short" in expired.reason


async def test_pin_changes_are_published(backend: Backend) -> None:
    await backend.store.register_routes({"pro": ["a", "b"]}, "r1", "d1", {})
    listener = await backend.pubsub(ignore_subscribe_messages=True)
    await listener.subscribe(backend.keys.events)
    try:
        answers = [
            await backend.store.pin("pro", "b", 60, "ops", "why"),
            await backend.store.unpin("pro", "ops", "why"),
        ]
        await backend.store.unpin("pro", "ops", "nothing to do: not published")
        events: list[Any] = []
        deadline = time.monotonic() + DEADLINE
        while len(events) < 2:
            assert time.monotonic() < deadline
            message = await listener.get_message(timeout=1.0)
            if message is not None:
                events.append(parse_any_event(message["data"]))
        assert events == answers
        assert await listener.get_message(timeout=0.2) is None
    finally:
        await listener.aclose()


async def test_operator_actions_are_audited_in_the_same_step(store: BreakerStore) -> None:
    p = params()
    await store.register_routes({"pro": ["a", "b"]}, "r1", "d1", {})
    forced = await store.force("a", "force_open", "alice", "maintenance", p, via="replica-1")
    pinned = await store.pin("pro", "b", 600, "bob", "move", via="replica-2")
    await store.unpin("pro", "carol", "back", via="replica-3")
    reset = await store.force("a", "reset", "dave", "done", p)
    entries = await audit_of(store)
    assert [(e.action, e.target, e.by, e.reason, e.via) for e in entries] == [
        ("reset", "a", "dave", "done", ""),
        ("unpin", "pro", "carol", "back", "replica-3"),
        ("pin", "pro", "bob", "move", "replica-2"),
        ("force_open", "a", "alice", "maintenance", "replica-1"),
    ]
    assert forced.breaker is not None and reset.breaker is not None
    assert entries[3].epoch == forced.breaker.epoch and entries[0].epoch == reset.breaker.epoch
    assert entries[3].result == {
        "state": "forced_open",
        "open_until_ms": 0,
        "trips": 0,
        "active": {"pro": "b"},
    }
    assert entries[2].result == {
        "model": "b",
        "until_ms": pinned.pin.until_ms if pinned.pin else 0,
        "active": {"pro": "b"},
    }
    assert entries[1].result == {"unpinned": "b", "active": {"pro": "b"}}  # a is still forced
    # The entry's time is Redis's: the stream ID (taken a moment later) agrees, newest first.
    assert all(0 <= int(e.id.split("-")[0]) - e.at_ms < 1000 for e in entries)
    assert [e.at_ms for e in entries] == sorted((e.at_ms for e in entries), reverse=True)
    assert [e.action for e in await audit_of(store, limit=2)] == ["reset", "unpin"]


@pytest.mark.redis
async def test_the_audit_stream_is_capped(real_redis: RedisServer) -> None:
    client = Redis.from_url(real_redis.url)
    try:
        keys = Keys(f"cap-{uuid.uuid4().hex[:8]}")
        store = BreakerStore(client, keys)
        for i in range(1300):
            await store.force("a", "disable" if i % 2 else "reset", "ops", f"{i}", params())
        length = await client.xlen(keys.audit)
        assert 1000 <= length < 1300  # MAXLEN ~ 1000 trims whole nodes
        assert (await store.audit(1))[0].reason == "1299"
    finally:
        await client.aclose()


async def test_heartbeats_list_the_replicas_and_forget_silent_ones(backend: Backend) -> None:
    store = backend.store
    first = await store.heartbeat("r1", "d1", 600)
    assert first.replicas == (ReplicaSeen("r1", first.now_ms, "d1"),)
    second = await store.heartbeat("r2", "d2", 600)
    assert {(r.replica, r.digest) for r in second.replicas} == {("r1", "d1"), ("r2", "d2")}
    assert (await store.snapshot()).digests == {"r1": "d1", "r2": "d2"}
    await anyio.sleep(0.02)
    third = await store.heartbeat("r2", "d3", 0.01)  # r1 has been silent longer than that
    assert third.replicas == (ReplicaSeen("r2", third.now_ms, "d3"),)
    assert (await store.snapshot()).digests == {"r2": "d3"}


async def test_seeding_carries_the_pins(backend: Backend) -> None:
    store = backend.store
    await store.register_routes({"pro": ["a", "b"]}, "r1", "d1", {})
    pinned = await store.pin("pro", "b", 600, "ops", "keep")
    snapshot = await store.snapshot()
    assert decode(Snapshot, json.loads(json.dumps(encode(snapshot)))) == snapshot
    other = BreakerStore(backend.redis, Keys(backend.namespace + "-seeded"))
    seeded = await other.seed(snapshot)
    assert seeded.pins == {"pro": pinned.pin}
    assert seeded.active["pro"].model == "b"
    # The seeded store's own scripts honour the pin.
    forced = await other.force("a", "force_open", "ops", "", params())
    assert forced.active["pro"].model == "b"


# Epochs never go backwards


async def lose_the_counter(backend: Backend) -> None:
    """What a failover to a lagging replica (or a restart without persistence) does to the
    counter: it goes back below epochs the replicas have already seen."""
    await backend.redis.set(backend.keys.epoch, 1)


async def test_every_new_epoch_is_taken_above_the_floor(backend: Backend) -> None:
    """Each script that takes a new epoch raises the counter to the caller's floor first."""
    p = params(minimum_calls=1, open_seconds=0.001, half_open_probes=1)
    floor = 1000
    store = BreakerStore(backend.redis, backend.keys, lambda: floor)
    await backend.store.register_routes({"pro": ["a", "b"]}, "r1", "d1", {})

    async def trip_a() -> object:
        epoch = (await breaker(store, "a")).epoch
        return await store.report([Outcome("a", epoch, 1, 1)], {"a": p})

    transitions: list[tuple[str, Callable[[], Any]]] = [
        ("force", lambda: store.force("b", "open", "ops", "why", p)),
        ("pin", lambda: store.pin("pro", "b", 60, "ops", "why")),
        ("unpin", lambda: store.unpin("pro", "ops", "why")),
        ("quota_feedback", lambda: store.quota_feedback("k", "m", 1.0, False, "", QuotaParams())),
        ("report", trip_a),
        ("register_routes", lambda: store.register_routes({"new": ["b", "a"]}, "r1", "d2", {})),
    ]
    for name, call in transitions:
        await lose_the_counter(backend)
        await call()
        snapshot = await backend.store.snapshot()
        # The state the store kept is issued again at floor + 1, and the transition takes
        # the next epoch: nothing is left below the floor.
        assert snapshot.epoch == floor + 2, name
        assert {b.epoch for b in snapshot.breakers.values()} <= {floor + 1, floor + 2}, name
        assert {a.epoch for a in snapshot.active.values()} <= {floor + 1, floor + 2}, name
    assert (await breaker(store, "a")).state == OPEN  # the report tripped it
    # acquire (open -> half-open) and probe_done (half-open -> closed) take epochs as well.
    await wait_for_redis_time(backend.store, (await breaker(store, "a")).open_until_ms)
    await lose_the_counter(backend)
    acquired = await store.acquire("a", p)
    assert acquired.permit and acquired.change.breaker is not None
    assert acquired.change.breaker.epoch == floor + 2
    await lose_the_counter(backend)
    closed = await store.probe_done("a", floor + 2, True, p)
    assert closed.breaker is not None and closed.breaker.state == CLOSED
    assert closed.breaker.epoch == floor + 2
    # A counter already above the floor just moves on.
    later = await store.force("b", "reset", "ops", "why", p)
    assert later.breaker is not None and later.breaker.epoch == floor + 3


async def test_a_store_that_lost_writes_reissues_its_state_above_the_floor(
    backend: Backend,
) -> None:
    p = params()
    store = backend.store
    await store.register_routes({"pro": ["a", "b"]}, "r1", "d1", {})
    opened(await trip(store, "a", p))
    await store.pin("pro", "b", 600, "ops", "keep")
    await store.quota_feedback("k", "b", 60, False, "", QuotaParams())
    before = await store.snapshot()
    await lose_the_counter(backend)
    floor = before.epoch + 50  # replicas saw writes the store no longer has
    listener = await backend.pubsub(ignore_subscribe_messages=True)
    await listener.subscribe(backend.keys.events)
    try:
        reissued = await BreakerStore(backend.redis, backend.keys, lambda: floor).reissue(["c"])
        published: list[Any] = []
        deadline = time.monotonic() + DEADLINE
        while len(published) < 4:  # one per breaker (a, b, c) and one per pin
            assert time.monotonic() < deadline, published
            message = await listener.get_message(timeout=1.0)
            if message is not None:
                published.append(parse_any_event(message["data"]))
    finally:
        await listener.aclose()
    epoch = floor + 1
    assert reissued.epoch == epoch
    # The same state, every part of it stamped with the one new epoch.
    assert {m: (b.state, b.trips, b.open_until_ms) for m, b in reissued.breakers.items()} == {
        "a": (OPEN, 1, before.breakers["a"].open_until_ms),
        "b": (CLOSED, 0, 0),
        "c": (CLOSED, 0, 0),
    }
    assert {b.epoch for b in reissued.breakers.values()} == {epoch}
    assert reissued.active == {"pro": ActiveModel("pro", "b", epoch)}
    assert reissued.pins["pro"].model == "b" and reissued.pins["pro"].epoch == epoch
    _, _, quotas = await store.quota_snapshot()
    assert [q.epoch for q in quotas] == [epoch]
    changes = [e for e in published if isinstance(e, Change)]
    assert sorted(c.breaker.model for c in changes if c.breaker) == ["a", "b", "c"]
    assert all(c.changed and c.breaker and c.breaker.epoch == epoch for c in changes)
    assert all(c.active == {"pro": ActiveModel("pro", "b", epoch)} for c in changes if c.active)
    [pin_event] = [e for e in published if isinstance(e, PinChange)]
    assert pin_event.epoch == epoch and pin_event.pin == reissued.pins["pro"]
