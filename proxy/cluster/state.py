"""Breaker parameters and the values the Lua scripts return and publish, as frozen dataclasses
(``codec`` reads and writes their JSON). A model with no breaker hash in Redis is ``closed``
with epoch 0 and zero counts.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from .codec import KEY, PayloadError, decode, loads


class BreakerStatus(enum.StrEnum):
    """The state a breaker is in (a string, as the scripts store and publish it)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"


CLOSED = BreakerStatus.CLOSED
OPEN = BreakerStatus.OPEN
HALF_OPEN = BreakerStatus.HALF_OPEN
FORCED_OPEN = BreakerStatus.FORCED_OPEN
DISABLED = BreakerStatus.DISABLED
STATES = frozenset(BreakerStatus)
#: Operator actions accepted by ``BreakerStore.force``.
ACTIONS = frozenset({"open", "close", "reset", "force_open", "disable"})
#: A window may not hold more buckets than this: eviction walks the buckets time skipped.
MAX_BUCKETS = 10_000


@dataclass(frozen=True, slots=True)
class BreakerParams:
    """Thresholds of one model's breaker; every call sends them, so each replica uses its own."""

    # "min"/"max" metadata is what the configuration loader checks, naming the offending key.
    window_seconds: float = field(default=30.0, metadata={"min": 0.001})
    bucket_seconds: float = field(default=1.0, metadata={"min": 0.001})
    minimum_calls: int = field(default=10, metadata={"min": 1})
    failure_rate: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})
    burst_failures: int = field(default=5, metadata={"min": 1})
    burst_seconds: float = field(default=2.0, metadata={"min": 0.001})
    open_seconds: float = field(default=5.0, metadata={"min": 0.0})
    open_max_seconds: float = field(default=300.0, metadata={"min": 0.0})
    trip_memory_seconds: float = field(default=600.0, metadata={"min": 0.0})
    half_open_probes: int = field(default=3, metadata={"min": 1})
    half_open_timeout: float = field(default=30.0, metadata={"min": 0.001})
    max_failure_share_per_key: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})
    """While other keys' requests go through, one API key supplies at most this share of the
    failures that count (judged per replica; not sent to the scripts)."""
    poison_memory_seconds: float = field(default=300.0, metadata={"min": 0.0})
    """How long a request that twice failed the same way on two models is answered after one
    attempt and never counted."""

    def __post_init__(self) -> None:
        problems = [
            f"{f.name} must be at least {f.metadata['min']}"
            for f in fields(self)
            if getattr(self, f.name) < f.metadata["min"]
        ]
        if self.failure_rate > 1:
            problems.append("failure_rate must be at most 1")
        if self.max_failure_share_per_key > 1:
            problems.append("max_failure_share_per_key must be at most 1")
        if self.open_max_seconds < self.open_seconds:
            problems.append("open_max_seconds must be at least open_seconds")
        if self.window_seconds < self.bucket_seconds:
            problems.append("window_seconds must be at least bucket_seconds")
        elif not problems and self.buckets > MAX_BUCKETS:  # (buckets divides by bucket_seconds)
            problems.append(f"window_seconds / bucket_seconds must be at most {MAX_BUCKETS}")
        if problems:
            raise ValueError("invalid breaker parameters: " + "; ".join(problems))

    @property
    def buckets(self) -> int:
        """Number of slots in the window's ring."""
        return math.ceil(_ms(self.window_seconds) / _ms(self.bucket_seconds))

    def script_params(self) -> dict[str, int | float]:
        """The parameters as the scripts read them (``ARGS.params``): durations in whole
        milliseconds."""
        return {
            "window_ms": _ms(self.window_seconds),
            "bucket_ms": _ms(self.bucket_seconds),
            "minimum_calls": self.minimum_calls,
            "failure_rate": self.failure_rate,
            "burst_failures": self.burst_failures,
            "burst_ms": _ms(self.burst_seconds),
            "open_ms": _ms(self.open_seconds),
            "open_max_ms": _ms(self.open_max_seconds),
            "trip_memory_ms": _ms(self.trip_memory_seconds),
            "probes": self.half_open_probes,
            "probe_timeout_ms": _ms(self.half_open_timeout),
        }


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


