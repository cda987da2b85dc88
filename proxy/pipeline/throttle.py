"""Client-side adaptive throttling (Google SRE book, "Handling Overload"), per quota scope.

Each replica remembers, per (credential, model), how many requests it wanted to send and how
many were rejected (the upstream answered 429, or the throttle itself said no); the rest count
as accepted, failures included, since failures are the breakers' business. When requests exceed
``k`` times the accepts,
it rejects locally with probability ``(requests - k * accepts) / (requests + 1)``: requests that
would almost surely be rejected never leave the replica. It needs no Redis at all.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator

from .sliding import SlidingCounts

# Scopes kept at most; the least recently created are dropped first.
MAX_SCOPES = 10_000


class AdaptiveThrottle:
    """Per-scope counts of requests (``a``) and rejections (``b``), and the local rejection
    they imply."""

    def __init__(
        self,
        k: float,
        window_seconds: int,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.k = k
        self._window = window_seconds
        self._clock = clock
        self._rng = rng
        self._scopes: dict[tuple[str, str], SlidingCounts] = {}

    def _counts(self, scope: tuple[str, str]) -> SlidingCounts:
        counts = self._scopes.get(scope)
        if counts is None:
            if len(self._scopes) >= MAX_SCOPES:
                del self._scopes[next(iter(self._scopes))]
            counts = self._scopes[scope] = SlidingCounts(self._window, self._clock)
        return counts

    def rejection_probability(self, scope: tuple[str, str]) -> float:
        counts = self._scopes.get(scope)
        if counts is None:
            return 0.0
        counts.refresh()
        requests, accepts = counts.a, counts.a - counts.b
        return max(0.0, (requests - self.k * accepts) / (requests + 1))

    def rejects(self, scope: tuple[str, str]) -> bool:
        """Whether to reject this request locally (counted as a request and a rejection)."""
        if self._rng() < self.rejection_probability(scope):
            counts = self._counts(scope)
            counts.add_a()
            counts.add_b()
            return True
        return False

    def requested(self, scope: tuple[str, str]) -> None:
        """A request of this scope is being sent upstream."""
        self._counts(scope).add_a()

    def forget(self, scope: tuple[str, str]) -> None:
        """Drop a scope that holds no rejection (its throttle is off anyway): the upstream
        has no such model, so a scan of made-up names leaves nothing behind."""
        counts = self._scopes.get(scope)
        if counts is not None:
            counts.refresh()
            if counts.b == 0:
                del self._scopes[scope]

    def rejected(self, scope: tuple[str, str]) -> None:
        """The upstream answered a request of this scope with 429."""
        self._counts(scope).add_b()

    def attempts_on(self, model: str) -> Iterator[tuple[str, int]]:
        """Each scope's requests to ``model`` in the window that the upstream did not answer
        with 429 (read only when a failure is judged, never on the way of a request)."""
        for (scope, target), counts in list(self._scopes.items()):
            if target == model:
                counts.refresh()
                yield scope, counts.a - counts.b
