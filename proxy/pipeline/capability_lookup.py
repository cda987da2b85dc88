"""The capability registry of this replica, filled in from the upstream's model list lazily.

A model's token limits, when not configured, are fetched once with ``GET models/{model}`` in
the background the first time a route needs them; until then the limit is unknown and never
blocks the model.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from ..config import Settings
from ..transport.headers import Headers
from ..transport.upstream import Upstream, UpstreamError
from .capabilities import CapabilityRegistry

log = logging.getLogger("gemini_breaker.capabilities")

MAX_MODEL_DOCUMENT_BYTES = 256 * 1024


class CapabilityLookup:
    """Owns the registry; ``upstream`` is set by the app's lifespan."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = CapabilityRegistry(
            {model: limits.capabilities for model, limits in settings.models.items()},
            default=settings.model_defaults.capabilities,
        )
        self.upstream: Upstream | None = None
        self._tasks: dict[str, asyncio.Task[Any]] = {}

    def look_up(self, chain: tuple[str, ...], headers: Headers, query_string: bytes) -> None:
        """Start fetching the limits of the chain's models not known yet (with the calling
        request's credentials), without waiting for them."""
        if self.upstream is None or len(chain) < 2:
            return  # a lone model is never weighed against another
        for model in chain:
            self._start(model, headers, query_string)

    def _start(self, model: str, headers: Headers, query_string: bytes) -> None:
        if "@" in model:
            # A Vertex target: its request's token is not for the Developer API's models.get,
            # and Vertex's own model resource publishes no token limits, so its limits come
            # from the configuration only (docs/vertex.md).
            return
        if self.upstream is not None and self.registry.claim_lookup(model):
            task = asyncio.ensure_future(self._fetch(model, headers, query_string))
            self._tasks[model] = task
            task.add_done_callback(lambda _: self._tasks.pop(model, None))

    async def ensure_known(
        self, models: list[str], headers: Headers, query_string: bytes, bound: float
    ) -> None:
        """Wait (at most ``bound`` seconds) for the limits of these models to be looked up:
        a 400 "input too long" is about to be decided on them."""
        for model in models:
            if self.registry.input_limit(model) is None:
                self._start(model, headers, query_string)
        waiting = [self._tasks[m] for m in models if m in self._tasks]
        if waiting:
            await asyncio.wait(waiting, timeout=max(bound, 0.0))

    async def _fetch(self, model: str, headers: Headers, query_string: bytes) -> None:
        upstream = self.upstream
        assert upstream is not None
        get_headers = [h for h in headers if h[0] not in (b"content-type", b"content-length")]
        try:
            response = await upstream.open(
                "GET",
                f"/v1beta/models/{model}",
                query_string,
                get_headers,
                b"",
                self.settings.model_settings(model),
            )
            try:
                body = await response.aread()
            finally:
                await response.aclose()
        except (UpstreamError, OSError) as exc:
            log.debug("could not look up %s's limits: %s", model, exc)
            self.registry.release_lookup(model)
            return
        if response.status_code != 200 or len(body) > MAX_MODEL_DOCUMENT_BYTES:
            self.registry.release_lookup(model)
            return
        try:
            document = json.loads(body)
        except ValueError:
            self.registry.release_lookup(model)
            return
        if isinstance(document, dict) and self.registry.learn(model, document):
            log.info(
                "learned %s's limits: input %s, output %s tokens",
                model,
                self.registry.input_limit(model),
                self.registry.output_limit(model),
            )

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