@dataclass(frozen=True, slots=True)
class BreakerState:
    """One model's breaker as Redis holds it, with the window totals when it was read."""

    model: str
    state: BreakerStatus
    epoch: int
    since_ms: int
    open_until_ms: int
    trips: int
    probes_issued: int
    probes_ok: int
    probes_failed: int
    reason: str
    forced_by: str
    calls: int
    failures: int

    @classmethod
    def initial(cls, model: str) -> BreakerState:
        """The state of a model Redis has no breaker for."""
        return cls(model, CLOSED, 0, 0, 0, 0, 0, 0, 0, "", "", 0, 0)

    @property
    def admits_without_redis(self) -> bool:
        """Whether a request may go ahead on the local mirror alone (no permit needed)."""
        return self.state in (CLOSED, DISABLED)


@dataclass(frozen=True, slots=True)
class ActiveModel:
    """The model serving a route; ``None`` when no model of its chain admits."""

    route: str = field(metadata=KEY)
    model: str | None
    epoch: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """Results aggregated per (model, epoch) by one replica, reported in one call."""

    model: str
    epoch: int
    calls: int
    failures: int

    def __post_init__(self) -> None:
        if not 0 <= self.failures <= self.calls:
            raise ValueError(f"need 0 <= failures <= calls: {self.failures}, {self.calls}")


@dataclass(frozen=True, slots=True)
class Change:
    """What a state-changing script returns and, when ``changed``, publishes.

    ``active`` holds every route whose chain contains the model, after the change.
    """

    KIND: ClassVar[str] = "breaker"
    now_ms: int
    breaker: BreakerState | None
    active: dict[str, ActiveModel]
    changed: bool


@dataclass(frozen=True, slots=True)
class Acquired:
    """Answer of ``acquire``: whether the caller holds a permit, and the breaker after it."""

    permit: bool
    change: Change


@dataclass(frozen=True, slots=True)
class Pin:
    """An operator pin: ``route`` serves ``model`` until ``until_ms`` (Redis time), as long as
    the model's breaker admits; the rest of the chain stays behind it, in order."""

    route: str = field(metadata=KEY)
    model: str
    until_ms: int
    since_ms: int
    by: str
    reason: str
    epoch: int


