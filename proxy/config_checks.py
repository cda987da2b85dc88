"""The configuration rules that span several keys, checked on built ``Settings``: exposure
of credentials to the network, one complete Redis topology, the upstream's transport."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from .config import RedisSettings, Settings, UpstreamSettings
from .errors import ConfigError
from .transport.egress import parse_proxy_url

MIN_TOKEN_CHARS = 16


def check_settings(settings: Settings) -> None:
    """Raise ``ConfigError`` naming the first key whose value breaks a rule."""
    _check_url(settings.upstream.base_url, "upstream.base_url", ("http", "https"))
    _check_upstream_transport(settings.upstream)
    _check_server_tls(settings)
    key = settings.upstream.api_key
    if key is not None and not (key.isascii() and key.isprintable() and key.strip() == key):
        # It goes out as a header value: a line break would split the request.
        raise ConfigError("upstream.api_key: expected printable ASCII without surrounding spaces")
    _check_redis(settings.redis)
    if not settings.redis.shared and settings.server.workers > 1:
        raise ConfigError(
            "server.workers: several workers need a shared store; set redis.url, "
            "redis.sentinel or redis.cluster (the embedded store lives inside one process)"
        )
    if not settings.redis.namespace or any(c in settings.redis.namespace for c in "{}: "):
        raise ConfigError("redis.namespace: must be non-empty, without braces, colons or spaces")
    _check_exposure(settings)


def _check_exposure(settings: Settings) -> None:
    """Refuse the configurations that hand the proxy's credentials to the network: short
    tokens, unauthenticated admin beyond loopback, the API key relayed to any caller."""
    server, admin = settings.server, settings.admin
    tokens = [("admin.token", admin.token)] if admin.token is not None else []
    tokens += [(f"server.client_tokens[{i}]", t) for i, t in enumerate(server.client_tokens)]
    for where, token in tokens:
        if len(token) < MIN_TOKEN_CHARS or not (token.isascii() and token.isprintable()):
            raise ConfigError(
                f"{where}: expected at least {MIN_TOKEN_CHARS} printable ASCII characters"
            )
        if token.strip() != token:
            raise ConfigError(f"{where}: expected no surrounding spaces")
    if admin.allow_unauthenticated_loopback and admin.token is None and not server.on_loopback:
        raise ConfigError(
            "admin.allow_unauthenticated_loopback: the server listens on "
            f"{server.host}, beyond loopback; set admin.token instead"
        )
    if server.client_tokens and settings.upstream.api_key is None:
        raise ConfigError("server.client_tokens: they stand for upstream.api_key, which is unset")
    if (
        settings.upstream.api_key is not None
        and not server.on_loopback
        and not server.client_tokens
        and not server.allow_open_relay
    ):
        raise ConfigError(
            f"server.client_tokens: the server listens on {server.host}, beyond loopback, and "
            "would send upstream.api_key for any caller; set client tokens "
            "(GEMINI_BREAKER_CLIENT_TOKENS) or server.allow_open_relay: true"
        )


def _check_redis(redis: RedisSettings) -> None:
    """At most one topology, complete, with addresses that parse; TLS files only with TLS."""
    chosen = [
        name
        for name, on in (
            ("redis.url", redis.url is not None),
            ("redis.sentinel", redis.sentinel.configured or bool(redis.sentinel.addresses)),
            ("redis.cluster", redis.cluster.configured),
        )
        if on
    ]
    if len(chosen) > 1:
        raise ConfigError(f"{chosen[1]}: set only one of redis.url, redis.sentinel, redis.cluster")
    if redis.url is not None:
        _check_url(redis.url, "redis.url", ("redis", "rediss", "unix"))
        if redis.tls.enabled and redis.url.startswith("unix:"):
            raise ConfigError("redis.tls.enabled: TLS needs a TCP address, not a unix socket")
    sentinel = redis.sentinel
    if sentinel.configured or sentinel.addresses:
        if not sentinel.master_name:
            raise ConfigError("redis.sentinel.master_name: must be set (the monitored service)")
        if not sentinel.addresses:
            raise ConfigError("redis.sentinel.addresses: list at least one sentinel host:port")
    for index, address in enumerate(sentinel.addresses):
        parse_address(address, f"redis.sentinel.addresses[{index}]")
    for index, address in enumerate(redis.cluster.nodes):
        parse_address(address, f"redis.cluster.nodes[{index}]")
    tls = redis.tls
    if (tls.cert_file is None) != (tls.key_file is None):
        raise ConfigError("redis.tls: cert_file and key_file go together (mutual TLS)")
    if not redis.uses_tls and (tls.ca_file or tls.cert_file):
        raise ConfigError("redis.tls: certificate files are set but TLS is not enabled")
    if not redis.shared and (redis.username or redis.password or tls.enabled):
        raise ConfigError(
            "redis: username, password and tls need a Redis (url, sentinel or cluster)"
        )


def parse_address(address: str, where: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as a (host, port) pair."""
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: expected host:port, got {address!r}")
    return host, int(port)


def _check_upstream_transport(upstream: UpstreamSettings) -> None:
    if upstream.proxy_url:
        try:
            parse_proxy_url(upstream.proxy_url)
        except ValueError as exc:  # the message never repeats the URL (it may hold a password)
            raise ConfigError(f"upstream.proxy_url: {exc}") from None
    tls = upstream.tls
    if tls.key_file is not None and tls.cert_file is None:
        raise ConfigError("upstream.tls.key_file: needs cert_file (the client certificate)")
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, name)
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"upstream.tls.{name}: no such file: {path}")


def _check_server_tls(settings: Settings) -> None:
    tls = settings.server.tls
    if (tls.cert_file is None) != (tls.key_file is None):
        raise ConfigError("server.tls: cert_file and key_file go together")
    for name in ("cert_file", "key_file"):
        path = getattr(tls, name)
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"server.tls.{name}: no such file: {path}")


def _check_url(url: str, where: str, schemes: tuple[str, ...]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in schemes or (parts.scheme != "unix" and not parts.hostname):
        raise ConfigError(f"{where}: expected a {'/'.join(schemes)} URL")
