"""Assembly: Starlette routes for ``/_sim`` and Gemini, inside the transport capture."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from proxy.simulator.config import SimulatorConfig
from proxy.simulator.control import ControlApi
from proxy.simulator.exchange import TransportCapture
from proxy.simulator.gemini import GeminiApi
from proxy.simulator.state import SimulatorState


class SimulatorApp:
    """The ASGI app ``create_simulator_app`` returns; ``state`` is there for in-process use."""

    def __init__(self, state: SimulatorState) -> None:
        self.state = state

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            state.install_configured()
            yield

        routes = [
            Mount("/_sim", routes=ControlApi(state).routes()),
            Route("/{path:path}", GeminiApi(state)),
        ]
        self._app = TransportCapture(
            Starlette(routes=routes, lifespan=lifespan), state.config.close_every
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


def create_simulator_app(config: SimulatorConfig | None = None) -> SimulatorApp:
    """A fresh simulator with its own state; ``None`` means the default configuration."""
    return SimulatorApp(SimulatorState(config or SimulatorConfig()))
