"""Configuration: file, environment and command line, validated with errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import GOOGLE_BASE_URL
from proxy.config_load import build_settings, load_settings
from proxy.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_listen_on_loopback_and_forward_to_google() -> None:
    settings = load_settings(None, env={})
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8080)
    assert settings.upstream.base_url == GOOGLE_BASE_URL
    assert settings.upstream.api_key is None
    assert settings.redis.url is None


def test_without_routes_the_standard_chains_fail_over_and_an_empty_mapping_turns_them_off(
    tmp_path: Path,
) -> None:
    pro, flash, lite = "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"
    settings = load_settings(None, env={})
    assert settings.chain_for(pro) == (pro, flash, lite)
    assert settings.chain_for(flash) == (flash, lite)
    assert settings.chain_for(lite) == (lite,)
    newest = ("gemini-3.1-pro-preview", "gemini-3.8-flash", "gemini-3.5-flash-lite")
    assert settings.chain_for(newest[0]) == newest
    assert settings.chain_for(newest[1]) == newest[1:]
    off = load_settings(write(tmp_path, "routes: {}\n"), env={})
    assert off.routes == {}
    assert off.chain_for(pro) == (pro,)
    mine = load_settings(write(tmp_path, "routes: {fast: [gemini-2.5-flash]}\n"), env={})
    assert mine.routes == {"fast": (flash,)}  # configured routes replace the defaults


def test_full_file_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
server: {host: 0.0.0.0, port: 9000, max_body_bytes: 1024, allow_open_relay: true}
upstream: {base_url: "http://127.0.0.1:8090/", api_key: file-key}
redis: {url: "redis://127.0.0.1:6380/0"}
model_defaults: {first_event_timeout: 30}
models:
  gemini-2.5-pro: {first_event_timeout: 60, stall_timeout: 20}
routes:
  gemini-2.5-pro: [gemini-2.5-pro, gemini-2.5-flash, gemini-2.5-flash-lite]
""",
    )
    settings = load_settings(path, env={})
    assert settings.server.port == 9000
    assert settings.upstream.base_url == "http://127.0.0.1:8090"  # trailing slash dropped
    assert settings.chain_for("gemini-2.5-pro") == (
        "gemini-2.5-pro",
        "gemini-2.5-flash",
        "gemini-2.5-flash-lite",
    )
    pro = settings.model_settings("gemini-2.5-pro")
    assert (pro.first_event_timeout, pro.stall_timeout) == (60.0, 20.0)
    # Models not listed get model_defaults; listed ones inherit what they do not set.
    assert settings.model_settings("other").first_event_timeout == 30.0
    assert pro.connect_timeout == settings.model_defaults.connect_timeout


def test_environment_overrides_file_and_command_line_overrides_both(tmp_path: Path) -> None:
    path = write(tmp_path, "upstream: {api_key: file-key}\nserver: {port: 9000}\n")
    env = {
        "GEMINI_BREAKER_CONFIG": str(path),
        "GEMINI_API_KEY": "env-key",
        "GEMINI_BREAKER_UPSTREAM_URL": "http://sim:1",
        "GEMINI_BREAKER_REDIS_URL": "redis://r:6379",
        "GEMINI_BREAKER_PORT": "9001",
    }
    settings = load_settings(None, env=env, overrides={"server": {"port": 9002}})
    assert settings.upstream.api_key == "env-key"
    assert settings.upstream.base_url == "http://sim:1"
    assert settings.redis.url == "redis://r:6379"
    assert settings.server.port == 9002


