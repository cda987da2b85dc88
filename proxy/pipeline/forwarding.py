"""The ASGI entry for every Gemini API path: parse, bound the body, hand over to an exchange.

Bodies are never re-serialised (the SDK mixes camelCase and snake_case keys and uses URL-safe
base64); responses stream back unbuffered, with back-pressure from the client's socket; a client
that disconnects cancels the upstream call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable

from starlette.types import Message, Receive, Scope, Send

from ..client_tokens import ClientTokens, without_credentials
from ..cluster.coordinator import Coordinator
from ..config import Settings
from ..dialects import DIALECTS, GEMINI, Dialect, RequestRoute
from ..dialects.vertex import VertexDialect
from ..telemetry import RequestSpan, Telemetry
from ..transport.adc import AdcTokens, CredentialsUnavailable
from ..transport.asgi_io import (
    BodyTooLarge,
    ClientDisconnected,
    declared_length,
    read_body,
    send_error,
    stream_body,
)
from ..transport.headers import Headers, redact_query
from ..transport.origins import OriginPools
from ..transport.upstream import StreamedBody, Upstream
from .capability_lookup import CapabilityLookup
from .deadlines import DeadlineBook
from .exchange import Exchange, Services
from .respond import CLIENT_CLOSED, Responder
from .retry_budget import RetryBudget

access_log = logging.getLogger("gemini_breaker.access")

# Google's per-file limit; resumable uploads stream through instead of being held in memory.
MAX_UPLOAD_BYTES = 2 * 1024**3


class Forwarder:
    """ASGI app for every Gemini API path. ``upstream`` and ``coordinator`` are set by the
    app's lifespan."""

    def __init__(self, settings: Settings, telemetry: Telemetry) -> None:
        self.settings = settings
        self.telemetry = telemetry
        self.upstream: Upstream | None = None
        self.coordinator: Coordinator | None = None
        self.capabilities = CapabilityLookup(settings)
        self.budget = RetryBudget(settings.retry_budget.ratio, settings.retry_budget.min_per_second)
        self.dialects: tuple[Dialect, ...] = (VertexDialect(settings.vertex), *DIALECTS)
        """The APIs the proxy speaks, in the order their paths are tried (a Vertex path
        would otherwise read as a Developer API resource)."""
        self.origins = OriginPools(settings.upstream)
        self.adc = AdcTokens()
        """Tokens for Vertex requests that bring no credential (fetched on first need)."""
        self.deadlines = DeadlineBook()
        """First-event deadlines learned per model on this replica (docs/design-notes.md)."""
        tokens = settings.server.client_tokens
        self.client_tokens = ClientTokens(tokens) if tokens else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        raw_path: bytes | None = scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else scope["path"]
        dialect, route = self._parse(path, scope["query_string"], scope["headers"])
        with self.telemetry.request(scope["method"], scope["headers"], route) as span:
            exchange = await self._handle(scope, receive, send, path, dialect, route, span)
            span.finish(exchange[0], exchange[1], attempts=exchange[2], fallbacks=exchange[3])
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                "%s %s%s %d model=%s attempts=%d %.1fms",
                scope["method"],
                path,
                redact_query(scope["query_string"]),
                exchange[0],
                exchange[1] or "-",
                exchange[2],
                (time.perf_counter() - started) * 1000,
            )

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        path: str,
        dialect: Dialect,
        route: RequestRoute | None,
        span: RequestSpan,
    ) -> tuple[int, str | None, int, int | None]:
        """Answer the request; returns (status, serving model, upstream attempts, fallbacks)
        for the span and the log."""
        if route is None:
            shown = path if len(path) <= 200 else path[:200] + "..."
            await send_error(
                send,
                404,
                f"{shown} is not a Gemini API path; expected /v1, /v1beta or /v1alpha "
                "followed by a resource, optionally after a prefix.",
            )
            return 404, None, 0, None
        upstream, coordinator = self.upstream, self.coordinator
        if upstream is None or coordinator is None:
            await _refuse(send, dialect, 503, "The proxy is starting; retry shortly.")
            return 503, None, 0, None
        headers: Headers = scope["headers"]
        # Upload chunks carry no key (the SDK sends none): their upload_id, issued for a
        # request that did present a token, is their credential.
        if self.client_tokens is not None and not (
            route.upload and b"upload_id=" in scope["query_string"]
        ):
            # A compatible-API caller sends its token as its bearer key.
            refusal = self.client_tokens.check(
                dialect.native_headers(headers), scope["query_string"]
            )
            if refusal is not None:
                await _refuse(send, dialect, refusal.code, refusal.message)
                return refusal.code, None, 0, None
            headers, query_string = without_credentials(headers, scope["query_string"])
            scope = {**scope, "headers": headers, "query_string": query_string}
        injected: bytes | None = None
        if isinstance(dialect, VertexDialect) and not has_credential(headers, scope):
            try:
                token = injected = await self.adc.authorization()
            except CredentialsUnavailable as exc:
                await _refuse(send, dialect, 401, f"No credentials: {exc.args[0]}")
                return 401, None, 0, None
            headers = [*headers, (b"authorization", token)]
            scope = {**scope, "headers": headers}
        limit = MAX_UPLOAD_BYTES if route.upload else self.settings.server.max_body_bytes
        length = declared_length(headers)
        if length is not None and length > limit:
            await _refuse(send, dialect, 413, BodyTooLarge(limit).args[0])
            return 413, None, 0, None
        deadline = asyncio.get_running_loop().time() + self._deadline(headers)
        body: bytes | AsyncIterable[bytes]
        if route.upload:
            sent = asyncio.Event()
            body = StreamedBody(_until_sent(stream_body(receive, limit), sent), length, deadline)
            # The body's messages are the upload's own; once it is sent, a disconnect is watched.
            receive = _after(sent, receive)
        else:
            try:
                body = await read_body(receive, limit)
            except BodyTooLarge as exc:
                await _refuse(send, dialect, 413, exc.args[0])
                return 413, None, 0, None
            except ClientDisconnected:
                return CLIENT_CLOSED, None, 0, None
            if dialect.model_in_body:
                route = dialect.with_body(route, body)
                span.routed(route)
        services = Services(
            self.settings,
            upstream,
            coordinator,
            self.budget,
            self.capabilities,
            self.telemetry,
            self.deadlines,
            dialect,
            self.origins,
        )
        exchange = Exchange(
            services,
            scope,
            send,
            route,
            body,
            deadline=deadline,
        )
        await exchange.run_cancelling_on_disconnect(receive)
        if injected is not None and exchange.status == 401:
            # Not retried here: a 401 for a fresh token means the account itself is refused,
            # and retrying every request would double the calls; the client's retry gets one.
            self.adc.reject(injected)
        return exchange.status, exchange.served_by, exchange.attempts, exchange.fallbacks

    def resends(self) -> int:
        """Requests resent on a new connection because a reused one had closed under them."""
        main = self.upstream.stale_retries if self.upstream is not None else 0
        return main + self.origins.stale_retries

    def _parse(
        self, path: str, query: bytes, headers: Headers
    ) -> tuple[Dialect, RequestRoute | None]:
        """The dialect that speaks for a path, and the request's route (None: no API's path)."""
        for dialect in self.dialects:
            route = dialect.parse(path, query, headers)
            if route is not None:
                return dialect, route
        return GEMINI, None

    def _deadline(self, headers: Headers) -> float:
        """Seconds this request may take: the configured deadline, capped by the client's
        ``X-Server-Timeout`` (the SDK sends it when the app set a timeout)."""
        deadline = self.settings.server.request_deadline
        for name, value in headers:
            if name == b"x-server-timeout":
                try:
                    client = float(value)
                except ValueError:
                    break
                if client > 0:
                    deadline = min(deadline, client)
                break
        return deadline


def has_credential(headers: Headers, scope: Scope) -> bool:
    """The request carries a token or an API key of its own."""
    if any(name in (b"authorization", b"x-goog-api-key") for name, _ in headers):
        return True
    query: bytes = scope["query_string"]
    return query.startswith(b"key=") or b"&key=" in query


async def _refuse(send: Send, dialect: Dialect, code: int, message: str) -> None:
    """Answer a request of the dialect's API before any attempt, in its error shape."""
    await Responder(send, dialect).error(code, message)


async def _until_sent(parts: AsyncIterable[bytes], sent: asyncio.Event) -> AsyncIterable[bytes]:
    """``parts``, setting ``sent`` once they are all through (or failed)."""
    try:
        async for part in parts:
            yield part
    finally:
        sent.set()


def _after(event: asyncio.Event, receive: Receive) -> Receive:
    """``receive``, called only once ``event`` is set."""

    async def receive_after() -> Message:
        await event.wait()
        return await receive()

    return receive_after
