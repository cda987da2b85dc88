"""Configuration: one YAML file plus environment overrides, validated once at start-up.

Every key is documented in docs/configuration.md. An invalid file fails fast with a
``ConfigError`` that names the offending key, e.g. ``routes.gemini-2.5-pro[1]: expected a string``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import yaml

from .capabilities import ModelCapabilities
from .cluster.state import BreakerParams, QuotaParams
from .deadlines import LearningParams, first_event_ceiling
from .egress import parse_proxy_url
from .validation import ConfigError, build_dataclass, model_name, reject_unknown, require_mapping

__all__ = ["ConfigError", "Settings", "build_settings", "load_raw", "load_settings"]

GOOGLE_BASE_URL = "https://generativelanguage.googleapis.com"
CONFIG_ENV = "GEMINI_BREAKER_CONFIG"

# Environment variable -> (section, key, ...). Applied over the file, under the command line.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "GEMINI_BREAKER_HOST": ("server", "host"),
    "GEMINI_BREAKER_PORT": ("server", "port"),
    "GEMINI_BREAKER_UPSTREAM_URL": ("upstream", "base_url"),
    "GEMINI_API_KEY": ("upstream", "api_key"),
    "GEMINI_BREAKER_REDIS_URL": ("redis", "url"),
    "GEMINI_BREAKER_REDIS_USERNAME": ("redis", "username"),
    "GEMINI_BREAKER_REDIS_PASSWORD": ("redis", "password"),
    "GEMINI_BREAKER_REDIS_SENTINEL_PASSWORD": ("redis", "sentinel", "password"),
    "GEMINI_BREAKER_ADMIN_TOKEN": ("admin", "token"),
    "GEMINI_BREAKER_CLIENT_TOKENS": ("server", "client_tokens"),
    "OTEL_EXPORTER_OTLP_ENDPOINT": ("telemetry", "otlp_endpoint"),
}
# The parent process hands the merged configuration to its worker processes through this.
SETTINGS_JSON_ENV = "GEMINI_BREAKER_SETTINGS_JSON"

# The chains served when the file has no ``routes:`` key at all (``routes: {}`` turns them off):
# a newcomer's proxy fails over from the first request on.
DEFAULT_ROUTES: Mapping[str, list[str]] = MappingProxyType(
    {
        "gemini-2.5-pro": ["gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"],
        "gemini-2.5-flash": ["gemini-2.5-flash", "gemini-2.5-flash-lite"],
    }
)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = field(default=8080, metadata={"min": 0, "max": 65535})
    max_body_bytes: int = field(default=32 * 1024 * 1024, metadata={"min": 1})
    """Largest request body accepted; larger ones get 413 before anything goes upstream."""
    log_level: str = field(
        default="info", metadata={"choices": ("debug", "info", "warning", "error")}
    )
    log_format: str = field(default="text", metadata={"choices": ("text", "json")})
    """``json``: one JSON object per line, with the request id and trace id."""
    workers: int = field(default=1, metadata={"min": 1, "max": 64})
    """Worker processes; each is a replica of the cluster, so several need ``redis.url``."""
    request_deadline: float = field(default=300.0, metadata={"min": 0.01})
    """Longest a request may take, retries and failover included; ``X-Server-Timeout`` caps it."""
    client_tokens: tuple[str, ...] = field(default=(), repr=False)
    """Tokens callers present as their API key; each is replaced by ``upstream.api_key``."""
    allow_open_relay: bool = False
    """Let any caller beyond loopback use ``upstream.api_key`` without a client token."""

    @property
    def on_loopback(self) -> bool:
        """Whether the server listens on this machine only."""
        return is_loopback_host(self.host)


@dataclass(frozen=True, slots=True)
class UpstreamTlsSettings:
    ca_file: str | None = None
    """PEM bundle of CAs trusted in addition to the system's (e.g. a TLS-inspecting proxy's)."""
    cert_file: str | None = None
    key_file: str | None = None
    """Client certificate (and its key, unless in ``cert_file``) for upstreams that ask."""


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    base_url: str = GOOGLE_BASE_URL
    api_key: str | None = field(default=None, repr=False)
    """Sent as ``x-goog-api-key`` only when the client sent no key of its own."""
    max_connections: int = field(default=512, metadata={"min": 1})
    max_keepalive_connections: int = field(default=128, metadata={"min": 0})
    keepalive_expiry: float = field(default=30.0, metadata={"min": 0})
    proxy_url: str | None = field(default=None, repr=False)
    """``http://[user:password@]host:port`` egress proxy (CONNECT for an https upstream)."""
    trust_env: bool = True
    """Without ``proxy_url``: use ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` (any case)."""
    tls: UpstreamTlsSettings = field(default_factory=UpstreamTlsSettings)


