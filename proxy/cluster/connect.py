"""The Redis client the breaker store talks to, built from the ``redis:`` settings: one server
(``url``), the master a Sentinel set names, or a Redis Cluster; each with ACL credentials and TLS.

Every topology gets the same time bounds and no client-side retries: every call is bounded by the
coordinator, and a retry loop inside redis-py would hide an outage from its health breaker.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import fakeredis
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from ..config import RedisSettings

#: What the store runs its scripts on: one server (or a Sentinel-managed master, or the
from ..config_checks import parse_address

#: What the store runs its scripts on: one server (or a Sentinel-managed master, or the
#: in-process fakeredis), or a Redis Cluster.
StoreClient: TypeAlias = Redis | RedisCluster

CONNECT_TIMEOUT = 1.0
SOCKET_TIMEOUT = 5.0
HEALTH_CHECK_INTERVAL = 10


def store_client(settings: RedisSettings) -> StoreClient:
    """The client for the configured topology, or an in-process fakeredis when none is.

    Nothing connects here: connections are opened by the first call (a Sentinel-managed client
    asks the sentinels for the master on each new connection, so it follows a promotion).
    """
    if settings.cluster.configured:
        return RedisCluster(
            startup_nodes=[
                ClusterNode(*parse_address(node, "redis.cluster.nodes"))
                for node in settings.cluster.nodes
            ],
            # One slot holds every key; a cluster missing other slots still serves ours.
            require_full_coverage=False,
            **_connection_options(settings),
        )
    if settings.sentinel.configured:
        sentinel = settings.sentinel
        sentinel_options: dict[str, Any] = {
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "socket_timeout": CONNECT_TIMEOUT,
            **_tls_options(settings),
        }
        if sentinel.username is not None:
            sentinel_options["username"] = sentinel.username
        if sentinel.password is not None:
            sentinel_options["password"] = sentinel.password
        assert sentinel.master_name is not None  # configured
        sentinels = Sentinel(
            [parse_address(a, "redis.sentinel.addresses") for a in sentinel.addresses],
            sentinel_kwargs=sentinel_options,
        )
        master: Redis = sentinels.master_for(sentinel.master_name, **_connection_options(settings))
        return master
    if settings.url is not None:
        url = settings.url
        if settings.tls.enabled and url.startswith("redis://"):
            url = "rediss://" + url.removeprefix("redis://")
        return Redis.from_url(url, **_connection_options(settings))
    client: Redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    return client


async def subscribe(client: StoreClient, channel: str, *, refresh: bool = False) -> PubSub:
    """A subscription to ``channel`` (subscribe confirmations not delivered).

    On a cluster it goes to the node that owns the channel's slot, the node the scripts run on:
    PUBLISH reaches every node's subscribers, but that node is the one that must be up anyway.
    ``refresh`` re-reads the slot map first, so a new subscription after that node died goes to
    the node that took its slots over.
    """
    pubsub: PubSub
    if isinstance(client, RedisCluster):
        await client.initialize()
        if refresh:
            await client.nodes_manager.initialize()
        node = client.get_node_from_key(channel)
        pubsub = client.pubsub(node=node, ignore_subscribe_messages=True)
    else:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(channel)
    except BaseException:  # cancelled or failed: release the connection, then propagate
        await pubsub.aclose()
        raise
    return pubsub


def _connection_options(settings: RedisSettings) -> dict[str, Any]:
    """Time bounds, credentials and TLS shared by every topology's data connections."""
    options: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": SOCKET_TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": HEALTH_CHECK_INTERVAL,
    }
    # Set only when configured, so credentials in the URL still apply.
    if settings.username is not None:
        options["username"] = settings.username
    if settings.password is not None:
        options["password"] = settings.password
    if settings.url is None:
        options.update(_tls_options(settings))
    elif settings.uses_tls:
        options.update({k: v for k, v in _tls_options(settings).items() if k != "ssl"})
    return options


def _tls_options(settings: RedisSettings) -> dict[str, Any]:
    """redis-py's TLS options; empty when TLS is off (a ``rediss://`` URL turns it on)."""
    tls = settings.tls
    if not settings.uses_tls:
        return {}
    return {
        "ssl": True,
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": tls.ca_file,
        "ssl_certfile": tls.cert_file,
        "ssl_keyfile": tls.key_file,
        "ssl_check_hostname": tls.check_hostname,
    }
