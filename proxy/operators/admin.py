"""The operator API under ``/admin``: reads of the cluster as this replica sees it, and actions
(breaker transitions, route pins) that run as audited Lua transitions on the shared store.

Access is checked (``admin_auth``) on every path under ``/admin/`` before anything else, so an
unauthorised caller learns nothing, not even which paths exist.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from ..cluster.coordinator import Coordinator
from ..cluster.health import StoreUnavailable
from ..cluster.state import ACTIONS
from ..cluster.store import MAX_PIN_SECONDS, StoreError
from ..config import Settings
from ..errors import OperatorError
from ..telemetry.alerts import AlertCounts
from .admin_auth import AdminAuth, refuse
from .admin_documents import (
    active_model_name,
    breaker_json,
    breakers_document,
    pin_json,
    replicas_document,
    routes_document,
    state_document,
)

#: Largest JSON body an admin action accepts.
MAX_BODY_BYTES = 64 * 1024
MAX_REASON_CHARS = 1000
MAX_BY_CHARS = 200
DEFAULT_BY = "admin"
DEFAULT_AUDIT_LIMIT = 50
MAX_AUDIT_LIMIT = 1000


class AdminError(OperatorError):
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
        live_sessions: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.settings = settings
        self._live_sessions = live_sessions
        self.auth = auth
        self.alerts = alerts
        self._coordinator = coordinator
        self.endpoints = [
            _Endpoint("GET", ("state",), self._state),
            _Endpoint("GET", ("breakers",), self._breakers),
            _Endpoint("GET", ("routes",), self._routes),
            _Endpoint("GET", ("replicas",), self._replicas),
            _Endpoint("GET", ("audit",), self._audit),
            _Endpoint("GET", ("series",), self._series),
            _Endpoint("GET", ("live",), self._live),
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

    async def _live(self, request: Request, coordinator: Coordinator, _: list[str]) -> Response:
        """This replica's Live API sessions: open per model, setup failures, resumptions."""
        return JSONResponse(self._live_sessions())

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
                "breaker": breaker_json(change.breaker),
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
                "pin": pin_json(change.pin, change.now_ms),
                "active": active_model_name(change.active.get(route)),
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
                "active": active_model_name(active),
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


def known_models(coordinator: Coordinator) -> frozenset[str]:
    """Models an operator may act on: those of the routes, the configured ones, and any
    breaker the cluster already knows."""
    settings = coordinator.settings
    return settings.routed_models | set(settings.models) | set(coordinator.mirror.breakers)
