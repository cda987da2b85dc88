"""The breakers across a cluster: three proxy processes on one private redis-server.

Starts a private redis-server (on a free port; a Redis already running is never touched), the
simulator and three proxy replicas (``--replicas``) as separate processes, all on 127.0.0.1 and
pinned to one core, this script (the load generator) to the other, then measures:

1. time from outage onset to breaker open, at a few offered request rates;
2. propagation delay of a breaker transition to every replica (``/admin/state`` polled);
3. primary attempts per client request during a steady outage (trip phase and probes included);
4. Redis commands per request in a steady healthy phase (``INFO commandstats`` deltas).

Load is open-loop: requests are sent at fixed intervals whatever the completions, spread
round-robin over the replicas, bounded in count and time. Figure 4 loads with bench/loadgen.py
(raw asyncio connections): httpx cost more CPU than the replicas it loaded, so at 500 req/s only
half the requests completed and the per-request figure meant little. Prints tables; asserts
nothing.
Run with ``python bench/cluster.py`` (``--help`` for the knobs); takes a little over a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
import httpx
import loadgen
import redis
import yaml
from redis.asyncio import Redis

from proxy.cluster.keys import Keys
from proxy.cluster.state import BreakerParams, Change, parse_any_event
from proxy.cluster.store import BreakerStore

ROOT = Path(__file__).resolve().parent.parent
PRO, FLASH = "gemini-2.5-pro", "gemini-2.5-flash"
ROUTE = {PRO: [PRO, FLASH]}
GENERATE = f"/v1beta/models/{PRO}:generateContent"
BODY = b'{"contents": [{"parts": [{"text": "hi"}], "role": "user"}]}'
HEADERS = {"x-goog-api-key": "bench-key", "content-type": "application/json"}
OUTAGE = [{"kind": "error", "status": 503}]
READY_SECONDS = 30.0
MAX_EVENTS = 100_000
MAX_POLLS = 200_000
# Commands the replicas (and this script) send themselves; every other name in INFO
# commandstats ran inside a Lua script (Redis counts redis.call() there as well).
SENT_BY_CLIENTS = frozenset(
    {
        "evalsha",
        "eval",
        "script|load",
        "script|exists",
        "subscribe",
        "unsubscribe",
        "ping",
        "hello",
        "client|setinfo",
        "client|setname",
        "select",
        "info",
    }
)


# -- processes ---------------------------------------------------------------------------------


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@contextlib.contextmanager
def private_redis(directory: Path) -> Iterator[str]:
    """A redis-server of our own on a free loopback port, persisting nothing; its URL."""
    for _ in range(5):
        port = harness.free_port()
        log = directory / f"redis-{port}.log"
        options = {
            "port": str(port),
            "bind": "127.0.0.1",
            "save": "",
            "appendonly": "no",
            "dir": str(directory),
            "logfile": str(log),
        }
        proc = subprocess.Popen(
            ["redis-server", *(x for k, v in options.items() for x in (f"--{k}", v))],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        ready = False
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with redis.Redis(port=port, socket_timeout=0.5) as probe:
                    ready = bool(probe.ping())
            except redis.RedisError:
                time.sleep(0.02)
                continue
            break
        if ready:
            try:
                yield f"redis://127.0.0.1:{port}/0"
            finally:
                stop_process(proc)
            return
        stop_process(proc)  # the port was taken meanwhile: try another
    raise RuntimeError("redis-server did not start")


@contextlib.contextmanager
def proxy_process(
    args: list[str], log: Path, ready: Callable[[], bool], name: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m proxy ARGS`` with its output in ``log``, until ``ready()`` holds."""
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", *args],
            cwd=ROOT,
            env=harness.clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + READY_SECONDS
        while True:
            try:
                if ready():
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {log.read_text(errors='replace')}")
            time.sleep(0.05)
        yield proc
    finally:
        stop_process(proc)


def simulator_ready(url: str) -> Callable[[], bool]:
    return lambda: httpx.get(url + "/_sim/healthz", timeout=1).status_code == 200


def replica_ready(url: str) -> Callable[[], bool]:
    def check() -> bool:
        response = httpx.get(url + "/readyz", timeout=1)
        return response.status_code == 200 and response.json().get("store") == "ok"

    return check


