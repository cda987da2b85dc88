"""A per-replica retry budget, so retries cannot multiply the load on a struggling upstream.

Over a sliding window, retries may be at most ``ratio`` of the requests seen (plus a floor of
``min_per_second`` so a quiet replica can still retry). Failover to another model is not a
retry and does not spend from it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .sliding import SlidingCounts


class RetryBudget:
    """Counts requests (``a``) and retries (``b``) over ``window_seconds``."""

    def __init__(
        self,
        ratio: float,
        min_per_second: float,
        window_seconds: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ratio = ratio
        self.floor = min_per_second * window_seconds
        self._counts = SlidingCounts(window_seconds, clock)

    def record_request(self) -> None:
        self._counts.add_a()

    def can_spend(self) -> bool:
        """Whether a retry could be taken from the budget now."""
        counts = self._counts
        counts.refresh()
        return counts.b + 1 <= max(self.floor, self.ratio * counts.a)

    def try_spend(self) -> bool:
        """Take one retry from the budget; False when it is spent."""
        counts = self._counts
        counts.refresh()
        if counts.b + 1 > max(self.floor, self.ratio * counts.a):
            return False
        counts.add_b()
        return True
