"""Small ASGI helpers: bounded request bodies and Google-shaped error responses."""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.types import Message, Receive, Send

from ..errors import PipelineError
from ..gemini.errors import JSON_CONTENT_TYPE, error_body
from .headers import date_header


class ClientDisconnected(PipelineError):
    """The client went away before its request was read."""


class BodyTooLarge(PipelineError):
    """The request body is larger than the configured limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"Request payload size exceeds the limit: {limit} bytes.")
        self.limit = limit


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, refusing it as soon as it exceeds ``limit`` bytes."""
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnected
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise BodyTooLarge(limit)
        return body
    if len(body) > limit:
        raise BodyTooLarge(limit)
    parts = [body]
    try:
        async for chunk in stream_body(receive, limit - len(body)):
            parts.append(chunk)
    except BodyTooLarge:
        raise BodyTooLarge(limit) from None
    return b"".join(parts)


async def stream_body(receive: Receive, limit: int) -> AsyncIterator[bytes]:
    """The request body as it arrives, for uploads too large to hold in memory."""
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        more = message.get("more_body", False)
        if chunk:
            yield chunk


async def send_error(
    send: Send,
    code: int,
    message: str,
    status: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Answer with a ``google.rpc.Status`` body, so the SDK raises the matching exception."""
    body = error_body(code, message, status)
    await send(
        {
            "type": "http.response.start",
            "status": code,
            "headers": [
                (b"content-type", JSON_CONTENT_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                date_header(),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def dated(send: Send) -> Send:
    """``send`` that adds a ``date`` header to a response start that has none (for the
    operator's routes, which are not on the hot path)."""

    async def send_dated(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            if not any(name.lower() == b"date" for name, _ in headers):
                message = {**message, "headers": [*headers, date_header()]}
        await send(message)

    return send_dated