# -- helpers -----------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """Percentile ``q`` (0-100) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def fmt(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  " + " | ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    print("  " + "-+-".join("-" * w for w in widths))
    for row in cells:
        print("  " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def heading(text: str) -> None:
    print(f"\n{text}\n{'=' * len(text)}", flush=True)


def breaker_of(change: Change, model: str) -> bool:
    return change.changed and change.breaker is not None and change.breaker.model == model


# -- the simulator's control API, asynchronously -----------------------------------------------


class Sim:
    """The ``/_sim`` endpoints used here (the same ones ``SimulatorControl`` calls)."""

    def __init__(self, client: httpx.AsyncClient, base_url: str) -> None:
        self._client = client
        self._base = base_url + "/_sim"

    async def set_faults(self, model: str, faults: list[dict[str, Any]]) -> None:
        (await self._client.put(f"{self._base}/faults/{model}", json=faults)).raise_for_status()

    async def clear_faults(self) -> None:
        (await self._client.delete(f"{self._base}/faults")).raise_for_status()

    async def clear_attempts(self) -> None:
        (await self._client.delete(f"{self._base}/attempts")).raise_for_status()

    async def attempts(self, model: str) -> list[dict[str, Any]]:
        response = await self._client.get(f"{self._base}/attempts", params={"model": model})
        response.raise_for_status()
        entries: list[dict[str, Any]] = response.json()
        return entries


# -- the events channel ------------------------------------------------------------------------


class EventLog:
    """Every change published on the events channel, with the time it arrived here."""

    def __init__(self, client: Redis, channel: str) -> None:
        self._client = client
        self._channel = channel
        self.events: list[tuple[float, Change]] = []
        self.subscribed = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self._channel)
        self.subscribed.set()
        try:
            while not stop.is_set() and len(self.events) < MAX_EVENTS:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                event = None if message is None else parse_any_event(message["data"])
                if isinstance(event, Change):  # breaker changes; pins and quotas aside
                    self.events.append((time.time(), event))
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def wait(
        self, condition: Callable[[Change], bool], start: int, within: float
    ) -> Change | None:
        """The first change at index >= ``start`` that satisfies ``condition``, or None."""
        deadline = time.monotonic() + within
        index = start
        while True:
            while index < len(self.events):
                change = self.events[index][1]
                index += 1
                if condition(change):
                    return change
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.002)


# -- open-loop load ----------------------------------------------------------------------------


@dataclass
class Load:
    """What one open-loop run sent and got back."""

    rate: float
    sent: int = 0
    done: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    served: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    send_times: list[float] = field(default_factory=list)
    max_lag_ms: float = 0.0
    max_in_flight: int = 0
    abandoned: int = 0
    started: float = 0.0
    ended: float = 0.0

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    def summary(self) -> str:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        served = ", ".join(f"{k}: {v}" for k, v in sorted(self.served.items()))
        return (
            f"sent {self.sent} at {self.rate:g}/s, completed {self.done} "
            f"({statuses}; served by {served or '-'}); latency p50 "
            f"{pct(self.latencies_ms, 50):.1f} ms, p99 {pct(self.latencies_ms, 99):.1f} ms; "
            f"max send lag {self.max_lag_ms:.1f} ms, max in flight {self.max_in_flight}"
            + (f", abandoned {self.abandoned}" if self.abandoned else "")
        )


async def one_request(
    client: httpx.AsyncClient, url: str, load: Load, in_flight: list[int]
) -> None:
    started = time.perf_counter()
    in_flight[0] += 1
    load.max_in_flight = max(load.max_in_flight, in_flight[0])
    try:
        response = await client.post(url, content=BODY, headers=HEADERS)
    except httpx.HTTPError as exc:
        load.statuses[type(exc).__name__] += 1
    else:
        load.statuses[str(response.status_code)] += 1
        load.served[response.headers.get("x-gemini-breaker-model", "-")] += 1
    finally:
        in_flight[0] -= 1
    load.done += 1
    load.latencies_ms.append((time.perf_counter() - started) * 1000)


async def open_loop(
    client: httpx.AsyncClient,
    replicas: Sequence[str],
    rate: float,
    seconds: float,
    stop: asyncio.Event | None = None,
    drain: float = 15.0,
) -> Load:
    """Send ``rate * seconds`` requests at fixed intervals, round-robin over the replicas,
    whatever the completions (stopping early when ``stop`` is set); then wait at most
    ``drain`` seconds for the ones in flight and abandon the rest."""
    loop = asyncio.get_running_loop()
    load = Load(rate)
    count = max(1, round(rate * seconds))
    urls = [url + GENERATE for url in replicas]
    tasks: set[asyncio.Task[None]] = set()
    in_flight = [0]
    load.started = time.time()
    start = loop.time()
    for i in range(count):
        if stop is not None and stop.is_set():
            break
        target = start + i / rate
        delay = target - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            load.max_lag_ms = max(load.max_lag_ms, -delay * 1000)
        load.send_times.append(time.time())
        load.sent += 1
        task = asyncio.create_task(one_request(client, urls[i % len(urls)], load, in_flight))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=drain)
        for task in pending:
            task.cancel()
        load.abandoned = len(pending)
        await asyncio.gather(*pending, return_exceptions=True)
    load.ended = time.time()
    return load


