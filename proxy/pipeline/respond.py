"""The client's side of an exchange, and the answers the proxy writes itself: a kept upstream
answer, its own errors, a shed 429, "no model available".

Relayed answers (``unary_relay``, ``stream_relay``) send through the same ``Responder`` so the
exchange knows the status it gave and whether the response is finishing (a disconnect seen
after that is the server's normal end of a response, not the client leaving).
"""

from __future__ import annotations

import math

from starlette.types import Send

from ..cluster.coordinator import Shed
from ..dialects import Dialect
from ..gemini.errors import JSON_CONTENT_TYPE
from ..gemini.quota import shed_body
from ..transport.headers import Headers, date_header
from .outcomes import KeptAnswer, Reply

CLIENT_CLOSED = 499

MODEL_HEADER = b"x-gemini-breaker-model"
FALLBACKS_HEADER = b"x-gemini-breaker-fallbacks"
ATTEMPTS_HEADER = b"x-gemini-breaker-attempts"
SHED_HEADER = b"x-gemini-breaker-shed"


class Responder:
    """Sends to one client, in its API's dialect; ``status`` is what it was told (499 until
    then)."""

    __slots__ = ("dialect", "finishing", "send", "status")

    def __init__(self, send: Send, dialect: Dialect) -> None:
        self.send = send
        self.dialect = dialect
        self.status = CLIENT_CLOSED
        self.finishing = False
        """The response's last message is being sent."""

    async def start(self, status: int, headers: Headers) -> None:
        self.status = status
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def end(self, body: bytes = b"") -> None:
        """Send the response's last message."""
        self.finishing = True
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def stream_error(self, code: int, message: str) -> None:
        """End a stream that broke after it started with an in-band error (the SDK raises on
        it; a silent close would look whole)."""
        await self.end(self.dialect.stream_error(code, message))

    async def error(self, code: int, message: str, extra: Headers | None = None) -> None:
        """The proxy's own error, in the shape the client's SDK raises as an exception."""
        body = self.dialect.error_body(code, message)
        headers = [
            (b"content-type", self.dialect.error_content_type),
            (b"content-length", str(len(body)).encode()),
            date_header(),
            *(extra or []),
        ]
        self.status = code
        self.finishing = True
        await self.send({"type": "http.response.start", "status": code, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})

    async def reply(self, reply: Reply, attempts: int, retry_after: float | None = None) -> None:
        """Answer with a failure: a kept upstream error, or the proxy's error about a model.
        A 429's ``retry_after`` becomes a Retry-After header (Gemini sends none; clients and
        SDK retry helpers understand one)."""
        extra = _served_by(reply.model, attempts)
        if not isinstance(reply, KeptAnswer):
            await self.error(reply.status, reply.message, extra)
            return
        if retry_after is not None:
            extra.append((b"retry-after", _seconds(retry_after)))
        await self._send_kept(reply, extra)

    async def answer(self, kept: KeptAnswer, attempts: int, more: Headers) -> None:
        """Send an answer that was held to be checked, and passed."""
        await self._send_kept(kept, [*_served_by(kept.model, attempts), *more])

    async def _send_kept(self, kept: KeptAnswer, extra: Headers) -> None:
        headers = [
            *(h for h in kept.headers if h[0] != b"retry-after"),
            (b"content-length", str(len(kept.body)).encode()),
            *extra,
        ]
        self.finishing = True
        await self.start(kept.status, headers)
        await self.send({"type": "http.response.body", "body": kept.body})

    async def shed(self, model: str, shed: Shed) -> None:
        """A 429 of the proxy's own quota gate (cooldown, pacing, throttle, cluster budget)."""
        body = self.dialect.status_body(
            shed_body(model, shed.retry_after, shed.message, shed.quota_id)
        )
        headers = [
            (b"content-type", JSON_CONTENT_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", _seconds(shed.retry_after)),
            date_header(),
            (MODEL_HEADER, model.encode()),
            (SHED_HEADER, shed.reason.encode()),
        ]
        self.finishing = True
        await self.start(429, headers)
        await self.send({"type": "http.response.body", "body": body})

    async def unavailable(self, requested: str, skipped: list[str], retry_after: int) -> None:
        """Every model of the chain refused admission: shed at once, saying when to return."""
        await self.error(
            503,
            f"No model of the route for {requested} is available right now: "
            f"{', '.join(skipped)} are not admitting requests (circuit breakers open). "
            f"Retry in {retry_after} s.",
            [(b"retry-after", str(retry_after).encode())],
        )


def unavailable_retry_after(open_for_ms: list[float]) -> int:
    """Whole seconds until the first open breaker of the chain may admit again (at least 1)."""
    return max(1, math.ceil(min(open_for_ms) / 1000)) if open_for_ms else 1


def _served_by(model: str, attempts: int) -> Headers:
    return [(MODEL_HEADER, model.encode()), (ATTEMPTS_HEADER, str(attempts).encode())]


def _seconds(delay: float) -> bytes:
    return str(max(1, math.ceil(delay))).encode()
