"""The attempt log: every Gemini request the simulator saw, bounded in count and bytes."""

from __future__ import annotations

import base64
import hashlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

MAX_BODY_BYTES = 1024 * 1024
"""Per request: a longer body is recorded truncated."""
MAX_TOTAL_BODY_BYTES = 64 * 1024 * 1024
"""Across the log: past this, the oldest entries lose their bodies (the metadata stays)."""


def key_digest(key: str) -> str:
    """A short, stable stand-in for a credential, so the log never holds the key itself."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass(slots=True)
class Attempt:
    """One request. Filled in as the request is handled, so an in-flight one shows up too."""

    seq: int
    wall: float
    mono: float
    method: str
    path: str
    query: str
    api_version: str | None
    model: str | None = None
    api_method: str | None = None
    key_digest: str | None = None
    stream: bool = False
    fault: str | None = None
    faults: tuple[str, ...] = ()
    status: int | None = None
    """The HTTP status sent; None while in flight, or when no response was sent at all."""
    client_disconnected: bool = False
    body: bytes | None = None
    body_size: int = 0
    body_truncated: bool = False
    body_dropped: bool = False

    def to_json(self, include_body: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "seq": self.seq,
            "wall": self.wall,
            "mono": self.mono,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "api_version": self.api_version,
            "model": self.model,
            "api_method": self.api_method,
            "key_digest": self.key_digest,
            "stream": self.stream,
            "fault": self.fault,
            "faults": list(self.faults),
            "status": self.status,
            "client_disconnected": self.client_disconnected,
            "body_size": self.body_size,
            "body_truncated": self.body_truncated,
            "body_dropped": self.body_dropped,
        }
        if include_body:
            out["body"] = None if self.body is None else base64.b64encode(self.body).decode()
        return out


@dataclass(slots=True)
class AttemptLog:
    """A bounded, append-only log; sequence numbers keep growing across ``clear``."""

    max_entries: int = 10_000
    _entries: deque[Attempt] = field(default_factory=deque)
    _next_seq: int = 1
    _body_bytes: int = 0

    def begin(
        self,
        *,
        wall: float,
        mono: float,
        method: str,
        path: str,
        query: str,
        api_version: str | None,
    ) -> Attempt:
        attempt = Attempt(self._next_seq, wall, mono, method, path, query, api_version)
        self._next_seq += 1
        self._entries.append(attempt)
        while len(self._entries) > self.max_entries:
            self._release(self._entries.popleft())
        return attempt

    def set_body(self, attempt: Attempt, body: bytes) -> None:
        attempt.body_size = len(body)
        attempt.body_truncated = len(body) > MAX_BODY_BYTES
        attempt.body = body[:MAX_BODY_BYTES]
        self._body_bytes += len(attempt.body)
        for old in self._entries:
            if self._body_bytes <= MAX_TOTAL_BODY_BYTES or old is attempt:
                break
            if old.body is not None:
                self._release(old)
                old.body_dropped = True

    def list(self, model: str | None = None, since: int = 0) -> list[Attempt]:
        """Entries with ``seq > since``, optionally for one model, oldest first."""
        return [a for a in self._entries if a.seq > since and (model is None or a.model == model)]

    def clear(self) -> None:
        self._entries.clear()
        self._body_bytes = 0

    def _release(self, attempt: Attempt) -> None:
        if attempt.body is not None:
            self._body_bytes -= len(attempt.body)
            attempt.body = None
