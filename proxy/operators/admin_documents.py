"""The JSON documents the admin API reads out: state, breakers, routes, replicas, as this
replica's mirror of the cluster holds them."""

from __future__ import annotations

from typing import Any

from ..cluster.coordinator import Coordinator
from ..cluster.state import ActiveModel, BreakerState, Pin
from ..telemetry.alerts import AlertCounts


def _now_ms(coordinator: Coordinator) -> int:
    return int(coordinator.mirror.store_now_ms())


def breaker_json(breaker: BreakerState) -> dict[str, Any]:
    return {
        "state": breaker.state,
        "epoch": breaker.epoch,
        "calls": breaker.calls,
        "failures": breaker.failures,
        "trips": breaker.trips,
        "open_until_ms": breaker.open_until_ms,
        "since_ms": breaker.since_ms,
        "probes_issued": breaker.probes_issued,
        "probes_ok": breaker.probes_ok,
        "reason": breaker.reason,
        "forced_by": breaker.forced_by,
    }


def pin_json(pin: Pin, now_ms: float) -> dict[str, Any]:
    return {
        "model": pin.model,
        "until_ms": pin.until_ms,
        "expires_in_seconds": round(max(0.0, pin.until_ms - now_ms) / 1000, 3),
        "since_ms": pin.since_ms,
        "by": pin.by,
        "reason": pin.reason,
        "epoch": pin.epoch,
    }


def active_model_name(active: ActiveModel | None) -> str | None:
    return None if active is None else active.model


def _route_json(coordinator: Coordinator, route: str, chain: tuple[str, ...]) -> dict[str, Any]:
    mirror = coordinator.mirror
    pin = mirror.pin(route)
    return {
        "chain": list(chain),
        "active": active_model_name(mirror.active.get(route)),
        "active_epoch": mirror.active[route].epoch if route in mirror.active else 0,
        "pin": None if pin is None else pin_json(pin, mirror.store_now_ms()),
    }


def _all_breakers(coordinator: Coordinator) -> list[BreakerState]:
    mirror = coordinator.mirror
    models = coordinator.settings.routed_models | set(mirror.breakers)
    return [mirror.breaker(m) for m in sorted(models)]


def state_document(coordinator: Coordinator, alerts: AlertCounts) -> dict[str, Any]:
    """Routes with their chain, active model and pin, and every known breaker."""
    mirror = coordinator.mirror
    return {
        "replica": coordinator.replica,
        "now_ms": _now_ms(coordinator),
        "store": {
            "mode": "embedded" if coordinator.embedded else "redis",
            "degraded": coordinator.degraded,
            "namespace": coordinator.keys.prefix,
        },
        "config_drift": coordinator.sync.config_drift,
        "transitions": list(reversed(coordinator.mirror.transitions)),
        "credential_alerts": dict(alerts.credential),
        "quota_alerts": dict(alerts.quota),
        "schema_drift": dict(alerts.schema_drift),
        "quotas": [
            {
                "key_digest": quota.scope,
                "model": quota.model,
                "cooling_until_ms": quota.until_ms,
                "rate_scale": round(
                    quota.scale_at(
                        mirror.store_now_ms(), coordinator.settings.quota.recovery_per_second
                    ),
                    3,
                ),
                "per_day": quota.per_day,
                "quota_id": quota.quota_id,
                "epoch": quota.epoch,
            }
            for quota in mirror.quotas.values()
        ],
        "routes": {
            route: _route_json(coordinator, route, chain)
            for route, chain in coordinator.settings.routes.items()
        },
        "breakers": {b.model: breaker_json(b) for b in _all_breakers(coordinator)},
    }


def breakers_document(coordinator: Coordinator) -> dict[str, Any]:
    """Every known breaker, with the routes whose chain holds it."""
    routes = coordinator.settings.routes
    return {
        "replica": coordinator.replica,
        "now_ms": _now_ms(coordinator),
        "degraded": coordinator.degraded,
        "breakers": {
            b.model: {
                **breaker_json(b),
                "routes": sorted(r for r, chain in routes.items() if b.model in chain),
            }
            for b in _all_breakers(coordinator)
        },
    }


def routes_document(coordinator: Coordinator) -> dict[str, Any]:
    """Every route: chain, the chain a request walks now (pin first), active model, pin."""
    return {
        "replica": coordinator.replica,
        "now_ms": _now_ms(coordinator),
        "degraded": coordinator.degraded,
        "routes": {
            route: {
                **_route_json(coordinator, route, chain),
                "effective_chain": list(coordinator.chain_for(route)),
                "on_stream_break": coordinator.settings.on_stream_break(route),
            }
            for route, chain in coordinator.settings.routes.items()
        },
    }


def replicas_document(coordinator: Coordinator) -> dict[str, Any]:
    """The replicas the last heartbeat saw, and whether the live ones agree on routes."""
    seen = coordinator.sync.heartbeat_seen
    alive_ms = coordinator.sync.replica_alive_seconds * 1000
    replicas = []
    if seen is not None:
        for r in sorted(seen.replicas, key=lambda r: r.replica):
            replicas.append(
                {
                    "replica": r.replica,
                    "last_seen_ms": r.seen_ms,
                    "seen_seconds_ago": round(max(0, seen.now_ms - r.seen_ms) / 1000, 3),
                    "alive": seen.now_ms - r.seen_ms <= alive_ms,
                    "routes_digest": r.digest,
                    "same_routes": r.digest == coordinator.link.digest,
                    "self": r.replica == coordinator.replica,
                }
            )
    return {
        "replica": coordinator.replica,
        "routes_digest": coordinator.link.digest,
        "now_ms": _now_ms(coordinator),
        "degraded": coordinator.degraded,
        "heartbeat_ms": None if seen is None else seen.now_ms,
        "alive_within_seconds": coordinator.sync.replica_alive_seconds,
        "config_drift": coordinator.sync.config_drift,
        "replicas": replicas,
    }