@dataclass(frozen=True, slots=True)
class RedisSentinelSettings:
    """Follow the master a set of Redis Sentinels names (instead of ``redis.url``)."""

    master_name: str | None = None
    """The service name the sentinels monitor (``sentinel monitor <name> ...``)."""
    addresses: tuple[str, ...] = ()
    """``host:port`` of the sentinels; any one that answers names the master."""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    """The sentinels' own credentials, when they require auth (not the data nodes')."""

    @property
    def configured(self) -> bool:
        return self.master_name is not None


@dataclass(frozen=True, slots=True)
class RedisClusterSettings:
    """Redis Cluster (instead of ``redis.url``): the seed nodes the topology is read from."""

    nodes: tuple[str, ...] = ()
    """``host:port`` of some cluster nodes; the client learns the rest from them."""

    @property
    def configured(self) -> bool:
        return bool(self.nodes)


@dataclass(frozen=True, slots=True)
class RedisTlsSettings:
    enabled: bool = False
    """Connect over TLS; implied by a ``rediss://`` URL."""
    ca_file: str | None = None
    """PEM bundle the server's certificate is verified against; unset: the system's CAs."""
    cert_file: str | None = None
    key_file: str | None = None
    """Client certificate and key, for servers that require mutual TLS."""
    check_hostname: bool = True


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: str | None = field(default=None, repr=False)
    """Unset (and no sentinel or cluster): the embedded single-replica store."""
    sentinel: RedisSentinelSettings = field(default_factory=RedisSentinelSettings)
    cluster: RedisClusterSettings = field(default_factory=RedisClusterSettings)
    username: str | None = None
    """ACL user of the data nodes (with ``password``); the URL may carry both instead."""
    password: str | None = field(default=None, repr=False)
    tls: RedisTlsSettings = field(default_factory=RedisTlsSettings)
    namespace: str = "default"
    """Replicas sharing a namespace share breakers; it is the hash tag of every key."""
    operation_timeout: float = field(default=0.1, metadata={"min": 0.001})
    """Longest any request waits on Redis (only half-open probe permits ever make it wait)."""
    failures_to_degrade: int = field(default=3, metadata={"min": 1})
    """Consecutive Redis errors after which the replica runs fail-static on local breakers."""
    retry_seconds: float = field(default=2.0, metadata={"min": 0.01})
    """How often a degraded replica tries Redis again."""
    flush_interval: float = field(default=0.1, metadata={"min": 0.001})
    """Outcomes holding a failure are reported within this (at once after a burst of
    failures), with the successes pending; successes alone once per ``reconcile_interval``
    (or breaker window bucket, when shorter)."""
    reconcile_interval: float = field(default=1.0, metadata={"min": 0.01})
    """Heartbeat this often; its answer (the store's epoch) says whether a published change
    was missed, and only then is the whole state read (and every 10 intervals regardless)."""

    @property
    def shared(self) -> bool:
        """Whether a Redis is configured (a URL, a Sentinel set or a Cluster); otherwise
        the embedded in-process store runs."""
        return self.url is not None or self.sentinel.configured or self.cluster.configured

    @property
    def uses_tls(self) -> bool:
        return self.tls.enabled or (self.url or "").startswith("rediss://")


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    otlp_endpoint: str | None = None
    """An OTLP/HTTP collector (``http://collector:4318``) to push metrics and spans to;
    ``/metrics`` serves Prometheus either way."""


@dataclass(frozen=True, slots=True)
class AdminSettings:
    token: str | None = field(default=None, repr=False)
    """Bearer token for ``/admin``; unset disables the admin API (see below)."""
    allow_unauthenticated_loopback: bool = False
    """Without a token, allow unauthenticated admin calls from 127.0.0.1 / ::1 (local use
    only: in a sidecar the application shares loopback). Ignored when a token is set."""
    series_resolution: float = field(default=10.0, metadata={"min": 0.1})
    """Seconds per bucket of the cluster series (``GET /admin/series``, the page's charts)."""
    series_window: float = field(default=1800.0, metadata={"min": 1.0})
    """Seconds of cluster series kept in Redis (at most 1000 buckets)."""


