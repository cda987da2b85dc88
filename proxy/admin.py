"""The operator's read of the cluster: ``GET /admin/state``, behind a bearer token."""

from __future__ import annotations

import hmac
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .cluster.coordinator import Coordinator
from .cluster.state import ActiveModel
from .gemini.errors import JSON_CONTENT_TYPE, error_body


class AdminAuth:
    """Bearer-token check with a constant-time comparison; no token configured, no check."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    def check(self, request: Request) -> Response | None:
        """None when the request may proceed, else the refusal to send."""
        if self._token is None:
            return None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return _refuse(401, "The admin API needs an 'Authorization: Bearer <token>' header.")
        if not hmac.compare_digest(given.strip().encode(), self._token):
            return _refuse(403, "The admin token is not valid.")
        return None


def _refuse(code: int, message: str) -> Response:
    headers = {"www-authenticate": "Bearer"} if code == 401 else None
    return Response(
        error_body(code, message), status_code=code, media_type=JSON_CONTENT_TYPE, headers=headers
    )


def state_document(coordinator: Coordinator) -> dict[str, Any]:
    """Routes with their chain and active model, and every known breaker."""
    mirror = coordinator.mirror
    routes = coordinator.settings.routes
    models = {m for chain in routes.values() for m in chain} | set(mirror.breakers)
    return {
        "replica": coordinator.replica,
        "store": {
            "mode": "embedded" if coordinator.embedded else "redis",
            "degraded": coordinator.degraded,
            "namespace": coordinator.keys.prefix,
        },
        "credential_alerts": dict(coordinator.credential_alerts),
        "quota_alerts": dict(coordinator.quota_alerts),
        "schema_drift": dict(coordinator.schema_drift),
        "quotas": [
            {
                "key_digest": quota.scope,
                "model": quota.model,
                "cooling_until_ms": quota.until_ms,
                "rate_scale": round(
                    quota.scale_at(mirror.store_now_ms(), coordinator.quota.recovery_per_second), 3
                ),
                "per_day": quota.per_day,
                "quota_id": quota.quota_id,
                "epoch": quota.epoch,
            }
            for quota in mirror.quotas.values()
        ],
        "routes": {
            route: {
                "chain": list(chain),
                "active": _active(mirror.active.get(route)),
                "active_epoch": mirror.active[route].epoch if route in mirror.active else 0,
            }
            for route, chain in routes.items()
        },
        "breakers": {
            model: {
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
            for model, breaker in sorted((m, mirror.breaker(m)) for m in models)
        },
    }


def _active(active: ActiveModel | None) -> str | None:
    return None if active is None else active.model
