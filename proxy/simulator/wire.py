"""Byte-level encodings Google uses: pretty JSON, SSE events, durations, timestamps, replies."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from proxy.gemini.errors import JSON_CONTENT_TYPE, error_body

SSE_CONTENT_TYPE = "text/event-stream"


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete (non-streamed) HTTP answer."""

    status: int
    body: bytes = b""
    content_type: str | None = JSON_CONTENT_TYPE
    headers: tuple[tuple[str, str], ...] = ()

    def with_headers(self, *headers: tuple[str, str]) -> Reply:
        return Reply(self.status, self.body, self.content_type, self.headers + headers)


def pretty_json(value: Any) -> bytes:
    """JSON as Google prints unary answers: two-space indentation."""
    return json.dumps(value, indent=2, ensure_ascii=False).encode()


def json_reply(value: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(status, pretty_json(value) + b"\n", JSON_CONTENT_TYPE, headers)


def error_reply(
    code: int,
    message: str,
    status: str | None = None,
    details: list[dict[str, Any]] | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> Reply:
    """A ``google.rpc.Status`` error body with its HTTP status."""
    return Reply(code, error_body(code, message, status, details), JSON_CONTENT_TYPE, headers)


def sse_event(value: Any) -> bytes:
    """One SSE event as Gemini frames it: one-line JSON, ``": "`` after keys, CRLF CRLF."""
    return b"data: " + json.dumps(value, separators=(",", ": ")).encode() + b"\r\n\r\n"


def format_duration(seconds: float) -> str:
    """A protobuf ``Duration`` string: ``"15s"``, ``"2.5s"`` (at most nanosecond precision)."""
    nanos = max(0, math.ceil(seconds * 1_000_000_000 - 1e-3))
    whole, frac = divmod(nanos, 1_000_000_000)
    if frac == 0:
        return f"{whole}s"
    return f"{whole}.{frac:09d}".rstrip("0") + "s"


def parse_duration(text: str) -> float | None:
    """Seconds from a ``"300s"``/``"1.5s"`` Duration string; ``None`` when it is not one."""
    if not text.endswith("s"):
        return None
    try:
        value = float(text[:-1])
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def rfc3339(wall: float) -> str:
    """A Google-style timestamp with microseconds: ``2026-11-21T10:00:00.123456Z``."""
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
