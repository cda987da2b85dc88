"""A lean HTTP/1.1 client for the upstream: asyncio protocols, httptools' response parser
and a keep-alive pool.

A proxy forwards what it is given, so this client does little: no redirects, cookies,
decompression or headers of its own beyond ``Host``, the body's framing and, through an
egress proxy, ``Proxy-Authorization`` (``proxy/transport/egress.py``). In exchange a request
costs a few tens of microseconds of CPU where aiohttp's client cost about 110 and httpx's about
2,000 (docs/performance.md): one ``write`` of head and body, and, when a pooled connection
is free and the answer is whole, one suspension.

Its errors (``http_errors``) never contain the URL, the headers or the body.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import ssl
from urllib.parse import urlsplit

from .egress import EgressProxy, TunnelRefused, open_tunnel
from .http_connection import Connection, Headers
from .http_errors import ConnectFailed, ConnectTimeout, PoolTimeout

log = logging.getLogger("gemini_breaker.upstream")

# A failing TLS verification is logged at most once per this many seconds (not per request).
TLS_FAILURE_LOG_INTERVAL = 60.0


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
        except BaseException:  # cancelled or failed: close the tunnel, then let it propagate
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
