"""The Redis client built for each configured topology (nothing connects here; the live
topologies are exercised in test_redis_topologies.py and test_breaker_scripts.py)."""

from __future__ import annotations

import fakeredis
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import SentinelConnectionPool

from proxy.cluster.connect import store_client
from proxy.config_load import build_settings


def client_for(redis: dict[str, object]) -> Redis | RedisCluster:
    return store_client(build_settings({"redis": redis}).redis)


def test_no_redis_is_the_in_process_store() -> None:
    assert isinstance(client_for({}), fakeredis.FakeAsyncRedis)


def test_a_url_with_acl_credentials_bounded_and_without_retries() -> None:
    client = client_for({"url": "redis://r:6379/2", "username": "u", "password": "pw-SECRET"})
    assert isinstance(client, Redis)
    options = client.connection_pool.connection_kwargs
    assert (options["host"], options["port"], options["db"]) == ("r", 6379, 2)
    assert (options["username"], options["password"]) == ("u", "pw-SECRET")
    assert options["socket_timeout"] == 5.0 and options["socket_connect_timeout"] == 1.0
    assert options["retry"].get_retries() == 0
    assert "SECRET" not in repr(client)


def test_tls_from_the_url_or_from_the_settings() -> None:
    tls = {"ca_file": "/ca.pem", "cert_file": "/c.pem", "key_file": "/c.key"}
    for redis in (
        {"url": "rediss://r:6380/0", "tls": tls},
        {"url": "redis://r:6380/0", "tls": {**tls, "enabled": True}},
    ):
        client = client_for(redis)
        assert isinstance(client, Redis)
        assert client.connection_pool.connection_class is SSLConnection
        options = client.connection_pool.connection_kwargs
        assert options["ssl_ca_certs"] == "/ca.pem" and options["ssl_certfile"] == "/c.pem"
        assert options["ssl_keyfile"] == "/c.key" and options["ssl_check_hostname"] is True


def test_sentinel_follows_the_named_master_with_its_own_credentials() -> None:
    client = client_for(
        {
            "sentinel": {
                "master_name": "mymaster",
                "addresses": ["s0:26379", "s1:26379"],
                "password": "sentinel-pw",
            },
            "password": "data-pw",
        }
    )
    assert isinstance(client, Redis)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "mymaster"
    assert pool.connection_kwargs["password"] == "data-pw"
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["host"] for s in sentinels] == ["s0", "s1"]
    assert {s.connection_pool.connection_kwargs["password"] for s in sentinels} == {"sentinel-pw"}


def test_cluster_seeds() -> None:
    client = client_for({"cluster": {"nodes": ["r0:7000", "r1:7001"]}, "username": "u"})
    assert isinstance(client, RedisCluster)
    seeds = client.nodes_manager.startup_nodes
    assert sorted(seeds) == ["r0:7000", "r1:7001"]
