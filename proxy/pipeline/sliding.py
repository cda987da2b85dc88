"""Two counters over a sliding window of one-second buckets, with running totals."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable


class SlidingCounts:
    """Counts of two kinds of event (``a`` and ``b``) over the last ``window_seconds``."""

    __slots__ = ("_buckets", "_clock", "_window", "a", "b")

    def __init__(self, window_seconds: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window_seconds
        self._clock = clock
        self._buckets: deque[list[int]] = deque()  # [second, a, b], oldest first
        self.a = 0
        self.b = 0

    def _current(self) -> list[int]:
        second = math.floor(self._clock())
        buckets = self._buckets
        while buckets and buckets[0][0] <= second - self._window:
            _, a, b = buckets.popleft()
            self.a -= a
            self.b -= b
        if not buckets or buckets[-1][0] != second:
            buckets.append([second, 0, 0])
        return buckets[-1]

    def add_a(self) -> None:
        self._current()[1] += 1
        self.a += 1

    def add_b(self) -> None:
        self._current()[2] += 1
        self.b += 1

    def refresh(self) -> None:
        """Drop what slid out of the window, so ``a`` and ``b`` are current."""
        self._current()
