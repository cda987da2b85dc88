"""The operator API under ``/admin``: reads of the cluster as this replica sees it, and actions
(breaker transitions, route pins) that run as audited Lua transitions on the shared store.

Access: with ``admin.token`` set, every request needs ``Authorization: Bearer <token>``
(compared in constant time): 401 without it, 403 with a wrong one. Without a token the API is
disabled (403), unless ``admin.allow_unauthenticated_loopback`` is true and the caller is on
this machine (127.0.0.1 or ::1). Every path under ``/admin/`` is checked before anything else,
so an unauthorised caller learns nothing, not even which paths exist.
"""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from .cluster.coordinator import Coordinator
from .cluster.health import StoreUnavailable
from .cluster.state import ACTIONS, ActiveModel, BreakerState, Pin
from .cluster.store import MAX_PIN_SECONDS, StoreError
from .config import Settings
from .gemini.errors import JSON_CONTENT_TYPE, error_body
from .telemetry.alerts import AlertCounts

#: Largest JSON body an admin action accepts.
MAX_BODY_BYTES = 64 * 1024
MAX_REASON_CHARS = 1000
MAX_BY_CHARS = 200
DEFAULT_BY = "admin"
DEFAULT_AUDIT_LIMIT = 50
MAX_AUDIT_LIMIT = 1000

DISABLED_MESSAGE = (
    "The admin API is disabled: no admin token is configured. Set admin.token in the "
    "configuration (or GEMINI_BREAKER_ADMIN_TOKEN) and send 'Authorization: Bearer <token>', "
    "or set admin.allow_unauthenticated_loopback: true to allow unauthenticated calls from "
    "this machine (127.0.0.1, ::1) only."
)


class AdminAuth:
    """Who may use the admin API: bearer token (constant-time comparison), else nobody, else
    (opt-in) unauthenticated callers on loopback."""

    def __init__(self, token: str | None, allow_unauthenticated_loopback: bool = False) -> None:
        self._token = token.encode() if token else None
        self._loopback = allow_unauthenticated_loopback

    @property
    def mode(self) -> str:
        """``token``, ``loopback`` (no token, loopback callers allowed) or ``disabled``."""
        if self._token is not None:
            return "token"
        return "loopback" if self._loopback else "disabled"

    def check(self, request: Request) -> Response | None:
        """None when the request may proceed, else the refusal to send."""
        if self._token is None:
            if not self._loopback:
                return refuse(403, DISABLED_MESSAGE)
            reason = loopback_refusal(
                request.client.host if request.client else None,
                request.method,
                request.headers.get("host"),
                request.headers.get("origin"),
                request.headers.get("sec-fetch-site"),
                request.headers.get("content-type"),
            )
            return None if reason is None else refuse(403, reason)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return refuse(401, "The admin API needs an 'Authorization: Bearer <token>' header.")
        if not hmac.compare_digest(given.strip().encode(), self._token):
            return refuse(403, "The admin token is not valid.")
        return None


