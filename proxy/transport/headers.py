"""Header and credential handling between the client, the proxy and the upstream.

Headers are ASGI-style ``(name, value)`` byte pairs with lowercase names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from email.utils import formatdate
from urllib.parse import parse_qsl, urlsplit

Headers = list[tuple[bytes, bytes]]

# RFC 9110 section 7.6.1 plus the legacy ones every proxy drops. ``host`` and
# ``content-length`` are recomputed by the HTTP client for the upstream request.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_NOT_FORWARDED_UPSTREAM = HOP_BY_HOP | {b"host", b"content-length"}

API_KEY_HEADER = b"x-goog-api-key"
UPLOAD_URL_HEADER = b"x-goog-upload-url"
MODEL_HEADER = b"x-gemini-breaker-model"


def date_header() -> tuple[bytes, bytes]:
    """A ``date`` header for an answer the proxy writes itself (relayed answers carry the
    upstream's; the server adds none, so there is never a second one)."""
    return (b"date", formatdate(usegmt=True).encode())


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Header names a ``Connection`` header marks as hop-by-hop for this message."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return tokens


def client_sent_key(headers: Headers, query_string: bytes) -> bool:
    """Whether the client authenticated itself with an API key (header or ``?key=``)."""
    if any(name == API_KEY_HEADER and value.strip() for name, value in headers):
        return True
    return b"key=" in query_string and any(
        name == "key" and value for name, value in parse_qsl(query_string.decode("latin-1"))
    )


def credential_scope(headers: Headers, query_string: bytes, api_key: str | None) -> str:
    """A short digest of the credential the upstream will see (the client's key, else the
    configured one, else its Authorization header): quotas are per credential, and only the
    digest is ever stored or logged."""
    credential = b""
    for name, value in headers:
        if name == API_KEY_HEADER and value.strip():
            credential = value.strip()
            break
    else:
        if b"key=" in query_string:
            for param, text in parse_qsl(query_string.decode("latin-1")):
                if param == "key" and text:
                    credential = text.encode("latin-1")
                    break
        if not credential and api_key:
            credential = api_key.encode("latin-1")
        if not credential:
            credential = next((v for n, v in headers if n == b"authorization"), b"")
    return hashlib.sha256(credential).hexdigest()[:16]


def upstream_request_headers(headers: Headers, query_string: bytes, api_key: str | None) -> Headers:
    """The client's headers as sent upstream: hop-by-hop ones dropped, the configured key
    injected only when the client sent none (and then ``Authorization`` is dropped too, since
    Google answers 401 to a request carrying both)."""
    drop = _NOT_FORWARDED_UPSTREAM
    extra = _connection_tokens(headers)
    if extra:
        drop = drop | extra
    inject = api_key is not None and not client_sent_key(headers, query_string)
    if inject:
        drop = drop | {b"authorization"}
    out = [(name, value) for name, value in headers if name not in drop]
    if inject and api_key is not None:
        out.append((API_KEY_HEADER, api_key.encode("latin-1")))
    return out


def client_response_headers(raw: Iterable[tuple[bytes, bytes]]) -> Headers:
    """The upstream's response headers for the client, hop-by-hop ones dropped."""
    pairs = [(name.lower(), value) for name, value in raw]
    drop = HOP_BY_HOP | _connection_tokens(pairs)
    return [(name, value) for name, value in pairs if name not in drop]


def rewrite_upload_url(
    upload_url: str, upstream_base_url: str, proxy_origin: str, prefix: str
) -> str:
    """Point a resumable-upload URL issued by the upstream back at the proxy.

    The SDK sends the upload chunks to this URL verbatim, bypassing its base URL, so without
    the rewrite the file bytes would go around the proxy. URLs on another origin are left
    alone: the proxy could not forward them to the right place.
    """
    target = urlsplit(upload_url)
    base = urlsplit(upstream_base_url)
    if (target.scheme, target.netloc) != (base.scheme, base.netloc):
        return upload_url
    path = target.path
    base_path = base.path.rstrip("/")
    if base_path and path.startswith(base_path + "/"):
        path = path[len(base_path) :]
    query = f"?{target.query}" if target.query else ""
    return f"{proxy_origin}{prefix}{path}{query}"


def request_origin(scheme: str, headers: Headers, server: tuple[str, int | None] | None) -> str:
    """The origin the client used to reach the proxy (from ``Host``, else the socket)."""
    for name, value in headers:
        if name == b"host":
            return f"{scheme}://{value.decode('latin-1')}"
    if server is None:
        return f"{scheme}://127.0.0.1"
    host, port = server
    return f"{scheme}://{host}" + (f":{port}" if port else "")


def redact_query(query_string: bytes) -> str:
    """A query string safe for logs: the value of ``key`` is replaced."""
    if not query_string:
        return ""
    parts = []
    for part in query_string.decode("latin-1").split("&"):
        name, sep, _ = part.partition("=")
        parts.append(f"{name}=REDACTED" if sep and name.lower() == "key" else part)
    return "?" + "&".join(parts)