def test_secrets_stay_out_of_repr() -> None:
    settings = build_settings(
        {"upstream": {"api_key": "SECRET-KEY"}, "redis": {"url": "redis://:pw-SECRET@r:1"}}
    )
    assert "SECRET" not in repr(settings)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("server: {port: eighty}", "server.port"),
        ("server: {port: 70000}", "server.port"),
        ("server: {prot: 1}", "server.prot"),
        ("upstream: {base_url: ftp://x}", "upstream.base_url"),
        ("upstream: {api_key: 5}", "upstream.api_key"),
        ('upstream: {api_key: "k\\r\\nx-evil: 1"}', "upstream.api_key"),
        ("redis: {url: http://x}", "redis.url"),
        ("models: {gemini-2.5-pro: {first_event_timeout: -1}}", "models.gemini-2.5-pro"),
        ("model_defaults: {first_byte_timeout: 60}", "model_defaults.first_byte_timeout"),
        (
            "models: {gemini-2.5-pro: {first_byte_timeout: 9}}",
            "models.gemini-2.5-pro.first_byte_timeout: replaced",
        ),
        (
            "model_defaults: {first_event_learning: {percentile: 2}}",
            "model_defaults.first_event_learning.percentile",
        ),
        ("models: {gemini-2.5-pro: {stall_timeout: yes}}", "models.gemini-2.5-pro.stall_timeout"),
        ("routes: {gemini-2.5-pro: []}", "routes.gemini-2.5-pro"),
        ("routes: {gemini-2.5-pro: [a, 3]}", "routes.gemini-2.5-pro[1]"),
        ("routes: {gemini-2.5-pro: [a, a]}", "routes.gemini-2.5-pro"),
        ("routes: [a, b]", "routes"),
        ("colour: blue", "colour"),
        ("server: [1]", "server"),
        ("server: {log_level: loud}", "server.log_level"),
    ],
)
def test_invalid_file_fails_naming_the_key(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), env={})
    assert str(caught.value).startswith(named)


def test_unreadable_and_malformed_files_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml", env={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "server: {port: [}"), env={})


def test_bad_port_in_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="GEMINI_BREAKER_PORT"):
        load_settings(None, env={"GEMINI_BREAKER_PORT": "http"})


