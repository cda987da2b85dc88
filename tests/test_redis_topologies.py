"""The proxy on highly available and secured Redis set-ups, all real and private: a Sentinel
set whose master is killed during traffic, a failover that loses the last writes, a server that
only lets an ACL user in, and a server that speaks TLS (mutual)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis

from proxy.app import create_app
from proxy.cluster.health import StoreUnavailable
from proxy.cluster.keys import Keys
from proxy.config_load import build_settings

from .conftest import proxy_settings
from .coordinator_support import replica
from .redis_support import require_redis
from .redis_topologies import (
    ACL_PASSWORD,
    ACL_USER,
    SentinelTopology,
    start_acl_redis,
    start_cluster,
    start_sentinel_set,
    start_tls_redis,
    tls_supported,
)
from .support import eventually, serve
from .test_cluster_e2e import (
    FLASH,
    PRO,
    Cluster,
    ask,
    replica_starter,
    spread,
    traffic,
    wait_all,
)

pytestmark = pytest.mark.redis


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelTopology]:
    require_redis()
    directory = tmp_path / "sentinel"
    directory.mkdir()
    with start_sentinel_set(directory) as topology:
        yield topology


@pytest.fixture
def on_sentinel(
    sentinel_set: SentinelTopology, simulator_url: str, tmp_path: Path
) -> Iterator[Cluster]:
    """Proxy replicas (processes) that find the master through the sentinels."""
    section = {
        "sentinel": {"master_name": sentinel_set.master_name, "addresses": sentinel_set.addresses}
    }
    with contextlib.ExitStack() as stack:
        yield replica_starter(stack, section, simulator_url, tmp_path)


def breaker_action(replica: str, model: str, action: str) -> int:
    """An operator action through one replica's admin API; answers the resulting epoch."""
    response = httpx.post(
        f"{replica}/admin/breakers/{model}/{action}", json={"reason": "test"}, timeout=10
    )
    response.raise_for_status()
    epoch: int = response.json()["breaker"]["epoch"]
    return epoch


def breaker_on(port: int, model: str) -> dict[str, str]:
    """The breaker hash as one Redis node holds it."""
    client = redis.Redis(port=port, decode_responses=True, socket_timeout=5)
    fields: dict[str, str] = client.hgetall(Keys().breaker(model))  # type: ignore[assignment]
    client.close()
    return fields


def test_the_proxy_follows_a_sentinel_promotion_and_the_breaker_state_survives(
    sentinel_set: SentinelTopology, on_sentinel: Cluster, simulator: Any
) -> None:
    replicas = on_sentinel(count=2, open_seconds=120)
    simulator.set_faults(PRO, [{"kind": "error", "status": 503}])
    assert {served for served, _, _ in spread(replicas, 6)} == {FLASH}
    states = wait_all(
        replicas,
        lambda s: s["breakers"][PRO]["state"] == "open" and s["routes"][PRO]["active"] == FLASH,
    )
    opened_at = states[0]["breakers"][PRO]["epoch"]
    sentinel_set.wait_replicated()  # the open breaker is on the replica too

    with traffic(replicas) as (served, failures):
        eventually(lambda: len(served) >= 10, timeout=20.0)
        sentinel_set.master.kill()
        sentinel_set.wait_promoted()
        for url in replicas:
            eventually(
                lambda url=url: httpx.get(url + "/readyz").json()["store"] == "ok", timeout=20.0
            )
        # The new master kept the breaker: every replica still has it open, same epoch.
        assert breaker_on(sentinel_set.replica.port, PRO)["epoch"] == str(opened_at)
        wait_all(
            replicas,
            lambda s: (
                s["breakers"][PRO]["state"] == "open"
                and s["breakers"][PRO]["epoch"] == opened_at
                and not s["store"]["degraded"]
            ),
        )
        # Transitions go through the new master and reach every replica.
        reset_at = breaker_action(replicas[0], PRO, "reset")
        assert reset_at > opened_at
        simulator.clear_faults()
        wait_all(
            replicas,
            lambda s: (
                s["breakers"][PRO]["state"] == "closed" and s["breakers"][PRO]["epoch"] == reset_at
            ),
        )
        count = len(served)
        eventually(lambda: len(served) >= count + 10, timeout=20.0)
    assert failures == []  # every request was answered, through the failover


def test_a_failover_that_lost_writes_never_takes_epochs_backwards(
    sentinel_set: SentinelTopology, on_sentinel: Cluster, simulator: Any
) -> None:
    replicas = on_sentinel(count=2)
    forced_at = breaker_action(replicas[0], PRO, "force_open")
    wait_all(replicas, lambda s: s["breakers"][PRO]["epoch"] == forced_at)
    sentinel_set.wait_replicated()
    sentinel_set.cut_replication()  # from here on the replica misses the master's writes
    reset_at = breaker_action(replicas[1], PRO, "reset")  # seen by every proxy, then lost
    wait_all(replicas, lambda s: s["breakers"][PRO]["epoch"] == reset_at)
    sentinel_set.master.kill()
    sentinel_set.wait_promoted()
    assert breaker_on(sentinel_set.replica.port, PRO)["epoch"] == str(forced_at)  # it lagged

    # Every replica converges on what the new master kept (the reset is lost) ...
    wait_all(
        replicas,
        lambda s: s["breakers"][PRO]["state"] == "forced_open" and not s["store"]["degraded"],
    )
    # ... and the next transition takes an epoch above all the proxies saw, which all adopt.
    disabled_at = breaker_action(replicas[0], FLASH, "disable")
    assert disabled_at > reset_at
    states = wait_all(replicas, lambda s: s["breakers"][FLASH]["epoch"] == disabled_at)
    assert {s["breakers"][PRO]["state"] for s in states} == {"forced_open"}
    assert {s["routes"][PRO]["active"] for s in states} == {FLASH}
    assert {served for served, _, _ in spread(replicas, 4)} == {FLASH}