# -- the cluster as the figures see it ---------------------------------------------------------


@dataclass
class Cluster:
    replicas: list[str]
    sim: Sim
    store: BreakerStore
    redis: Redis
    events: EventLog
    load_client: httpx.AsyncClient
    admin_client: httpx.AsyncClient
    params: BreakerParams
    reconcile_interval: float

    async def state(self, url: str) -> dict[str, Any]:
        response = await self.admin_client.get(url + "/admin/state")
        response.raise_for_status()
        document: dict[str, Any] = response.json()
        return document

    async def wait_replicas(self, epoch: int, within: float = 5.0) -> bool:
        """Until every replica's mirror shows PRO's breaker at ``epoch`` or later."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            states = await asyncio.gather(*(self.state(url) for url in self.replicas))
            if all(s["breakers"][PRO]["epoch"] >= epoch for s in states):
                return True
            await asyncio.sleep(0.01)
        return False

    async def reset(self) -> int:
        """No faults; PRO's breaker closed with no trip history, on every replica."""
        await self.sim.clear_faults()
        change = await self.store.force(PRO, "reset", "bench", "bench: reset", self.params)
        assert change.breaker is not None
        if not await self.wait_replicas(change.breaker.epoch):
            print("  (warning: a replica did not show the reset within 5 s)")
        return change.breaker.epoch

    def load(
        self, rate: float, seconds: float, stop: asyncio.Event | None = None
    ) -> asyncio.Task[Load]:
        return asyncio.create_task(open_loop(self.load_client, self.replicas, rate, seconds, stop))


# -- figure 1: outage onset to breaker open ----------------------------------------------------


@dataclass
class Trip:
    rate: float
    open_after_t0_ms: float
    open_after_first_failure_ms: float
    reason: str
    failures_before_open: int
    requests_before_open: int
    late_attempts: int
    last_late_ms: float
    load: Load


async def trip_trial(cluster: Cluster, rate: float, warmup: float, max_wait: float) -> Trip:
    reset_epoch = await cluster.reset()
    await cluster.sim.clear_attempts()
    stop = asyncio.Event()
    settle = 0.5
    task = cluster.load(rate, warmup + max_wait + settle, stop)
    await asyncio.sleep(warmup)
    first_event = len(cluster.events.events)
    t0 = time.time()
    await cluster.sim.set_faults(PRO, OUTAGE)
    opened = await cluster.events.wait(
        lambda c: (
            breaker_of(c, PRO)
            and c.breaker is not None
            and c.breaker.state == "open"
            and c.breaker.epoch > reset_epoch
        ),
        first_event,
        max_wait,
    )
    if opened is not None:
        await asyncio.sleep(settle)  # primary attempts that were already admitted show up
    stop.set()
    load = await task
    attempts = await cluster.sim.attempts(PRO)
    await cluster.sim.clear_faults()
    if opened is None or opened.breaker is None:
        return Trip(rate, math.nan, math.nan, "never opened", 0, 0, 0, math.nan, load)
    open_s = opened.now_ms / 1000
    failed = [a["wall"] for a in attempts if a["fault"] == "error"]
    first_failure = min(failed) if failed else math.nan
    late = [w for w in failed if w > open_s]
    return Trip(
        rate=rate,
        open_after_t0_ms=(open_s - t0) * 1000,
        open_after_first_failure_ms=(open_s - first_failure) * 1000,
        reason=opened.breaker.reason,
        failures_before_open=sum(1 for w in failed if w <= open_s),
        requests_before_open=sum(1 for s in load.send_times if t0 <= s <= open_s),
        late_attempts=len(late),
        last_late_ms=(max(late) - open_s) * 1000 if late else math.nan,
        load=load,
    )


