"""Cluster-wide breaker state in Redis: key names, the Lua scripts and their Python faces."""

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
    "BreakerStore",
    "Change",
    "Keys",
    "Outcome",
    "PayloadError",
    "Snapshot",
    "StoreError",
    "parse_event",
]
