"""The replica's side of the cluster, wired from its parts: admission and outcome reporting
(``admission``), the quota gate (``quota_gate``), keeping in step with the cluster (``sync``)
and operator actions (``actions``), over one link to the store (``link``).

The request path calls the coordinator; each call is bound to the part that answers it.
"""

from __future__ import annotations

import contextlib
import logging

from ..config import Settings
from ..pipeline.evidence import FailureLedger
from .actions import OperatorActions
from .admission import Admission, Admissions
from .connect import StoreClient
from .health import StoreUnavailable
from .keys import Keys
from .link import StoreLink
from .mirror import Mirror
from .quota_gate import CLOCK_TOLERANCE, QuotaGate, Shed
from .series import SeriesStore
from .sync import FULL_RECONCILE_EVERY, ClusterSync
from .tasks import TaskSet

__all__ = ["CLOCK_TOLERANCE", "FULL_RECONCILE_EVERY", "Admission", "Coordinator", "Shed"]

log = logging.getLogger("gemini_breaker.store")


class Coordinator:
    """One replica's cluster side: the mirror, and every conversation with the breaker store."""

    def __init__(
        self, settings: Settings, redis: StoreClient, *, embedded: bool, replica: str
    ) -> None:
        self.settings = settings
        self.embedded = embedded
        self.replica = replica
        self.keys = Keys(settings.redis.namespace)
        self.mirror = Mirror()
        self.evidence = FailureLedger(settings.quota.throttle_window)
        """Which failures of this replica are evidence about a model (``pipeline.evidence``)."""
        self._tasks = TaskSet()
        self.link = StoreLink(settings, redis, self.keys, self.mirror, replica)
        series = SeriesStore(
            redis,
            self.keys,
            settings.admin.series_resolution,
            settings.admin.series_window,
            settle=2 * settings.redis.reconcile_interval + self.link.background_timeout,
        )
        self.admission = Admissions(settings, self.mirror, self.link, self._tasks, self.evidence)
        self.quotas = QuotaGate(settings, self.mirror, self.link, self._tasks)
        self.sync = ClusterSync(settings, self.mirror, self.link, series)
        self.actions = OperatorActions(settings, self.mirror, self.link, series)
        self.throttle = self.quotas.throttle
        # The request path's calls, bound to the part that answers each.
        self.params = self.admission.params
        self.admit = self.admission.admit
        self.still_admits = self.admission.still_admits
        self.record = self.admission.record
        self.release = self.admission.release
        self.serving = self.admission.serving
        self.chain_for = self.admission.chain_for
        self.quota_gate = self.quotas.check
        self.quota_requested = self.quotas.requested
        self.quota_not_found = self.quotas.not_found
        self.rate_limited = self.quotas.rate_limited
        self.cooldown_left = self.quotas.cooldown_left
        self.budget_gate = self.quotas.budget_gate
        self.has_budget = self.quotas.has_budget
        self.may_spill = self.quotas.may_spill

    @property
    def degraded(self) -> bool:
        """Fail-static: Redis is unreachable and this replica runs its own breakers."""
        return self.link.degraded

    async def start(self) -> None:
        """Register this replica's routes and start the background loops. Redis being down
        is not an error: the replica starts in fail-static mode and keeps trying."""
        link = self.link
        try:
            snapshot = await link.health.run(link.register_on(link.shared), link.background_timeout)
        except StoreUnavailable as exc:
            log.warning("Redis unreachable at start-up (%s): starting fail-static", exc)
            link.health.mark_down()
            await link.enter_fail_static()
        else:
            self.mirror.adopt(snapshot)
        self._tasks.spawn(self.admission.flush_forever())
        self._tasks.spawn(self.sync.reconcile_forever())
        if not self.embedded:
            self._tasks.spawn(self.sync.subscribe_forever())

    async def stop(self) -> None:
        """Flush what is pending (best effort) and stop the loops."""
        with contextlib.suppress(StoreUnavailable):
            await self.admission.flush()
        await self.sync.send_tallies(final=True)
        await self._tasks.cancel_all()