# -- ACL and TLS --------------------------------------------------------------------------------


def readiness(url: str) -> str:
    store: str = httpx.get(url + "/readyz", timeout=5).json()["store"]
    return store


def test_an_acl_user_with_a_password(
    tmp_path: Path, simulator_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    require_redis()
    with start_acl_redis(tmp_path) as server:
        good = proxy_settings(
            simulator_url, redis={"url": server.url, "username": ACL_USER, "password": ACL_PASSWORD}
        )
        with serve(create_app(good)) as url:
            assert readiness(url) == "ok"
            breaker_action(url, PRO, "force_open")
        # The script ran as that user, on the server: the breaker is there.
        client = redis.Redis(
            port=server.port, username=ACL_USER, password=ACL_PASSWORD, decode_responses=True
        )
        assert client.hget(Keys().breaker(PRO), "state") == "forced_open"
        client.close()

        wrong = proxy_settings(
            simulator_url, redis={"url": server.url, "username": ACL_USER, "password": "wrong-pw"}
        )
        with caplog.at_level(logging.DEBUG), serve(create_app(wrong)) as url:
            assert readiness(url) == "degraded"  # refused, and still serving (fail-static)
            assert ask(url)[0] == PRO
    assert caplog.records and not any(
        "wrong-pw" in r.getMessage() or ACL_PASSWORD in r.getMessage() for r in caplog.records
    )


def test_tls_with_a_client_certificate(tmp_path: Path, simulator_url: str) -> None:
    require_redis()
    if not tls_supported():
        pytest.skip("this redis-server was built without TLS support")
    with start_tls_redis(tmp_path) as server:
        files = server.files
        tls = {
            "ca_file": str(files.ca),
            "cert_file": str(files.client_cert),
            "key_file": str(files.client_key),
        }
        settings = proxy_settings(simulator_url, redis={"url": server.url, "tls": tls})
        with serve(create_app(settings)) as url:
            assert readiness(url) == "ok"
            breaker_action(url, PRO, "force_open")
        # A redis:// URL with tls.enabled is TLS as well.
        plain_url = server.url.replace("rediss://", "redis://")
        enabled = proxy_settings(
            simulator_url, redis={"url": plain_url, "tls": {**tls, "enabled": True}}
        )
        with serve(create_app(enabled)) as url:
            assert readiness(url) == "ok"
            state = httpx.get(url + "/admin/state", timeout=5).json()
            assert state["breakers"][PRO]["state"] == "forced_open"
        # The server requires a client certificate: without one the store is unreachable.
        no_cert = proxy_settings(
            simulator_url, redis={"url": server.url, "tls": {"ca_file": str(files.ca)}}
        )
        with serve(create_app(no_cert)) as url:
            assert readiness(url) == "degraded"


# -- Redis Cluster: the events subscription after its node dies ----------------------------------


FAILOVER_SECONDS = 30.0


async def soon(condition: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    """Poll ``condition`` (plain or async) until it holds, for at most FAILOVER_SECONDS."""
    deadline = time.monotonic() + FAILOVER_SECONDS
    while True:
        held = condition()
        if held if isinstance(held, bool) else await held:
            return
        assert time.monotonic() < deadline, what
        await anyio.sleep(0.05)


@pytest.mark.anyio
async def test_the_events_subscription_moves_on_when_its_cluster_node_dies(tmp_path: Path) -> None:
    require_redis()
    with start_cluster(tmp_path, count=3, replicas=1) as topology:
        namespace = "moves-on"
        settings = build_settings(
            {
                "redis": {
                    "cluster": {"nodes": topology.nodes},
                    "namespace": namespace,
                    "reconcile_interval": 600,  # no periodic snapshot: events only
                    "retry_seconds": 0.2,
                },
                "routes": {"pro": ["a", "b"]},
            }
        )
        epoch_key = Keys(namespace).epoch
        owner = topology.owner_of(epoch_key)
        async with replica(settings, "A") as a, replica(settings, "B") as b:
            await a.actions.breaker("a", "open", "ops", "before")
            await soon(lambda: b.mirror.breaker("a").state == "open", "B saw the open")

            owner.kill()  # every key, and B's subscription, were on this node
            await anyio.to_thread.run_sync(topology.wait_failed_over, epoch_key, owner)

            async def reset_through_a() -> bool:
                try:
                    await a.actions.breaker("a", "reset", "ops", "after")
                except StoreUnavailable:
                    return False
                return True

            await soon(reset_through_a, "A never reached the promoted node")
            await soon(lambda: b.mirror.breaker("a").state == "closed", "B never resubscribed")
            # B has subscribed again (it reconciled after doing so): this one comes as an event.
            forced = await a.actions.breaker("b", "force_open", "ops", "event")
            assert forced.breaker is not None
            forced_at = forced.breaker.epoch
            await soon(lambda: b.mirror.breaker("b").epoch == forced_at, "no event reached B")
