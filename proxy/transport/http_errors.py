"""The upstream HTTP client's errors; their messages never contain the URL, the headers or
the body."""

from __future__ import annotations

from ..errors import TransportError


class HTTPClientError(TransportError):
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
