"""The quota gate: whether a request of one credential may go to a model now (the upstream's
429s mirrored as cooldowns, paced recovery after them, this replica's adaptive throttle, and
the cluster-wide budget of a model that has one)."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..config import Settings
from ..gemini.quota import RateLimit
from ..pipeline.throttle import AdaptiveThrottle
from .health import StoreUnavailable
from .link import StoreLink
from .mirror import Mirror
from .state import QuotaState
from .tasks import TaskSet

log = logging.getLogger("gemini_breaker.store")

# Seconds of disagreement between this replica's estimate of the store's clock and the store
# itself that are not worth waiting for.
CLOCK_TOLERANCE = 0.05


@dataclass(frozen=True, slots=True)
class Shed:
    """A request answered 429 by the proxy itself, without going upstream."""

    reason: str
    """``cooldown`` (the upstream said 429 lately), ``pacing`` (resuming slowly after one),
    ``throttle`` (this replica's adaptive throttle) or ``budget`` (the cluster's budget)."""
    retry_after: float
    quota_id: str
    message: str
    shared_capacity: bool = False
    """The 429 behind it named no quota of the project's (Vertex's dynamic shared quota):
    the model in another location may have capacity."""


class QuotaGate:
    """Sheds requests the upstream would answer 429, from the mirror; learns from its 429s."""

    def __init__(self, settings: Settings, mirror: Mirror, link: StoreLink, tasks: TaskSet) -> None:
        self.settings = settings
        self.quota = settings.quota
        self.mirror = mirror
        self._link = link
        self._tasks = tasks
        self.throttle = AdaptiveThrottle(settings.quota.throttle_k, settings.quota.throttle_window)

    def check(self, scope: str, model: str, waited: bool = False) -> Shed | None:
        """Whether a request of this credential may go to ``model`` now; no Redis call.

        ``waited``: the request already waited out its own 429's delay, so it is not paced
        again (a new cooldown still stops it)."""
        now = self.mirror.store_now_ms()
        quota = self.mirror.quotas.get((scope, model))
        shared = quota is not None and not (quota.quota_id or quota.per_day)
        if quota is not None:
            if now < quota.until_ms - (CLOCK_TOLERANCE * 1000 if waited else 0):
                kind = "per-day quota exhausted" if quota.per_day else "cooling down after a 429"
                return Shed(
                    "cooldown",
                    (quota.until_ms - now) / 1000,
                    quota.quota_id,
                    f"{kind} from the upstream",
                    shared,
                )
            if not waited:
                scale = quota.scale_at(now, self.quota.recovery_per_second)
                if scale < 1 and random.random() >= scale:
                    return Shed(
                        "pacing",
                        1.0,
                        quota.quota_id,
                        f"resuming at {scale:.0%} of the rate after a 429",
                        shared,
                    )
        if not waited and self.throttle.rejects((scope, model)):
            return Shed(
                "throttle",
                1.0,
                quota.quota_id if quota else "",
                "most recent requests were rejected upstream; throttling locally",
                shared,
            )
        return None

    def has_budget(self, model: str) -> bool:
        limits = self.settings.model_settings(model)
        return bool(limits.requests_per_minute or limits.tokens_per_minute)

    async def budget_gate(self, model: str, tokens: int) -> Shed | None:
        """Spend from the model's cluster-wide budget, when it has one (one Redis call)."""
        limits = self.settings.model_settings(model)
        rpm, tpm = limits.requests_per_minute or 0, limits.tokens_per_minute or 0
        if not rpm and not tpm:
            return None
        try:
            wait = await self._link.call(
                lambda store: store.spend_budget(model, rpm, tpm, tokens), self._link.timeout
            )
        except StoreUnavailable:
            return None  # the provider's own quota still stands behind this one
        if wait <= 0:
            return None
        return Shed(
            "budget", wait, "gemini-breaker/budget", f"the cluster's budget for {model} is spent"
        )

    def may_spill(self, model: str) -> bool:
        """Whether this shed request may try ``model`` instead (opt-in, bounded share, and only
        onto a model whose own budget will decide)."""
        share = self.quota.spillover_share
        return share > 0 and self.has_budget(model) and random.random() < share

    def cooldown_left(self, scope: str, model: str) -> float:
        """Seconds until the scope's cooldown on ``model`` ends (0 when there is none)."""
        quota = self.mirror.quotas.get((scope, model))
        if quota is None:
            return 0.0
        return max(0.0, (quota.until_ms - self.mirror.store_now_ms()) / 1000)

    def requested(self, scope: str, model: str) -> None:
        """A request of this scope is being sent to ``model``."""
        self.throttle.requested((scope, model))

    def not_found(self, scope: str, model: str) -> None:
        """The upstream answered 404 for ``model``: it keeps no throttle state."""
        self.throttle.forget((scope, model))

    def rate_limited(self, scope: str, model: str, limit: RateLimit) -> float:
        """A 429 from the upstream: hold the scope here at once, tell the cluster in the
        background. Returns the seconds until the scope may be tried again."""
        self.throttle.rejected((scope, model))
        delay = limit.retry_delay
        if delay is None:
            delay = seconds_to_daily_reset() if limit.per_day else self.quota.default_cooldown
        if limit.per_day:
            log.warning(
                "quota alert: per-day quota %s exhausted for %s (key %s); holding for %.0f s",
                limit.quota_id or "?",
                model,
                scope,
                delay,
            )
        now = int(self.mirror.store_now_ms())
        current = self.mirror.quotas.get((scope, model))
        self.mirror.hold_quota(
            QuotaState(
                scope=scope,
                model=model,
                until_ms=now + round(delay * 1000),
                scale=current.scale_at(now, self.quota.recovery_per_second) if current else 1.0,
                scale_from_ms=now + round(delay * 1000),
                per_day=limit.per_day,
                quota_id=limit.quota_id,
                epoch=0,
            )
        )
        self._tasks.spawn(self._feedback(scope, model, delay, limit))
        return delay

    async def _feedback(self, scope: str, model: str, delay: float, limit: RateLimit) -> None:
        try:
            change = await self._link.call(
                lambda store: store.quota_feedback(
                    scope, model, delay, limit.per_day, limit.quota_id, self.quota
                ),
                self._link.background_timeout,
            )
        except StoreUnavailable:
            return  # the provisional hold still sheds on this replica
        self.mirror.apply_quota(change)


def seconds_to_daily_reset(now: datetime | None = None) -> float:
    """Seconds until Gemini's daily quotas reset: midnight, Pacific time."""
    try:
        pacific: tzinfo = ZoneInfo("America/Los_Angeles")
    except ZoneInfoNotFoundError:  # no time zone database: standard time is close enough
        pacific = timezone(timedelta(hours=-8))
    local = (now or datetime.now(UTC)).astimezone(pacific)
    midnight = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - local).total_seconds()
