"""The admission rules stated once in Python (``proxy.cluster.admission.decide``) decide as
``acquire.lua`` does on the same state and time: the mirror admits or refuses on its own only
where the store would answer the same, and asks the store otherwise.

Each row writes a breaker hash straight into a real redis-server (and the in-process fakeredis
store fail-static mode runs), reads the store's clock, and calls ``acquire``. Times are set
far (seconds) from every boundary, so the few milliseconds between reading the clock and the
script running cannot change an answer.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import fakeredis
import pytest
from redis.asyncio import Redis

from proxy.cluster import (
    CLOSED,
    DISABLED,
    FORCED_OPEN,
    HALF_OPEN,
    OPEN,
    BreakerParams,
    BreakerState,
    BreakerStore,
    Keys,
)
from proxy.cluster.admission import Decision, decide

from .redis_support import RedisServer, require_redis, start_redis

pytestmark = pytest.mark.anyio

PARAMS = BreakerParams(half_open_probes=3, half_open_timeout=60.0, open_seconds=5.0)
S = 1000  # ms


@dataclass(frozen=True)
class Row:
    """A breaker's stored state (times relative to the store's now, in ms) and the answers."""

    name: str
    state: str
    open_until: int = 0
    since: int = -S
    probes_issued: int = 0
    probes_ok: int = 0
    probes_failed: int = 0
    last_permit: int = -S
    decision: Decision = Decision.ASK
    permit: bool = False
    state_after: str = ""


ROWS = [
    Row("closed", CLOSED, decision=Decision.ADMIT, permit=True, state_after=CLOSED),
    Row("disabled", DISABLED, decision=Decision.ADMIT, permit=True, state_after=DISABLED),
    Row("forced open", FORCED_OPEN, decision=Decision.REFUSE, state_after=FORCED_OPEN),
    Row("open, waiting", OPEN, open_until=10 * S, decision=Decision.REFUSE, state_after=OPEN),
    Row("open, wait over", OPEN, open_until=-10 * S, permit=True, state_after=HALF_OPEN),
    Row("half-open, no permit out", HALF_OPEN, permit=True, state_after=HALF_OPEN),
    Row("half-open, a permit left", HALF_OPEN, probes_issued=2, permit=True, state_after=HALF_OPEN),
    Row(
        "half-open, every permit out",
        HALF_OPEN,
        probes_issued=3,
        decision=Decision.REFUSE,
        state_after=HALF_OPEN,
    ),
    Row(
        "half-open, every permit reported but one",
        HALF_OPEN,
        probes_issued=3,
        probes_ok=2,
        decision=Decision.REFUSE,
        state_after=HALF_OPEN,
    ),
    Row(
        "half-open long, permits out lately",
        HALF_OPEN,
        since=-120 * S,
        probes_issued=3,
        last_permit=-S,
        state_after=HALF_OPEN,
    ),
    Row(
        "half-open, every permit lost",
        HALF_OPEN,
        since=-120 * S,
        probes_issued=3,
        last_permit=-100 * S,
        state_after=OPEN,
    ),
    Row(
        "half-open, a permit lost, others left",
        HALF_OPEN,
        since=-120 * S,
        probes_issued=1,
        last_permit=-100 * S,
        state_after=OPEN,
    ),
]


@pytest.fixture(scope="module")
def real_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    require_redis()
    with start_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["fakeredis", pytest.param("redis", marks=pytest.mark.redis)])
async def client(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[Redis]:
    if request.param == "redis":
        redis: Redis = Redis.from_url(request.getfixturevalue("real_redis").url)
    else:
        redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    yield redis
    await redis.aclose()


async def store_now_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
async def test_the_mirror_decides_as_acquire_lua_does(client: Redis, row: Row) -> None:
    keys = Keys(f"rules-{uuid.uuid4().hex[:8]}")
    store = BreakerStore(client, keys)
    now = await store_now_ms(client)
    stored = BreakerState(
        model="m",
        state=row.state,
        epoch=7,
        since_ms=now + row.since,
        open_until_ms=now + row.open_until if row.open_until else 0,
        trips=1,
        probes_issued=row.probes_issued,
        probes_ok=row.probes_ok,
        probes_failed=row.probes_failed,
        reason="",
        forced_by="",
        calls=0,
        failures=0,
    )
    await client.hset(
        keys.breaker("m"),
        mapping={
            "state": stored.state,
            "epoch": stored.epoch,
            "since": stored.since_ms,
            "open_until": stored.open_until_ms,
            "trips": stored.trips,
            "probes_issued": stored.probes_issued,
            "probes_ok": stored.probes_ok,
            "probes_failed": stored.probes_failed,
            "last_permit": now + row.last_permit,
        },
    )
    await client.set(keys.epoch, 7)

    decision = decide(stored, PARAMS, now)
    acquired = await store.acquire("m", PARAMS)

    assert decision is row.decision
    assert acquired.change.breaker is not None
    assert (acquired.permit, acquired.change.breaker.state) == (row.permit, row.state_after)
    if decision is Decision.ADMIT:
        assert acquired.permit and not acquired.change.changed
    elif decision is Decision.REFUSE:
        # Refused without a transition: the mirror lost nothing by not asking.
        assert not acquired.permit and not acquired.change.changed
