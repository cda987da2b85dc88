"""The application factory: a Starlette app built from validated settings."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .config import Settings
from .forwarding import Forwarder
from .upstream import Upstream

log = logging.getLogger("gemini_breaker")


def create_app(settings: Settings) -> Starlette:
    """The proxy as an ASGI app. The upstream client lives for the app's lifespan."""
    forwarder = Forwarder(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with Upstream.create_client(settings.upstream) as client:
            forwarder.upstream = Upstream(settings.upstream, client)
            log.info(
                "forwarding to %s; %d route(s): %s",
                settings.upstream.base_url,
                len(settings.routes),
                ", ".join(f"{k} -> {' > '.join(v)}" for k, v in settings.routes.items()) or "none",
            )
            try:
                yield
            finally:
                forwarder.upstream = None

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        if forwarder.upstream is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ready"})

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/{path:path}", forwarder),
        ],
        lifespan=lifespan,
    )
