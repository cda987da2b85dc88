"""A lean HTTP/1.1 client for the upstream: asyncio protocols, httptools' response parser
and a keep-alive pool.

A proxy forwards what it is given, so this client does little: no redirects, cookies,
decompression or headers of its own beyond ``Host``, the body's framing and, through an
egress proxy, ``Proxy-Authorization`` (``proxy/egress.py``). In exchange a request costs a few
tens of microseconds of CPU where aiohttp's client cost about 110 and httpx's about 2,000
(docs/performance.md): one ``write`` of head and body, and, when a pooled connection is free
and the answer is whole, one suspension.

Errors are the classes below; their messages never contain the URL, the headers or the body.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import select
import socket
import ssl
from collections.abc import AsyncIterable
from typing import Any
from urllib.parse import urlsplit

import httptools

from .egress import EgressProxy, TunnelRefused, open_tunnel

log = logging.getLogger("gemini_breaker.upstream")

Headers = list[tuple[bytes, bytes]]

# Bytes a response may buffer before the socket stops being read (until the reader catches up).
READ_HIGH_WATER = 256 * 1024
# A failing TLS verification is logged at most once per this many seconds (not per request).
TLS_FAILURE_LOG_INTERVAL = 60.0


class HTTPClientError(Exception):
    """A failure of the connection or of the HTTP exchange on it."""


class ConnectFailed(HTTPClientError):
    """No connection could be made (refused, unresolvable, TLS handshake failed, or the egress
    proxy would not open the tunnel)."""


class PoolTimeout(HTTPClientError):
    """Every connection is in use and none freed up before the deadline."""


class ConnectTimeout(HTTPClientError):
    """Connecting took longer than allowed."""


class ResponseTimeout(HTTPClientError):
    """The response headers did not arrive before the deadline."""


class ConnectionBroken(HTTPClientError):
    """The connection closed, or the response could not be parsed, before the exchange ended."""


class Response:
    """An answer whose headers arrived. Its body is read with ``read_nowait`` (what already
    arrived, never waiting) and ``readany`` (waits for more); ``release`` must end it, which
    gives the connection back to the pool when the body was read to its end."""

    __slots__ = (
        "_chunks",
        "_complete",
        "_connection",
        "_error",
        "_headers_waiter",
        "_lower",
        "_waiter",
        "buffered",
        "raw_headers",
        "reusable",
        "status",
    )

    def __init__(self, connection: Connection) -> None:
        self._connection: Connection | None = connection
        self.status = 0
        self.raw_headers: Headers = []
        self._lower: dict[str, str] | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self._complete = False
        self.reusable = False
        self._error: HTTPClientError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._headers_waiter: asyncio.Future[None] = connection.loop.create_future()

    @property
    def headers_arrived(self) -> bool:
        return self._headers_waiter.done()

    async def wait_for_headers(self, deadline: float) -> None:
        """Wait until the headers arrived, at most until ``deadline`` (``loop.time()``)."""
        waiter = self._headers_waiter
        if waiter.done():
            waiter.result()
            return
        timer = asyncio.get_running_loop().call_at(deadline, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()

    def header(self, name: str, default: str | None = None) -> str | None:
        """A header's value by any-case name (the first, if repeated)."""
        lower = self._lower
        if lower is None:
            lower = {}
            for key, value in self.raw_headers:
                lower.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
            self._lower = lower
        return lower.get(name.lower(), default)

    def read_nowait(self) -> bytes:
        """Every body byte that arrived and was not read yet; b"" if none (see ``at_eof``)."""
        chunks = self._chunks
        if chunks:
            data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            if self.buffered >= READ_HIGH_WATER and self._connection is not None:
                self._connection.resume_reading()
            self.buffered = 0
            return data
        if self._error is not None:
            raise self._error
        return b""

    def at_eof(self) -> bool:
        """The body ended and all of it was read."""
        return self._complete and not self._chunks

    async def readany(self) -> bytes:
        """The next body bytes, waiting for them; b"" at the body's end."""
        while not self._chunks and not self._complete and self._error is None:
            waiter = self._connection_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None
        return self.read_nowait()

    def release(self) -> None:
        """End the exchange: a body read to its end lets the connection be reused, anything
        else closes it. Never suspends."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._complete and self.reusable and not self._chunks and self._error is None:
            connection.finished()
        else:
            connection.abort()

    def _connection_loop(self) -> asyncio.AbstractEventLoop:
        if self._connection is None:
            raise ConnectionBroken("the response was already released")
        return self._connection.loop

    # -- fed by the connection ----------------------------------------------------------------

    def _headers_done(self) -> None:
        if not self._headers_waiter.done():
            self._headers_waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self.buffered += len(data)
        if self.buffered >= READ_HIGH_WATER and self._connection is not None:
            self._connection.pause_reading()
        self._wake()

    def _end(self, reusable: bool) -> None:
        self._complete = True
        self.reusable = reusable
        self._wake()

    def _fail(self, error: HTTPClientError) -> None:
        if self._complete or self._error is not None:
            return
        self._error = error
        waiter = self._headers_waiter
        if not waiter.done():
            waiter.set_exception(error)
            # Marked as seen: after a cancelled request nobody awaits it, and asyncio would
            # log "exception was never retrieved"; an ``await`` still raises it.
            waiter.exception()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Connection(asyncio.Protocol):
    """One keep-alive connection to the upstream, carrying one exchange at a time."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = False
        self._interim = False
        self._reading_paused = False
        self._write_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self.expiry: asyncio.TimerHandle | None = None
        self.lost = False
        """It closed, or is closing: it never carries another request."""
        self.reused = False
        """It came from the pool (it carried an exchange before this one)."""
        self.received = False
        """A byte of the current exchange's response arrived."""
        self._message_done = False
        self._poll: select.poll | None = None

    def stale(self) -> bool:
        """Whether this idle connection can no longer carry a request: it closed, or its
        socket has something to read (the upstream's close, usually, on a connection it found
        idle for too long) that the event loop has not handled yet. One ``poll`` call."""
        if self.lost:
            return True
        if self._poll is None:
            return False
        return bool(self._poll.poll(0))

    # -- used by the pool and the response ----------------------------------------------------

    def start(self, head: bytes, body: bytes, head_only: bool) -> Response:
        """Send a request whose whole body is at hand (one write); its response."""
        response = self._begin(head_only)
        assert self.transport is not None
        self.transport.write(head + body if body else head)
        return response

    async def start_streaming(
        self, head: bytes, body: AsyncIterable[bytes], head_only: bool, chunked: bool = True
    ) -> Response:
        """Send a request whose body arrives in parts, waiting when the socket's buffer is
        full; its response. ``chunked`` False: the head declared the body's length, and the
        parts go as they are."""
        response = self._begin(head_only)
        transport = self.transport
        assert transport is not None
        transport.write(head)
        async for part in body:
            if self.lost:
                break
            if part:
                transport.write(b"%x\r\n%b\r\n" % (len(part), part) if chunked else part)
                if self._write_paused:
                    await self._drain()
        if chunked and not self.lost:
            transport.write(b"0\r\n\r\n")
        return response

    def finished(self) -> None:
        """The exchange ended cleanly; back to the pool."""
        self.response = None
        self.pool.put_back(self)

    def abort(self) -> None:
        self.response = None
        self.lost = True
        if self.transport is not None:
            self.transport.abort()

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    def _begin(self, head_only: bool) -> Response:
        response = Response(self)
        self.response = response
        self._head_only = head_only
        self.received = False
        self._message_done = False
        return response

    async def _drain(self) -> None:
        waiter = self.loop.create_future()
        self._write_waiter = waiter
        try:
            await waiter
        finally:
            self._write_waiter = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._poll = select.poll()
            self._poll.register(sock.fileno(), select.POLLIN)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None or self._message_done:
            # Nothing was asked, or bytes follow a complete response: a broken or confused
            # upstream. They are never taken as (part of) the next response.
            self._extra_bytes()
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._broken("the upstream switched protocols")
        except httptools.HttpParserError:
            if self._message_done:  # the response was whole; what followed it was refused
                self._extra_bytes()
            else:
                self._broken("the upstream's response could not be parsed")

    def eof_received(self) -> bool:
        return False  # close the transport: HTTP/1.1 has no use for a half-open connection

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.expiry is not None:
            self.expiry.cancel()
        self.pool.forget(self)
        response = self.response
        if response is not None:
            if response.headers_arrived and self._until_close(response):
                response._end(reusable=False)  # a body delimited by the connection's close
            else:
                response._fail(ConnectionBroken("the upstream closed the connection"))
        waiter = self._write_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._write_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _broken(self, why: str) -> None:
        if self.response is not None:
            self.response._fail(ConnectionBroken(why))
        self.lost = True
        if self.transport is not None:
            self.transport.abort()

    def _extra_bytes(self) -> None:
        """Close the connection; a complete response keeps its body but not the connection."""
        if self.response is not None:
            self.response.reusable = False
        self.lost = True
        if self.transport is not None:
            self.transport.abort()

    def _until_close(self, response: Response) -> bool:
        names = {name.lower() for name, _ in response.raw_headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._message_done:  # a second response in the bytes of one: stop parsing them
            raise ConnectionBroken("bytes after a complete response")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response is not None:
            self.response.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        response = self.response
        if response is None:
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # 100 Continue and the like: the real answer follows
            self._interim = True
            return
        response.status = status
        response._headers_done()
        if self._head_only:
            response._end(reusable=False)

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            if self.response is not None:
                self.response.raw_headers.clear()
            return
        self._message_done = True
        response = self.response
        if response is not None:
            response._end(reusable=self._parser.should_keep_alive() and not self._head_only)


class ConnectionPool:
    """Connections to one origin: at most ``max_connections`` open, at most ``max_idle`` of
    them kept idle (most recently used first), each idle one closed after ``keepalive_expiry``
    seconds."""

    def __init__(
        self,
        base_url: str,
        max_connections: int,
        max_idle: int,
        keepalive_expiry: float,
        ssl_context: ssl.SSLContext | None = None,
        proxy: EgressProxy | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        self.loop = asyncio.get_running_loop()
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.tls else 80)
        default_port = 443 if self.tls else 80
        host = self.host if self.host.isascii() else self.host.encode("idna").decode("ascii")
        netloc = f"[{host}]" if ":" in host else host
        if self.port != default_port:
            netloc += f":{self.port}"
        self.host_header = netloc.encode("ascii")
        self.prefix = (parts.path or "").rstrip("/").encode("latin-1")
        self.proxy = proxy
        self._proxy_header = b""
        if proxy is not None and not self.tls:
            # Through the proxy in absolute form; an https upstream is tunnelled instead.
            self.prefix = b"http://" + self.host_header + self.prefix
            if proxy.authorization is not None:
                self._proxy_header = b"\r\nproxy-authorization: " + proxy.authorization
        self._ssl: ssl.SSLContext | None = None
        if self.tls:
            self._ssl = ssl_context or default_ssl_context()
        self._max_connections = max_connections
        self._max_idle = max_idle
        self._expiry = keepalive_expiry
        self._idle: list[Connection] = []
        self._open: set[Connection] = set()
        self._connecting = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False
        self._tls_logged_at: float | None = None

    def request_head(
        self, method: str, target: bytes, headers: Headers, length: int | None
    ) -> bytes:
        """The request line and headers; ``length`` None means a chunked body."""
        lines = [method.encode("ascii"), b" ", self.prefix, target, b" HTTP/1.1\r\nhost: "]
        lines.append(self.host_header)
        if self._proxy_header:
            lines.append(self._proxy_header)
        for name, value in headers:
            lines += (b"\r\n", name, b": ", value)
        # The request line's, one per header, the blank line's two.
        breaks = len(headers) + 3 + (1 if self._proxy_header else 0)
        if length is None:
            lines.append(b"\r\ntransfer-encoding: chunked")
            breaks += 1
        elif length or method not in _NO_BODY_METHODS:
            lines.append(b"\r\ncontent-length: %d" % length)
            breaks += 1
        lines.append(b"\r\n\r\n")
        head = b"".join(lines)
        # Header values come from a parsed request or validated settings; a line break in one
        # would still split the request, so refuse rather than send it.
        if head.count(b"\n") != breaks:
            raise ValueError("a header name or value contains a line break")
        return head

    async def acquire(self, deadline: float, fresh: bool = False) -> Connection:
        """A connection (pooled if one is idle, else new), by ``deadline`` (``loop.time()``);
        ``fresh``: a new one, closing an idle one if that is what makes room."""
        connection = None if fresh else self._idle_connection()
        if connection is not None:
            return connection
        while len(self._open) + self._connecting >= self._max_connections:
            if fresh and self._idle:
                idle = self._idle.pop(0)  # the least recently used
                idle.abort()
                self.forget(idle)
                continue
            await self._wait_for_room(deadline)
            connection = None if fresh else self._idle_connection()
            if connection is not None:
                return connection
        return await self._connect(deadline)

    def _idle_connection(self) -> Connection | None:
        idle = self._idle
        while idle:
            connection = idle.pop()
            if connection.expiry is not None:
                connection.expiry.cancel()
                connection.expiry = None
            if not connection.stale():
                connection.reused = True
                return connection
            connection.abort()
        return None

    def put_back(self, connection: Connection) -> None:
        if connection.lost:
            return
        if self._closed or len(self._idle) >= self._max_idle or self._expiry <= 0:
            connection.abort()
            return
        connection.expiry = self.loop.call_later(self._expiry, connection.abort)
        self._idle.append(connection)
        self._wake_one()

    def forget(self, connection: Connection) -> None:
        """A connection closed: it leaves the pool, making room for another."""
        self._open.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)
        self._wake_one()

    async def aclose(self) -> None:
        """Close every connection (in use or idle) and refuse to pool any more."""
        self._closed = True
        for connection in list(self._open):
            connection.abort()
        self._idle.clear()
        # Let the transports report their loss, so nothing is left for garbage collection.
        await asyncio.sleep(0)

    async def _connect(self, deadline: float) -> Connection:
        self._connecting += 1
        try:
            async with asyncio.timeout_at(deadline):
                connection = await self._open_connection()
        except TimeoutError:
            raise ConnectTimeout("connecting took too long") from None
        except ssl.SSLCertVerificationError as exc:
            why = f"certificate verify failed: {exc.verify_message}"
            self._log_tls_failure(why)
            raise ConnectFailed(f"TLS {why}") from None
        except ssl.SSLError as exc:
            why = f"TLS handshake failed: {exc.reason or type(exc).__name__}"
            self._log_tls_failure(why)
            raise ConnectFailed(why) from None
        except TunnelRefused as exc:
            raise ConnectFailed(str(exc)) from None
        except OSError as exc:
            raise ConnectFailed(self._connect_error(exc)) from None
        finally:
            self._connecting -= 1
            self._wake_one()
        if connection.lost:
            raise ConnectFailed("the connection closed as it opened")
        self._open.add(connection)
        return connection

    async def _open_connection(self) -> Connection:
        proxy = self.proxy
        if proxy is None:
            _, connection = await self.loop.create_connection(
                lambda: Connection(self),
                self.host,
                self.port,
                ssl=self._ssl,
                server_hostname=self.host if self._ssl is not None else None,
            )
            return connection
        if self._ssl is None:  # absolute-form requests to the proxy itself
            _, connection = await self.loop.create_connection(
                lambda: Connection(self), proxy.host, proxy.port
            )
            return connection
        raw = await open_tunnel(self.loop, proxy, self.host, self.port)
        connection = Connection(self)
        try:
            transport = await self.loop.start_tls(
                raw, connection, self._ssl, server_hostname=self.host
            )
        except BaseException:
            raw.abort()
            raise
        if transport is None:  # the tunnel closed during the handshake
            raw.abort()
            raise ConnectionResetError("the tunnel closed during the TLS handshake")
        connection.connection_made(transport)
        return connection

    def _connect_error(self, exc: OSError) -> str:
        through = f"through the egress proxy {self.proxy.label} " if self.proxy else ""
        if isinstance(exc, socket.gaierror):
            where = f"the egress proxy {self.proxy.label}" if self.proxy else "the host name"
            return f"{where} could not be resolved"
        if isinstance(exc, ConnectionRefusedError):
            where = f"the egress proxy {self.proxy.label}" if self.proxy else "the upstream"
            return f"{where} refused the connection"
        return f"connection failed {through}({type(exc).__name__})"

    def _log_tls_failure(self, why: str) -> None:
        now = self.loop.time()
        last = self._tls_logged_at
        if last is None or now - last >= TLS_FAILURE_LOG_INTERVAL:
            self._tls_logged_at = now
            log.warning(
                "TLS to the upstream %s failed: %s (logged at most every %g s)",
                self.host,
                why,
                TLS_FAILURE_LOG_INTERVAL,
            )

    async def _wait_for_room(self, deadline: float) -> None:
        waiter = self.loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except TimeoutError:
            raise PoolTimeout("every upstream connection is in use") from None
        finally:
            if not waiter.done():
                waiter.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _wake_one(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


_NO_BODY_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


def default_ssl_context(
    ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> ssl.SSLContext:
    """The system's trust store, plus the CAs of ``ca_file``; a client certificate when
    ``cert_file`` is given (its key in it, or in ``key_file``)."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(ResponseTimeout("no response headers in time"))