@dataclass(frozen=True, slots=True)
class RetryBudgetSettings:
    """Same-model retries allowed per replica: ``ratio`` of recent requests, at least
    ``min_per_second``, so retries cannot multiply load during an outage."""

    ratio: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0})
    min_per_second: float = field(default=5.0, metadata={"min": 0.0})


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """Per-model limits; ``model_defaults`` holds the values for models not listed."""

    connect_timeout: float = field(default=5.0, metadata={"min": 0.001})
    headers_timeout: float = field(default=60.0, metadata={"min": 0.001})
    """Time until the response headers of a call that does not generate (count, embed...)."""
    first_event_timeout: float | None = field(default=None, metadata={"min": 0.001})
    """Ceiling on a stream's wait for its first event (headers included) and on the start of
    a unary answer; unset: by model family (``deadlines.FAMILY_FIRST_EVENT_TIMEOUTS``)."""
    first_event_learning: LearningParams = field(default_factory=LearningParams)
    """The per-model deadline learned from recent successes, below the ceiling."""
    unary_timeout: float = field(default=120.0, metadata={"min": 0.001})
    """A unary generate answer's whole wait when the request sets no ``maxOutputTokens``."""
    min_tokens_per_second: float = field(default=20.0, metadata={"min": 0.001})
    """With ``maxOutputTokens``: the slowest generation waited for (the budget is the
    first-event ceiling plus that many tokens at this rate)."""
    stall_timeout: float = field(default=30.0, metadata={"min": 0.001})
    """Longest silence allowed between two chunks of a response body."""
    max_attempts: int = field(default=2, metadata={"min": 1, "max": 10})
    """Tries on this model (the first included) before failing over to the next one."""
    backoff_initial: float = field(default=0.1, metadata={"min": 0.0})
    backoff_max: float = field(default=2.0, metadata={"min": 0.0})
    """Retry n waits a random time up to min(backoff_max, backoff_initial * 2**n)."""
    breaker: BreakerParams = field(default_factory=BreakerParams)
    capabilities: ModelCapabilities = field(default_factory=ModelCapabilities)
    """Token limits and unsupported request features, so a fallback that cannot serve a
    request is skipped; limits not configured are learned from the upstream's models.get."""
    requests_per_minute: int | None = field(default=None, metadata={"min": 1})
    tokens_per_minute: int | None = field(default=None, metadata={"min": 1})
    """Optional cluster-wide budget, enforced before the provider's own quota (one Redis round
    trip per request for this model). Tokens are estimated from the request's size."""


@dataclass(frozen=True, slots=True)
class Settings:
    """The whole validated configuration, built once and passed in."""

    server: ServerSettings = field(default_factory=ServerSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    retry_budget: RetryBudgetSettings = field(default_factory=RetryBudgetSettings)
    quota: QuotaParams = field(default_factory=QuotaParams)
    model_defaults: ModelSettings = field(default_factory=ModelSettings)
    models: Mapping[str, ModelSettings] = field(default_factory=dict)
    routes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    stream_break: Mapping[str, str] = field(default_factory=dict)
    """Route -> what to do when a stream breaks after bytes reached the client: ``continue``
    on the next model (the default) or end with an in-band ``error``."""
    """Requested model -> ordered chain of models to serve it."""

    @property
    def named_models(self) -> frozenset[str]:
        """Every model name the configuration holds: routes, their chains, ``models:``."""
        return frozenset(
            {*self.routes, *(m for chain in self.routes.values() for m in chain), *self.models}
        )

    def chain_for(self, model: str) -> tuple[str, ...]:
        """The failover chain for a requested model; a model with no route serves itself."""
        return self.routes.get(model) or (model,)

    def on_stream_break(self, route: str) -> str:
        return self.stream_break.get(route, "continue")

    def model_settings(self, model: str | None) -> ModelSettings:
        if model is None:
            return self.model_defaults
        return self.models.get(model, self.model_defaults)

    def first_event_ceiling(self, model: str) -> float:
        """The model's configured first-event ceiling, else its family's default."""
        return first_event_ceiling(model, self.model_settings(model).first_event_timeout)


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Read the YAML file (``path``, else ``$GEMINI_BREAKER_CONFIG``, else none), then apply
    environment variables, then ``overrides`` (the command line), and validate the result."""
    return build_settings(load_raw(path, env, overrides))


def load_raw(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The merged, not yet validated configuration mapping (see ``load_settings``)."""
    env = os.environ if env is None else env
    path = path or env.get(CONFIG_ENV) or None
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path))
    for var, (*sections, key) in ENV_OVERRIDES.items():
        value = env.get(var)
        if value:
            target = raw
            for depth, section in enumerate(sections):
                if target.get(section) is None:
                    target[section] = {}
                require_mapping(target[section], ".".join(sections[: depth + 1]))
                target = target[section]
            target[key] = _from_env(var, value, sections[0], key)
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {})
        require_mapping(raw[section], section)
        raw[section].update(values)
    return raw


