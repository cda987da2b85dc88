"""Keeping the mirror in step with the cluster: the events subscription, periodic
reconciliation, heartbeats (with config drift), leaving fail-static, and sending the request
path's counts to the cluster series.

Each replica sends one heartbeat per reconcile interval; it answers the store's epoch
counter, and the whole state is read only when that moved (or a pin is held), and every
``FULL_RECONCILE_EVERY`` intervals regardless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.asyncio.client import PubSub

from ..config import Settings
from .codec import PayloadError
from .connect import subscribe
from .health import REDIS_FAILURES, StoreUnavailable
from .link import StoreLink
from .mirror import Mirror
from .series import SeriesStore, TallySource
from .state import Heartbeat, PinChange, QuotaChange, parse_any_event
from .store import StoreError

log = logging.getLogger("gemini_breaker.store")

# A replica not heard from for this long is dropped from the replicas set.
REPLICA_FORGET_SECONDS = 600.0
# Every this many reconcile intervals the whole state is read even when the epoch counter did
# not move: it refreshes the windows' counts of breakers this replica sends nothing to, and
# drops quota conditions that ran out, neither of which takes an epoch.
FULL_RECONCILE_EVERY = 10


class ClusterSync:
    """The background loops that keep one replica's mirror and the cluster in step."""

    def __init__(
        self, settings: Settings, mirror: Mirror, link: StoreLink, series: SeriesStore
    ) -> None:
        self.settings = settings
        self.mirror = mirror
        self._link = link
        self.series = series
        self.heartbeat_seen: Heartbeat | None = None
        """The replicas the last heartbeat saw (None until the first one answered)."""
        self.config_drift = False
        """Live replicas disagree on the routes digest (logged when it starts and ends)."""
        self.tallies: TallySource | None = None
        """Counts of the request path, sent to the cluster series after each heartbeat."""
        self._series_bucket: int | None = None
        """The series bucket the tallies are being counted for."""

    @property
    def replica_alive_seconds(self) -> float:
        """A replica heard from within this many seconds counts as alive."""
        return max(10.0, 5 * self.settings.redis.reconcile_interval)

    async def reconcile(self) -> None:
        """Read the whole state: recover from fail-static, or catch up on missed events."""
        link = self._link
        if link.degraded:
            try:
                snapshot = await link.health.run(
                    link.register_on(link.shared), link.background_timeout
                )
            except StoreUnavailable:
                return
            link.follow(snapshot, leave_fail_static=True)
            log.warning("leaving fail-static mode: adopted the cluster's state from Redis")
            return
        # Everything the mirror holds now was issued before the snapshot is read, so a
        # snapshot whose counter is below this lost writes (it is not merely late).
        seen = self.mirror.highest_epoch
        try:
            snapshot = await link.call(lambda store: store.snapshot(), link.background_timeout)
            quotas = await link.call(lambda store: store.quota_snapshot(), link.background_timeout)
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
            models = sorted(self.settings.routed_models)
            try:
                snapshot = await link.call(
                    lambda store: store.reissue(models), link.background_timeout
                )
            except StoreUnavailable:
                return
            link.follow(snapshot)
            if set(snapshot.routes) != set(self.settings.routes):
                with contextlib.suppress(StoreUnavailable):
                    self.mirror.merge(
                        await link.call(
                            lambda store: link.register_on(store)(), link.background_timeout
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
            or self._link.degraded
            or self.mirror.pins
            or beat.epoch != self.mirror.highest_epoch
        ):
            await self.reconcile()

    async def reconcile_forever(self) -> None:
        await self.heartbeat()
        rounds = 0
        while True:
            await asyncio.sleep(self.settings.redis.reconcile_interval)
            rounds += 1
            beat = await self.heartbeat()
            await self.send_tallies()
            await self.reconcile_if_moved(beat, full=rounds % FULL_RECONCILE_EVERY == 0)

    async def heartbeat(self) -> Heartbeat | None:
        """Tell the cluster this replica is alive (and which routes it runs); learn which
        replicas are, and warn when the live ones disagree on the routes. Skipped while
        fail-static: the last cluster view is kept. Returns the answer (None without one)."""
        link = self._link
        if link.degraded:
            return None
        try:
            seen = await link.call(
                lambda store: store.heartbeat(link.replica, link.digest, REPLICA_FORGET_SECONDS),
                link.background_timeout,
            )
        except StoreUnavailable:
            return None
        if link.degraded:  # answered by the in-process store this call switched to
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

    async def subscribe_forever(self) -> None:
        """Apply every published change; after each (re)subscription, reconcile."""
        link = self._link
        lost = False
        while True:
            pubsub: PubSub | None = None
            try:
                async with asyncio.timeout(link.background_timeout):
                    pubsub = await subscribe(link.redis, link.keys.events, refresh=lost)
                await self.reconcile()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and not link.degraded:
                        self._apply_message(message["data"])
                    if link.degraded:
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

    def _apply_message(self, data: bytes | str) -> None:
        try:
            event = parse_any_event(data)
        except PayloadError as exc:
            # A replica of another version, or junk: the next reconcile reads the state.
            log.warning("ignored an unreadable message on the events channel: %s", exc)
            return
        if isinstance(event, QuotaChange):
            self.mirror.apply_quota(event)
        elif isinstance(event, PinChange):
            self.mirror.apply_pin(event)
        else:
            self.mirror.apply(event)

    async def send_tallies(self, final: bool = False) -> None:
        """Once a bucket of the cluster series has ended (by this replica's estimate of the
        store's clock), add the request path's counts since the last call to it: one script
        call per bucket, none when nothing was counted. Kept for a later call while Redis is
        unreachable or this replica runs fail-static: the series is the cluster's.
        ``final``: the replica stops, so the bucket under way gets what it has now."""
        tallies = self.tallies
        if tallies is None or self._link.degraded:
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
            await self._link.health.run(
                lambda: self.series.add(counts, bucket), self._link.background_timeout
            )
        except StoreUnavailable:
            tallies.restore(counts)
            self._series_bucket = bucket
        except StoreError:
            log.warning("the cluster series refused a bucket's counts", exc_info=True)
