"""Epochs never go backwards, also when Redis loses its last writes: two replicas (their
coordinators, with their mirrors and event subscriptions) on a real redis-server, which is made
to lose writes the replicas already saw by restoring the keys as they were before them."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from proxy.cluster.coordinator import Coordinator
from proxy.config import Settings
from proxy.config_load import build_settings

from .coordinator_support import replica
from .redis_support import RedisServer
from .redis_support import redis_server as redis_server  # the fixture
from .support import eventually_async

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


def settings_for(url: str, namespace: str) -> Settings:
    # No periodic snapshot during the test: what moves the mirrors is the scripts' answers
    # and the events channel (each coordinator reconciles once, when it subscribes).
    return build_settings(
        {
            "redis": {
                "url": url,
                "namespace": namespace,
                "reconcile_interval": 600,
                "flush_interval": 0.05,
            },
            "routes": {"pro": ["a", "b"]},
        }
    )


class Keyspace:
    """Saves a namespace's keys and puts them back later: Redis losing the writes between."""

    def __init__(self, client: Redis, namespace: str) -> None:
        self._client = client
        self._pattern = f"gb:{{{namespace}}}:*"
        self._saved: dict[bytes, bytes] = {}

    async def save(self) -> None:
        self._saved = {}
        async for key in self._client.scan_iter(match=self._pattern):
            dumped = await self._client.dump(key)
            if dumped is not None:
                self._saved[key] = dumped

    async def lose_later_writes(self) -> None:
        """Put the saved keys back and drop newer ones in one transaction: the replicas'
        background scripts must not run against a half-restored keyspace (a failover to a
        replica that missed writes swaps the whole dataset at once)."""
        later = [key async for key in self._client.scan_iter(match=self._pattern)]
        async with self._client.pipeline(transaction=True) as pipe:
            for key in later:
                if key not in self._saved:
                    pipe.delete(key)
            for key, dumped in self._saved.items():
                pipe.restore(key, 0, dumped, replace=True)
            await pipe.execute()


@contextlib.asynccontextmanager
async def two_replicas(
    server: RedisServer,
) -> AsyncIterator[tuple[Coordinator, Coordinator, Keyspace]]:
    namespace = f"epochs-{uuid.uuid4().hex[:8]}"
    settings = settings_for(server.url, namespace)
    raw = Redis.from_url(server.url)
    try:
        async with replica(settings, "A") as a, replica(settings, "B") as b:
            # Both subscribed (their first reconcile runs right after subscribing).
            await eventually_async(
                lambda: b.mirror.routes and a.mirror.routes, what="replicas started"
            )
            yield a, b, Keyspace(raw, namespace)
    finally:
        await raw.aclose()


async def lost_writes(a: Coordinator, b: Coordinator, keyspace: Keyspace) -> int:
    """Open ``a``, then make writes both replicas see (``b`` forced open, ``a`` reset) and
    that Redis then loses; answers the highest epoch the replicas saw."""
    opened = await a.actions.breaker("a", "open", "ops", "before the loss")
    await eventually_async(lambda: b.mirror.breaker("a").state == "open", what="B saw a open")
    await keyspace.save()
    await a.actions.breaker("b", "force_open", "ops", "lost")
    reset = await b.actions.breaker("a", "reset", "ops", "lost")
    assert reset.breaker is not None and opened.breaker is not None
    seen = reset.breaker.epoch
    await eventually_async(
        lambda: (
            a.mirror.breaker("a").epoch == seen and b.mirror.breaker("b").state == "forced_open"
        ),
        what="both replicas saw the writes that will be lost",
    )
    await keyspace.lose_later_writes()
    return seen


async def test_a_transition_after_lost_writes_takes_an_epoch_above_all_seen(
    redis_server: RedisServer,
) -> None:
    async with two_replicas(redis_server) as (a, b, keyspace):
        seen = await lost_writes(a, b, keyspace)
        floor = max(a.mirror.epoch_floor, b.mirror.epoch_floor)
        assert floor == seen

        change = await a.actions.breaker("b", "disable", "ops", "after the loss")
        assert change.breaker is not None and change.breaker.epoch > floor
        epoch = change.breaker.epoch
        # Every replica adopts the transition and, with it, what the store kept: ``a`` is
        # open again (its reset was lost), re-stamped above the floor, not stuck at the lost
        # epoch; and the re-stamp (which still has ``b`` closed) does not undo the transition,
        # which is published after it (and on ``a``, answered before it) at a newer epoch.
        for mirror in (a.mirror, b.mirror):
            await eventually_async(
                lambda mirror=mirror: (
                    mirror.breaker("b").state == "disabled"
                    and mirror.breaker("b").epoch == epoch
                    and mirror.breaker("a").state == "open"
                    and floor < mirror.breaker("a").epoch < epoch
                    and mirror.active["pro"].epoch > floor
                ),
                what="a replica kept state from the lost history",
            )
        assert a.mirror.active["pro"].model == b.mirror.active["pro"].model == "b"
        # And epochs go on from there.
        later = await b.actions.breaker("a", "close", "ops", "later")
        assert later.breaker is not None and later.breaker.epoch > epoch
        closed_at = later.breaker.epoch
        await eventually_async(
            lambda: a.mirror.breaker("a").epoch == closed_at, what="A saw the close"
        )


async def test_a_reconcile_that_finds_lost_writes_reissues_the_store_state(
    redis_server: RedisServer,
) -> None:
    async with two_replicas(redis_server) as (a, b, keyspace):
        seen = await lost_writes(a, b, keyspace)
        # No transition happens; one replica's periodic snapshot shows the counter went back.
        await a.sync.reconcile()
        for mirror in (a.mirror, b.mirror):  # B learns it from the events alone
            await eventually_async(
                lambda mirror=mirror: (
                    mirror.breaker("a").state == "open"
                    and mirror.breaker("b").state == "closed"
                    and mirror.breaker("a").epoch > seen
                    and mirror.active["pro"].model == "b"
                ),
                what="a replica kept state from the lost history",
            )
        assert a.mirror.breaker("a").epoch == b.mirror.breaker("a").epoch
        assert a.mirror.epoch_floor == b.mirror.epoch_floor > seen
