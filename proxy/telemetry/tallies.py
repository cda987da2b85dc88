"""Per-interval tallies for the cluster series: small counts by (route, model, kind), added to
a plain dict on the request path (no Redis, no lock) and taken whole by the heartbeat, which
adds them to the cluster's time buckets in Redis (see ``proxy.cluster.series``).

Kinds: ``ok``, ``4xx``, ``429``, ``5xx`` (requests of a route by the model that served them,
``""`` when none did), ``lat<i>`` (requests of a route by latency bucket ``i`` of
``LATENCY_BOUNDS``), ``attempts`` (upstream attempts of a model), ``fallbacks`` (requests of a
route moved onto a model) and ``shed`` (requests the proxy answered itself for a model).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

#: Upper bounds (seconds) of the series' latency buckets; the last bucket is unbounded.
LATENCY_BOUNDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LATENCY_KINDS = tuple(f"lat{i}" for i in range(len(LATENCY_BOUNDS) + 1))
STATUS_KINDS = ("ok", "4xx", "429", "5xx")
KINDS = (*STATUS_KINDS, *LATENCY_KINDS, "attempts", "fallbacks", "shed")
#: Stands for every route or model outside the configuration (clients name models freely).
OTHER = "other"
#: Keys held between two heartbeats at most (configured names keep far below this).
MAX_KEYS = 2000

Key = tuple[str, str, str]
"""(route, model, kind); route or model ``""`` where the kind has none."""


def status_kind(status_code: int) -> str:
    """The outcome class a request's status counts under."""
    if status_code == 429:
        return "429"
    if status_code >= 500:
        return "5xx"
    if status_code >= 400:
        return "4xx"
    return "ok"


def latency_kind(seconds: float) -> str:
    return LATENCY_KINDS[bisect_left(LATENCY_BOUNDS, seconds)]


class SeriesTallies:
    """Counts since the last ``take``. Route and model names outside ``known`` (once
    set from the configuration) are counted as ``other``, so the keys stay few."""

    __slots__ = ("_counts", "_known")

    def __init__(self) -> None:
        self._counts: dict[Key, int] = {}
        self._known: frozenset[str] | None = None

    def know(self, names: Iterable[str]) -> None:
        """The configured routes and models (every other name counts as ``other``)."""
        self._known = frozenset(names)

    def _name(self, name: str | None) -> str:
        if not name:
            return ""
        known = self._known
        return name if known is None or name in known else OTHER

    def add(self, route: str | None, model: str | None, kind: str, amount: int = 1) -> None:
        key = (self._name(route), self._name(model), kind)
        counts = self._counts
        if key not in counts and len(counts) >= MAX_KEYS:
            key = (OTHER, OTHER, kind)
        counts[key] = counts.get(key, 0) + amount

    def request(
        self, route: str | None, model: str | None, status_code: int, seconds: float | None
    ) -> None:
        """One client request answered."""
        self.add(route, model, status_kind(status_code))
        if seconds is not None:
            self.add(route, "", latency_kind(seconds))

    def take(self) -> dict[Key, int]:
        """Everything counted since the last call (the tallies start again from nothing)."""
        counts, self._counts = self._counts, {}
        return counts

    def restore(self, counts: dict[Key, int]) -> None:
        """Put back counts that could not be delivered (they go with the next ``take``)."""
        for (route, model, kind), amount in counts.items():
            self.add(route, model, kind, amount)