async def figure_trip(cluster: Cluster, args: argparse.Namespace) -> None:
    heading("1. Outage onset to breaker open")
    print(
        f"  Route {PRO} -> [{PRO}, {FLASH}], three replicas, open-loop load round-robin.\n"
        f"  Per trial: breaker reset, {args.warmup:g} s healthy load, then at T0 the simulator\n"
        f"  answers 503 to every {PRO} call. 'open' is now_ms of the first published Change\n"
        f"  with state open (Redis TIME; same host clock as T0). 'first 503' is the wall time\n"
        f"  the simulator logged the first failing attempt. 'late' = primary attempts that\n"
        f"  reached the simulator after the open (admitted before the replica learnt of it)."
    )
    trips: list[Trip] = []
    for rate in args.trip_rates:
        for _ in range(args.trials):
            trip = await trip_trial(cluster, rate, args.warmup, max_wait=10.0)
            trips.append(trip)
            print(f"  rate {rate:g}/s: {trip.load.summary()}", flush=True)
    print()
    table(
        (
            "req/s",
            "open-T0 ms",
            "open-first 503 ms",
            "503s before open",
            "requests T0..open",
            "late",
            "last late ms",
            "reason",
        ),
        [
            (
                f"{t.rate:g}",
                t.open_after_t0_ms,
                t.open_after_first_failure_ms,
                t.failures_before_open,
                t.requests_before_open,
                t.late_attempts,
                t.last_late_ms,
                t.reason,
            )
            for t in trips
        ],
    )
    print()
    table(
        ("req/s", "trials", "open-T0 median ms", "min", "max"),
        [
            (
                f"{rate:g}",
                len(values),
                pct(values, 50),
                min(values, default=math.nan),
                max(values, default=math.nan),
            )
            for rate in args.trip_rates
            for values in [
                [
                    t.open_after_t0_ms
                    for t in trips
                    if t.rate == rate and not math.isnan(t.open_after_t0_ms)
                ]
            ]
        ],
    )


# -- figure 2: propagation to every replica ----------------------------------------------------


Poll = tuple[float, float, int]  # (sent, received, PRO's breaker epoch) in wall seconds


async def poll_forever(cluster: Cluster, url: str, stop: asyncio.Event, out: list[Poll]) -> None:
    while not stop.is_set() and len(out) < MAX_POLLS:
        sent = time.time()
        try:
            document = await cluster.state(url)
        except httpx.HTTPError:
            await asyncio.sleep(0.01)
            continue
        out.append((sent, time.time(), int(document["breakers"][PRO]["epoch"])))
        await asyncio.sleep(0.001)


def seen(polls: list[Poll], epoch: int, since_s: float) -> tuple[float, float] | None:
    """Bounds (lower, upper) in seconds on when a replica applied ``epoch``: after the last
    poll sent that still showed an older one, before the first poll that showed it."""
    lower = since_s
    for sent, received, shown in polls:
        if received < since_s:
            continue
        if shown >= epoch:
            return lower, received
        lower = max(lower, sent)
    return None


async def propagation_run(
    cluster: Cluster, transitions: int, load_rate: float
) -> tuple[list[list[tuple[float, float]]], int, list[float], list[float]]:
    """Force ``transitions`` open/close changes; per transition, per replica, the bounds (ms
    after the change's now_ms) on when the replica's /admin/state first showed it."""
    await cluster.reset()
    stop = asyncio.Event()
    polls: dict[str, list[Poll]] = {url: [] for url in cluster.replicas}
    pollers = [
        asyncio.create_task(poll_forever(cluster, url, stop, polls[url]))
        for url in cluster.replicas
    ]
    load_task = cluster.load(load_rate, 120.0, stop) if load_rate > 0 else None
    await asyncio.sleep(0.5)
    changes: list[tuple[int, int]] = []
    missed = 0
    for i in range(transitions):
        action = "open" if i % 2 == 0 else "close"
        change = await cluster.store.force(PRO, action, "bench", "propagation", cluster.params)
        assert change.breaker is not None
        epoch = change.breaker.epoch
        changes.append((change.now_ms, epoch))
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            if all(p and p[-1][2] >= epoch for p in polls.values()):
                break
            await asyncio.sleep(0.005)
        else:
            missed += 1
        await asyncio.sleep(random.uniform(0.05, 0.15))  # off any replica timer's beat
    stop.set()
    await asyncio.gather(*pollers)
    if load_task is not None:
        await load_task
    results = []
    for now_ms, epoch in changes:
        row = []
        for url in cluster.replicas:
            bounds = seen(polls[url], epoch, now_ms / 1000)
            if bounds is None:
                row.append((math.nan, math.nan))
            else:
                row.append(((bounds[0] * 1000 - now_ms), (bounds[1] * 1000 - now_ms)))
        results.append(row)
    gaps = [(b[0] - a[0]) * 1000 for p in polls.values() for a, b in itertools.pairwise(p)]
    forced = {epoch for _, epoch in changes}
    delivered = [
        arrived * 1000 - change.now_ms
        for arrived, change in cluster.events.events
        if breaker_of(change, PRO) and change.breaker and change.breaker.epoch in forced
    ]
    await cluster.reset()
    return results, missed, gaps, delivered


