"""Breaker parameters and the values the Lua scripts return, with their JSON form.

The scripts answer (and publish) JSON; the helpers here turn it into frozen dataclasses and
back. A model with no breaker hash in Redis is ``closed`` with epoch 0 and zero counts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
FORCED_OPEN = "forced_open"
DISABLED = "disabled"
STATES = frozenset({CLOSED, OPEN, HALF_OPEN, FORCED_OPEN, DISABLED})
#: Operator actions accepted by ``BreakerStore.force``.
ACTIONS = frozenset({"open", "close", "reset", "force_open", "disable"})
#: A window may not hold more buckets than this: eviction walks the buckets time skipped.
MAX_BUCKETS = 10_000


class PayloadError(ValueError):
    """A script answer or event payload does not have the expected shape."""


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

    def script_args(self) -> list[int | float]:
        """The parameters as the scripts read them from ARGV: durations in whole milliseconds."""
        return [
            _ms(self.window_seconds),
            _ms(self.bucket_seconds),
            self.minimum_calls,
            self.failure_rate,
            self.burst_failures,
            _ms(self.burst_seconds),
            _ms(self.open_seconds),
            _ms(self.open_max_seconds),
            _ms(self.trip_memory_seconds),
            self.half_open_probes,
            _ms(self.half_open_timeout),
        ]


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


@dataclass(frozen=True, slots=True)
class BreakerState:
    """One model's breaker as Redis holds it, with the window totals when it was read."""

    model: str
    state: str
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

    route: str
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

    route: str
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


# JSON -> dataclasses. The scripts' cjson writes an empty table as {} on Redis and as [] on
# fakeredis, so an empty list is accepted wherever an object is expected.


