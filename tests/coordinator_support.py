"""In-process replicas (a real Coordinator on a real Redis client) for the store-level tests."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable

import anyio

from proxy.cluster.connect import store_client
from proxy.cluster.coordinator import Coordinator
from proxy.config import Settings

DEADLINE = 10.0


@contextlib.asynccontextmanager
async def replica(settings: Settings, name: str = "r1") -> AsyncIterator[Coordinator]:
    """A started coordinator named ``name`` on the configured store; stopped and closed after."""
    client = store_client(settings.redis)
    coordinator = Coordinator(settings, client, embedded=False, replica=name)
    await coordinator.start()
    try:
        yield coordinator
    finally:
        await coordinator.stop()
        await client.aclose()


async def eventually(condition: Callable[[], object], what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``DEADLINE`` seconds."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, what
        await anyio.sleep(0.01)
