"""Assembly: Starlette routes for ``/_sim`` and Gemini, inside the transport capture."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from email.utils import formatdate

from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.simulator.config import SimulatorConfig
from proxy.simulator.control import ControlApi
from proxy.simulator.exchange import TransportCapture
from proxy.simulator.gemini import GeminiApi
from proxy.simulator.live import LiveSimulator
from proxy.simulator.openai_compat import OpenAICompatApi
from proxy.simulator.state import SimulatorState

# What Google's front end adds to every answer (the wire reference, section 11). The simulator
# runs with uvicorn's own ``server`` and ``date`` headers off, so these are the only ones.
FRONT_END_HEADERS = (
    (b"server", b"scaffolding on HTTPServer2"),
    (b"x-xss-protection", b"0"),
    (b"x-frame-options", b"SAMEORIGIN"),
    (b"x-content-type-options", b"nosniff"),
    (b"vary", b"Origin, X-Origin, Referer"),
)


class FrontEndHeaders:
    """Adds Google's front-end headers and a ``date`` to every response start."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                date = (b"date", formatdate(usegmt=True).encode())
                headers = [*message.get("headers", ()), date, *FRONT_END_HEADERS]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class SimulatorApp:
    """The ASGI app ``create_simulator_app`` returns; ``state`` is there for in-process use."""

    def __init__(self, state: SimulatorState) -> None:
        self.state = state
        self.live = LiveSimulator()

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            state.install_configured()
            yield

        gemini = GeminiApi(state)
        self.openai = OpenAICompatApi(gemini)
        """The compatible API; its stream faults are added in process."""
        routes = [
            Mount("/_sim", routes=ControlApi(state).routes()),
            Route("/v1beta/openai/{path:path}", self.openai, methods=["GET", "POST"]),
            Route("/{path:path}", gemini),
        ]
        self._app = TransportCapture(
            FrontEndHeaders(Starlette(routes=routes, lifespan=lifespan)), state.config.close_every
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self.live(scope, receive, send)
            return
        await self._app(scope, receive, send)


def create_simulator_app(config: SimulatorConfig | None = None) -> SimulatorApp:
    """A fresh simulator with its own state; ``None`` means the default configuration."""
    return SimulatorApp(SimulatorState(config or SimulatorConfig()))
