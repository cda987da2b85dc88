"""The way out to the upstream: an HTTP egress proxy (chosen from the settings or the
standard environment variables) and the CONNECT tunnel through it.

A tunnel is a TCP connection to the proxy on which ``CONNECT host:port`` was answered 200;
TLS to the upstream then runs inside it. A plain ``http://`` upstream goes through the proxy
in absolute form instead (``POST http://host/path``), which ``ConnectionPool`` writes itself.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from ..errors import TransportError

# The longest CONNECT answer head accepted (a proxy's 200 is a line and a few headers).
MAX_CONNECT_HEAD = 16 * 1024


class TunnelRefused(TransportError):
    """The egress proxy did not open the tunnel; the message names the proxy (no password)."""


@dataclass(frozen=True, slots=True)
class EgressProxy:
    """An HTTP proxy to reach the upstream through."""

    host: str
    port: int
    authorization: bytes | None = field(default=None, repr=False)
    """The ``Proxy-Authorization`` value, from ``user:password@`` in the proxy's URL."""

    @property
    def label(self) -> str:
        """How logs and error messages name the proxy: never with its credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def parse_proxy_url(url: str) -> EgressProxy:
    """An ``http://[user:password@]host[:port]`` proxy URL; ValueError names what is wrong
    (never the password)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http":
        raise ValueError(f"only http:// egress proxies are supported, not {parts.scheme}://")
    if not parts.hostname:
        raise ValueError("the egress proxy URL names no host")
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError("the egress proxy URL has an invalid port") from None
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = b"Basic " + base64.b64encode(pair.encode("utf-8"))
    return EgressProxy(parts.hostname, port, authorization)


def proxy_for(
    base_url: str, proxy_url: str | None, trust_env: bool, environ: Mapping[str, str]
) -> EgressProxy | None:
    """The proxy that requests to ``base_url`` go through: ``proxy_url`` when set; else, with
    ``trust_env``, ``HTTPS_PROXY`` (or ``HTTP_PROXY`` for an http:// upstream) unless
    ``NO_PROXY`` covers the upstream's host; lower-case names win, as with curl."""
    if proxy_url:
        return parse_proxy_url(proxy_url)
    if not trust_env:
        return None
    parts = urlsplit(base_url)
    name = "https_proxy" if parts.scheme == "https" else "http_proxy"
    chosen = environ.get(name) or environ.get(name.upper())
    if not chosen:
        return None
    no_proxy = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
    default_port = 443 if parts.scheme == "https" else 80
    if bypassed(parts.hostname or "", parts.port or default_port, no_proxy):
        return None
    return parse_proxy_url(chosen)


def bypassed(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` covers ``host:port``: ``*``; a host name and its subdomains
    (``example.com``, ``.example.com``); an IP address or CIDR block; each optionally with
    ``:port``."""
    host = host.lower().rstrip(".")
    address = None
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(host)
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if entry == "*":
            return True
        name, entry_port = entry, None
        if entry.count(":") == 1 or entry.startswith("["):
            name, _, after = entry.rpartition(":")
            if not after.isdigit():
                name = entry
            else:
                entry_port = int(after)
        name = name.strip("[]").lstrip("*").lstrip(".").rstrip(".")
        if not name or (entry_port is not None and entry_port != port):
            continue
        if address is not None:
            with contextlib.suppress(ValueError):
                if address in ipaddress.ip_network(name, strict=False):
                    return True
            continue
        if host == name or host.endswith("." + name):
            return True
    return False


async def open_tunnel(
    loop: asyncio.AbstractEventLoop, proxy: EgressProxy, host: str, port: int
) -> asyncio.Transport:
    """A connection to ``proxy`` on which ``CONNECT host:port`` succeeded; OSError when the
    proxy cannot be reached, TunnelRefused when it answers anything but 2xx."""
    name = host if host.isascii() else host.encode("idna").decode("ascii")
    authority = f"[{name}]:{port}" if ":" in name else f"{name}:{port}"
    transport, protocol = await loop.create_connection(_ConnectAnswer, proxy.host, proxy.port)
    try:
        head = f"CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n".encode("ascii")
        if proxy.authorization is not None:
            head += b"proxy-authorization: " + proxy.authorization + b"\r\n"
        transport.write(head + b"\r\n")
        status, reason = await protocol.answer
    except TunnelRefused as exc:
        transport.abort()
        raise TunnelRefused(f"the egress proxy {proxy.label}: {exc}") from None
    except BaseException:  # cancelled or failed: close the socket, then let it propagate
        transport.abort()
        raise
    if not 200 <= status < 300:
        transport.abort()
        what = "refused the tunnel"
        if status in (401, 407):  # 407 by the standard; some proxies (tinyproxy) answer 401
            what = "refused the credentials" if proxy.authorization else "asks for credentials"
        raise TunnelRefused(f"the egress proxy {proxy.label} {what} ({status} {reason})")
    return transport


class _ConnectAnswer(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT: its status line and headers, nothing more (the
    upstream sends nothing before the client's TLS hello)."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
        self._head = b""

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            return
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_CONNECT_HEAD:
                self.answer.set_exception(TunnelRefused("its answer to CONNECT is too long"))
            return
        line = self._head[: self._head.find(b"\r\n")].decode("latin-1")
        version, _, rest = line.partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/") or not code.isdigit():
            self.answer.set_exception(TunnelRefused("its answer to CONNECT is not HTTP"))
        elif end + 4 != len(self._head) and code.startswith("2"):
            self.answer.set_exception(TunnelRefused("it sent bytes after its answer to CONNECT"))
        else:
            self.answer.set_result((int(code), reason.strip()[:100]))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(
                ConnectionResetError("the egress proxy closed the connection")
            )