def test_redis_topologies_credentials_and_tls(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
redis:
  sentinel:
    master_name: mymaster
    addresses: ["sentinel-0:26379", "[::1]:26380"]
    username: watcher
  username: breaker
  tls: {enabled: true, ca_file: /etc/ca.pem, cert_file: /etc/c.pem, key_file: /etc/c.key}
""",
    )
    env = {
        "GEMINI_BREAKER_REDIS_PASSWORD": "data-SECRET",
        "GEMINI_BREAKER_REDIS_SENTINEL_PASSWORD": "sentinel-SECRET",
    }
    redis = load_settings(path, env=env).redis
    assert redis.shared and redis.uses_tls and redis.url is None
    assert redis.sentinel.addresses == ("sentinel-0:26379", "[::1]:26380")
    assert (redis.sentinel.username, redis.sentinel.password) == ("watcher", "sentinel-SECRET")
    assert (redis.username, redis.password) == ("breaker", "data-SECRET")
    assert "SECRET" not in repr(redis)

    cluster = build_settings(
        {"redis": {"cluster": {"nodes": ["r0:6379", "r1:6379"]}}, "server": {"workers": 2}}
    )
    assert cluster.redis.shared and cluster.redis.cluster.nodes == ("r0:6379", "r1:6379")
    assert build_settings({"redis": {"url": "rediss://r:6380/0"}}).redis.uses_tls
    # A sentinel password from the environment alone configures nothing.
    env_only = load_settings(None, env={"GEMINI_BREAKER_REDIS_SENTINEL_PASSWORD": "x"})
    assert not env_only.redis.shared


@pytest.mark.parametrize(
    ("redis", "named"),
    [
        ({"url": "redis://r:1", "cluster": {"nodes": ["r:1"]}}, "redis.cluster"),
        (
            {"url": "redis://r:1", "sentinel": {"master_name": "m", "addresses": ["s:1"]}},
            "redis.sentinel",
        ),
        ({"sentinel": {"master_name": "m"}}, "redis.sentinel.addresses"),
        ({"sentinel": {"addresses": ["s:1"]}}, "redis.sentinel.master_name"),
        ({"sentinel": {"master_name": "m", "addresses": ["s"]}}, "redis.sentinel.addresses[0]"),
        ({"cluster": {"nodes": ["r:70000"]}}, "redis.cluster.nodes[0]"),
        ({"cluster": {"nodes": "r:1"}}, "redis.cluster.nodes"),
        ({"url": "redis://r:1", "tls": {"cert_file": "c.pem"}}, "redis.tls"),
        ({"url": "redis://r:1", "tls": {"ca_file": "ca.pem"}}, "redis.tls"),
        ({"url": "unix:///tmp/r.sock", "tls": {"enabled": True}}, "redis.tls.enabled"),
        ({"password": "p"}, "redis"),
        ({"tls": {"enabled": "yes"}}, "redis.tls.enabled"),
        ({"sentinel": {"master": "m"}}, "redis.sentinel.master"),
    ],
)
def test_invalid_redis_settings_name_the_key(redis: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_settings({"redis": redis})
    assert str(caught.value).startswith(named)


LOOPBACK_ONLY = "the server listens on 0.0.0.0, beyond loopback"


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"admin": {"token": "short-token"}}, "admin.token: expected at least 16"),
        ({"admin": {"token": " " + "x" * 20}}, "admin.token: expected no surrounding spaces"),
        (
            {"upstream": {"api_key": "k"}, "server": {"client_tokens": ["x" * 15]}},
            "server.client_tokens[0]: expected at least 16",
        ),
        (
            {"server": {"client_tokens": ["x" * 16]}},
            "server.client_tokens: they stand for upstream.api_key",
        ),
        (
            {"server": {"host": "0.0.0.0"}, "admin": {"allow_unauthenticated_loopback": True}},
            "admin.allow_unauthenticated_loopback: " + LOOPBACK_ONLY,
        ),
        (
            {"server": {"host": "0.0.0.0"}, "upstream": {"api_key": "k"}},
            "server.client_tokens: " + LOOPBACK_ONLY,
        ),
        (
            {"server": {"host": "gateway.internal"}, "upstream": {"api_key": "k"}},
            "server.client_tokens: the server listens on gateway.internal",
        ),
    ],
    ids=[
        "short admin token",
        "padded admin token",
        "short client token",
        "client tokens without a key",
        "unauthenticated admin beyond loopback",
        "open relay not opted in",
        "open relay on a host name",
    ],
)
def test_configurations_that_expose_credentials_are_refused(
    raw: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        build_settings(raw)


def test_the_api_key_beyond_loopback_needs_client_tokens_or_the_open_relay_opt_in() -> None:
    exposed = {"server": {"host": "0.0.0.0"}, "upstream": {"api_key": "k"}}
    opted_in = build_settings({**exposed, "server": {"host": "::", "allow_open_relay": True}})
    assert opted_in.server.allow_open_relay
    env = {"GEMINI_BREAKER_HOST": "0.0.0.0", "GEMINI_API_KEY": "k"}
    tokens = "first-client-token-0001, second-client-token-02"
    guarded = load_settings(None, env={**env, "GEMINI_BREAKER_CLIENT_TOKENS": tokens})
    assert guarded.server.client_tokens == ("first-client-token-0001", "second-client-token-02")
    assert "client-token" not in repr(guarded)
    for host in ("127.0.0.1", "::1", "localhost", "[::1]"):
        build_settings({"server": {"host": host}, "upstream": {"api_key": "k"}})
        build_settings(
            {"server": {"host": host}, "admin": {"allow_unauthenticated_loopback": True}}
        )


def test_routed_models_are_every_model_of_every_chain_and_not_a_file_key() -> None:
    settings = build_settings(
        {"routes": {"a": ["m1", "m2"], "b": {"chain": ["m2", "m3"]}}, "models": {"m4": {}}}
    )
    assert settings.routed_models == {"m1", "m2", "m3"}
    assert settings.named_models == {"a", "b", "m1", "m2", "m3", "m4"}
    assert build_settings({"routes": {}}).routed_models == frozenset()
    with pytest.raises(ConfigError, match="routed_models"):
        build_settings({"routed_models": ["m1"]})
