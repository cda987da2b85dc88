"""This replica's copy of the cluster state, read by every request without touching Redis.

It is fed by what the scripts return, by the events channel, and by periodic snapshots.
Epochs order the updates: an older view of a breaker never overwrites a newer one.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .state import (
    CLOSED,
    ActiveModel,
    BreakerState,
    Change,
    Pin,
    PinChange,
    QuotaChange,
    QuotaState,
    Snapshot,
)

log = logging.getLogger("gemini_breaker.breakers")

RECENT_TRANSITIONS = 50


class Mirror:
    """Breakers by model and active models by route, with the store's clock offset."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.breakers: dict[str, BreakerState] = {}
        self.active: dict[str, ActiveModel] = {}
        self.routes: dict[str, tuple[str, ...]] = {}
        self.on_transition: Callable[[str, str, str], None] | None = None
        self.transitions: deque[dict[str, Any]] = deque(maxlen=RECENT_TRANSITIONS)
        """The latest breaker state changes this replica saw, newest last."""
        """Called with (model, from state, to state) when a breaker changes state."""
        self.quotas: dict[tuple[str, str], QuotaState] = {}
        """429 conditions by (credential digest, model)."""
        self.pins: dict[str, Pin] = {}
        """Operator pins by route, as last heard of (``pin`` says whether one still holds)."""
        self._pin_epochs: dict[str, int] = {}
        self.highest_epoch = 0
        """The highest epoch of the state this mirror follows (reset when it adopts another)."""
        self._floor = 0
        self._as_of_ms: dict[str, int] = {}
        self._clock = clock
        self._offset_ms = 0.0

    @property
    def epoch_floor(self) -> int:
        """The highest epoch this replica ever saw, kept when the mirror adopts a store's state:
        every new epoch is taken above it, so epochs never go backwards after Redis lost writes."""
        return max(self._floor, self.highest_epoch)

    def breaker(self, model: str) -> BreakerState:
        return self.breakers.get(model) or BreakerState.initial(model)

    def pin(self, route: str) -> Pin | None:
        """The route's pin while it holds (by this replica's estimate of the store's clock);
        an expired one is ignored until the next snapshot drops it."""
        pin = self.pins.get(route)
        if pin is None or pin.until_ms <= self.store_now_ms():
            return None
        return pin

    def store_now_ms(self) -> float:
        """The store's clock as this replica estimates it (for deciding when to ask, never
        for deciding a transition)."""
        return self._clock() * 1000 + self._offset_ms

    def _observe_clock(self, now_ms: int) -> None:
        self._offset_ms = now_ms - self._clock() * 1000

    def apply(self, change: Change) -> None:
        """Take in a script's answer or a published event, unless it is older than ours."""
        self._observe_clock(change.now_ms)
        breaker = change.breaker
        if breaker is not None:
            self._apply_breaker(breaker, change.now_ms)
        for route, active in change.active.items():
            self._apply_active(route, active)

    def _apply_breaker(self, breaker: BreakerState, as_of_ms: int) -> None:
        current = self.breakers.get(breaker.model)
        if current is not None:
            if breaker.epoch < current.epoch:
                return
            if breaker.epoch == current.epoch and as_of_ms < self._as_of_ms.get(breaker.model, 0):
                return
            if breaker.epoch > current.epoch and breaker.state != current.state:
                if self.on_transition is not None:
                    self.on_transition(breaker.model, current.state, breaker.state)
                self.transitions.append(
                    {
                        "at_ms": breaker.since_ms,
                        "model": breaker.model,
                        "from": current.state,
                        "to": breaker.state,
                        "epoch": breaker.epoch,
                        "reason": breaker.reason,
                    }
                )
                log.info(
                    "breaker %s: %s -> %s (epoch %d)%s",
                    breaker.model,
                    current.state,
                    breaker.state,
                    breaker.epoch,
                    f": {breaker.reason}" if breaker.reason else "",
                )
        elif breaker.state != CLOSED:
            log.info(
                "breaker %s is %s (epoch %d)%s",
                breaker.model,
                breaker.state,
                breaker.epoch,
                f": {breaker.reason}" if breaker.reason else "",
            )
        self.breakers[breaker.model] = breaker
        self._as_of_ms[breaker.model] = as_of_ms
        self.highest_epoch = max(self.highest_epoch, breaker.epoch)

    def _apply_active(self, route: str, active: ActiveModel) -> None:
        current = self.active.get(route)
        if current is not None and active.epoch < current.epoch:
            return
        if current is None or current.model != active.model:
            log.info(
                "route %s: active model %s -> %s",
                route,
                current.model if current else "-",
                active.model or "none (every model of the chain is open)",
            )
        self.active[route] = active

    def apply_pin(self, change: PinChange) -> None:
        """Take in a pin, unpin or pin expiry, unless a newer pin change of the route came
        first; the route's active model is epoch-fenced as usual."""
        self._observe_clock(change.now_ms)
        self._set_pin(change.route, change.pin, change.epoch)
        for route, active in change.active.items():
            self._apply_active(route, active)
        self.highest_epoch = max(self.highest_epoch, change.epoch)

    def _set_pin(self, route: str, pin: Pin | None, epoch: int) -> None:
        if epoch < self._pin_epochs.get(route, 0):
            return
        self._pin_epochs[route] = epoch
        current = self.pins.get(route)
        if pin is None:
            if current is not None:
                log.info("route %s: pin of %s removed (epoch %d)", route, current.model, epoch)
                del self.pins[route]
            return
        if current != pin:
            log.info(
                "route %s: pinned to %s by %s for %.0f s (epoch %d): %s",
                route,
                pin.model,
                pin.by,
                max(0.0, pin.until_ms - self.store_now_ms()) / 1000,
                pin.epoch,
                pin.reason,
            )
        self.pins[route] = pin

    def apply_quota(self, change: QuotaChange) -> None:
        """Take in a quota condition, unless an answer with a newer epoch came first."""
        self._observe_clock(change.now_ms)
        quota = change.quota
        key = (quota.scope, quota.model)
        current = self.quotas.get(key)
        if current is not None and quota.epoch < current.epoch:
            return
        if current is None or quota.until_ms > current.until_ms:
            log.info(
                "quota %s for key %s: cooling down for %.1f s%s",
                quota.model,
                quota.scope,
                max(0.0, quota.until_ms - change.now_ms) / 1000,
                " (per-day quota)" if quota.per_day else "",
            )
        self.quotas[key] = quota
        self.highest_epoch = max(self.highest_epoch, quota.epoch)

    def hold_quota(self, quota: QuotaState) -> None:
        """A provisional condition set the moment a 429 arrives, before the store answers;
        any answer from the store (epoch > 0) replaces it."""
        current = self.quotas.get((quota.scope, quota.model))
        if current is None or current.until_ms < quota.until_ms:
            self.quotas[(quota.scope, quota.model)] = quota

    def replace_quotas(self, now_ms: int, epoch: int, quotas: list[QuotaState]) -> None:
        """The store's full list of quota conditions (as of ``epoch``): the ones it no longer
        has are over, unless they are newer than the list or provisional and still running."""
        self._observe_clock(now_ms)
        fresh = {(q.scope, q.model): q for q in quotas}
        for key, current in self.quotas.items():
            if key in fresh:
                if current.epoch > fresh[key].epoch:
                    fresh[key] = current
            elif current.epoch > epoch or (current.epoch == 0 and current.until_ms > now_ms):
                fresh[key] = current
        self.quotas = fresh

    def adopt(self, snapshot: Snapshot) -> None:
        """Take the store's whole state as the truth (after a reconnect, or when the store
        lost its state), dropping whatever this replica believed."""
        self._observe_clock(snapshot.now_ms)
        self.routes = dict(snapshot.routes)
        self.breakers = {}
        self._as_of_ms = {}
        self.active = {}
        self.quotas = {}
        self.pins = {}
        self._pin_epochs = {}
        self._floor = self.epoch_floor
        self.highest_epoch = 0
        self.merge(snapshot)

    def merge(self, snapshot: Snapshot) -> None:
        """Take in a periodic snapshot, epoch-fenced like any other update."""
        self._observe_clock(snapshot.now_ms)
        self.routes = dict(snapshot.routes)
        for breaker in snapshot.breakers.values():
            self._apply_breaker(breaker, snapshot.now_ms)
        for route, active in snapshot.active.items():
            self._apply_active(route, active)
        # The snapshot lists the pins that hold as of its epoch: one we know of that is
        # missing from it was removed (or ran out), unless ours is newer than the snapshot.
        for route, pin in snapshot.pins.items():
            self._set_pin(route, pin, pin.epoch)
        for route in [r for r in self.pins if r not in snapshot.pins]:
            self._set_pin(route, None, snapshot.epoch)
        self.highest_epoch = max(self.highest_epoch, snapshot.epoch)
