"""Who may call the admin API and the status page.

With ``admin.token`` set, every request needs ``Authorization: Bearer <token>`` (compared in
constant time): 401 without it, 403 with a wrong one. Without a token the API is disabled
(403), unless ``admin.allow_unauthenticated_loopback`` is true and the caller is on this
machine (127.0.0.1 or ::1). Errors are Google-shaped, as every other error of the proxy.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from ..gemini.errors import JSON_CONTENT_TYPE, error_body

DISABLED_MESSAGE = (
    "The admin API is disabled: no admin token is configured. Set admin.token in the "
    "configuration (or GEMINI_BREAKER_ADMIN_TOKEN) and send 'Authorization: Bearer <token>', "
    "or set admin.allow_unauthenticated_loopback: true to allow unauthenticated calls from "
    "this machine (127.0.0.1, ::1) only."
)


class AdminAuth:
    """Who may use the admin API: bearer token (constant-time comparison), else nobody, else
    (opt-in) unauthenticated callers on loopback."""

    def __init__(self, token: str | None, allow_unauthenticated_loopback: bool = False) -> None:
        self._token = token.encode() if token else None
        self._loopback = allow_unauthenticated_loopback

    @property
    def mode(self) -> str:
        """``token``, ``loopback`` (no token, loopback callers allowed) or ``disabled``."""
        if self._token is not None:
            return "token"
        return "loopback" if self._loopback else "disabled"

    def check(self, request: Request) -> Response | None:
        """None when the request may proceed, else the refusal to send."""
        if self._token is None:
            if not self._loopback:
                return refuse(403, DISABLED_MESSAGE)
            reason = loopback_refusal(
                request.client.host if request.client else None,
                request.method,
                request.headers.get("host"),
                request.headers.get("origin"),
                request.headers.get("sec-fetch-site"),
                request.headers.get("content-type"),
            )
            return None if reason is None else refuse(403, reason)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return refuse(401, "The admin API needs an 'Authorization: Bearer <token>' header.")
        if not hmac.compare_digest(given.strip().encode(), self._token):
            return refuse(403, "The admin token is not valid.")
        return None


LOOPBACK_PEERS = frozenset({"127.0.0.1", "::1"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
CROSS_SITE_MESSAGE = "Unauthenticated admin calls are refused from another site's page."


def loopback_refusal(
    peer: str | None,
    method: str,
    host: str | None,
    origin: str | None,
    fetch_site: str | None,
    content_type: str | None,
) -> str | None:
    """Why an unauthenticated admin call is refused (None: it may proceed). Beyond the peer
    address, a web page in the operator's browser must not reach the API: not by a cross-site
    request (``Origin``, ``Sec-Fetch-Site``), nor by a form post (only JSON bodies), nor by
    DNS rebinding (a name of the attacker's resolving to 127.0.0.1: the ``Host`` shows it)."""
    if peer not in LOOPBACK_PEERS:
        return DISABLED_MESSAGE
    if host is None or _host_name(host) not in LOOPBACK_NAMES:
        return (
            "Unauthenticated admin calls must name this machine in Host: "
            "localhost, 127.0.0.1 or [::1]."
        )
    if origin is not None and urlsplit(origin).hostname not in LOOPBACK_NAMES:
        return CROSS_SITE_MESSAGE
    if fetch_site is not None and fetch_site.strip().lower() == "cross-site":
        return CROSS_SITE_MESSAGE
    media_type = (content_type or "").split(";")[0].strip().lower()
    if method == "POST" and media_type != "application/json":
        return "Admin actions take a JSON body: send Content-Type: application/json."
    return None


def _host_name(host: str) -> str:
    """The name in a ``Host`` header, without its port (``[::1]:8080`` -> ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    name, _, port = host.rpartition(":")
    return name if name and port.isdigit() else host


def refuse(code: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """A Google-shaped error (``google.rpc.Status``), as every other error of the proxy."""
    extra = dict(headers or {})
    if code == 401:
        extra["www-authenticate"] = "Bearer"
    return Response(
        error_body(code, message), status_code=code, media_type=JSON_CONTENT_TYPE, headers=extra
    )
