"""The one pooled upstream HTTP client, with per-model deadlines.

The client is the project's own (``proxy/transport/http_client.py``): with 8 requests in
flight against the same canned upstream (``bench/upstream_clients.py``) it spends about 23 us
of CPU per request, where httpx spent 760-2,100 us and aiohttp about 280 us
(docs/performance.md).

Failures are raised as ``UpstreamError`` subclasses that carry the status and message the
client should see; nothing from the upstream URL (which may carry ``?key=``) goes into them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from typing import Any, overload
from urllib.parse import urlsplit

from ..config import ModelSettings, UpstreamSettings
from ..errors import TransportError
from ..pipeline.deadlines import FIRST_EVENT, GAP, HEADERS
from . import http_client, http_connection, http_errors
from .egress import proxy_for
from .headers import Headers

log = logging.getLogger("gemini_breaker.upstream")

# Requests that may go out once more when a reused connection turned out closed before any
# byte of the answer came: idempotent methods, and the model calls that change nothing.
REPLAYABLE_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
REPLAYABLE_CALLS = (
    ":generateContent",
    ":streamGenerateContent",
    ":countTokens",
    ":embedContent",
    ":batchEmbedContents",
)


class UpstreamError(TransportError):
    """A failure talking to the upstream; ``status`` and ``message`` are for the client."""

    status: int = 502

    def __init__(
        self, message: str, status: int | None = None, deadline: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.deadline = deadline
        """For a wait that ran out: which limit it was (``deadlines.HEADERS``, ``GAP`` ...)."""


class UpstreamUnreachable(UpstreamError):
    """No connection could be made, or it broke before the response headers."""

    status = 502


class OriginUnreachable(UpstreamUnreachable):
    """The upstream could not be reached at all (name resolution, refused, TLS, egress proxy):
    no other model of the same upstream can help, and no model is to blame."""

    status = 502


class UpstreamTimeout(UpstreamError):
    """Connecting or waiting for the response headers took longer than allowed."""

    status = 504


class UpstreamBusy(UpstreamError):
    """Every pooled connection is in use and none freed up in time."""

    status = 503


class UpstreamBodyError(UpstreamError):
    """The response body broke off, or stalled, after the headers were received."""

    status = 502


class StreamedBody:
    """A request body that arrives in parts (an upload), with the length the client declared
    (None: sent chunked) and the deadline by which it must be sent and answered."""

    __slots__ = ("deadline", "length", "parts")

    def __init__(self, parts: AsyncIterable[bytes], length: int | None, deadline: float) -> None:
        self.parts = parts
        self.length = length
        self.deadline = deadline

    def __aiter__(self) -> AsyncIterator[bytes]:
        return aiter(self.parts)


def replayable(method: str, path: str) -> bool:
    """Whether the request may be sent twice (see ``REPLAYABLE_METHODS``)."""
    return method in REPLAYABLE_METHODS or (method == "POST" and path.endswith(REPLAYABLE_CALLS))


class ResponseHeaders:
    """The response's headers: ``raw`` pairs as received, ``get`` by any-case name."""

    __slots__ = ("_response", "raw")

    def __init__(self, response: http_connection.Response) -> None:
        self.raw: Headers = response.raw_headers
        self._response = response

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...
    def get(self, name: str, default: str | None = None) -> str | None:
        return self._response.header(name, default)


class UpstreamResponse:
    """An upstream answer whose headers arrived; its body is read with ``Upstream.iter_body``
    (or ``aread``) and it must be closed with ``aclose`` (which frees the connection)."""

    __slots__ = ("_on_close", "headers", "reader", "status_code")

    def __init__(self, response: http_connection.Response, on_close: Upstream) -> None:
        self.reader = response
        """The body's reader (``Upstream.iter_body`` reads it directly)."""
        self._on_close: Upstream | None = on_close
        self.status_code = response.status
        self.headers = ResponseHeaders(response)

    async def next_chunk(self) -> bytes:
        """The next part of the body as it arrived (still encoded); b"" at its end."""
        try:
            return await self.reader.readany()
        except http_errors.HTTPClientError:
            raise UpstreamBodyError("The upstream broke off the response: ReadError.") from None

    async def aread(self) -> bytes:
        """The whole body (for small documents only)."""
        parts = []
        while chunk := await self.next_chunk():
            parts.append(chunk)
        return b"".join(parts)

    async def aclose(self) -> None:
        # A body read to its end gives the connection back to the pool; otherwise it is closed.
        self.reader.release()
        upstream, self._on_close = self._on_close, None
        if upstream is not None:
            upstream.in_flight -= 1


