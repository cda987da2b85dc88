"""The open Live sessions of this replica, for metrics, the admin view and shutdown."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any


class LiveSessions:
    """Counts per model and the close callbacks of the sessions still open."""

    def __init__(self) -> None:
        self.open: Counter[str] = Counter()
        self.setup_failures: Counter[str] = Counter()
        self.resumptions: Counter[str] = Counter()
        self._closers: dict[int, Callable[[], Awaitable[None]]] = {}

    def opened(self, key: int, model: str, close: Callable[[], Awaitable[None]]) -> None:
        self.open[model] += 1
        self._closers[key] = close

    def closed(self, key: int, model: str) -> None:
        self._closers.pop(key, None)
        self.open[model] -= 1
        if not self.open[model]:
            del self.open[model]

    def view(self) -> dict[str, Any]:
        return {
            "open": dict(self.open),
            "setup_failures": dict(self.setup_failures),
            "resumptions": dict(self.resumptions),
        }

    async def drain(self) -> None:
        """Close every open session with a close frame (1001, going away)."""
        closers = list(self._closers.values())
        if closers:
            await asyncio.gather(*(close() for close in closers), return_exceptions=True)
