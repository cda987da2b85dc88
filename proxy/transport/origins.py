"""Upstreams for origins other than the configured one (a Vertex location each), each with its
own connection pool opened on first use and closed with the proxy."""

from __future__ import annotations

import dataclasses

from ..config import UpstreamSettings
from .upstream import Upstream, UpstreamError

MAX_ORIGINS = 64
"""Locations come from request paths: the pools they open are bounded."""


class OriginPools:
    """Origin -> upstream, with the configured upstream's limits, TLS and egress proxy."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self._settings = settings
        self._upstreams: dict[str, Upstream] = {}

    def upstream(self, origin: str) -> Upstream:
        found = self._upstreams.get(origin)
        if found is None:
            if len(self._upstreams) >= MAX_ORIGINS:
                raise UpstreamError(
                    f"More than {MAX_ORIGINS} upstream origins were asked for.", 400
                )
            settings = dataclasses.replace(self._settings, base_url=origin)
            found = self._upstreams[origin] = Upstream(settings, Upstream.new_pool(settings))
        return found

    @property
    def stale_retries(self) -> int:
        """Requests resent because a reused connection had closed (see ``Upstream``)."""
        return sum(upstream.stale_retries for upstream in self._upstreams.values())

    async def aclose(self) -> None:
        upstreams, self._upstreams = self._upstreams, {}
        for upstream in upstreams.values():
            await upstream.close_pool()
