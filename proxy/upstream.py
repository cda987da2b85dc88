"""The one pooled upstream HTTP client, with per-model deadlines.

The client is aiohttp's: with 8 requests in flight against the same canned upstream
(``bench/upstream_clients.py``), httpx spent 2.1 ms of CPU per request and aiohttp 0.28 ms;
httpx was more than half of the proxy's CPU (README, "Performance").

Failures are raised as ``UpstreamError`` subclasses that carry the status and message the
client should see; nothing from the upstream URL (which may carry ``?key=``) goes into them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable
from typing import Any, overload
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from .config import ModelSettings, UpstreamSettings
from .headers import Headers


class UpstreamError(Exception):
    """A failure talking to the upstream; ``status`` and ``message`` are for the client."""

    status: int = 502

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class UpstreamUnreachable(UpstreamError):
    """No connection could be made, or it broke before the response headers."""

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


# Headers aiohttp would add on its own: the proxy forwards what the client sent, nothing more
# (``Host`` and ``Content-Length`` / ``Transfer-Encoding`` are still set for the upstream).
_NOT_ADDED = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


class _Connector(aiohttp.TCPConnector):
    """aiohttp's pool, keeping at most ``max_idle`` idle connections per upstream (it has no
    such setting; ``upstream.max_keepalive_connections`` asks for one)."""

    def __init__(self, max_idle: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._max_idle = max_idle

    def _release(self, key: Any, protocol: Any, *, should_close: bool = False) -> None:
        idle = self._conns.get(key)
        if idle is not None and len(idle) >= self._max_idle:
            should_close = True
        super()._release(key, protocol, should_close=should_close)


class ResponseHeaders:
    """The response's headers: ``raw`` pairs as received, ``get`` by any-case name."""

    __slots__ = ("_multi", "raw")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.raw: Headers = list(response.raw_headers)
        self._multi = response.headers

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...
    def get(self, name: str, default: str | None = None) -> str | None:
        return self._multi.get(name, default)


class UpstreamResponse:
    """An upstream answer whose headers arrived; its body is read with ``Upstream.iter_body``
    (or ``aread``) and it must be closed with ``aclose`` (which frees the connection)."""

    __slots__ = ("_on_close", "_response", "headers", "status_code")

    def __init__(self, response: aiohttp.ClientResponse, on_close: Upstream) -> None:
        self._response = response
        self._on_close: Upstream | None = on_close
        self.status_code = response.status
        self.headers = ResponseHeaders(response)

    @property
    def reader(self) -> aiohttp.StreamReader:
        """The body's reader (``Upstream.iter_body`` reads it directly: one await less per
        chunk than ``next_chunk``)."""
        return self._response.content

    async def next_chunk(self) -> bytes:
        """The next part of the body as it arrived (still encoded); b"" at its end."""
        try:
            return await self._response.content.readany()
        except aiohttp.ClientError as exc:
            raise UpstreamBodyError(
                f"The upstream broke off the response: {type(exc).__name__}."
            ) from None

    async def aread(self) -> bytes:
        """The whole body (for small documents only)."""
        parts = []
        while chunk := await self.next_chunk():
            parts.append(chunk)
        return b"".join(parts)

    async def aclose(self) -> None:
        # A body read to its end gives the connection back to the pool; otherwise it is closed.
        self._response.release()
        upstream, self._on_close = self._on_close, None
        if upstream is not None:
            upstream.in_flight -= 1


