"""Configuration: the typed, validated ``Settings`` the proxy is built from.

Every key is documented in docs/configuration.md. ``config_load`` reads and validates a file
into these; ``config_checks`` holds the rules that span several keys.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .cluster.state import BreakerParams, QuotaParams
from .pipeline.capabilities import ModelCapabilities
from .pipeline.deadlines import LearningParams, first_event_ceiling

__all__ = ["DEFAULT_ROUTES", "GOOGLE_BASE_URL", "Settings", "is_loopback_host"]

GOOGLE_BASE_URL = "https://generativelanguage.googleapis.com"

# The chains served when the file has no ``routes:`` key at all (``routes: {}`` turns them off):
# a newcomer's proxy fails over from the first request on. The newest Pro, Flash and Flash-Lite,
# and the 2.5 names that applications written for them still send.
DEFAULT_ROUTES: Mapping[str, list[str]] = MappingProxyType(
    {
        "gemini-3.1-pro-preview": [
            "gemini-3.1-pro-preview",
            "gemini-3.8-flash",
            "gemini-3.5-flash-lite",
        ],
        "gemini-3.8-flash": ["gemini-3.8-flash", "gemini-3.5-flash-lite"],
        "gemini-2.5-pro": ["gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"],
        "gemini-2.5-flash": ["gemini-2.5-flash", "gemini-2.5-flash-lite"],
    }
)


def is_loopback_host(host: str) -> bool:
    """Whether a listen address is on this machine only (``localhost`` or a loopback IP)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class VertexSettings:
    """Vertex AI: where each location is served, and what a short-form path is given."""

    project: str | None = None
    """Added to short-form paths (``/publishers/google/models/...``)."""
    location: str = "us-central1"
    """Added to short-form paths; a chain entry without ``@location`` uses the request's."""
    origin_template: str = "https://{location}-aiplatform.googleapis.com"
    """The origin of a region; ``global``, ``us`` and ``eu`` have Google's own (see
    ``proxy.dialects.vertex.origin_for``) unless ``origins`` names them."""
    origins: Mapping[str, str] = field(default_factory=dict)
    """Location -> origin, over the template (tests point locations at simulators)."""


@dataclass(frozen=True, slots=True)
class ServerTlsSettings:
    cert_file: str | None = None
    key_file: str | None = None
    """Serve every route over HTTPS/WSS with this certificate and key (``gemini-breaker certs``
    makes a local pair); the Live API's SDK connects with ``wss://`` only."""


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
    tls: ServerTlsSettings = field(default_factory=ServerTlsSettings)

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
    vertex: VertexSettings = field(default_factory=VertexSettings)
    routes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Requested model -> ordered chain of models to serve it."""
    stream_break: Mapping[str, str] = field(default_factory=dict)
    """Route -> what to do when a stream breaks after bytes reached the client: ``continue``
    on the next model (the default) or end with an in-band ``error``."""
    next_location_on_429: frozenset[str] = frozenset()
    """Routes whose Vertex 429s on shared capacity move to the same model in the next location
    of the chain (``on_429: next_location``); every other 429 is backpressure."""
    routed_models: frozenset[str] = field(init=False, repr=False, compare=False)
    """Every model some route's chain holds: the models a breaker is kept for."""

    def __post_init__(self) -> None:
        # Derived once here (the dataclass is frozen) rather than by every reader.
        routed = frozenset(model for chain in self.routes.values() for model in chain)
        object.__setattr__(self, "routed_models", routed)

    @property
    def named_models(self) -> frozenset[str]:
        """Every model name the configuration holds: routes, their chains, ``models:``."""
        return frozenset({*self.routes, *self.routed_models, *self.models})

    def chain_for(self, model: str) -> tuple[str, ...]:
        """The failover chain for a requested model; a model with no route serves itself.
        A Vertex target ``model@location`` with no route of its own takes its model's route,
        each entry without ``@location`` served in the request's location."""
        chain = self.routes.get(model)
        if chain:
            return chain
        bare, at, location = model.partition("@")
        chain = self.routes.get(bare) if at else None
        if not chain:
            return (model,)
        return tuple(entry if "@" in entry else f"{entry}@{location}" for entry in chain)

    def moves_location_on_429(self, route: str) -> bool:
        return bool(self.next_location_on_429) and (
            route in self.next_location_on_429
            or route.partition("@")[0] in self.next_location_on_429
        )

    def on_stream_break(self, route: str) -> str:
        return self.stream_break.get(route, "continue")

    def model_settings(self, model: str | None) -> ModelSettings:
        if model is None:
            return self.model_defaults
        settings = self.models.get(model)
        if settings is None:  # a Vertex target takes its model's settings
            settings = self.models.get(model.partition("@")[0], self.model_defaults)
        return settings

    def first_event_ceiling(self, model: str) -> float:
        """The model's configured first-event ceiling, else its family's default."""
        return first_event_ceiling(model, self.model_settings(model).first_event_timeout)
