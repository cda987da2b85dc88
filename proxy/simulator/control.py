"""The control API under ``/_sim``: faults, quotas, the attempt log and a health check.

Errors come back in Google's shape (``{"error": {"code", "message", "status"}}``) with a
message that names the bad field, e.g. ``faults[0].status: must be at least 400, got 200``.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from proxy.errors import ConfigError
from proxy.gemini.errors import JSON_CONTENT_TYPE, error_body
from proxy.simulator.config import parse_fault, parse_quota
from proxy.simulator.state import SimulatorState
from proxy.simulator.wire import pretty_json
from proxy.validation import model_name


def _json(value: Any, status: int = 200) -> Response:
    return Response(pretty_json(value) + b"\n", status, media_type=JSON_CONTENT_TYPE)


def _bad_request(message: str) -> Response:
    return Response(error_body(400, message), 400, media_type=JSON_CONTENT_TYPE)


async def _body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw) if raw.strip() else None
    except ValueError as exc:
        raise ConfigError(f"the body is not valid JSON: {exc}") from None


class ControlApi:
    """Request handlers over one ``SimulatorState``."""

    def __init__(self, state: SimulatorState) -> None:
        self.state = state

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/attempts", self.attempts, methods=["GET"]),
            Route("/attempts", self.clear_attempts, methods=["DELETE"]),
            Route("/faults", self.faults, methods=["GET"]),
            Route("/faults", self.clear_faults, methods=["DELETE"]),
            Route("/faults/{model}", self.faults, methods=["GET"]),
            Route("/faults/{model}", self.replace_faults, methods=["PUT"]),
            Route("/faults/{model}", self.add_fault, methods=["POST"]),
            Route("/faults/{model}", self.clear_faults, methods=["DELETE"]),
            Route("/quotas", self.quotas, methods=["GET"]),
            Route("/quotas", self.clear_quotas, methods=["DELETE"]),
            Route("/quotas/{model}", self.set_quota, methods=["PUT"]),
            Route("/quotas/{model}", self.clear_quotas, methods=["DELETE"]),
        ]

    async def healthz(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def attempts(self, request: Request) -> Response:
        """``?model=`` one model only; ``?since=N`` entries after seq N; ``?include_body=1``."""
        params = request.query_params
        try:
            since = int(params.get("since", "0"))
        except ValueError:
            return _bad_request("since: expected a sequence number")
        include_body = params.get("include_body", "") in ("1", "true", "yes")
        entries = self.state.attempts.list(params.get("model"), since)
        return _json([attempt.to_json(include_body) for attempt in entries])

    async def clear_attempts(self, request: Request) -> Response:
        self.state.attempts.clear()
        return _json({})

    async def faults(self, request: Request) -> Response:
        model = request.path_params.get("model")
        return _json(self.state.faults.snapshot(self.state.clock(), model))

    async def replace_faults(self, request: Request) -> Response:
        """PUT a JSON list of fault specs: it replaces the model's list (empty clears it)."""
        try:
            model = model_name(request.path_params["model"], "model")
            raw = await _body(request)
            if not isinstance(raw, list):
                raise ConfigError("expected a JSON list of fault specs")
            specs = [parse_fault(spec, f"faults[{i}]") for i, spec in enumerate(raw)]
        except ConfigError as exc:
            return _bad_request(str(exc))
        now = self.state.clock()
        self.state.faults.replace(model, specs, now)
        return _json(self.state.faults.snapshot(now, model))

    async def add_fault(self, request: Request) -> Response:
        """POST one fault spec: appended after the model's existing faults."""
        try:
            model = model_name(request.path_params["model"], "model")
            spec = parse_fault(await _body(request), "fault")
        except ConfigError as exc:
            return _bad_request(str(exc))
        now = self.state.clock()
        self.state.faults.add(model, spec, now)
        return _json(self.state.faults.snapshot(now, model))

    async def clear_faults(self, request: Request) -> Response:
        self.state.faults.clear(request.path_params.get("model"))
        return _json({})

    async def quotas(self, request: Request) -> Response:
        specs = self.state.quotas.snapshot()
        return _json({model: spec.to_json() for model, spec in specs.items()})

    async def set_quota(self, request: Request) -> Response:
        try:
            model = model_name(request.path_params["model"], "model")
            spec = parse_quota(await _body(request), "quota")
        except ConfigError as exc:
            return _bad_request(str(exc))
        self.state.quotas.set(model, spec)
        return _json({model: spec.to_json()})

    async def clear_quotas(self, request: Request) -> Response:
        self.state.quotas.clear(request.path_params.get("model"))
        return _json({})