class Upstream:
    """Sends requests to the configured upstream over one shared connection pool."""

    def __init__(self, settings: UpstreamSettings, pool: http_client.ConnectionPool) -> None:
        self.base_url = settings.base_url
        self.host = urlsplit(settings.base_url).hostname or settings.base_url
        self._pool = pool
        self.in_flight = 0
        """Responses open now."""
        self.stale_retries = 0
        """Requests sent once more because a reused connection had closed under them."""

    @staticmethod
    @contextlib.asynccontextmanager
    async def create_client(
        settings: UpstreamSettings, ssl_context: ssl.SSLContext | None = None
    ) -> AsyncIterator[http_client.ConnectionPool]:
        """The connection pool (inside the event loop), closed when the block ends; timeouts
        are set per request from the model's settings. TLS trust comes from ``upstream.tls``
        unless ``ssl_context`` replaces it (tests use it); the egress proxy from
        ``upstream.proxy_url`` or the environment."""
        if ssl_context is None and settings.base_url.startswith("https:"):
            tls = settings.tls
            ssl_context = http_client.default_ssl_context(tls.ca_file, tls.cert_file, tls.key_file)
        proxy = proxy_for(settings.base_url, settings.proxy_url, settings.trust_env, os.environ)
        if proxy is not None:
            log.info("reaching the upstream through the egress proxy %s", proxy.label)
        pool = http_client.ConnectionPool(
            settings.base_url,
            max_connections=settings.max_connections,
            max_idle=settings.max_keepalive_connections,
            keepalive_expiry=settings.keepalive_expiry,
            ssl_context=ssl_context,
            proxy=proxy,
        )
        try:
            yield pool
        finally:
            await pool.aclose()

    async def open(
        self,
        method: str,
        path: str,
        query_string: bytes,
        headers: Headers,
        body: bytes | AsyncIterable[bytes],
        limits: ModelSettings,
        headers_timeout: float | None = None,
    ) -> UpstreamResponse:
        """Send a request and return once the response headers arrived (body unread). The
        wait for a connection (pooled or new) is bounded by ``connect_timeout``, and the whole
        wait for the headers by ``headers_timeout`` (default: the model's; and a
        ``StreamedBody``'s deadline).

        A request whose reused connection turns out closed before any byte of the answer
        came (the upstream closed it as the request crossed) goes once more on a new
        connection when it can be sent twice (``replayable``); it cost nothing otherwise."""
        if headers_timeout is None:
            headers_timeout = limits.headers_timeout
        pool = self._pool
        target = path.encode("latin-1")
        if query_string:
            target += b"?" + query_string
        if isinstance(body, bytes):
            length: int | None = len(body)
        else:
            length = body.length if isinstance(body, StreamedBody) else None
        head = pool.request_head(method, target, headers, length)
        now = pool.loop.time()
        first_byte_at = now + headers_timeout
        if isinstance(body, StreamedBody):
            first_byte_at = min(first_byte_at, body.deadline)
        connect_at = min(now + limits.connect_timeout, first_byte_at)
        fresh = False
        while True:
            try:
                connection = await pool.acquire(connect_at, fresh)
            except http_errors.HTTPClientError as exc:
                raise self._connect_failed(
                    exc, connect_at, first_byte_at, limits, headers_timeout
                ) from None
            head_only = method == "HEAD"
            try:
                if isinstance(body, bytes):
                    response = connection.start(head, body, head_only)
                elif isinstance(body, StreamedBody):
                    async with asyncio.timeout_at(body.deadline):
                        response = await connection.start_streaming(
                            head, body, head_only, chunked=body.length is None
                        )
                else:
                    response = await connection.start_streaming(head, body, head_only)
                await response.wait_for_headers(first_byte_at)
            except http_errors.ResponseTimeout:
                connection.abort()
                if isinstance(body, StreamedBody) and first_byte_at == body.deadline:
                    raise UpstreamTimeout(
                        "The request's deadline passed while waiting for the upstream."
                    ) from None
                raise self._no_response(headers_timeout) from None
            except TimeoutError:
                connection.abort()
                raise UpstreamTimeout(
                    "The request's deadline passed while its body was being sent."
                ) from None
            except http_errors.ConnectionBroken:
                connection.abort()
                if (
                    connection.reused
                    and not connection.received
                    and isinstance(body, bytes)
                    and not fresh
                    and replayable(method, path)
                ):
                    fresh = True
                    self.stale_retries += 1
                    continue
                raise UpstreamUnreachable(
                    f"The upstream ({self.host}) is unreachable: ReadError."
                ) from None
            except BaseException:  # cancelled, or the client's upload failed: never reuse it
                connection.abort()
                raise
            break
        if response.status == 407 and pool.proxy is not None and not pool.tls:
            response.release()
            raise OriginUnreachable(
                f"The egress proxy {pool.proxy.label} refused the request: "
                "407 Proxy Authentication Required."
            )
        self.in_flight += 1
        return UpstreamResponse(response, self)

    def _connect_failed(
        self,
        exc: http_errors.HTTPClientError,
        connect_at: float,
        first_byte_at: float,
        limits: ModelSettings,
        headers_timeout: float,
    ) -> UpstreamError:
        """What the client is told when no connection could be had."""
        if isinstance(exc, http_errors.ConnectFailed):
            return OriginUnreachable(f"The upstream ({self.host}) is unreachable: {exc}.")
        if connect_at >= first_byte_at:
            return self._no_response(headers_timeout)
        if isinstance(exc, http_errors.PoolTimeout):
            return UpstreamBusy("The proxy's upstream connection pool is exhausted; retry later.")
        return UpstreamTimeout(
            f"Connecting to the upstream ({self.host}) timed out after "
            f"{limits.connect_timeout:g} s."
        )

    def _no_response(self, waited: float) -> UpstreamTimeout:
        return UpstreamTimeout(
            f"The upstream ({self.host}) sent no response within {waited:.3g} s.", deadline=HEADERS
        )

    async def iter_body(
        self,
        response: UpstreamResponse,
        limits: ModelSettings,
        deadline: float | None = None,
        first_chunk_timeout: float | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """The response body as it arrives (still encoded), failing on a stall, a break, or
        the request's deadline (a ``loop.time()`` value). ``first_chunk_timeout`` replaces the
        stall timeout until the first chunk (a stream's first event has its own deadline); a
        wait that runs out says which limit it was (``first_event``, ``gap``)."""
        loop = asyncio.get_running_loop()
        stall = first_chunk_timeout or limits.stall_timeout
        first = bool(first_chunk_timeout)
        watch = _StallWatch(loop)
        reader = response.reader
        try:
            while True:
                # What already arrived is taken without waiting, so no limit needs arming:
                # a unary answer is usually whole with its headers.
                try:
                    chunk = reader.read_nowait()
                except http_errors.HTTPClientError:
                    raise UpstreamBodyError(
                        f"The upstream ({self.host}) broke off the response: ReadError."
                    ) from None
                if chunk:
                    stall, first = limits.stall_timeout, False
                    yield chunk
                    continue
                if reader.at_eof():
                    return
                timeout = stall
                now = loop.time()
                if deadline is not None and deadline - now < timeout:
                    timeout = max(deadline - now, 0.0)
                watch.start(now + timeout)
                try:
                    chunk = await reader.readany()
                except asyncio.CancelledError:
                    if watch.stop():
                        if timeout < stall:
                            raise UpstreamBodyError(
                                "The request's deadline passed mid-response.", status=504
                            ) from None
                        if first:
                            raise UpstreamBodyError(
                                f"The upstream ({self.host}) sent no first event within "
                                f"{stall:g} s.",
                                deadline=FIRST_EVENT,
                            ) from None
                        raise UpstreamBodyError(
                            f"The upstream ({self.host}) stalled for {stall:g} s mid-response.",
                            deadline=GAP,
                        ) from None
                    raise
                except http_errors.HTTPClientError:
                    watch.stop()
                    raise UpstreamBodyError(
                        f"The upstream ({self.host}) broke off the response: ReadError."
                    ) from None
                watch.stop()
                if not chunk:
                    return
                stall, first = limits.stall_timeout, False
                yield chunk
        finally:
            watch.close()


class _StallWatch:
    """The limit on each wait for a body's next chunk, kept as one timer that is re-armed
    only when it fires early, instead of an ``asyncio.timeout`` per chunk (which cost about a
    tenth of the CPU of relaying an event). When a wait passes its limit the waiting task is
    cancelled, and ``stop`` says so (taking the cancellation back)."""

    __slots__ = ("_armed_at", "_cancelling", "_handle", "_limit", "_loop", "_task", "expired")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = 0.0
        self._limit: float | None = None
        self._task: asyncio.Task[Any] | None = asyncio.current_task()
        """The task reading the body (one for the body's whole life)."""
        self._cancelling = 0
        self.expired = False

    def start(self, limit: float) -> None:
        """A wait begins that may last until ``limit`` (a ``loop.time()`` value)."""
        self._limit = limit
        task = self._task
        self._cancelling = task.cancelling() if task is not None else 0
        if self._handle is None or limit < self._armed_at:
            self._arm(limit)

    def stop(self) -> bool:
        """The wait ended; True if it was cancelled because it expired and by nothing else
        (the cancellation is then taken back), as ``asyncio.timeout`` decides."""
        self._limit = None
        if not self.expired:
            return False
        self.expired = False
        task = self._task
        return task is None or task.uncancel() <= self._cancelling

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = when
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        limit = self._limit
        if limit is None:  # no wait in progress: the next one arms the timer again
            return
        if self._loop.time() < limit:
            self._arm(limit)
            return
        if self._task is not None and not self.expired:
            self.expired = True
            self._task.cancel()
