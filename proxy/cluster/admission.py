"""Breaker admission (may a request try this model now?) and outcome reporting.

A request on a closed breaker costs no Redis round trip: ``admit`` reads the mirror, and
``record`` adds to an in-memory tally. A tally holding a failure is flushed within
``redis.flush_interval`` (at once after a burst of failures), carrying every success pending
with it; a tally of successes alone, once per ``redis.reconcile_interval`` (or window bucket,
when that is shorter). Only an open breaker whose wait is over (or a half-open one with
permits left) makes a request ask Redis, bounded by ``redis.operation_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from dataclasses import dataclass

from ..config import Settings
from ..pipeline.evidence import FailureLedger
from ..pipeline.outcomes import Verdict
from .health import StoreUnavailable
from .link import StoreLink
from .mirror import Mirror
from .state import (
    CLOSED,
    DISABLED,
    FORCED_OPEN,
    HALF_OPEN,
    OPEN,
    BreakerParams,
    BreakerState,
    Outcome,
)
from .tasks import TaskSet

# A replica asks Redis about a non-admitting breaker at most this often per model.
ASK_INTERVAL_MS = 100.0


class Decision(enum.Enum):
    """What a breaker in a given state answers a request, at a given time of the store."""

    ADMIT = "admit"
    """Closed or disabled: go ahead, no permit needed."""
    REFUSE = "refuse"
    """Open (its wait not over), forced open, or half-open with every permit handed out."""
    ASK = "ask"
    """Only the store can tell: an open breaker whose wait is over turns half-open and hands
    out a probe permit; a half-open one hands out the permits it has left (other replicas
    take them too) or reopens when the permits it issued were never reported."""


def decide(breaker: BreakerState, params: BreakerParams, now_ms: float) -> Decision:
    """The admission rules. ``acquire.lua`` applies the same ones to the store's state (a test
    holds them to agree); the mirror asks it only when this says ``ASK``."""
    if breaker.state in (CLOSED, DISABLED):
        return Decision.ADMIT
    if breaker.state == FORCED_OPEN:
        return Decision.REFUSE
    if breaker.state == OPEN and now_ms < breaker.open_until_ms:
        return Decision.REFUSE
    if (
        breaker.state == HALF_OPEN
        and breaker.probes_issued >= params.half_open_probes
        and now_ms < breaker.since_ms + params.half_open_timeout * 1000
    ):
        return Decision.REFUSE
    return Decision.ASK


@dataclass(frozen=True, slots=True)
class Admission:
    """Leave to send one request to ``model``; the epoch fences its reported outcome."""

    model: str
    epoch: int
    probe: bool


class Admissions:
    """Admits requests from the mirror and reports their outcomes to the store."""

    def __init__(
        self,
        settings: Settings,
        mirror: Mirror,
        link: StoreLink,
        tasks: TaskSet,
        evidence: FailureLedger,
    ) -> None:
        self.settings = settings
        self.mirror = mirror
        self._link = link
        self._tasks = tasks
        self._evidence = evidence
        self._pending: dict[tuple[str, int], list[int]] = {}
        self._flush_now = asyncio.Event()
        self._next_ask_ms: dict[str, float] = {}

    def params(self, model: str) -> BreakerParams:
        return self.settings.model_settings(model).breaker

    async def admit(self, model: str) -> Admission | None:
        """Leave to try ``model`` now, or None to skip it. No Redis call while it is closed."""
        breaker = self.mirror.breaker(model)
        if breaker.admits_without_redis:  # the common case, before anything else is read
            return Admission(model, breaker.epoch, probe=False)
        params = self.params(model)
        now = self.mirror.store_now_ms()
        if decide(breaker, params, now) is not Decision.ASK:
            return None
        if now < self._next_ask_ms.get(model, 0.0):
            return None
        self._next_ask_ms[model] = now + ASK_INTERVAL_MS
        try:
            acquired = await self._link.call(
                lambda store: store.acquire(model, params), self._link.timeout
            )
        except StoreUnavailable:
            return None
        self.mirror.apply(acquired.change)
        if not acquired.permit or acquired.change.breaker is None:
            return None
        granted = acquired.change.breaker
        return Admission(model, granted.epoch, probe=granted.state == HALF_OPEN)

    def chain_for(self, route: str) -> tuple[str, ...]:
        """The chain a request for ``route`` walks: the configured one, or, while an operator
        pin holds, the pinned model first and then the rest of the chain in order (the
        pinned model's breaker still decides whether it is tried). Reads the mirror only."""
        chain = self.settings.chain_for(route)
        if not self.mirror.pins:
            return chain
        pin = self.mirror.pin(route)
        if pin is None and route not in self.settings.routes:
            # A Vertex request names its target (model@location); the route it takes, and so
            # the operator's pin, is its model's.
            pin = self.mirror.pin(route.partition("@")[0])
        if pin is None or pin.model not in chain or chain[0] == pin.model:
            return chain
        return (pin.model, *(m for m in chain if m != pin.model))

    def still_admits(self, admission: Admission) -> bool:
        """Whether a retry on the same model may go ahead (its breaker has not moved on)."""
        breaker = self.mirror.breaker(admission.model)
        return breaker.epoch == admission.epoch and breaker.admits_without_redis

    def record(self, admission: Admission, verdict: Verdict) -> None:
        """Count an outcome for the breaker; never waits on Redis."""
        if not verdict.counts_for_breaker:
            return
        failed = verdict.counts_as_failure
        if admission.probe:
            self._tasks.spawn(self._probe_done(admission, ok=not failed))
            return
        tally = self._pending.get((admission.model, admission.epoch))
        if tally is None:
            tally = self._pending[(admission.model, admission.epoch)] = [0, 0]
        tally[0] += 1
        if failed:
            tally[1] += 1
            if tally[1] >= self.params(admission.model).burst_failures:
                self._flush_now.set()

    def release(self, admission: Admission) -> None:
        """An admission whose outcome is not counted (the client's fault): a probe's permit is
        handed back; an ordinary admission holds nothing. Never waits on Redis."""
        if admission.probe:
            self._tasks.spawn(self._probe_release(admission))

    def serving(self, model: str) -> bool:
        """Whether ``model`` answered a request on this replica within its burst window (read
        when a failure is judged: the successes come from the outcome tallies)."""
        if self._evidence.served_within(model, self.params(model).burst_seconds):
            return True
        return any(
            calls > fails for (name, _), (calls, fails) in self._pending.items() if name == model
        )

    async def _probe_done(self, admission: Admission, ok: bool) -> None:
        params = self.params(admission.model)
        try:
            change = await self._link.call(
                lambda store: store.probe_done(admission.model, admission.epoch, ok, params),
                self._link.background_timeout,
            )
        except StoreUnavailable:
            # The permit is lost; the half-open deadline reopens the breaker in time.
            return
        self.mirror.apply(change)

    async def _probe_release(self, admission: Admission) -> None:
        try:
            change = await self._link.call(
                lambda store: store.probe_release(admission.model, admission.epoch),
                self._link.background_timeout,
            )
        except StoreUnavailable:
            # As a lost probe: the half-open deadline reopens the breaker in time.
            return
        self.mirror.apply(change)

    async def flush(self) -> None:
        """Report the tallied outcomes in one round trip."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        for (model, _), (calls, fails) in pending.items():
            if calls > fails:
                self._evidence.served(model)
        outcomes = [Outcome(m, e, calls, fails) for (m, e), (calls, fails) in pending.items()]
        params = {o.model: self.params(o.model) for o in outcomes}
        try:
            changes = await self._link.call(
                lambda store: store.report(outcomes, params), self._link.background_timeout
            )
        except StoreUnavailable:
            for key, (calls, fails) in pending.items():  # keep them for the next flush
                tally = self._pending.setdefault(key, [0, 0])
                tally[0] += calls
                tally[1] += fails
            return
        for change in changes:
            self.mirror.apply(change)

    def _failures_pending(self) -> bool:
        return any(fails for _, fails in self._pending.values())

    def _successes_may_wait(self) -> float:
        """How long a tally of successes alone may wait: a reconcile interval, but no longer
        than a window bucket of its models (so successes count in about the bucket they
        happened in) and no shorter than a flush interval."""
        redis = self.settings.redis
        buckets = [self.params(model).bucket_seconds for model, _ in self._pending]
        return max(redis.flush_interval, min([redis.reconcile_interval, *buckets]))

    async def flush_forever(self) -> None:
        """Flush failures within a flush interval, successes alone about once a second:
        successes are the failure rate's denominator, so they travel with the next failures
        at the latest, but on closed, healthy breakers they cost one call a second."""
        interval = self.settings.redis.flush_interval
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._flush_now.wait()
            self._flush_now.clear()
            now = loop.time()
            if self._failures_pending() or now - last >= self._successes_may_wait():
                last = now
                await self.flush()
