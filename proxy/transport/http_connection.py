"""One keep-alive HTTP/1.1 connection to the upstream (an asyncio protocol driving httptools'
response parser) and the ``Response`` it fills as bytes arrive."""

from __future__ import annotations

import asyncio
import collections
import select
from collections.abc import AsyncIterable
from typing import TYPE_CHECKING, Any

import httptools

from .http_errors import ConnectionBroken, HTTPClientError, ResponseTimeout

if TYPE_CHECKING:
    from .http_client import ConnectionPool

Headers = list[tuple[bytes, bytes]]

# Bytes a response may buffer before the socket stops being read (until the reader catches up).
READ_HIGH_WATER = 256 * 1024


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


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(ResponseTimeout("no response headers in time"))