async def figure_propagation(cluster: Cluster, args: argparse.Namespace) -> None:
    heading("2. Propagation of a transition to every replica")
    print(
        f"  {args.transitions} transitions of {PRO}'s breaker (alternating operator open /\n"
        "  close, BreakerStore.force from this script on the replicas' Redis and namespace), so\n"
        "  every replica learns them only from the events channel (or its 1 s reconcile).\n"
        "  Each replica's /admin/state is polled continuously (one request in flight per\n"
        "  replica, 1 ms pause between polls). Delay = from the Change's now_ms (Redis TIME)\n"
        "  to the first poll answer showing the new epoch: an upper bound; the lower bound is\n"
        "  the send time of the last poll that still showed the old epoch. 'all' = the slowest\n"
        "  of the three replicas per transition. 'pub/sub' = from now_ms to the event's arrival\n"
        "  at this script's own subscriber (the share of the delay Redis delivery takes).\n"
        "  now_ms is Redis TIME floored to the millisecond: every delay here reads 0-1 ms long."
    )
    rows = []
    for label, rate in (("idle", 0.0), (f"{args.propagation_load:g} req/s", args.propagation_load)):
        if label != "idle" and rate <= 0:
            continue
        results, missed, gaps, delivered = await propagation_run(cluster, args.transitions, rate)
        upper = [u for row in results for _, u in row if not math.isnan(u)]
        lower = [lo for row in results for lo, _ in row if not math.isnan(lo)]
        everyone = [
            max(u for _, u in row)
            for row in results
            if not any(map(math.isnan, [u for _, u in row]))
        ]
        rows.append(
            (
                label,
                len(results),
                pct(lower, 50),
                pct(upper, 50),
                pct(upper, 99),
                pct(everyone, 50),
                pct(everyone, 99),
                max(everyone, default=math.nan),
                pct(gaps, 50),
                pct(gaps, 99),
                pct(delivered, 50),
                pct(delivered, 99),
                missed,
            )
        )
    print()
    table(
        (
            "load",
            "transitions",
            "lower p50 ms",
            "per-replica p50",
            "per-replica p99",
            "all p50",
            "all p99",
            "all max",
            "poll gap p50",
            "poll gap p99",
            "pub/sub p50",
            "pub/sub p99",
            "not seen in 3 s",
        ),
        rows,
    )


# -- figure 3: primary attempts per request during an outage -----------------------------------


