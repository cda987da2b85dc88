"""Relaying a response that is not checked event by event: streamed through unbuffered, with
back-pressure from the client's socket; and reading one whole to keep it (an error to relay
later, an answer to check)."""

from __future__ import annotations

import logging

from starlette.types import Scope

from ..config import ModelSettings
from ..telemetry import AttemptSpan
from ..transport.headers import (
    UPLOAD_URL_HEADER,
    Headers,
    client_response_headers,
    request_origin,
    rewrite_upload_url,
)
from ..transport.upstream import Upstream, UpstreamBodyError, UpstreamResponse
from .outcomes import KeptAnswer
from .respond import Responder

log = logging.getLogger("gemini_breaker.forwarding")

# An upstream error body kept to relay later if no other model answers (Google's are < 2 KiB).
MAX_KEPT_ERROR_BYTES = 64 * 1024
# The end of a unary answer kept for its token usage (which both dialects put last).
USAGE_TAIL_BYTES = 4096


async def relay(
    upstream: Upstream,
    client: Responder,
    response: UpstreamResponse,
    limits: ModelSettings,
    deadline: float,
    headers: Headers,
    usage_span: AttemptSpan | None = None,
) -> UpstreamBodyError | None:
    """Stream the response to the client; the failure if its body broke off. With
    ``usage_span``, the answer's usage is read from its end (a unary answer's last KiB)."""
    try:
        await client.start(response.status_code, headers)
        send = client.send
        tail = b""
        try:
            async for chunk in upstream.iter_body(response, limits, deadline):
                if usage_span is not None:
                    tail = (
                        chunk[-USAGE_TAIL_BYTES:]
                        if len(chunk) >= USAGE_TAIL_BYTES
                        else (tail + chunk)[-USAGE_TAIL_BYTES:]
                    )
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamBodyError as exc:
            log.warning("upstream response broke off: %s", exc.message)
            if _is_plain_sse(response):
                # The SDK raises on an in-band error event; a silent close would look whole.
                await client.stream_error(exc.status, exc.message)
            # Otherwise return without completing the response: the server then closes the
            # connection mid-body, and the client sees a truncated body as an error.
            return exc
        await client.end()
        if usage_span is not None and response.status_code == 200:
            usage_span.usage(client.dialect.usage_in_tail(tail))
        return None
    finally:
        # Never suspends: closing finishes even when the client's disconnect cancelled us.
        await response.aclose()


async def keep(
    upstream: Upstream,
    model: str,
    response: UpstreamResponse,
    limits: ModelSettings,
    deadline: float,
    most: int = MAX_KEPT_ERROR_BYTES,
) -> KeptAnswer:
    """Read a response's body (an error's, or an answer to check) and close it."""
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in upstream.iter_body(response, limits, deadline):
            size += len(chunk)
            if size > most:
                break
            parts.append(chunk)
    except UpstreamBodyError:
        pass
    finally:
        await response.aclose()  # never suspends, so a cancellation cannot cut it short
    headers = [
        (name, value)
        for name, value in client_response_headers(response.headers.raw)
        if name != b"content-length"
    ]
    return KeptAnswer(model, response.status_code, headers, b"".join(parts))


def answer_headers(
    response: UpstreamResponse, extra: Headers, scope: Scope, base_url: str, prefix: str
) -> Headers:
    """The headers a relayed answer goes out with: the upstream's, an upload URL pointing back
    at the proxy, and the proxy's own."""
    headers = client_response_headers(response.headers.raw)
    if response.headers.get("x-goog-upload-url"):
        origin = request_origin(scope["scheme"], scope["headers"], scope.get("server"))
        headers = [
            (
                name,
                rewrite_upload_url(value.decode("latin-1"), base_url, origin, prefix).encode(
                    "latin-1"
                ),
            )
            if name == UPLOAD_URL_HEADER
            else (name, value)
            for name, value in headers
        ]
    headers.extend(extra)
    return headers


def _is_plain_sse(response: UpstreamResponse) -> bool:
    content_type = response.headers.get("content-type", "")
    return content_type.startswith("text/event-stream") and not response.headers.get(
        "content-encoding"
    )
