"""Cluster-wide breaker state in Redis, and one replica's side of it.

Where things are:

- ``coordinator``: what the request path calls, wired from the parts below.
- ``admission``: may a request try a model now (``decide``: the admission rules), and the
  outcome tallies reported to the store.
- ``quota_gate``: 429 cooldowns, paced recovery, the adaptive throttle, the cluster budget.
- ``sync``: events subscription, reconcile, heartbeats, fail-static exit, series sending.
- ``actions``: operator breaker actions, pins, audit and series reads.
- ``link``: which store a call runs on (Redis, or in-process while fail-static).
- ``mirror``: this replica's copy of the cluster state, applied in epoch order.
- ``store`` and ``lua/``: the scripts, where every breaker transition happens.
- ``state`` and ``codec``: the documents the scripts answer and publish, and their JSON.
"""

from .codec import PayloadError
from .keys import Keys
from .state import (
    ACTIONS,
    CLOSED,
    DISABLED,
    FORCED_OPEN,
    HALF_OPEN,
    OPEN,
    STATES,
    Acquired,
    ActiveModel,
    BreakerParams,
    BreakerState,
    BreakerStatus,
    Change,
    Outcome,
    Snapshot,
    parse_event,
)
from .store import BreakerStore, StoreError

__all__ = [
    "ACTIONS",
    "CLOSED",
    "DISABLED",
    "FORCED_OPEN",
    "HALF_OPEN",
    "OPEN",
    "STATES",
    "Acquired",
    "ActiveModel",
    "BreakerParams",
    "BreakerState",
    "BreakerStatus",
    "BreakerStore",
    "Change",
    "Keys",
    "Outcome",
    "PayloadError",
    "Snapshot",
    "StoreError",
    "parse_event",
]