async def figure_outage(cluster: Cluster, args: argparse.Namespace) -> None:
    heading("3. Primary attempts per client request during an outage")
    rate, seconds = args.outage_rate, args.outage_seconds
    p = cluster.params
    print(
        f"  {args.warmup:g} s healthy load at {rate:g}/s (not counted), then {PRO} answers 503\n"
        f"  to everything for {seconds:g} s of load at {rate:g}/s. Breaker parameters: "
        f"{'configured' if args.open_seconds is not None else 'defaults'}\n"
        f"  (open_seconds {p.open_seconds:g}, doubling per trip up to {p.open_max_seconds:g};"
        f" half_open_probes {p.half_open_probes}; burst {p.burst_failures} failures in "
        f"{p.burst_seconds:g} s;\n  minimum_calls {p.minimum_calls}, failure_rate "
        f"{p.failure_rate:g} over {p.window_seconds:g} s); max_attempts 2 per model, retry "
        "budget 10% (floor 5/s) per replica."
    )
    await cluster.reset()
    warm = await cluster.load(rate, args.warmup)
    await cluster.sim.clear_attempts()
    first_event = len(cluster.events.events)
    t0 = time.time()
    await cluster.sim.set_faults(PRO, OUTAGE)
    load = await cluster.load(rate, seconds)
    attempts = await cluster.sim.attempts(PRO)
    await cluster.sim.clear_faults()
    transitions = [
        c for _, c in cluster.events.events[first_event:] if breaker_of(c, PRO) and c.breaker
    ]
    print(f"  warm-up: {warm.summary()}")
    print(f"  outage:  {load.summary()}")
    print("\n  transitions of the primary's breaker (ms after T0):")
    timeline: list[tuple[float, str]] = [(t0, "closed")]
    for change in transitions:
        assert change.breaker is not None
        b = change.breaker
        timeline.append((change.now_ms / 1000, b.state))
        wait = (b.open_until_ms - change.now_ms) / 1000 if b.state == "open" else 0
        print(
            f"    {(change.now_ms / 1000 - t0) * 1000:8.1f}  -> {b.state:<9} epoch {b.epoch}"
            + (f", open for {wait:g} s" if b.state == "open" else "")
            + (f" ({b.reason})" if b.reason else "")
        )

    def state_at(wall: float) -> str:
        current = "closed"
        for when, name in timeline:
            if when <= wall:
                current = name
        return current

    by_state = Counter(state_at(a["wall"]) for a in attempts)
    opened = [when for when, name in timeline if name == "open"]
    first_open = opened[0] if opened else math.inf
    requests_after = sum(1 for s in load.send_times if s > first_open)
    attempts_after = sum(1 for a in attempts if a["wall"] > first_open)
    print()
    table(
        ("phase", "primary attempts"),
        [
            ("breaker closed (trip phase)", by_state["closed"]),
            ("breaker open (admitted before it opened)", by_state["open"]),
            ("breaker half-open (probes)", by_state["half_open"]),
            ("total", len(attempts)),
        ],
    )
    print()
    table(
        ("measure", "value"),
        [
            ("client requests", load.sent),
            ("primary attempts", len(attempts)),
            ("primary attempts per request", len(attempts) / max(1, load.sent)),
            ("  after the first open: requests", requests_after),
            ("  after the first open: primary attempts", attempts_after),
            (
                "  after the first open: attempts per request",
                attempts_after / max(1, requests_after),
            ),
            ("a gateway retrying each request 3x on the primary", 3 * load.sent),
            ("  attempts per request", 3.0),
            (
                "primary attempts saved vs that gateway",
                f"{1 - len(attempts) / (3 * load.sent):.1%}",
            ),
        ],
    )


# -- figure 4: Redis commands per request ------------------------------------------------------


async def commandstats(client: Redis) -> Counter[str]:
    info: dict[str, Any] = await client.info("commandstats")
    return Counter(
        {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in info.items()}
    )


async def connections_received(client: Redis) -> int:
    stats: dict[str, Any] = await client.info("stats")
    return int(stats["total_connections_received"])


async def raw_load(replicas: Sequence[str], rate: float, seconds: float) -> Load:
    """Open-loop load from bench/loadgen.py, ``rate / len(replicas)`` per second on each."""
    load = Load(rate)
    load.started = time.time()
    payload = {url: loadgen.request_bytes(url, GENERATE, BODY, HEADERS) for url in replicas}
    runs = await asyncio.gather(
        *(loadgen.open_loop(url, payload[url], rate / len(replicas), seconds) for url in replicas)
    )
    load.ended = time.time()
    for run in runs:
        load.sent += len(run.results) + run.errors
        load.done += len(run.results)
        load.statuses.update(str(r.status) for r in run.results)
        if run.errors:
            load.statuses["connection errors"] += run.errors
        load.latencies_ms += [(r.done - r.started) * 1000 for r in run.results]
    return load


