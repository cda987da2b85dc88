"""The pass-through: Gemini API calls forwarded upstream byte-for-byte.

Bodies are never re-serialised (the SDK mixes camelCase and snake_case keys and uses URL-safe
base64); responses stream back unbuffered, with back-pressure from the client's socket; a client
that disconnects cancels the upstream call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterable

import anyio
import httpx
from starlette.types import Receive, Scope, Send

from .asgi_io import (
    BodyTooLarge,
    ClientDisconnected,
    declared_length,
    read_body,
    send_error,
    stream_body,
)
from .config import ModelSettings, Settings
from .gemini.errors import sse_error_event
from .gemini.paths import GeminiPath, parse_path
from .headers import (
    MODEL_HEADER,
    UPLOAD_URL_HEADER,
    Headers,
    client_response_headers,
    redact_query,
    request_origin,
    rewrite_upload_url,
    upstream_request_headers,
)
from .upstream import Upstream, UpstreamBodyError, UpstreamError

access_log = logging.getLogger("gemini_breaker.access")
log = logging.getLogger("gemini_breaker.forwarding")

# Model calls that a route's chain applies to. Other model calls (batch jobs, metadata) go to
# the model the client named.
ROUTED_METHODS = frozenset(
    {
        "generateContent",
        "streamGenerateContent",
        "countTokens",
        "embedContent",
        "batchEmbedContents",
    }
)
# Google's per-file limit; resumable uploads stream through instead of being held in memory.
MAX_UPLOAD_BYTES = 2 * 1024**3
CLIENT_CLOSED = 499


class Forwarder:
    """ASGI app for every Gemini API path. ``upstream`` is set by the app's lifespan."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.upstream: Upstream | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        raw_path: bytes | None = scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else scope["path"]
        gemini_path = parse_path(path)
        model = self._serving_model(gemini_path)
        status = await self._handle(scope, receive, send, path, gemini_path, model)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                "%s %s%s %d model=%s %.1fms",
                scope["method"],
                path,
                redact_query(scope["query_string"]),
                status,
                model or "-",
                (time.perf_counter() - started) * 1000,
            )

    def _serving_model(self, gemini_path: GeminiPath | None) -> str | None:
        """The model that serves this call: the first of its route's chain.

        Failover along the chain comes with the circuit breakers.
        """
        if gemini_path is None or gemini_path.model is None:
            return None
        if gemini_path.method not in ROUTED_METHODS:
            return None
        return self.settings.chain_for(gemini_path.model)[0]

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        path: str,
        gemini_path: GeminiPath | None,
        model: str | None,
    ) -> int:
        extra = [(MODEL_HEADER, model.encode())] if model else []
        if gemini_path is None:
            shown = path if len(path) <= 200 else path[:200] + "..."
            await send_error(
                send,
                404,
                f"{shown} is not a Gemini API path; expected /v1, /v1beta or /v1alpha "
                "followed by a resource, optionally after a prefix.",
            )
            return 404
        upstream = self.upstream
        if upstream is None:
            await send_error(send, 503, "The proxy is starting; retry shortly.")
            return 503
        headers: Headers = scope["headers"]
        limit = MAX_UPLOAD_BYTES if gemini_path.upload else self.settings.server.max_body_bytes
        length = declared_length(headers)
        if length is not None and length > limit:
            await send_error(send, 413, BodyTooLarge(limit).args[0], headers=extra)
            return 413
        body: bytes | AsyncIterable[bytes]
        if gemini_path.upload:
            body = stream_body(receive, limit)
        else:
            try:
                body = await read_body(receive, limit)
            except BodyTooLarge as exc:
                await send_error(send, 413, exc.args[0], headers=extra)
                return 413
            except ClientDisconnected:
                return CLIENT_CLOSED
        exchange = _Exchange(upstream, self.settings, scope, send, gemini_path, model, body, extra)
        if isinstance(body, bytes):
            return await exchange.run_cancelling_on_disconnect(receive)
        return await exchange.run()


class _Exchange:
    """One request's trip upstream and back."""

    def __init__(
        self,
        upstream: Upstream,
        settings: Settings,
        scope: Scope,
        send: Send,
        gemini_path: GeminiPath,
        model: str | None,
        body: bytes | AsyncIterable[bytes],
        extra_headers: Headers,
    ) -> None:
        self.upstream = upstream
        self.settings = settings
        self.scope = scope
        self.send = send
        self.path = gemini_path
        self.model = model
        self.body = body
        self.extra_headers = extra_headers
        self.limits: ModelSettings = settings.model_settings(model or gemini_path.model)
        self.status = CLIENT_CLOSED

    async def run_cancelling_on_disconnect(self, receive: Receive) -> int:
        """Run, but give up (closing the upstream call) as soon as the client disconnects."""
        async with anyio.create_task_group() as group:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                self.status = CLIENT_CLOSED
                group.cancel_scope.cancel()

            group.start_soon(watch)
            await self.run()
            group.cancel_scope.cancel()
        return self.status

    async def run(self) -> int:
        scope = self.scope
        try:
            response = await self.upstream.open(
                scope["method"],
                self.path.path_for(self.model),
                scope["query_string"],
                upstream_request_headers(
                    scope["headers"], scope["query_string"], self.settings.upstream.api_key
                ),
                self.body,
                self.limits,
            )
        except UpstreamError as exc:
            self.status = exc.status
            await send_error(self.send, exc.status, exc.message, headers=self.extra_headers)
            return self.status
        except BodyTooLarge as exc:
            self.status = 413
            await send_error(self.send, 413, exc.args[0], headers=self.extra_headers)
            return self.status
        except ClientDisconnected:
            return self.status
        try:
            await self._relay(response)
        finally:
            # Shielded: closing must finish even when the client's disconnect cancelled us.
            with anyio.CancelScope(shield=True):
                await response.aclose()
        return self.status

    async def _relay(self, response: httpx.Response) -> None:
        headers = client_response_headers(response.headers.raw)
        if response.headers.get("x-goog-upload-url"):
            headers = self._rewrite_upload_url(headers)
        headers.extend(self.extra_headers)
        self.status = response.status_code
        await self.send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers}
        )
        send = self.send
        try:
            async for chunk in self.upstream.iter_body(response, self.limits):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamBodyError as exc:
            log.warning("upstream response broke off: %s", exc.message)
            if _is_plain_sse(response):
                # The SDK raises on an in-band error event; a silent close would look whole.
                await send(
                    {
                        "type": "http.response.body",
                        "body": sse_error_event(exc.status, exc.message),
                        "more_body": False,
                    }
                )
            # Otherwise return without completing the response: the server then closes the
            # connection mid-body, and the client sees a truncated body as an error.
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _rewrite_upload_url(self, headers: Headers) -> Headers:
        origin = request_origin(
            self.scope["scheme"], self.scope["headers"], self.scope.get("server")
        )
        return [
            (
                name,
                rewrite_upload_url(
                    value.decode("latin-1"), self.upstream.base_url, origin, self.path.prefix
                ).encode("latin-1"),
            )
            if name == UPLOAD_URL_HEADER
            else (name, value)
            for name, value in headers
        ]


def _is_plain_sse(response: httpx.Response) -> bool:
    content_type = response.headers.get("content-type", "")
    return content_type.startswith("text/event-stream") and not response.headers.get(
        "content-encoding"
    )
