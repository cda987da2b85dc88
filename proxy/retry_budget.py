"""A per-replica retry budget, so retries cannot multiply the load on a struggling upstream.

Over a sliding window, retries may be at most ``ratio`` of the requests seen (plus a floor of
``min_per_second`` so a quiet replica can still retry). Failover to another model is not a
retry and does not spend from it.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable


class RetryBudget:
    """Counts requests and retries in one-second buckets over ``window_seconds``."""

    def __init__(
        self,
        ratio: float,
        min_per_second: float,
        window_seconds: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ratio = ratio
        self.floor = min_per_second * window_seconds
        self._window = window_seconds
        self._clock = clock
        # (second, requests, retries), oldest first, with running totals.
        self._buckets: deque[list[int]] = deque()
        self._requests = 0
        self._retries = 0

    def _current(self) -> list[int]:
        second = math.floor(self._clock())
        buckets = self._buckets
        while buckets and buckets[0][0] <= second - self._window:
            _, requests, retries = buckets.popleft()
            self._requests -= requests
            self._retries -= retries
        if not buckets or buckets[-1][0] != second:
            buckets.append([second, 0, 0])
        return buckets[-1]

    def record_request(self) -> None:
        self._current()[1] += 1
        self._requests += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget; False when it is spent."""
        bucket = self._current()
        if self._retries + 1 > max(self.floor, self.ratio * self._requests):
            return False
        bucket[2] += 1
        self._retries += 1
        return True