def build_settings(raw: Mapping[str, Any]) -> Settings:
    """Validate a parsed configuration mapping into ``Settings``."""
    require_mapping(raw, "configuration")
    _reject_renamed(raw)
    known = {f.name for f in dataclasses.fields(Settings)}
    reject_unknown(raw, known, "")
    model_defaults = build_dataclass(ModelSettings, raw.get("model_defaults"), "model_defaults")
    models_raw = raw.get("models") or {}
    require_mapping(models_raw, "models")
    models = {
        model_name(name, "models"): build_dataclass(
            ModelSettings, spec, f"models.{name}", base=model_defaults
        )
        for name, spec in models_raw.items()
    }
    routes, stream_break = _build_routes(raw.get("routes", DEFAULT_ROUTES))
    settings = Settings(
        server=build_dataclass(ServerSettings, raw.get("server"), "server"),
        upstream=build_dataclass(UpstreamSettings, raw.get("upstream"), "upstream"),
        redis=build_dataclass(RedisSettings, raw.get("redis"), "redis"),
        admin=build_dataclass(AdminSettings, raw.get("admin"), "admin"),
        telemetry=build_dataclass(TelemetrySettings, raw.get("telemetry"), "telemetry"),
        retry_budget=build_dataclass(RetryBudgetSettings, raw.get("retry_budget"), "retry_budget"),
        quota=build_dataclass(QuotaParams, raw.get("quota"), "quota"),
        model_defaults=model_defaults,
        models=models,
        routes=routes,
        stream_break=stream_break,
    )
    _check_url(settings.upstream.base_url, "upstream.base_url", ("http", "https"))
    _check_upstream_transport(settings.upstream)
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
    return dataclasses.replace(
        settings,
        upstream=dataclasses.replace(
            settings.upstream, base_url=settings.upstream.base_url.rstrip("/")
        ),
    )


def _reject_renamed(raw: Mapping[str, Any]) -> None:
    """``first_byte_timeout`` covered headers, first event and unary answers at once; each now
    has its own limit, so an old file is told which ones to set instead of what it meant."""
    sections = [("model_defaults", raw.get("model_defaults"))]
    models = raw.get("models")
    if isinstance(models, Mapping):
        sections += [(f"models.{name}", spec) for name, spec in models.items()]
    for where, spec in sections:
        if isinstance(spec, Mapping) and "first_byte_timeout" in spec:
            raise ConfigError(
                f"{where}.first_byte_timeout: replaced by headers_timeout (calls that do not "
                "generate), first_event_timeout (a stream's first event, the start of a unary "
                "answer) and unary_timeout (a unary answer without maxOutputTokens)"
            )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    require_mapping(data, f"{path}: the top level")
    return dict(data)


def _from_env(var: str, value: str, section: str, key: str) -> Any:
    if (section, key) == ("server", "client_tokens"):
        return [token.strip() for token in value.split(",") if token.strip()]
    if (section, key) == ("server", "port"):
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{var}: expected a port number, got {value!r}") from None
    return value


STREAM_BREAK_POLICIES = ("continue", "error")


def _build_routes(raw: Any) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """Routes as ``name: [chain]`` or ``name: {chain: [...], on_stream_break: ...}``."""
    if raw is None:
        return {}, {}
    require_mapping(raw, "routes")
    routes: dict[str, tuple[str, ...]] = {}
    policies: dict[str, str] = {}
    for name, spec in raw.items():
        where = f"routes.{name}"
        model_name(name, "routes")
        chain = spec
        if isinstance(spec, Mapping):
            reject_unknown(spec, {"chain", "on_stream_break"}, where)
            chain = spec.get("chain")
            where = f"{where}.chain"
            policy = spec.get("on_stream_break", "continue")
            if policy not in STREAM_BREAK_POLICIES:
                raise ConfigError(
                    f"routes.{name}.on_stream_break: must be one of "
                    + ", ".join(STREAM_BREAK_POLICIES)
                )
            policies[name] = policy
        if not isinstance(chain, list) or not chain:
            raise ConfigError(f"{where}: expected a non-empty list of model names")
        for index, model in enumerate(chain):
            model_name(model, f"{where}[{index}]")
        if len(set(chain)) != len(chain):
            raise ConfigError(f"{where}: a model appears twice in the chain")
        routes[name] = tuple(chain)
    return routes, policies


MIN_TOKEN_CHARS = 16


def is_loopback_host(host: str) -> bool:
    """Whether a listen address is on this machine only (``localhost`` or a loopback IP)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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


def _check_url(url: str, where: str, schemes: tuple[str, ...]) -> None:
    parts = urlsplit(url)
    if parts.scheme not in schemes or (parts.scheme != "unix" and not parts.hostname):
        raise ConfigError(f"{where}: expected a {'/'.join(schemes)} URL")