class Upstream:
    """Sends requests to the configured upstream over one shared connection pool."""

    def __init__(self, settings: UpstreamSettings, client: aiohttp.ClientSession) -> None:
        self.base_url = settings.base_url
        self.host = urlsplit(settings.base_url).hostname or settings.base_url
        self._client = client
        self._max_connections = settings.max_connections
        self.in_flight = 0
        """Responses open now: when every pooled connection is taken, a timeout is the pool's."""

    @staticmethod
    def create_client(settings: UpstreamSettings) -> aiohttp.ClientSession:
        """The pooled client (use it with ``async with``, inside the event loop); timeouts
        are set per request from the model's settings."""
        connector = _Connector(
            max_idle=settings.max_keepalive_connections,
            limit=settings.max_connections,
            keepalive_timeout=settings.keepalive_expiry,
        )
        # trust_env=False: a sidecar must not pick up HTTP(S)_PROXY meant for the app. No
        # cookie jar: one client serves every application request, and cookies are theirs.
        # auto_decompress=False: bodies pass through still encoded, as the upstream sent them.
        return aiohttp.ClientSession(
            connector=connector,
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=_NOT_ADDED,
        )

    async def open(
        self,
        method: str,
        path: str,
        query_string: bytes,
        headers: Headers,
        body: bytes | AsyncIterable[bytes],
        limits: ModelSettings,
    ) -> UpstreamResponse:
        """Send a request and return once the response headers arrived (body unread)."""
        url = self.base_url + path
        if query_string:
            url += "?" + query_string.decode("latin-1")
        # The read timeout is enforced per chunk by ``iter_body``, and the wait for the
        # headers by the first-byte deadline below. ``connect`` bounds the wait for a pooled
        # connection plus connecting.
        timeout = aiohttp.ClientTimeout(
            total=None, connect=limits.connect_timeout, sock_connect=limits.connect_timeout
        )
        pool_full = self.in_flight >= self._max_connections
        try:
            async with asyncio.timeout(limits.first_byte_timeout):
                response = await self._client.request(
                    method,
                    URL(url, encoded=True),  # the client's path and query, byte for byte
                    headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers],
                    data=body if body != b"" else None,
                    timeout=timeout,
                    allow_redirects=False,
                )
        except TimeoutError:
            raise UpstreamTimeout(
                f"The upstream ({self.host}) sent no response within "
                f"{limits.first_byte_timeout:g} s."
            ) from None
        except aiohttp.ConnectionTimeoutError:
            if pool_full:
                raise UpstreamBusy(
                    "The proxy's upstream connection pool is exhausted; retry later."
                ) from None
            raise UpstreamTimeout(
                f"Connecting to the upstream ({self.host}) timed out after "
                f"{limits.connect_timeout:g} s."
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamUnreachable(
                f"The upstream ({self.host}) is unreachable: {_error_name(exc)}."
            ) from None
        self.in_flight += 1
        return UpstreamResponse(response, self)

    async def iter_body(
        self,
        response: UpstreamResponse,
        limits: ModelSettings,
        deadline: float | None = None,
        first_chunk_timeout: float | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """The response body as it arrives (still encoded), failing on a stall, a break, or
        the request's deadline (a ``loop.time()`` value). ``first_chunk_timeout`` replaces the
        stall timeout until the first chunk (a stream's first token may take a while)."""
        loop = asyncio.get_running_loop()
        stall = first_chunk_timeout or limits.stall_timeout
        watch = _StallWatch(loop)
        reader = response.reader
        try:
            while True:
                # What already arrived is taken without waiting, so no limit needs arming:
                # a unary answer is usually whole with its headers.
                try:
                    chunk = reader.read_nowait()
                except aiohttp.ClientError as exc:
                    raise UpstreamBodyError(
                        f"The upstream ({self.host}) broke off the response: {type(exc).__name__}."
                    ) from None
                if chunk:
                    stall = limits.stall_timeout
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
                        raise UpstreamBodyError(
                            f"The upstream ({self.host}) stalled for {stall:g} s mid-response."
                        ) from None
                    raise
                except aiohttp.ClientError as exc:
                    watch.stop()
                    raise UpstreamBodyError(
                        f"The upstream ({self.host}) broke off the response: {type(exc).__name__}."
                    ) from None
                watch.stop()
                if not chunk:
                    return
                stall = limits.stall_timeout
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


def _error_name(exc: BaseException) -> str:
    """The error's kind for the client: its class, never its text (which names the URL)."""
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientConnectionResetError):
        return "ReadError"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "ConnectError"
    return type(exc).__name__
