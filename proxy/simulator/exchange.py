"""One HTTP exchange at the ASGI level, with the misbehaviours faults need.

Faults need more than a response object offers: pausing while noticing that the client left,
never answering, and resetting the TCP connection. ASGI has no way to do the last one, so
``TransportCapture`` (the outermost app) finds uvicorn's transport and puts it in the scope.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import weakref
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.errors import SimulatorError
from proxy.simulator.attempts import Attempt
from proxy.simulator.wire import Reply

TRANSPORT_EXTENSION = "gemini_sim.transport"
# The set of connections whose next request is reset unread (``Exchange.close_before_next``).
DOOMED_EXTENSION = "gemini_sim.doomed"
# How long to wait for the server to notice a connection we aborted ourselves.
_ABORT_SETTLE_SECONDS = 5.0


class TransportUnavailableError(SimulatorError, RuntimeError):
    """The server's connection is out of reach, so a connection reset cannot be simulated.

    The simulator must run directly under uvicorn (not in-process through an ASGI test
    transport, nor under middleware that wraps ``send`` outside ``create_simulator_app``).
    """


class TransportCapture:
    """Outermost ASGI app: records the connection's transport in ``scope["extensions"]``, and
    closes connections the way Google's front ends do (``close_every``, ``close_before_next``).

    uvicorn passes its ``RequestResponseCycle.send`` bound method as ``send``; the cycle holds
    the ``asyncio.Transport`` (in both the h11 and the httptools implementations). Anything
    that wraps ``send`` hides it, which is why this has to be the first thing to see it.
    """

    def __init__(self, app: ASGIApp, close_every: int = 0) -> None:
        self.app = app
        self.close_every = close_every
        self.responses = 0
        self.doomed: weakref.WeakSet[Any] = weakref.WeakSet()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        if transport is None or not hasattr(transport, "abort"):
            await self.app(scope, receive, send)
            return
        if transport in self.doomed:
            self.doomed.discard(transport)
            await reset(transport, receive)
            return
        extensions = dict(scope.get("extensions") or {})
        extensions[TRANSPORT_EXTENSION] = transport
        extensions[DOOMED_EXTENSION] = self.doomed
        await self.app({**scope, "extensions": extensions}, receive, send)
        self.responses += 1
        if self.close_every and self.responses % self.close_every == 0:
            transport.close()  # after the response's bytes, a FIN: no header announced it


async def reset(transport: Any, receive: Receive) -> None:
    """Reset the connection (RST, not FIN) and wait until the server has seen it go."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    # Let the server see the connection go before the app returns, or it would log
    # "returned without starting response" and try to answer 500 on a dead socket.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_ABORT_SETTLE_SECONDS):
            while (await receive())["type"] != "http.disconnect":
                pass


class Exchange:
    """The request side (body, disconnect) and response side (status, bytes, reset)."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, attempt: Attempt) -> None:
        self.scope = scope
        self.attempt = attempt
        self._receive = receive
        self._send = send
        self._gone = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._finished = False
        self._aborted = False

    @property
    def client_gone(self) -> bool:
        return self._gone.is_set()

    async def read_body(self, limit: int) -> bytes | None:
        """The whole request body, or None once it grows past ``limit``."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._client_left()
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def reply(self, reply: Reply) -> None:
        headers = list(reply.headers)
        if reply.content_type is not None:
            headers.append(("content-type", reply.content_type))
        headers.append(("content-length", str(len(reply.body))))
        await self.start(reply.status, headers)
        await self.write(reply.body, more=False)

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.attempt.status = status
        await self._send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )

    async def write(self, data: bytes, *, more: bool = True) -> None:
        message: Message = {"type": "http.response.body", "body": data, "more_body": more}
        await self._send(message)
        if not more:
            self._finished = True

    async def pause(self, seconds: float) -> bool:
        """Wait, unless the client leaves first; True if it is still there."""
        if self._gone.is_set():
            return False
        if seconds <= 0:
            return True
        self._watch()
        try:
            await asyncio.wait_for(self._gone.wait(), seconds)
        except TimeoutError:
            return True
        return False

    async def wait_for_disconnect(self) -> None:
        """Never answer: wait until the client gives up."""
        self._watch()
        await self._gone.wait()

    async def abort(self) -> None:
        """Reset the connection: RST, not FIN (SO_LINGER 0), with nothing more sent."""
        transport: Any = (self.scope.get("extensions") or {}).get(TRANSPORT_EXTENSION)
        if transport is None:
            raise TransportUnavailableError(
                "cannot reset the connection: the server transport is not reachable "
                "(run the simulator under uvicorn, with create_simulator_app outermost)"
            )
        self._aborted = True
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        # Let the server see the connection go before the app returns, or it would log
        # "returned without starting response" and try to answer 500 on a dead socket.
        self._watch()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._gone.wait(), _ABORT_SETTLE_SECONDS)

    def close_before_next(self) -> None:
        """Reset this connection, unread, when the next request arrives on it."""
        doomed = (self.scope.get("extensions") or {}).get(DOOMED_EXTENSION)
        transport = (self.scope.get("extensions") or {}).get(TRANSPORT_EXTENSION)
        if doomed is None or transport is None:
            raise TransportUnavailableError(
                "cannot close the connection: the server transport is not reachable "
                "(run the simulator under uvicorn, with create_simulator_app outermost)"
            )
        doomed.add(transport)

    async def close(self) -> None:
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    def _watch(self) -> None:
        # Only started when a fault needs it: a plain answer costs no extra task.
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch_disconnect())

    async def _watch_disconnect(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._client_left()
                return

    def _client_left(self) -> None:
        if not self._finished and not self._aborted:
            self.attempt.client_disconnected = True
        self._gone.set()
