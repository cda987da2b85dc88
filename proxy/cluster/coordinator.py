"""The replica's side of the cluster: admission from the mirror, outcomes reported in the
background, the events subscription, periodic reconciliation, and fail-static mode.

A request on a closed breaker costs no Redis round trip: ``admit`` reads the mirror, and
``record`` adds to an in-memory tally. A tally holding a failure is flushed within
``redis.flush_interval`` (at once after a burst of failures), carrying every success pending
with it; a tally of successes alone, once per ``redis.reconcile_interval`` (or window bucket,
when that is shorter). Only an open
breaker whose wait is over (or a half-open one with permits left) makes a request ask Redis,
bounded by ``redis.operation_timeout``.

In the background each replica sends one heartbeat per reconcile interval; it answers the
store's epoch counter, and the whole state is read only when that moved (or a pin is held),
and every ``FULL_RECONCILE_EVERY`` intervals regardless.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import fakeredis
from redis.asyncio.client import PubSub

from ..config import Settings
from ..gemini.quota import RateLimit
from ..pipeline.evidence import FailureLedger
from ..pipeline.outcomes import Verdict
from ..pipeline.throttle import AdaptiveThrottle
from .connect import StoreClient, subscribe
from .health import REDIS_FAILURES, StoreHealth, StoreUnavailable
from .keys import Keys
from .mirror import Mirror
from .series import SeriesStore, TallySource, fold
from .state import (
    FORCED_OPEN,
    HALF_OPEN,
    OPEN,
    AuditEntry,
    BreakerParams,
    Change,
    Heartbeat,
    Outcome,
    PinChange,
    QuotaChange,
    QuotaState,
    Snapshot,
    parse_any_event,
)
from .store import BreakerStore, StoreError

log = logging.getLogger("gemini_breaker.store")

T = TypeVar("T")

# Seconds of disagreement between this replica's estimate of the store's clock and the store
# itself that are not worth waiting for.
CLOCK_TOLERANCE = 0.05
# A replica asks Redis about a non-admitting breaker at most this often per model.
ASK_INTERVAL_MS = 100.0
# A replica not heard from for this long is dropped from the replicas set.
REPLICA_FORGET_SECONDS = 600.0
# Every this many reconcile intervals the whole state is read even when the epoch counter did
# not move: it refreshes the windows' counts of breakers this replica sends nothing to, and
# drops quota conditions that ran out, neither of which takes an epoch.
FULL_RECONCILE_EVERY = 10


@dataclass(frozen=True, slots=True)
class Shed:
    """A request answered 429 by the proxy itself, without going upstream."""

    reason: str
    """``cooldown`` (the upstream said 429 lately), ``pacing`` (resuming slowly after one), or
    ``throttle`` (this replica's adaptive throttle)."""
    retry_after: float
    quota_id: str
    message: str


@dataclass(frozen=True, slots=True)
class Admission:
    """Leave to send one request to ``model``; the epoch fences its reported outcome."""

    model: str
    epoch: int
    probe: bool


class Coordinator:
    """Owns the mirror and every conversation with the breaker store."""

    def __init__(
        self, settings: Settings, redis: StoreClient, *, embedded: bool, replica: str
    ) -> None:
        self.settings = settings
        self.embedded = embedded
        self.replica = replica
        self.keys = Keys(settings.redis.namespace)
        self.mirror = Mirror()
        self._redis = redis
        # Every new epoch is taken above the highest this replica has seen (see reconcile).
        self._shared = BreakerStore(redis, self.keys, self._epoch_floor)
        self._local: BreakerStore | None = None
        self._health = StoreHealth(
            settings.redis.failures_to_degrade, settings.redis.retry_seconds, self._health_changed
        )
        self._timeout = settings.redis.operation_timeout
        self._background_timeout = max(1.0, settings.redis.operation_timeout)
        self._pending: dict[tuple[str, int], list[int]] = {}
        self._flush_now = asyncio.Event()
        self._next_ask_ms: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # Bumped whenever the mirror starts following another store (or a reset one): an
        # answer from before that is about a different history and must not be applied.
        self._generation = 0
        self.quota = settings.quota
        self.throttle = AdaptiveThrottle(settings.quota.throttle_k, settings.quota.throttle_window)
        self.evidence = FailureLedger(settings.quota.throttle_window)
        """Which failures of this replica are evidence about a model (``pipeline.evidence``)."""
        self.quota_alerts: Counter[str] = Counter()
        """Per-day quota 429s per model, since start."""
        self.schema_drift: Counter[str] = Counter()
        """JSON-mode answers per model that were not the JSON asked for, since start."""
        self.credential_alerts: Counter[str] = Counter()
        """401/403 answers per model, since start (a credential problem, not a model one)."""
        self._digest = _digest(settings.routes)
        self.heartbeat_seen: Heartbeat | None = None
        """The replicas the last heartbeat saw (None until the first one answered)."""
        self.config_drift = False
        """Live replicas disagree on the routes digest (logged when it starts and ends)."""
        self.series = SeriesStore(
            redis,
            self.keys,
            settings.admin.series_resolution,
            settings.admin.series_window,
            settle=2 * settings.redis.reconcile_interval + self._background_timeout,
        )
        self.tallies: TallySource | None = None
        """Counts of the request path, sent to the cluster series after each heartbeat."""
        self._series_bucket: int | None = None
        """The series bucket the tallies are being counted for."""

    # -- life cycle -------------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        """Fail-static: Redis is unreachable and this replica runs its own breakers."""
        return self._local is not None

    async def start(self) -> None:
        """Register this replica's routes and start the background loops. Redis being down
        is not an error: the replica starts in fail-static mode and keeps trying."""
        try:
            snapshot = await self._health.run(
                self._register_on(self._shared), self._background_timeout
            )
        except StoreUnavailable as exc:
            log.warning("Redis unreachable at start-up (%s): starting fail-static", exc)
            self._health.mark_down()
            await self._enter_fail_static()
        else:
            self.mirror.adopt(snapshot)
        self._spawn(self._flush_forever())
        self._spawn(self._reconcile_forever())
        if not self.embedded:
            self._spawn(self._subscribe_forever())

    async def stop(self) -> None:
        """Flush what is pending (best effort) and stop the loops."""
        with contextlib.suppress(StoreUnavailable):
            await self.flush()
        await self.send_tallies(final=True)
        for task in list(self._tasks):
            task.cancel()
        # Bounded: a Redis client stuck mid-cancellation must not hold up the shutdown.
        try:
            async with asyncio.timeout(2.0):
                await asyncio.gather(*self._tasks, return_exceptions=True)
        except TimeoutError:
            log.warning(
                "background tasks still running at shutdown: %s",
                ", ".join(sorted(t.get_coro().__qualname__ for t in self._tasks)),  # type: ignore[union-attr]
            )

    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the request path -------------------------------------------------------------------

    def params(self, model: str) -> BreakerParams:
        return self.settings.model_settings(model).breaker

    async def admit(self, model: str) -> Admission | None:
        """Leave to try ``model`` now, or None to skip it. No Redis call while it is closed."""
        breaker = self.mirror.breaker(model)
        if breaker.admits_without_redis:
            return Admission(model, breaker.epoch, probe=False)
        if breaker.state == FORCED_OPEN:
            return None
        params = self.params(model)
        now = self.mirror.store_now_ms()
        if breaker.state == OPEN and now < breaker.open_until_ms:
            return None
        if (
            breaker.state == HALF_OPEN
            and breaker.probes_issued >= params.half_open_probes
            and now < breaker.since_ms + params.half_open_timeout * 1000
        ):
            return None
        if now < self._next_ask_ms.get(model, 0.0):
            return None
        self._next_ask_ms[model] = now + ASK_INTERVAL_MS
        try:
            acquired = await self._call(lambda store: store.acquire(model, params), self._timeout)
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
            self._spawn(self._probe_done(admission, ok=not failed))
            return
        tally = self._pending.get((admission.model, admission.epoch))
        if tally is None:
            tally = self._pending[(admission.model, admission.epoch)] = [0, 0]
        tally[0] += 1
        if failed:
            tally[1] += 1
            if tally[1] >= self.params(admission.model).burst_failures:
                self._flush_now.set()

    def serving(self, model: str) -> bool:
        """Whether ``model`` answered a request on this replica within its burst window (read
        when a failure is judged: the successes come from the outcome tallies)."""
        if self.evidence.served_within(model, self.params(model).burst_seconds):
            return True
        return any(
            calls > fails for (name, _), (calls, fails) in self._pending.items() if name == model
        )

    # -- quotas (429) ---------------------------------------------------------------------

    def quota_gate(self, scope: str, model: str, waited: bool = False) -> Shed | None:
        """Whether a request of this credential may go to ``model`` now; no Redis call.

        ``waited``: the request already waited out its own 429's delay, so it is not paced
        again (a new cooldown still stops it)."""
        now = self.mirror.store_now_ms()
        quota = self.mirror.quotas.get((scope, model))
        if quota is not None:
            if now < quota.until_ms - (CLOCK_TOLERANCE * 1000 if waited else 0):
                kind = "per-day quota exhausted" if quota.per_day else "cooling down after a 429"
                return Shed(
                    "cooldown",
                    (quota.until_ms - now) / 1000,
                    quota.quota_id,
                    f"{kind} from the upstream",
                )
            if not waited:
                scale = quota.scale_at(now, self.quota.recovery_per_second)
                if scale < 1 and random.random() >= scale:
                    return Shed(
                        "pacing",
                        1.0,
                        quota.quota_id,
                        f"resuming at {scale:.0%} of the rate after a 429",
                    )
        if not waited and self.throttle.rejects((scope, model)):
            return Shed(
                "throttle",
                1.0,
                quota.quota_id if quota else "",
                "most recent requests were rejected upstream; throttling locally",
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
            wait = await self._call(
                lambda store: store.spend_budget(model, rpm, tpm, tokens), self._timeout
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

    def quota_requested(self, scope: str, model: str) -> None:
        """A request of this scope is being sent to ``model``."""
        self.throttle.requested((scope, model))

    def quota_not_found(self, scope: str, model: str) -> None:
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
            self.quota_alerts[model] += 1
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
        self._spawn(self._quota_feedback(scope, model, delay, limit))
        return delay

    async def _quota_feedback(self, scope: str, model: str, delay: float, limit: RateLimit) -> None:
        try:
            change = await self._call(
                lambda store: store.quota_feedback(
                    scope, model, delay, limit.per_day, limit.quota_id, self.quota
                ),
                self._background_timeout,
            )
        except StoreUnavailable:
            return  # the provisional hold still sheds on this replica
        self.mirror.apply_quota(change)

    async def _probe_done(self, admission: Admission, ok: bool) -> None:
        params = self.params(admission.model)
        try:
            change = await self._call(
                lambda store: store.probe_done(admission.model, admission.epoch, ok, params),
                self._background_timeout,
            )
        except StoreUnavailable:
            # The permit is lost; the half-open deadline reopens the breaker in time.
            return
        self.mirror.apply(change)

    # -- background ---------------------------------------------------------------------------

    async def flush(self) -> None:
        """Report the tallied outcomes in one round trip."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        for (model, _), (calls, fails) in pending.items():
            if calls > fails:
                self.evidence.served(model)
        outcomes = [Outcome(m, e, calls, fails) for (m, e), (calls, fails) in pending.items()]
        params = {o.model: self.params(o.model) for o in outcomes}
        try:
            changes = await self._call(
                lambda store: store.report(outcomes, params), self._background_timeout
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

    async def _flush_forever(self) -> None:
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

    async def reconcile(self) -> None:
        """Read the whole state: recover from fail-static, or catch up on missed events."""
        if self._local is not None:
            try:
                snapshot = await self._health.run(
                    self._register_on(self._shared), self._background_timeout
                )
            except StoreUnavailable:
                return
            self._local = None
            self._generation += 1
            self.mirror.adopt(snapshot)
            log.warning("leaving fail-static mode: adopted the cluster's state from Redis")
            return
        # Everything the mirror holds now was issued before the snapshot is read, so a
        # snapshot whose counter is below this lost writes (it is not merely late).
        seen = self.mirror.highest_epoch
        try:
            snapshot = await self._call(lambda store: store.snapshot(), self._background_timeout)
            quotas = await self._call(
                lambda store: store.quota_snapshot(), self._background_timeout
            )
        except StoreUnavailable:
            return
        if snapshot.epoch < seen:
            # The store lost writes (a failover to a lagging replica, a restart without
            # persistence). It is still the truth, but its epochs are older than the ones
            # replicas hold, so it issues its state again above them (published): every
            # replica then adopts it through the ordinary epoch fencing.
            log.warning(
                "the store's epoch went back from %d to %d (it lost writes): "
                "re-issuing its state above every epoch seen",
                seen,
                snapshot.epoch,
            )
            models = sorted({m for chain in self.settings.routes.values() for m in chain})
            try:
                snapshot = await self._call(
                    lambda store: store.reissue(models), self._background_timeout
                )
            except StoreUnavailable:
                return
            self._generation += 1
            self.mirror.adopt(snapshot)
            if set(snapshot.routes) != set(self.settings.routes):
                with contextlib.suppress(StoreUnavailable):
                    self.mirror.merge(
                        await self._call(
                            lambda store: self._register_on(store)(), self._background_timeout
                        )
                    )
        else:
            self.mirror.merge(snapshot)
        self.mirror.replace_quotas(*quotas)

    async def reconcile_if_moved(self, beat: Heartbeat | None, full: bool) -> None:
        """Reconcile when the heartbeat says the store moved past what this replica saw (its
        epoch counter differs: an event was missed or is under way, or the store lost
        writes), while a pin is known (removing expired pins is the snapshot's job; a pin
        taken elsewhere moves the epoch), when there was no answer, or when ``full``."""
        if (
            full
            or beat is None
            or self.degraded
            or self.mirror.pins
            or beat.epoch != self.mirror.highest_epoch
        ):
            await self.reconcile()

    async def _reconcile_forever(self) -> None:
        await self.heartbeat()
        rounds = 0
        while True:
            await asyncio.sleep(self.settings.redis.reconcile_interval)
            rounds += 1
            beat = await self.heartbeat()
            await self.send_tallies()
            await self.reconcile_if_moved(beat, full=rounds % FULL_RECONCILE_EVERY == 0)

    # -- operator surface ---------------------------------------------------------------------

    @property
    def routes_digest(self) -> str:
        """Digest of this replica's routes (replicas that disagree are in config drift)."""
        return self._digest

    @property
    def replica_alive_seconds(self) -> float:
        """A replica heard from within this many seconds counts as alive."""
        return max(10.0, 5 * self.settings.redis.reconcile_interval)

    async def heartbeat(self) -> Heartbeat | None:
        """Tell the cluster this replica is alive (and which routes it runs); learn which
        replicas are, and warn when the live ones disagree on the routes. Skipped while
        fail-static: the last cluster view is kept. Returns the answer (None without one)."""
        if self.degraded:
            return None
        try:
            seen = await self._call(
                lambda store: store.heartbeat(self.replica, self._digest, REPLICA_FORGET_SECONDS),
                self._background_timeout,
            )
        except StoreUnavailable:
            return None
        if self.degraded:  # answered by the in-process store this call switched to
            return None
        self.heartbeat_seen = seen
        alive_ms = self.replica_alive_seconds * 1000
        alive = [r for r in seen.replicas if seen.now_ms - r.seen_ms <= alive_ms]
        drift = len({r.digest for r in alive}) > 1
        if drift and not self.config_drift:
            log.warning(
                "config drift: live replicas disagree on the routes: %s",
                "; ".join(f"{r.replica} has {r.digest}" for r in alive),
            )
        elif self.config_drift and not drift:
            log.warning("config drift over: every live replica runs the same routes")
        self.config_drift = drift
        return seen

    # -- cluster series -----------------------------------------------------------------------

    async def send_tallies(self, final: bool = False) -> None:
        """Once a bucket of the cluster series has ended (by this replica's estimate of the
        store's clock), add the request path's counts since the last call to it: one script
        call per bucket, none when nothing was counted. Kept for a later call while Redis is
        unreachable or this replica runs fail-static: the series is the cluster's.
        ``final``: the replica stops, so the bucket under way gets what it has now."""
        tallies = self.tallies
        if tallies is None or self.degraded:
            return
        current = self.series.bucket_of(self.mirror.store_now_ms())
        bucket = self._series_bucket
        if bucket is None:
            bucket = self._series_bucket = current
        if bucket >= current and not final:
            return
        counts = tallies.take()
        self._series_bucket = current
        if not counts:
            return
        try:
            await self._health.run(
                lambda: self.series.add(counts, bucket), self._background_timeout
            )
        except StoreUnavailable:
            tallies.restore(counts)
            self._series_bucket = bucket
        except StoreError:
            log.warning("the cluster series refused a bucket's counts", exc_info=True)

    async def series_document(self) -> dict[str, Any]:
        """The cluster series folded for the charts, with the breaker transitions this
        replica saw within its window (``StoreUnavailable`` while fail-static)."""
        raw = await self._operator_call(lambda _: self.series.read())
        document = fold(raw, self.settings.routes, self.series.resolution_ms, self.series.buckets)
        since = document["times_ms"][0]
        document["transitions"] = [t for t in self.mirror.transitions if t["at_ms"] >= since]
        return document

    async def operator_breaker(self, model: str, action: str, by: str, reason: str) -> Change:
        """An operator's breaker action, as one audited Lua transition on the shared store;
        applied to this replica's mirror at once, to the others through the events channel."""
        params = self.params(model)
        change = await self._operator_call(
            lambda store: store.force(model, action, by, reason, params, via=self.replica)
        )
        self.mirror.apply(change)
        return change

    async def operator_pin(
        self, route: str, model: str, ttl_seconds: float, by: str, reason: str
    ) -> PinChange:
        """Pin ``route`` to ``model`` for ``ttl_seconds`` (audited, published)."""
        change = await self._operator_call(
            lambda store: store.pin(route, model, ttl_seconds, by, reason, via=self.replica)
        )
        self.mirror.apply_pin(change)
        return change

    async def operator_unpin(self, route: str, by: str, reason: str) -> PinChange:
        """Remove the route's pin (audited; published when there was one)."""
        change = await self._operator_call(
            lambda store: store.unpin(route, by, reason, via=self.replica)
        )
        self.mirror.apply_pin(change)
        return change

    async def audit(self, limit: int) -> list[AuditEntry]:
        """The newest audit entries of the cluster, newest first."""
        return await self._operator_call(lambda store: store.audit(limit))

    async def _operator_call(self, operation: Callable[[BreakerStore], Awaitable[T]]) -> T:
        """Run an operator's call on the shared store only: while fail-static an action would
        reach this replica alone, so it is refused (``StoreUnavailable``) instead."""
        if self.degraded:
            raise StoreUnavailable(
                "Redis is unreachable and this replica runs fail-static: operator actions "
                "and the audit need the shared store"
            )
        generation = self._generation
        result = await self._health.run(lambda: operation(self._shared), self._background_timeout)
        if generation != self._generation:
            raise StoreUnavailable("the store was switched while the call was under way")
        return result

    async def _subscribe_forever(self) -> None:
        """Apply every published change; after each (re)subscription, reconcile."""
        lost = False
        while True:
            pubsub: PubSub | None = None
            try:
                async with asyncio.timeout(self._background_timeout):
                    pubsub = await subscribe(self._redis, self.keys.events, refresh=lost)
                await self.reconcile()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and self._local is None:
                        self._apply_event(parse_any_event(message["data"]))
                    if self._local is not None:
                        # Redis answers this subscription, so try to leave fail-static now
                        # rather than at the next reconcile interval: the attempt right after
                        # subscribing may have met the health breaker still open.
                        await self.reconcile()
            except REDIS_FAILURES as exc:
                log.debug("events subscription lost: %s", type(exc).__name__)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(*REDIS_FAILURES):
                        async with asyncio.timeout(1.0):
                            await pubsub.aclose()
            lost = True
            await asyncio.sleep(self.settings.redis.retry_seconds)

    def _apply_event(self, event: Change | QuotaChange | PinChange) -> None:
        if isinstance(event, QuotaChange):
            self.mirror.apply_quota(event)
        elif isinstance(event, PinChange):
            self.mirror.apply_pin(event)
        else:
            self.mirror.apply(event)

    # -- stores -------------------------------------------------------------------------------

    def _register_on(self, store: BreakerStore) -> Callable[[], Awaitable[Snapshot]]:
        params = {m: self.params(m) for chain in self.settings.routes.values() for m in chain}
        return lambda: store.register_routes(
            self.settings.routes, self.replica, self._digest, params
        )

    async def _call(self, operation: Callable[[BreakerStore], Awaitable[T]], bound: float) -> T:
        """Run a script on Redis, or on the local store while fail-static. Raises
        ``StoreUnavailable`` when it failed, or when the store was switched meanwhile."""
        generation = self._generation
        local = self._local
        if local is not None:
            result = await operation(local)
        else:
            try:
                result = await self._health.run(lambda: operation(self._shared), bound)
            except StoreUnavailable:
                if not self._health.degraded or generation != self._generation:
                    raise
                await self._enter_fail_static()
                assert self._local is not None
                generation = self._generation
                result = await operation(self._local)
        if generation != self._generation:
            raise StoreUnavailable("the store was switched while the call was under way")
        return result

    async def _enter_fail_static(self) -> None:
        """Run the same scripts on an in-process store, seeded with the last known state."""
        if self._local is not None:
            return
        local = BreakerStore(
            fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer()), self.keys, self._epoch_floor
        )
        await local.seed(self.mirror_snapshot())
        self._local = local
        self._generation += 1
        await self._register_on(local)()

    def _epoch_floor(self) -> int:
        return self.mirror.epoch_floor

    def mirror_snapshot(self) -> Snapshot:
        """The mirror as a snapshot (to seed the local store)."""
        return Snapshot(
            now_ms=int(self.mirror.store_now_ms()),
            epoch=self.mirror.highest_epoch,
            breakers=dict(self.mirror.breakers),
            active=dict(self.mirror.active),
            routes={route: tuple(chain) for route, chain in self.settings.routes.items()},
            digests={},
            pins={route: pin for route in self.mirror.pins if (pin := self.mirror.pin(route))},
        )

    def _health_changed(self, degraded: bool) -> None:
        if degraded:
            log.warning(
                "Redis unavailable: fail-static mode (last known state, per-replica breakers)"
            )
        else:
            log.warning("Redis reachable again")


def seconds_to_daily_reset(now: datetime | None = None) -> float:
    """Seconds until Gemini's daily quotas reset: midnight, Pacific time."""
    try:
        pacific: tzinfo = ZoneInfo("America/Los_Angeles")
    except ZoneInfoNotFoundError:  # no time zone database: standard time is close enough
        pacific = timezone(timedelta(hours=-8))
    local = (now or datetime.now(UTC)).astimezone(pacific)
    midnight = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - local).total_seconds()


def _digest(routes: Mapping[str, Sequence[str]]) -> str:
    """Identifies a route configuration, so replicas that disagree can be spotted."""
    text = json.dumps({k: list(v) for k, v in routes.items()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