LOOPBACK_PEERS = frozenset({"127.0.0.1", "::1"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
CROSS_SITE_MESSAGE = "Unauthenticated admin calls are refused from another site's page."


def loopback_refusal(
    peer: str | None,
    method: str,
    host: str | None,
    origin: str | None,
    fetch_site: str | None,
    content_type: str | None,
) -> str | None:
    """Why an unauthenticated admin call is refused (None: it may proceed). Beyond the peer
    address, a web page in the operator's browser must not reach the API: not by a cross-site
    request (``Origin``, ``Sec-Fetch-Site``), nor by a form post (only JSON bodies), nor by
    DNS rebinding (a name of the attacker's resolving to 127.0.0.1: the ``Host`` shows it)."""
    if peer not in LOOPBACK_PEERS:
        return DISABLED_MESSAGE
    if host is None or _host_name(host) not in LOOPBACK_NAMES:
        return (
            "Unauthenticated admin calls must name this machine in Host: "
            "localhost, 127.0.0.1 or [::1]."
        )
    if origin is not None and urlsplit(origin).hostname not in LOOPBACK_NAMES:
        return CROSS_SITE_MESSAGE
    if fetch_site is not None and fetch_site.strip().lower() == "cross-site":
        return CROSS_SITE_MESSAGE
    media_type = (content_type or "").split(";")[0].strip().lower()
    if method == "POST" and media_type != "application/json":
        return "Admin actions take a JSON body: send Content-Type: application/json."
    return None


def _host_name(host: str) -> str:
    """The name in a ``Host`` header, without its port (``[::1]:8080`` -> ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    name, _, port = host.rpartition(":")
    return name if name and port.isdigit() else host


def refuse(code: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """A Google-shaped error (``google.rpc.Status``), as every other error of the proxy."""
    extra = dict(headers or {})
    if code == 401:
        extra["www-authenticate"] = "Bearer"
    return Response(
        error_body(code, message), status_code=code, media_type=JSON_CONTENT_TYPE, headers=extra
    )


class AdminError(Exception):
    """A request the admin API answers with an error (``code``, ``message``)."""

    def __init__(self, code: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers


Handler = Callable[[Request, Coordinator, list[str]], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class _Endpoint:
    method: str
    pattern: tuple[str, ...]
    """Path segments after ``/admin/``; ``*`` matches one segment (passed to the handler)."""
    handler: Handler

    def match(self, segments: list[str]) -> list[str] | None:
        if len(segments) != len(self.pattern):
            return None
        captured = []
        for part, segment in zip(self.pattern, segments, strict=True):
            if part == "*":
                if not segment:
                    return None
                captured.append(segment)
            elif part != segment:
                return None
        return captured


class AdminApi:
    """ASGI app for every path under ``/admin/``: checks access first, then dispatches."""

    def __init__(
        self,
        settings: Settings,
        coordinator: Callable[[], Coordinator | None],
        auth: AdminAuth,
        alerts: AlertCounts,
    ) -> None:
        self.settings = settings
        self.alerts = alerts
        self.auth = auth
        self._coordinator = coordinator
        self.endpoints = [
            _Endpoint("GET", ("state",), self._state),
            _Endpoint("GET", ("breakers",), self._breakers),
            _Endpoint("GET", ("routes",), self._routes),
            _Endpoint("GET", ("replicas",), self._replicas),
            _Endpoint("GET", ("audit",), self._audit),
            _Endpoint("GET", ("series",), self._series),
            _Endpoint("POST", ("breakers", "*", "*"), self._breaker_action),
            _Endpoint("POST", ("routes", "*", "pin"), self._pin),
            _Endpoint("POST", ("routes", "*", "unpin"), self._unpin),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        response = self.auth.check(request)
        if response is None:
            response = await self._dispatch(request)
        await response(scope, receive, send)

    async def _dispatch(self, request: Request) -> Response:
        path = request.url.path
        segments = path.removeprefix("/admin/").rstrip("/").split("/")
        allowed = []
        for endpoint in self.endpoints:
            captured = endpoint.match(segments)
            if captured is None:
                continue
            if endpoint.method != request.method:
                allowed.append(endpoint.method)
                continue
            coordinator = self._coordinator()
            if coordinator is None:
                return refuse(503, "The proxy is starting; try again in a moment.")
            try:
                return await endpoint.handler(request, coordinator, captured)
            except AdminError as exc:
                return refuse(exc.code, exc.message, exc.headers)
            except StoreUnavailable as exc:
                cause = exc.__cause__
                if isinstance(cause, StoreError):
                    return refuse(409, f"The store refused the action: {cause}")
                return refuse(503, f"The shared store is not available: {exc}")
        if allowed:
            return refuse(
                405,
                f"{request.method} is not allowed on {path}; use {', '.join(sorted(allowed))}.",
                {"allow": ", ".join(sorted(allowed))},
            )
        return refuse(404, f"No admin endpoint at {path}.")

    # -- reads --------------------------------------------------------------------------------

    async def _state(self, request: Request, coordinator: Coordinator, _: list[str]) -> Response:
        return JSONResponse(state_document(coordinator, self.alerts))

    async def _breakers(self, request: Request, coordinator: Coordinator, _: list[str]) -> Response:
        return JSONResponse(breakers_document(coordinator))

    async def _routes(self, request: Request, coordinator: Coordinator, _: list[str]) -> Response:
        return JSONResponse(routes_document(coordinator))

    async def _replicas(self, request: Request, coordinator: Coordinator, _: list[str]) -> Response:
        return JSONResponse(replicas_document(coordinator))

    async def _series(self, request: Request, coordinator: Coordinator, _: list[str]) -> Response:
        document = await coordinator.actions.series_document()
        since = document["times_ms"][0]
        entries = await coordinator.actions.audit(DEFAULT_AUDIT_LIMIT)
        document["actions"] = [
            {
                "at_ms": e.at_ms,
                "action": e.action,
                "target": e.target,
                "by": e.by,
                "reason": e.reason,
            }
            for e in reversed(entries)
            if e.at_ms >= since
        ]
        document["replica"] = coordinator.replica
        return JSONResponse(document)

    async def _audit(self, request: Request, coordinator: Coordinator, _: list[str]) -> Response:
        raw = request.query_params.get("limit", str(DEFAULT_AUDIT_LIMIT))
        try:
            limit = int(raw)
        except ValueError:
            raise AdminError(400, f"limit must be a whole number, got {raw!r}.") from None
        if not 1 <= limit <= MAX_AUDIT_LIMIT:
            raise AdminError(400, f"limit must be between 1 and {MAX_AUDIT_LIMIT}, got {limit}.")
        entries = await coordinator.actions.audit(limit)
        return JSONResponse(
            {
                "replica": coordinator.replica,
                "limit": limit,
                "entries": [
                    {
                        "id": e.id,
                        "at_ms": e.at_ms,
                        "action": e.action,
                        "target": e.target,
                        "by": e.by,
                        "reason": e.reason,
                        "via": e.via,
                        "epoch": e.epoch,
                        "result": e.result,
                    }
                    for e in entries
                ],
            }
        )

    # -- actions ------------------------------------------------------------------------------

    async def _breaker_action(
        self, request: Request, coordinator: Coordinator, captured: list[str]
    ) -> Response:
        model, action = captured[0], captured[1].replace("-", "_")
        if action not in ACTIONS:
            raise AdminError(
                404,
                f"Unknown breaker action {captured[1]!r}; use one of "
                + ", ".join(sorted(ACTIONS))
                + ".",
            )
        known = known_models(coordinator)
        if model not in known:
            raise AdminError(
                404, f"Unknown model {model!r}; known models: {', '.join(sorted(known))}."
            )
        by, reason = _who_and_why(await _body(request))
        change = await coordinator.actions.breaker(model, action, by, reason)
        assert change.breaker is not None
        return JSONResponse(
            {
                "action": action,
                "model": model,
                "by": by,
                "reason": reason,
                "epoch": change.breaker.epoch,
                "breaker": _breaker_json(change.breaker),
                "active": {route: a.model for route, a in sorted(change.active.items())},
            }
        )

    async def _pin(
        self, request: Request, coordinator: Coordinator, captured: list[str]
    ) -> Response:
        route = captured[0]
        chain = _route_chain(self.settings, route)
        body = await _body(request)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise AdminError(400, "The body needs 'model': the model to pin the route to.")
        if model not in chain:
            raise AdminError(
                400,
                f"{model!r} is not in the chain of route {route!r} ({', '.join(chain)}); "
                "a route can only be pinned to one of its own models.",
            )
        ttl = body.get("ttl_seconds")
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl):
            raise AdminError(400, "The body needs 'ttl_seconds': how long the pin holds.")
        if not 0 < ttl <= MAX_PIN_SECONDS:
            raise AdminError(
                400, f"ttl_seconds must be more than 0 and at most {MAX_PIN_SECONDS} (7 days)."
            )
        by, reason = _who_and_why(body)
        change = await coordinator.actions.pin(route, model, float(ttl), by, reason)
        assert change.pin is not None
        return JSONResponse(
            {
                "action": "pin",
                "route": route,
                "by": by,
                "reason": reason,
                "epoch": change.epoch,
                "pin": _pin_json(change.pin, change.now_ms),
                "active": _active_model(change.active.get(route)),
                "effective_chain": list(coordinator.chain_for(route)),
            }
        )

    async def _unpin(
        self, request: Request, coordinator: Coordinator, captured: list[str]
    ) -> Response:
        route = captured[0]
        _route_chain(self.settings, route)
        by, reason = _who_and_why(await _body(request))
        change = await coordinator.actions.unpin(route, by, reason)
        active = change.active.get(route) or coordinator.mirror.active.get(route)
        return JSONResponse(
            {
                "action": "unpin",
                "route": route,
                "by": by,
                "reason": reason,
                "changed": change.changed,
                "epoch": change.epoch,
                "active": _active_model(active),
                "effective_chain": list(coordinator.chain_for(route)),
            }
        )


async def _body(request: Request) -> dict[str, Any]:
    """The request's JSON object (an empty body is an empty object)."""
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY_BYTES:
            raise AdminError(413, f"The body is larger than {MAX_BODY_BYTES} bytes.")
    if not data.strip():
        return {}
    try:
        value = json.loads(data)
    except ValueError:
        raise AdminError(400, "The body is not valid JSON.") from None
    if not isinstance(value, dict):
        raise AdminError(400, "The body must be a JSON object.")
    return value


def _who_and_why(body: Mapping[str, Any]) -> tuple[str, str]:
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise AdminError(400, "The body needs 'reason': why this is done (it goes to the audit).")
    if len(reason) > MAX_REASON_CHARS:
        raise AdminError(400, f"reason is longer than {MAX_REASON_CHARS} characters.")
    by = body.get("by", DEFAULT_BY)
    if by is None:
        by = DEFAULT_BY
    if not isinstance(by, str) or not by.strip() or len(by) > MAX_BY_CHARS:
        raise AdminError(
            400, f"by must be a non-empty string of at most {MAX_BY_CHARS} characters."
        )
    return by.strip(), reason.strip()


def _route_chain(settings: Settings, route: str) -> tuple[str, ...]:
    chain = settings.routes.get(route)
    if chain is None:
        known = ", ".join(sorted(settings.routes)) or "none"
        raise AdminError(404, f"Unknown route {route!r}; configured routes: {known}.")
    return chain


def known_models(coordinator: Coordinator) -> set[str]:
    """Models an operator may act on: those of the routes, the configured ones, and any
    breaker the cluster already knows."""
    settings = coordinator.settings
    return (
        {m for chain in settings.routes.values() for m in chain}
        | set(settings.models)
        | set(coordinator.mirror.breakers)
    )


# -- documents --------------------------------------------------------------------------------


def _now_ms(coordinator: Coordinator) -> int:
    return int(coordinator.mirror.store_now_ms())


def _breaker_json(breaker: BreakerState) -> dict[str, Any]:
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


def _pin_json(pin: Pin, now_ms: float) -> dict[str, Any]:
    return {
        "model": pin.model,
        "until_ms": pin.until_ms,
        "expires_in_seconds": round(max(0.0, pin.until_ms - now_ms) / 1000, 3),
        "since_ms": pin.since_ms,
        "by": pin.by,
        "reason": pin.reason,
        "epoch": pin.epoch,
    }


def _active_model(active: ActiveModel | None) -> str | None:
    return None if active is None else active.model


def _route_json(coordinator: Coordinator, route: str, chain: tuple[str, ...]) -> dict[str, Any]:
    mirror = coordinator.mirror
    pin = mirror.pin(route)
    return {
        "chain": list(chain),
        "active": _active_model(mirror.active.get(route)),
        "active_epoch": mirror.active[route].epoch if route in mirror.active else 0,
        "pin": None if pin is None else _pin_json(pin, mirror.store_now_ms()),
    }


def _all_breakers(coordinator: Coordinator) -> list[BreakerState]:
    mirror = coordinator.mirror
    models = {m for chain in coordinator.settings.routes.values() for m in chain}
    return [mirror.breaker(m) for m in sorted(models | set(mirror.breakers))]


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
        "breakers": {b.model: _breaker_json(b) for b in _all_breakers(coordinator)},
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
                **_breaker_json(b),
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
