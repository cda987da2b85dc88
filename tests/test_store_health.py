"""The health breaker around Redis: which failures count, and when the replica degrades."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException

from proxy.cluster.health import StoreHealth, StoreUnavailable


@pytest.mark.anyio
@pytest.mark.parametrize(
    "failure",
    [
        RedisConnectionError("Error 111 connecting"),
        # redis-py raises this (not a RedisError) when no cluster node answers a refresh.
        RedisClusterException("no node of the cluster could be reached"),
        TimeoutError(),
    ],
    ids=["connection", "cluster", "timeout"],
)
async def test_a_redis_failure_is_unavailable_and_degrades_after_the_threshold(
    failure: Exception,
) -> None:
    changes: list[bool] = []
    health = StoreHealth(failures_to_degrade=2, retry_seconds=60, on_change=changes.append)

    async def failing() -> None:
        raise failure

    for _ in range(2):
        with pytest.raises(StoreUnavailable, match=type(failure).__name__):
            await health.run(failing, bound=1.0)
    assert health.degraded and changes == [True]
    with pytest.raises(StoreUnavailable, match="avoided"):
        await health.run(failing, bound=1.0)


@pytest.mark.anyio
async def test_a_bug_is_not_mistaken_for_an_outage() -> None:
    health = StoreHealth(failures_to_degrade=1, retry_seconds=60, on_change=lambda _: None)

    async def buggy() -> None:
        raise KeyError("a programming error")

    with pytest.raises(KeyError):
        await health.run(buggy, bound=1.0)
    assert not health.degraded
