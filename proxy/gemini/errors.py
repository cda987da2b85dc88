"""Google's error shape: ``google.rpc.Status`` as JSON, with the matching HTTP status.

The official SDK picks its exception class from the HTTP status (4xx -> ``ClientError``,
5xx -> ``ServerError``) and reads ``error.message`` and ``error.status`` from the body, so
every error the proxy or the simulator makes goes through here.
"""

from __future__ import annotations

import json
from typing import Any

JSON_CONTENT_TYPE = "application/json; charset=UTF-8"

# HTTP status -> canonical google.rpc.Code name, as Google's front end maps them.
CANONICAL_STATUS: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "INVALID_ARGUMENT",
    409: "ABORTED",
    411: "INVALID_ARGUMENT",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def status_name(code: int) -> str:
    """The canonical status string Google pairs with an HTTP status code."""
    if code in CANONICAL_STATUS:
        return CANONICAL_STATUS[code]
    return "INTERNAL" if code >= 500 else "UNKNOWN"


def error_payload(
    code: int,
    message: str,
    status: str | None = None,
    details: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``{"error": {...}}`` object for an HTTP status and a human-readable message."""
    error: dict[str, Any] = {
        "code": code,
        "message": message,
        "status": status or status_name(code),
    }
    if details:
        error["details"] = details
    return {"error": error}


def error_body(
    code: int,
    message: str,
    status: str | None = None,
    details: list[dict[str, Any]] | None = None,
) -> bytes:
    """The error as Google sends it on a unary call: pretty-printed with two spaces."""
    return json.dumps(error_payload(code, message, status, details), indent=2).encode() + b"\n"


def sse_error_event(
    code: int,
    message: str,
    status: str | None = None,
) -> bytes:
    """An in-band error for a stream whose headers were already sent; the SDK raises on it."""
    payload = json.dumps(error_payload(code, message, status), separators=(",", ": "))
    return b"data: " + payload.encode() + b"\r\n\r\n"
