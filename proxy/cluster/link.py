"""Which store a breaker script runs on: the shared Redis, or, while it is unreachable, an
in-process store seeded with the last known state (fail-static)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

import fakeredis

from ..config import Settings
from .connect import StoreClient
from .health import StoreHealth, StoreUnavailable
from .keys import Keys
from .mirror import Mirror
from .state import Snapshot
from .store import BreakerStore

log = logging.getLogger("gemini_breaker.store")

T = TypeVar("T")


class StoreLink:
    """Runs script calls on the store the replica follows now, bounded in time, and switches
    to the in-process store when the shared one fails (see ``StoreHealth``)."""

    def __init__(
        self, settings: Settings, redis: StoreClient, keys: Keys, mirror: Mirror, replica: str
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.mirror = mirror
        self.replica = replica
        self.routes = settings.routes
        self.digest = routes_digest(settings.routes)
        self._params = {m: settings.model_settings(m).breaker for m in settings.routed_models}
        # Every new epoch is taken above the highest this replica has seen (see reconcile).
        self.shared = BreakerStore(redis, keys, self._epoch_floor)
        self.local: BreakerStore | None = None
        self.health = StoreHealth(
            settings.redis.failures_to_degrade, settings.redis.retry_seconds, _health_changed
        )
        self.timeout = settings.redis.operation_timeout
        """Bound of a call on the request path."""
        self.background_timeout = max(1.0, settings.redis.operation_timeout)
        """Bound of a call in the background."""
        self.generation = 0
        """Bumped whenever the mirror starts following another store (or a reset one): an
        answer from before that is about a different history and must not be applied."""

    @property
    def degraded(self) -> bool:
        """Fail-static: Redis is unreachable and this replica runs its own breakers."""
        return self.local is not None

    def register_on(self, store: BreakerStore) -> Callable[[], Awaitable[Snapshot]]:
        """Publishing this replica's routes on ``store``; answers the whole state."""
        return lambda: store.register_routes(self.routes, self.replica, self.digest, self._params)

    async def call(self, operation: Callable[[BreakerStore], Awaitable[T]], bound: float) -> T:
        """Run a script on Redis, or on the local store while fail-static. Raises
        ``StoreUnavailable`` when it failed, or when the store was switched meanwhile."""
        generation = self.generation
        local = self.local
        if local is not None:
            result = await operation(local)
        else:
            try:
                result = await self.health.run(lambda: operation(self.shared), bound)
            except StoreUnavailable:
                if not self.health.degraded or generation != self.generation:
                    raise
                await self.enter_fail_static()
                assert self.local is not None
                generation = self.generation
                result = await operation(self.local)
        if generation != self.generation:
            raise StoreUnavailable("the store was switched while the call was under way")
        return result

    async def call_shared(self, operation: Callable[[BreakerStore], Awaitable[T]]) -> T:
        """Run a call on the shared store only: while fail-static an operator's action would
        reach this replica alone, so it is refused (``StoreUnavailable``) instead."""
        if self.degraded:
            raise StoreUnavailable(
                "Redis is unreachable and this replica runs fail-static: operator actions "
                "and the audit need the shared store"
            )
        generation = self.generation
        result = await self.health.run(lambda: operation(self.shared), self.background_timeout)
        if generation != self.generation:
            raise StoreUnavailable("the store was switched while the call was under way")
        return result

    async def enter_fail_static(self) -> None:
        """Run the same scripts on an in-process store, seeded with the last known state."""
        if self.local is not None:
            return
        local = BreakerStore(
            fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer()), self.keys, self._epoch_floor
        )
        await local.seed(self.mirror_snapshot())
        self.local = local
        self.generation += 1
        await self.register_on(local)()

    def follow(self, snapshot: Snapshot, *, leave_fail_static: bool = False) -> None:
        """Adopt ``snapshot`` as a new history (a reissued store, or the shared store again
        after fail-static): answers still under way are about the old one."""
        if leave_fail_static:
            self.local = None
        self.generation += 1
        self.mirror.adopt(snapshot)

    def mirror_snapshot(self) -> Snapshot:
        """The mirror as a snapshot (to seed the local store)."""
        mirror = self.mirror
        return Snapshot(
            now_ms=int(mirror.store_now_ms()),
            epoch=mirror.highest_epoch,
            breakers=dict(mirror.breakers),
            active=dict(mirror.active),
            routes={route: tuple(chain) for route, chain in self.routes.items()},
            digests={},
            pins={route: pin for route in mirror.pins if (pin := mirror.pin(route))},
        )

    def _epoch_floor(self) -> int:
        return self.mirror.epoch_floor


def routes_digest(routes: Mapping[str, Sequence[str]]) -> str:
    """Identifies a route configuration, so replicas that disagree can be spotted."""
    text = json.dumps({k: list(v) for k, v in routes.items()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _health_changed(degraded: bool) -> None:
    if degraded:
        log.warning("Redis unavailable: fail-static mode (last known state, per-replica breakers)")
    else:
        log.warning("Redis reachable again")
