"""A breaker around Redis itself: after a few errors the replica stops asking it and runs
fail-static, and every so often lets one call through to see whether it is back.

pybreaker's in-process breaker fits this role exactly (local, consecutive failures, a reset
timeout, one trial call); the model breakers, which must be atomic across replicas, do not use it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pybreaker
from redis.exceptions import RedisClusterException, RedisError

from ..errors import ClusterError
from .store import StoreError

log = logging.getLogger("gemini_breaker.store")

T = TypeVar("T")

# What a failing or hung Redis looks like from redis-py and asyncio. redis-py's cluster errors
# (no node reachable, no node for the slot) do not derive from RedisError.
REDIS_FAILURES: tuple[type[BaseException], ...] = (
    RedisError,
    RedisClusterException,
    OSError,
    TimeoutError,
    StoreError,
)


class StoreUnavailable(ClusterError):
    """Redis did not answer in time, failed, or is being avoided after recent failures."""


class StoreHealth:
    """Runs Redis operations with a time bound, and tracks whether Redis is usable."""

    def __init__(
        self,
        failures_to_degrade: int,
        retry_seconds: float,
        on_change: Callable[[bool], None],
    ) -> None:
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=failures_to_degrade,
            reset_timeout=retry_seconds,
            throw_new_error_on_trip=False,
            # A bug is not an outage: only Redis failures may send the replica fail-static.
            exclude=[_not_a_redis_failure],
            listeners=[_Listener(on_change)],
        )

    @property
    def degraded(self) -> bool:
        return self._breaker.current_state != pybreaker.STATE_CLOSED

    def mark_down(self) -> None:
        """Start degraded (Redis was unreachable at start-up)."""
        self._breaker.open()

    async def run(self, operation: Callable[[], Awaitable[T]], bound: float) -> T:
        """Run ``operation`` within ``bound`` seconds, or raise ``StoreUnavailable``."""
        try:
            with self._breaker.calling():
                async with asyncio.timeout(bound):
                    return await operation()
        except pybreaker.CircuitBreakerError:
            raise StoreUnavailable("Redis is being avoided after recent failures") from None
        except REDIS_FAILURES as exc:
            raise StoreUnavailable(f"Redis failed: {type(exc).__name__}") from exc


def _not_a_redis_failure(exc: BaseException) -> bool:
    return not isinstance(exc, REDIS_FAILURES)


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, on_change: Callable[[bool], None]) -> None:
        self._on_change = on_change

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        old, new = getattr(old_state, "name", None), getattr(new_state, "name", None)
        if new == pybreaker.STATE_OPEN and old != pybreaker.STATE_HALF_OPEN:
            self._on_change(True)
        elif new == pybreaker.STATE_CLOSED and old is not None:
            self._on_change(False)