@dataclass(frozen=True, slots=True)
class PinChange:
    """What ``pin`` and ``unpin`` return and, when ``changed``, publish; also published when a
    pin runs out (``action`` ``expire``). ``pin`` is the route's pin after it (None: none), and
    ``epoch`` orders it against other pin changes of the route."""

    KIND: ClassVar[str] = "pin"
    now_ms: int
    route: str
    pin: Pin | None
    epoch: int
    active: dict[str, ActiveModel]
    changed: bool
    action: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the cluster state holds, read atomically."""

    now_ms: int
    epoch: int
    breakers: dict[str, BreakerState]
    active: dict[str, ActiveModel]
    routes: dict[str, tuple[str, ...]]
    digests: dict[str, str]
    pins: dict[str, Pin] = field(default_factory=dict)
    """Pins that hold at ``now_ms``, by route."""


@dataclass(frozen=True, slots=True)
class ReplicaSeen:
    """One replica's last heartbeat, with the digest of the routes it runs."""

    replica: str
    seen_ms: int
    digest: str


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The heartbeat script's answer: every replica heard from lately, as of ``now_ms``, with
    the store's epoch counter (whether there is anything new to read)."""

    now_ms: int
    replicas: tuple[ReplicaSeen, ...]
    epoch: int


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One operator action from the audit stream (``id`` is the stream ID, Redis time)."""

    id: str
    at_ms: int
    action: str
    """``open``, ``close``, ``reset``, ``force_open``, ``disable``, ``pin``, ``unpin`` or
    ``pin_expired``."""
    target: str
    """The model (breaker actions) or the route (pins)."""
    by: str
    reason: str
    via: str
    """The replica whose admin API took the action (empty for a pin expiry)."""
    epoch: int
    result: dict[str, Any]


def audit_entry_from_fields(entry_id: str, fields: Mapping[str, str]) -> AuditEntry:
    """An audit stream entry (field values already decoded to text)."""
    try:
        result = json.loads(fields.get("result", "{}"))
    except ValueError as exc:
        raise PayloadError(f"audit {entry_id}: result is not JSON: {exc}") from exc
    for key in ("at_ms", "epoch"):
        if not fields.get(key, "").lstrip("-").isdigit():
            raise PayloadError(f"audit {entry_id}: {key} is not an integer")
    return AuditEntry(
        id=entry_id,
        at_ms=int(fields["at_ms"]),
        action=fields.get("action", ""),
        target=fields.get("target", ""),
        by=fields.get("by", ""),
        reason=fields.get("reason", ""),
        via=fields.get("via", ""),
        epoch=int(fields["epoch"]),
        result=_audit_result(result, entry_id),
    )


def _audit_result(value: object, entry_id: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if value == []:
        return {}
    raise PayloadError(f"audit {entry_id}: result is not an object")


@dataclass(frozen=True, slots=True)
class QuotaParams:
    """How the proxy reacts to 429s; the same for every model."""

    max_retry_wait: float = field(default=10.0, metadata={"min": 0.0})
    """A request that met a 429 waits out its retryDelay and tries again (once) only when the
    delay is at most this, its deadline allows it and the retry budget has room."""
    default_cooldown: float = field(default=1.0, metadata={"min": 0.001})
    """Cooldown when a 429 carries neither RetryInfo nor Retry-After."""
    decrease: float = field(default=0.5, metadata={"min": 0.01, "max": 1.0})
    """After a cooldown, the share of requests let through is multiplied by this ..."""
    recovery_per_second: float = field(default=0.2, metadata={"min": 0.001, "max": 1.0})
    """... and grows back by this much per second."""
    decrease_interval: float = field(default=1.0, metadata={"min": 0.0})
    """The share is cut at most once per this many seconds: 429s that follow a cut sooner
    answer requests sent before it could take effect."""
    min_scale: float = field(default=0.05, metadata={"min": 0.0, "max": 1.0})
    throttle_k: float = field(default=2.0, metadata={"min": 1.0})
    """Adaptive throttling per replica: reject with probability
    max(0, (requests - k * accepts) / (requests + 1))."""
    throttle_window: int = field(default=30, metadata={"min": 1, "max": 600})
    """Seconds of history the throttle looks at."""
    spillover_share: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    """Off by default: the share of shed requests that may use the next model of the chain,
    and only when that model has a budget (``requests_per_minute``/``tokens_per_minute``)
    that admits them."""


@dataclass(frozen=True, slots=True)
class QuotaState:
    """The cluster-wide 429 condition of one (credential digest, model)."""

    scope: str
    model: str
    until_ms: int
    """No request for this scope goes upstream before this (Redis clock)."""
    scale: float
    """Share of requests let through once the cooldown is over ..."""
    scale_from_ms: int
    """... recovering additively from this time on."""
    per_day: bool
    quota_id: str
    epoch: int

    def scale_at(self, now_ms: float, recovery_per_second: float) -> float:
        if now_ms <= self.scale_from_ms:
            return self.scale
        return min(1.0, self.scale + recovery_per_second * (now_ms - self.scale_from_ms) / 1000)


@dataclass(frozen=True, slots=True)
class QuotaChange:
    """What ``quota_feedback`` returns and publishes: a scope's quota condition after a 429."""

    KIND: ClassVar[str] = "quota"
    now_ms: int
    quota: QuotaState


@dataclass(frozen=True, slots=True)
class QuotaSnapshot:
    """Every live quota condition, with the store's time and epoch."""

    now_ms: int
    epoch: int
    quotas: list[QuotaState]


def parse_event(payload: bytes | str) -> Change:
    """Decode a breaker message from the events channel (the JSON the script returned)."""
    return decode(Change, loads(payload))


EVENT_KINDS: dict[str, type[Change | QuotaChange | PinChange]] = {}


def parse_any_event(payload: bytes | str) -> Change | QuotaChange | PinChange:
    """Decode any message from the events channel, by its ``kind``."""
    value = loads(payload)
    kind = value.get("kind") if isinstance(value, dict) else None
    cls = EVENT_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise PayloadError(f"event of unknown kind {kind!r}")
    return decode(cls, value)


EVENT_KINDS.update({c.KIND: c for c in (Change, QuotaChange, PinChange)})
