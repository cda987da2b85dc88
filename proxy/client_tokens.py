"""Client tokens: who may spend the proxy's own API key.

With ``server.client_tokens`` set, a caller presents one of them where its SDK puts the API key
(``x-goog-api-key``, or ``?key=``), so the application needs no change beyond its key. The
token is taken off the request and the configured ``upstream.api_key`` goes upstream instead.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from .config import Settings
from .transport.headers import API_KEY_HEADER, Headers

_KEY_PARAM = b"key="


@dataclass(frozen=True, slots=True)
class Refusal:
    """The Google-shaped answer for a caller without a valid token."""

    code: int
    message: str


MISSING = Refusal(
    401,
    "This proxy requires a client token: send it as the API key (x-goog-api-key header).",
)
INVALID = Refusal(403, "The client token is not valid.")


def presented_key(headers: Headers, query_string: bytes) -> bytes | None:
    """The API key the caller sent (header first, as Google reads it), or None."""
    for name, value in headers:
        if name == API_KEY_HEADER and value.strip():
            return value.strip()
    if _KEY_PARAM in query_string:
        for part in query_string.split(b"&"):
            if part.startswith(_KEY_PARAM) and len(part) > len(_KEY_PARAM):
                return unquote_to_bytes(part[len(_KEY_PARAM) :])
    return None


def without_credentials(headers: Headers, query_string: bytes) -> tuple[Headers, bytes]:
    """The request's headers and query string with the caller's key and ``Authorization``
    removed, so the configured key is the one the upstream sees."""
    kept = [(n, v) for n, v in headers if n != API_KEY_HEADER and n != b"authorization"]
    if _KEY_PARAM in query_string:
        query_string = b"&".join(
            part for part in query_string.split(b"&") if not part.startswith(_KEY_PARAM)
        )
    return kept, query_string


class ClientTokens:
    """The configured tokens, checked in constant time."""

    __slots__ = ("_tokens",)

    def __init__(self, tokens: tuple[str, ...]) -> None:
        self._tokens = tuple(token.encode("ascii") for token in tokens)

    def check(self, headers: Headers, query_string: bytes) -> Refusal | None:
        """None when the caller presented a valid token, else the refusal to send."""
        given = presented_key(headers, query_string)
        if given is None:
            return MISSING
        # Every token is compared (no early exit), so timing says nothing about which matched.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(given, token)
        return None if matched else INVALID


def describe_access(settings: Settings) -> tuple[int, str]:
    """The start-up log line saying who may use ``upstream.api_key`` (level, message); never
    the tokens themselves."""
    server = settings.server
    if server.client_tokens:
        count = len(server.client_tokens)
        return logging.INFO, (
            f"clients: a client token is required ({count} configured), sent as the API key; "
            "the proxy replaces it with upstream.api_key"
        )
    if settings.upstream.api_key is None:
        return logging.INFO, "clients: no upstream.api_key; callers send their own API keys"
    if server.on_loopback:
        return logging.INFO, (
            f"clients: listening on {server.host} only; callers on this machine without a key "
            "of their own use upstream.api_key"
        )
    return logging.WARNING, (
        f"clients: OPEN RELAY: any caller reaching {server.host} uses upstream.api_key "
        "(server.allow_open_relay: true; set server.client_tokens to require a token)"
    )
