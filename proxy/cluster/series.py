"""The cluster series: every replica's tallies of each heartbeat interval (see
``proxy.telemetry.tallies``), summed in Redis into time buckets, and read back as the charts'
data for ``GET /admin/series``.

Storage: one hash per bucket (``series:<start ms>``, field ``route|model|kind`` -> count),
expiring a window after it began. Each replica sends a bucket's counts once, with its first
heartbeat after the bucket ended (by its estimate of Redis's clock): one script call per
replica per bucket, never one per request. Reads show the buckets that ended. ``fold`` turns
the buckets into per-route and per-model arrays (pure, so it is tested without Redis).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from redis.exceptions import ResponseError

from ..telemetry.tallies import LATENCY_BOUNDS, LATENCY_KINDS, Key
from .keys import Keys
from .store import StoreError, script_source

if TYPE_CHECKING:
    from .connect import StoreClient

#: Fields one bucket takes at most: configured names keep far below it (a few routes and
#: models times 17 kinds); past it, a bucket takes no new counts rather than grow.
MAX_FIELDS = 1024
#: Buckets one read returns at most (the window over the resolution, bounded).
MAX_BUCKETS = 1000
SEPARATOR = "|"


class TallySource(Protocol):
    """Where the heartbeat takes the last interval's counts from (``SeriesTallies``)."""

    def take(self) -> dict[Key, int]: ...

    def restore(self, counts: dict[Key, int]) -> None: ...


@dataclass(frozen=True, slots=True)
class RawSeries:
    """The buckets holding counts, oldest first, as of the store's ``now_ms``; ``last_ms``
    starts the newest bucket shown (every replica has sent it)."""

    now_ms: int
    last_ms: int
    buckets: tuple[tuple[int, dict[str, int]], ...]


def encode(counts: Mapping[Key, int]) -> dict[str, int]:
    """The script's counts by field (zero counts left out)."""
    return {SEPARATOR.join(key): count for key, count in counts.items() if count}


class SeriesStore:
    """Adds tallies to, and reads, the series of one namespace."""

    def __init__(
        self, redis: StoreClient, keys: Keys, resolution: float, window: float, settle: float
    ) -> None:
        """``settle``: seconds after a bucket's end by which every replica has sent it (a
        heartbeat interval, and some)."""
        self._keys = keys
        self.settle_ms = max(0, round(settle * 1000))
        self.resolution_ms = max(1, round(resolution * 1000))
        self.buckets = max(1, min(MAX_BUCKETS, math.ceil(window * 1000 / self.resolution_ms)))
        self._add = redis.register_script(script_source("series_add", ("common.lua",)))
        self._read = redis.register_script(script_source("series_read", ("common.lua",)))

    @property
    def keep_ms(self) -> int:
        """How long a bucket is kept from its start: the window, plus the bucket under way,
        the one that just ended and the time it settles (reads end there)."""
        return (self.buckets + 2) * self.resolution_ms + self.settle_ms

    def bucket_of(self, time_ms: float) -> int:
        """The start of the bucket holding ``time_ms``."""
        return int(time_ms) - int(time_ms) % self.resolution_ms

    async def add(self, counts: Mapping[Key, int], bucket_ms: int) -> None:
        """Add one replica's ``counts`` of the bucket starting at ``bucket_ms``."""
        fields = encode(counts)
        if not fields:
            return
        named = {
            "bucket_ms": bucket_ms,
            "keep_ms": self.keep_ms,
            "max_fields": MAX_FIELDS,
            "counts": fields,
        }
        args: list[str | int] = [self._keys.prefix, 0, json.dumps(named)]
        try:
            await self._add(keys=[self._keys.epoch], args=args)
        except ResponseError as exc:
            raise StoreError(f"series script failed: {exc}") from exc

    async def read(self) -> RawSeries:
        named = {
            "resolution_ms": self.resolution_ms,
            "buckets": self.buckets,
            "settle_ms": self.settle_ms,
        }
        args: list[str | int] = [self._keys.prefix, 0, json.dumps(named)]
        try:
            reply = await self._read(keys=[self._keys.epoch], args=args)
        except ResponseError as exc:
            raise StoreError(f"series script failed: {exc}") from exc
        return parse(reply)


