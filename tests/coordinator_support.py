"""In-process replicas (a real Coordinator on a real Redis client) for the store-level tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

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
