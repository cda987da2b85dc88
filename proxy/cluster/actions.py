"""Operator actions on the cluster (breaker transitions, route pins) and the operator's reads
(audit, series): each runs on the shared store only, and is applied to this replica's mirror
at once (to the others through the events channel)."""

from __future__ import annotations

from typing import Any

from ..config import Settings
from .link import StoreLink
from .mirror import Mirror
from .series import SeriesStore, fold
from .state import AuditEntry, Change, PinChange


class OperatorActions:
    """What ``/admin`` asks of the cluster; refused (``StoreUnavailable``) while fail-static."""

    def __init__(
        self, settings: Settings, mirror: Mirror, link: StoreLink, series: SeriesStore
    ) -> None:
        self.settings = settings
        self.mirror = mirror
        self._link = link
        self._series = series

    async def breaker(self, model: str, action: str, by: str, reason: str) -> Change:
        """An operator's breaker action, as one audited Lua transition on the shared store."""
        params = self.settings.model_settings(model).breaker
        replica = self._link.replica
        change = await self._link.call_shared(
            lambda store: store.force(model, action, by, reason, params, via=replica)
        )
        self.mirror.apply(change)
        return change

    async def pin(
        self, route: str, model: str, ttl_seconds: float, by: str, reason: str
    ) -> PinChange:
        """Pin ``route`` to ``model`` for ``ttl_seconds`` (audited, published)."""
        replica = self._link.replica
        change = await self._link.call_shared(
            lambda store: store.pin(route, model, ttl_seconds, by, reason, via=replica)
        )
        self.mirror.apply_pin(change)
        return change

    async def unpin(self, route: str, by: str, reason: str) -> PinChange:
        """Remove the route's pin (audited; published when there was one)."""
        replica = self._link.replica
        change = await self._link.call_shared(
            lambda store: store.unpin(route, by, reason, via=replica)
        )
        self.mirror.apply_pin(change)
        return change

    async def audit(self, limit: int) -> list[AuditEntry]:
        """The newest audit entries of the cluster, newest first."""
        return await self._link.call_shared(lambda store: store.audit(limit))

    async def series_document(self) -> dict[str, Any]:
        """The cluster series folded for the charts, with the breaker transitions this
        replica saw within its window (``StoreUnavailable`` while fail-static)."""
        series = self._series
        raw = await self._link.call_shared(lambda _: series.read())
        document = fold(raw, self.settings.routes, series.resolution_ms, series.buckets)
        since = document["times_ms"][0]
        document["transitions"] = [t for t in self.mirror.transitions if t["at_ms"] >= since]
        return document