def _object(value: object, what: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if value == []:
        return {}
    raise PayloadError(f"{what}: expected an object, got {type(value).__name__}")


def _int(obj: Mapping[str, Any], key: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise PayloadError(f"{key}: expected an integer, got {value!r}")
    return int(value)


def _str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise PayloadError(f"{key}: expected a string, got {value!r}")
    return value


def _bool(obj: Mapping[str, Any], key: str) -> bool:
    value = obj.get(key)
    if not isinstance(value, bool):
        raise PayloadError(f"{key}: expected a boolean, got {value!r}")
    return value


def breaker_from_json(value: object) -> BreakerState:
    obj = _object(value, "breaker")
    state = _str(obj, "state")
    if state not in STATES:
        raise PayloadError(f"state: unknown breaker state {state!r}")
    return BreakerState(
        model=_str(obj, "model"),
        state=state,
        epoch=_int(obj, "epoch"),
        since_ms=_int(obj, "since_ms"),
        open_until_ms=_int(obj, "open_until_ms"),
        trips=_int(obj, "trips"),
        probes_issued=_int(obj, "probes_issued"),
        probes_ok=_int(obj, "probes_ok"),
        probes_failed=_int(obj, "probes_failed"),
        reason=_str(obj, "reason"),
        forced_by=_str(obj, "forced_by"),
        calls=_int(obj, "calls"),
        failures=_int(obj, "failures"),
    )


def _active_from_json(value: object) -> dict[str, ActiveModel]:
    active = {}
    for route, entry in _object(value, "active").items():
        obj = _object(entry, f"active.{route}")
        model = obj.get("model")
        if model is not None and not isinstance(model, str):
            raise PayloadError(f"active.{route}.model: expected a string or null, got {model!r}")
        active[route] = ActiveModel(route, model, _int(obj, "epoch"))
    return active


def change_from_json(value: object) -> Change:
    obj = _object(value, "change")
    breaker = obj.get("breaker")
    return Change(
        now_ms=_int(obj, "now_ms"),
        breaker=None if breaker is None else breaker_from_json(breaker),
        active=_active_from_json(obj.get("active")),
        changed=_bool(obj, "changed"),
    )


def acquired_from_json(value: object) -> Acquired:
    obj = _object(value, "acquired")
    return Acquired(permit=_bool(obj, "permit"), change=change_from_json(obj.get("change")))


def snapshot_from_json(value: object) -> Snapshot:
    obj = _object(value, "snapshot")
    routes = {}
    for route, chain in _object(obj.get("routes"), "routes").items():
        if not isinstance(chain, list) or not all(isinstance(m, str) for m in chain):
            raise PayloadError(f"routes.{route}: expected a list of strings, got {chain!r}")
        routes[route] = tuple(chain)
    digests = _object(obj.get("digests"), "digests")
    return Snapshot(
        now_ms=_int(obj, "now_ms"),
        epoch=_int(obj, "epoch"),
        breakers={
            model: breaker_from_json(b)
            for model, b in _object(obj.get("breakers"), "breakers").items()
        },
        active=_active_from_json(obj.get("active")),
        routes=routes,
        digests={replica: _str(digests, replica) for replica in digests},
        pins={
            route: pin_from_json(route, pin)
            for route, pin in _object(obj.get("pins", {}), "pins").items()
        },
    )


def pin_from_json(route: str, value: object) -> Pin:
    obj = _object(value, f"pins.{route}")
    return Pin(
        route=route,
        model=_str(obj, "model"),
        until_ms=_int(obj, "until_ms"),
        since_ms=_int(obj, "since_ms"),
        by=_str(obj, "by"),
        reason=_str(obj, "reason"),
        epoch=_int(obj, "epoch"),
    )


def pin_change_from_json(value: object) -> PinChange:
    obj = _object(value, "pin change")
    route = _str(obj, "route")
    pin = obj.get("pin")
    return PinChange(
        now_ms=_int(obj, "now_ms"),
        route=route,
        pin=None if pin is None else pin_from_json(route, pin),
        epoch=_int(obj, "epoch"),
        active=_active_from_json(obj.get("active")),
        changed=_bool(obj, "changed"),
        action=_str(obj, "action"),
    )


def heartbeat_from_json(value: object) -> Heartbeat:
    obj = _object(value, "heartbeat")
    items = obj.get("replicas")
    if items == {}:
        items = []
    if not isinstance(items, list):
        raise PayloadError("replicas: expected a list")
    replicas = []
    for item in items:
        entry = _object(item, "replicas[]")
        replicas.append(
            ReplicaSeen(_str(entry, "replica"), _int(entry, "seen_ms"), _str(entry, "digest"))
        )
    return Heartbeat(
        now_ms=_int(obj, "now_ms"),
        replicas=tuple(replicas),
        epoch=_int(obj, "epoch"),
    )


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
        result=_object(result, f"audit {entry_id}: result"),
    )


def loads(payload: bytes | str) -> object:
    """Parse a script answer; malformed JSON is a ``PayloadError``."""
    try:
        return json.loads(payload)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise PayloadError(f"not JSON: {exc}") from exc


def parse_event(payload: bytes | str) -> Change:
    """Decode a breaker message from the events channel (the JSON the script returned)."""
    return change_from_json(loads(payload))


def parse_any_event(payload: bytes | str) -> Change | QuotaChange | PinChange:
    """Decode any message from the events channel: a breaker, quota or pin change."""
    value = loads(payload)
    if isinstance(value, dict) and "quota" in value:
        return quota_change_from_json(value)
    if isinstance(value, dict) and "route" in value:
        return pin_change_from_json(value)
    return change_from_json(value)


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
    now_ms: int
    quota: QuotaState


def _float(obj: Mapping[str, Any], key: str) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError(f"{key}: expected a number, got {value!r}")
    return float(value)


def quota_from_json(value: object) -> QuotaState:
    obj = _object(value, "quota")
    return QuotaState(
        scope=_str(obj, "scope"),
        model=_str(obj, "model"),
        until_ms=_int(obj, "until_ms"),
        scale=_float(obj, "scale"),
        scale_from_ms=_int(obj, "scale_from_ms"),
        per_day=_bool(obj, "per_day"),
        quota_id=_str(obj, "quota_id"),
        epoch=_int(obj, "epoch"),
    )


def quota_change_from_json(value: object) -> QuotaChange:
    obj = _object(value, "quota change")
    return QuotaChange(now_ms=_int(obj, "now_ms"), quota=quota_from_json(obj.get("quota")))


def quotas_from_json(value: object) -> tuple[int, int, list[QuotaState]]:
    """The quota snapshot: (now_ms, the store's epoch, every live quota condition)."""
    obj = _object(value, "quota snapshot")
    items = obj.get("quotas")
    if items == {}:
        items = []
    if not isinstance(items, list):
        raise PayloadError("quotas: expected a list")
    return _int(obj, "now_ms"), _int(obj, "epoch"), [quota_from_json(item) for item in items]


# Dataclasses -> JSON, in the scripts' own shape (for logs, the admin API and tests).


def breaker_to_json(breaker: BreakerState) -> dict[str, Any]:
    return asdict(breaker)


def _active_to_json(active: Mapping[str, ActiveModel]) -> dict[str, Any]:
    return {route: {"model": a.model, "epoch": a.epoch} for route, a in active.items()}


def change_to_json(change: Change) -> dict[str, Any]:
    return {
        "now_ms": change.now_ms,
        "breaker": None if change.breaker is None else breaker_to_json(change.breaker),
        "active": _active_to_json(change.active),
        "changed": change.changed,
    }


def acquired_to_json(acquired: Acquired) -> dict[str, Any]:
    return {"permit": acquired.permit, "change": change_to_json(acquired.change)}


def pin_to_json(pin: Pin) -> dict[str, Any]:
    """A pin in the scripts' shape (the route is the key it is stored under)."""
    return {
        "model": pin.model,
        "until_ms": pin.until_ms,
        "since_ms": pin.since_ms,
        "by": pin.by,
        "reason": pin.reason,
        "epoch": pin.epoch,
    }


def pin_change_to_json(change: PinChange) -> dict[str, Any]:
    return {
        "now_ms": change.now_ms,
        "route": change.route,
        "pin": None if change.pin is None else pin_to_json(change.pin),
        "epoch": change.epoch,
        "active": _active_to_json(change.active),
        "changed": change.changed,
        "action": change.action,
    }


def snapshot_to_json(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "now_ms": snapshot.now_ms,
        "epoch": snapshot.epoch,
        "breakers": {m: breaker_to_json(b) for m, b in snapshot.breakers.items()},
        "active": _active_to_json(snapshot.active),
        "routes": {route: list(chain) for route, chain in snapshot.routes.items()},
        "digests": dict(snapshot.digests),
        "pins": {route: pin_to_json(pin) for route, pin in snapshot.pins.items()},
    }
