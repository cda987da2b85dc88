"""The background tasks of one replica's cluster side: spawned, tracked, stopped in bounded time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

log = logging.getLogger("gemini_breaker.store")


class TaskSet:
    """Tasks started in the background and not awaited by whoever started them."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel_all(self, bound: float = 2.0) -> None:
        """Cancel every task and wait for them, at most ``bound`` seconds: a Redis client
        stuck mid-cancellation must not hold up the shutdown."""
        for task in list(self._tasks):
            task.cancel()
        try:
            async with asyncio.timeout(bound):
                await asyncio.gather(*self._tasks, return_exceptions=True)
        except TimeoutError:
            log.warning(
                "background tasks still running at shutdown: %s",
                ", ".join(sorted(t.get_coro().__qualname__ for t in self._tasks)),  # type: ignore[union-attr]
            )
