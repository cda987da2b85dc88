"""The application factory: the proxy's ASGI app built from validated settings."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .client_tokens import describe_access
from .cluster.connect import StoreClient, store_client
from .cluster.coordinator import Coordinator
from .config import DEFAULT_ROUTES, Settings
from .config_load import SETTINGS_JSON_ENV, build_settings
from .live.metrics import watch_sessions
from .live.relay import LiveRelay
from .live.sessions import LiveSessions
from .operators.admin import AdminApi
from .operators.admin_auth import AdminAuth
from .operators.static_assets import PREFIX as STATIC_PREFIX
from .operators.static_assets import load_assets, static_endpoint
from .operators.status_page import status_page
from .pipeline.forwarding import Forwarder
from .telemetry import Telemetry, view_of
from .transport.asgi_io import dated
from .transport.upstream import Upstream

log = logging.getLogger("gemini_breaker")

# Collector thresholds of a serving process (Python's defaults: 700, 10, 10).
GC_THRESHOLDS = (50_000, 50, 100)
# The operator's paths; every other path is the forwarder's (see ``ProxyApp``).
OPERATOR_PATHS = frozenset({"/healthz", "/metrics", "/readyz"})
ADMIN_PREFIX = "/admin/"


class ProxyApp:
    """The ASGI entry. Gemini API calls go straight to the forwarder; the operator's few
    routes and the lifespan go through Starlette. Starlette's routing and its two middlewares
    wrapped every ``send`` of every relayed chunk (about 5% of the CPU per request and per
    stream event, docs/performance.md); the forwarder answers its own errors."""

    __slots__ = ("forwarder", "live", "operator")

    def __init__(self, operator: Starlette, forwarder: Forwarder, live: LiveRelay) -> None:
        self.operator = operator
        self.forwarder = forwarder
        self.live = live

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path not in OPERATOR_PATHS and not path.startswith(ADMIN_PREFIX):
                await self.forwarder(scope, receive, send)
                return
            send = dated(send)
        elif scope["type"] == "websocket":
            await self.live(scope, receive, send)
            return
        await self.operator(scope, receive, send)


def tune_collector() -> None:
    """For a serving process, once its app is built: what start-up built lives as long as the
    process, so the collector stops walking it again and again, and collects less often
    (thousands of open streams are many objects; full collections were the longest pauses)."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def create_app(
    settings: Settings, replica: str | None = None, telemetry: Telemetry | None = None
) -> ProxyApp:
    """The proxy as an ASGI app. The upstream client and the cluster coordinator live for
    the app's lifespan; nothing is connected before it starts. ``telemetry`` is for tests
    that read spans back."""
    replica = replica or f"{socket.gethostname()}:{os.getpid()}"
    telemetry = telemetry or Telemetry(
        replica=replica, otlp_endpoint=settings.telemetry.otlp_endpoint, prometheus=True
    )
    telemetry.declare(settings.routes)
    telemetry.vocabulary.know(settings.named_models)
    forwarder = Forwarder(settings, telemetry)
    live = LiveRelay(settings, LiveSessions(), telemetry, forwarder.adc)
    watch_sessions(telemetry.meter_provider.get_meter("gemini_breaker.live"), live.sessions)
    auth = AdminAuth(settings.admin.token, settings.admin.allow_unauthenticated_loopback)
    admin = AdminApi(
        settings, lambda: forwarder.coordinator, auth, telemetry.alerts, live.sessions.view
    )
    assets = load_assets()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        redis = _store_client(settings)
        coordinator = Coordinator(
            settings, redis, embedded=not settings.redis.shared, replica=replica
        )
        if coordinator.embedded:
            log.warning(
                "no redis.url, redis.sentinel or redis.cluster: breaker state lives in this "
                "process only and is NOT shared with other replicas (embedded single-replica store)"
            )
        coordinator.mirror.on_transition = telemetry.breaker_transition
        coordinator.sync.tallies = telemetry.tallies
        await coordinator.start()
        telemetry.watch_cluster(lambda: view_of(forwarder.coordinator))
        telemetry.watch_resends(forwarder.resends)
        log.info(
            "admin API: %s",
            {
                "token": "bearer token required",
                "loopback": "no token; open to unauthenticated callers on loopback only",
                "disabled": "disabled (set admin.token or GEMINI_BREAKER_ADMIN_TOKEN)",
            }[auth.mode],
        )
        async with Upstream.create_client(settings.upstream) as client:
            forwarder.upstream = Upstream(settings.upstream, client)
            forwarder.capabilities.upstream = forwarder.upstream
            forwarder.coordinator = coordinator
            live.coordinator = coordinator
            log.info(
                "replica %s forwarding to %s; routes: %s%s",
                replica,
                settings.upstream.base_url,
                ", ".join(f"{k} -> {' > '.join(v)}" for k, v in settings.routes.items()) or "none",
                " (the default chains; 'routes: {}' turns them off)"
                if settings.routes == {k: tuple(v) for k, v in DEFAULT_ROUTES.items()}
                else "",
            )
            log.log(*describe_access(settings))
            try:
                yield
            finally:
                live.coordinator = None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5.0):
                        await live.sessions.drain()
                forwarder.upstream = None
                forwarder.coordinator = None
                forwarder.capabilities.upstream = None
                await forwarder.capabilities.stop()
                await forwarder.origins.aclose()
                await coordinator.stop()
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    async with asyncio.timeout(2.0):
                        await redis.aclose()
                # Off the event loop: a configured OTLP exporter flushes over the network.
                await asyncio.to_thread(telemetry.shutdown)

    async def metrics(request: Request) -> Response:
        exposition = telemetry.render_metrics(request.headers.get("accept"))
        if exposition is None:
            return Response(status_code=404)
        return Response(exposition.body, media_type=exposition.content_type)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        coordinator = forwarder.coordinator
        if coordinator is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        # A degraded store does not make the replica unready: fail-static keeps serving.
        return JSONResponse(
            {"status": "ready", "store": "degraded" if coordinator.degraded else "ok"}
        )

    operator = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            # The page holds no data; its fetches go through AdminApi (see status_page.py).
            Route("/admin/status", status_page(auth, assets), methods=["GET"]),
            Route(STATIC_PREFIX + "{name:path}", static_endpoint(auth, assets), methods=["GET"]),
            Route("/admin/{rest:path}", admin),  # every method: AdminApi checks access first
            # Reached only for the operator's paths with another method (as before ProxyApp).
            Route("/{path:path}", forwarder),
        ],
        lifespan=lifespan,
    )
    return ProxyApp(operator, forwarder, live)


def create_app_from_environment() -> ProxyApp:
    """Factory for worker processes: the parent passes its merged configuration along."""
    app = create_app(build_settings(json.loads(os.environ[SETTINGS_JSON_ENV])))
    tune_collector()
    return app


def _store_client(settings: Settings) -> StoreClient:
    """The Redis client of the configured topology, or the in-process fakeredis that runs
    the same scripts (see ``proxy.cluster.connect``)."""
    return store_client(settings.redis)