def parse(reply: object) -> RawSeries:
    """The read script's JSON answer (an empty Lua table encodes as ``{}``)."""
    if isinstance(reply, bytes):
        reply = reply.decode()
    if not isinstance(reply, str):
        raise StoreError(f"unexpected series answer: {reply!r}")
    document = json.loads(reply)
    buckets = document.get("buckets") or []
    return RawSeries(
        now_ms=int(document["now_ms"]),
        last_ms=int(document["last_ms"]),
        buckets=tuple(
            (int(start), {str(k): int(v) for k, v in (counts or {}).items()})
            for start, counts in buckets
        ),
    )


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a latency histogram (counts per ``LATENCY_BOUNDS``
    bucket, then the unbounded one), interpolated within its bucket as Prometheus'
    ``histogram_quantile`` does; None without observations. In the unbounded bucket it is
    that bucket's lower bound."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    below = 0
    for i, count in enumerate(counts):
        if count and below + count >= rank:
            if i >= len(LATENCY_BOUNDS):
                return LATENCY_BOUNDS[-1]
            lower = LATENCY_BOUNDS[i - 1] if i else 0.0
            return lower + (LATENCY_BOUNDS[i] - lower) * (rank - below) / count
        below += count
    return LATENCY_BOUNDS[-1]


def fold(
    raw: RawSeries, routes: Mapping[str, Sequence[str]], resolution_ms: int, buckets: int
) -> dict[str, Any]:
    """The series document: ``times_ms`` (every bucket of the window that ended, oldest
    first) and,
    aligned with it, per route the requests by serving model, 4xx, 429 (shed) and 5xx
    answers, fallbacks and latency p50/p99; per model the upstream attempts, fallbacks onto
    it and sheds; and ``totals`` over the window."""
    last = raw.last_ms
    times = [last - (buckets - 1 - i) * resolution_ms for i in range(buckets)]
    index = {t: i for i, t in enumerate(times)}
    route_rows: dict[str, dict[str, Any]] = {}
    model_rows: dict[str, dict[str, list[int]]] = {}
    latency: dict[str, list[list[int]]] = {}
    totals: dict[str, dict[str, Any]] = {
        "requests": {},
        "fallbacks": {},
        "attempts": {},
        "sheds": {},
    }

    def route_row(route: str) -> dict[str, Any]:
        row = route_rows.get(route)
        if row is None:
            row = route_rows[route] = {
                "chain": list(routes.get(route, ())),
                "served": {},
                "4xx": [0] * buckets,
                "429": [0] * buckets,
                "5xx": [0] * buckets,
                "fallbacks": [0] * buckets,
            }
            latency[route] = [[0] * (len(LATENCY_BOUNDS) + 1) for _ in range(buckets)]
        return row

    def model_row(model: str) -> dict[str, list[int]]:
        row = model_rows.get(model)
        if row is None:
            row = model_rows[model] = {
                "attempts": [0] * buckets,
                "fallbacks": [0] * buckets,
                "shed": [0] * buckets,
            }
        return row

    for route in routes:
        route_row(route)
    for model in sorted({m for chain in routes.values() for m in chain}):
        model_row(model)
    for start, counts in raw.buckets:
        i = index.get(start)
        if i is None:
            continue
        for field, count in counts.items():
            route, sep, rest = field.partition(SEPARATOR)
            model, sep2, kind = rest.partition(SEPARATOR)
            if not sep or not sep2:
                continue
            if kind in ("ok", "4xx", "429", "5xx"):
                row = route_row(route)
                if kind == "ok":
                    row["served"].setdefault(model, [0] * buckets)[i] += count
                else:
                    row[kind][i] += count
                by_model = totals["requests"].setdefault(route, {}).setdefault(model, {})
                by_model[kind] = by_model.get(kind, 0) + count
            elif kind in LATENCY_KINDS:
                route_row(route)
                latency[route][i][LATENCY_KINDS.index(kind)] += count
            elif kind == "fallbacks":
                route_row(route)["fallbacks"][i] += count
                model_row(model)["fallbacks"][i] += count
                by_route = totals["fallbacks"].setdefault(route, {})
                by_route[model] = by_route.get(model, 0) + count
            elif kind in ("attempts", "shed"):
                model_row(model)[kind][i] += count
                total = totals["attempts" if kind == "attempts" else "sheds"]
                total[model] = total.get(model, 0) + count
    for route, row in route_rows.items():
        row["latency_p50"] = [quantile(h, 0.5) for h in latency[route]]
        row["latency_p99"] = [quantile(h, 0.99) for h in latency[route]]
    return {
        "now_ms": raw.now_ms,
        "resolution_seconds": resolution_ms / 1000,
        "times_ms": times,
        "routes": route_rows,
        "models": model_rows,
        "totals": totals,
    }