async def figure_commands(cluster: Cluster, args: argparse.Namespace) -> None:
    heading("4. Redis commands per request (INFO commandstats)")
    print(
        "  Breaker closed, no faults. Deltas of INFO commandstats over each phase ('info', sent\n"
        "  by this script, excluded). Redis counts the commands a Lua script runs through\n"
        "  redis.call() as well: 'sent' are the commands the replicas sent (EVALSHA: one per\n"
        "  script call; pipelined ones share a round trip), 'in scripts' the rest. 'net'\n"
        "  subtracts the idle background rate (reconcile snapshots) measured first. 'new conns'\n"
        "  = connections Redis accepted in the phase (INFO stats total_connections_received).\n"
        "  Load: bench/loadgen.py, open loop, latency from the scheduled send time."
    )
    await cluster.reset()
    await raw_load(cluster.replicas, 50, 1.0)  # connections warm
    await asyncio.sleep(0.5)
    conns: dict[str, int] = {}
    before = await commandstats(cluster.redis)
    conns_before = await connections_received(cluster.redis)
    started = time.monotonic()
    await asyncio.sleep(args.idle_seconds)
    idle = await commandstats(cluster.redis) - before
    conns["idle"] = await connections_received(cluster.redis) - conns_before
    idle.pop("info", None)
    idle_elapsed = time.monotonic() - started
    idle_rate = sum(idle.values()) / idle_elapsed
    phases: list[tuple[str, Load | None, Counter[str], float]] = [
        ("idle", None, idle, idle_elapsed)
    ]
    for rate in args.command_rates:
        before = await commandstats(cluster.redis)
        conns_before = await connections_received(cluster.redis)
        started = time.monotonic()
        load = await raw_load(cluster.replicas, rate, args.command_seconds)
        # Successes alone are flushed once per reconcile interval: wait for the last ones.
        await asyncio.sleep(1.1 * cluster.reconcile_interval)
        delta = await commandstats(cluster.redis) - before
        conns[f"{rate:g} req/s"] = await connections_received(cluster.redis) - conns_before
        delta.pop("info", None)
        phases.append((f"{rate:g} req/s", load, delta, time.monotonic() - started))
        print(f"  {rate:g} req/s: {load.summary()}", flush=True)
    print()
    rows = []
    for label, phase_load, delta, elapsed in phases:
        sent = sum(v for k, v in delta.items() if k in SENT_BY_CLIENTS)
        total = sum(delta.values())
        requests = phase_load.done if phase_load is not None else 0

        def per(n: float, requests: int = requests) -> float:
            return n / requests if requests else math.nan

        rows.append(
            (
                label,
                requests,
                f"{elapsed:.1f}",
                total / elapsed,
                per(total),
                per(sent),
                per(delta["evalsha"]),
                per(delta["publish"]),
                per(total - idle_rate * elapsed),
                conns[label],
            )
        )
    table(
        (
            "phase",
            "requests",
            "seconds",
            "cmds/s",
            "cmds/req",
            "sent/req",
            "evalsha/req",
            "publish/req",
            "net cmds/req",
            "new conns",
        ),
        rows,
    )
    names = sorted(
        {name for _, _, delta, _ in phases for name in delta},
        key=lambda n: (n not in SENT_BY_CLIENTS, n),
    )
    print("\n  per command (calls in the phase; per request in brackets):")
    table(
        ("command", "where", *(label for label, _, _, _ in phases)),
        [
            (
                name,
                "sent" if name in SENT_BY_CLIENTS else "in scripts",
                *(
                    f"{delta[name]}" + (f" ({delta[name] / load.done:.3f})" if load else "")
                    for _, load, delta, _ in phases
                ),
            )
            for name in names
        ],
    )


# -- main --------------------------------------------------------------------------------------


async def run(
    replicas: list[str],
    sim_url: str,
    redis_url: str,
    args: argparse.Namespace,
    reconcile_interval: float,
) -> None:
    params = BreakerParams(
        **({} if args.open_seconds is None else {"open_seconds": args.open_seconds})
    )
    client = Redis.from_url(redis_url)
    stop = asyncio.Event()
    events = EventLog(client, Keys().events)
    listener = asyncio.create_task(events.run(stop))
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    try:
        async with (
            httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30.0, pool=15.0)) as load_client,
            httpx.AsyncClient(timeout=5.0) as admin_client,
        ):
            await asyncio.wait_for(events.subscribed.wait(), 5)
            cluster = Cluster(
                replicas=replicas,
                sim=Sim(admin_client, sim_url),
                store=BreakerStore(client, Keys()),
                redis=client,
                events=events,
                load_client=load_client,
                admin_client=admin_client,
                params=params,
                reconcile_interval=reconcile_interval,
            )
            figures = {
                "1": figure_trip,
                "2": figure_propagation,
                "3": figure_outage,
                "4": figure_commands,
            }
            async with asyncio.timeout(args.max_seconds):
                for name in args.figures:
                    await figures[name](cluster, args)
    finally:
        stop.set()
        await asyncio.gather(listener, return_exceptions=True)
        await client.aclose()


def report_logs(logs: dict[str, Path]) -> None:
    heading("Process logs (warnings and errors)")
    for name, path in logs.items():
        lines = path.read_text(errors="replace").splitlines()
        notable = [line for line in lines if re.search(r"WARNING|ERROR|Traceback", line)]
        distinct = Counter(re.sub(r"\d+", "N", line)[:160] for line in notable)
        print(f"  {name}: {len(lines)} lines, {len(notable)} warnings/errors")
        for line, count in distinct.most_common(6):
            print(f"    {count:>5} x {line}")


def numbers(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part]


@dataclasses.dataclass
class BenchCluster:
    """A private redis-server, the simulator and three proxy replicas, all processes."""

    redis_url: str
    sim_url: str
    replicas: list[str]
    config: dict[str, Any]
    logs: dict[str, Path]


def start_cluster(
    stack: contextlib.ExitStack,
    directory: Path,
    extra: dict[str, Any],
    replica_count: int = 3,
    pin: bool = False,
) -> BenchCluster:
    """Start everything (stopped when ``stack`` closes); ``extra`` is merged into the config.

    ``pin``: every process started here runs on ``harness.SERVER_CPU`` (they inherit this
    process's affinity while it starts them); this process then moves to
    ``harness.LOADGEN_CPU``, so the load generator does not take the replicas' CPU."""
    if pin:
        harness.pin_self(harness.SERVER_CPU)
    redis_url = stack.enter_context(private_redis(directory))
    sim_port = harness.free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    logs = {"simulator": directory / "simulator.log"}
    stack.enter_context(
        proxy_process(
            ["simulate", "--port", str(sim_port), "--log-level", "warning"],
            logs["simulator"],
            simulator_ready(sim_url),
            "the simulator",
        )
    )
    config: dict[str, Any] = {
        "upstream": {"base_url": sim_url},
        "redis": {"url": redis_url, "flush_interval": 0.1, "reconcile_interval": 1.0},
        "routes": ROUTE,
        "admin": {"allow_unauthenticated_loopback": True},  # /admin/state polled from loopback
        **extra,
    }
    config_path = directory / "cluster.yaml"
    config_path.write_text(yaml.safe_dump(config))
    replicas = []
    serve_args = ["serve", "--config", str(config_path), "--log-level", "warning"]
    for index in range(replica_count):
        port = harness.free_port()
        url = f"http://127.0.0.1:{port}"
        name = f"replica {index + 1}"
        logs[name] = directory / f"replica-{index + 1}.log"
        stack.enter_context(
            proxy_process([*serve_args, "--port", str(port)], logs[name], replica_ready(url), name)
        )
        replicas.append(url)
    if pin:
        harness.pin_self(harness.LOADGEN_CPU)
    return BenchCluster(redis_url, sim_url, replicas, config, logs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figures", default="1234", help="which figures to run (default 1234)")
    parser.add_argument("--trip-rates", type=numbers, default=[50.0, 200.0])
    parser.add_argument("--trials", type=int, default=3, help="figure 1 trials per rate")
    parser.add_argument("--warmup", type=float, default=3.0, help="healthy seconds before a fault")
    parser.add_argument("--transitions", type=int, default=20, help="figure 2 transitions")
    parser.add_argument(
        "--propagation-load", type=float, default=200.0, help="req/s in figure 2's second run"
    )
    parser.add_argument("--outage-rate", type=float, default=50.0)
    parser.add_argument("--outage-seconds", type=float, default=10.0)
    parser.add_argument("--command-rates", type=numbers, default=[200.0, 500.0])
    parser.add_argument("--command-seconds", type=float, default=10.0)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument(
        "--open-seconds", type=float, default=None, help="breaker open_seconds (default 5)"
    )
    parser.add_argument("--max-seconds", type=float, default=170.0, help="overall time bound")
    parser.add_argument("--replicas", type=int, default=3, help="proxy processes (default 3)")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        directory = Path(tmp)
        breaker = {} if args.open_seconds is None else {"open_seconds": args.open_seconds}
        bench = start_cluster(
            stack,
            directory,
            {"model_defaults": {"breaker": breaker}} if breaker else {},
            args.replicas,
            pin=True,
        )
        replicas, sim_url, redis_url, config, logs = (
            bench.replicas,
            bench.sim_url,
            bench.redis_url,
            bench.config,
            bench.logs,
        )
        print(
            f"redis-server {redis_url} (private), simulator {sim_url}, replicas "
            f"{', '.join(replicas)}\nconfig: {json.dumps(config)}\n"
            f"cpus: {os.cpu_count()}; every process shares them with this load generator.",
            flush=True,
        )
        started = time.monotonic()
        try:
            reconcile = float(config["redis"]["reconcile_interval"])
            asyncio.run(run(replicas, sim_url, redis_url, args, reconcile))
        except TimeoutError:
            print(f"\nstopped: the run took longer than --max-seconds {args.max_seconds:g}")
        finally:
            report_logs(logs)
            print(f"\nfinished in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
