"""429 handling across a cluster: a thundering herd against a per-key rate quota.

Starts a private redis-server (on a free port; a Redis already running is never touched), the
simulator and three proxy replicas as separate processes, all on 127.0.0.1, with the route
gemini-2.5-pro -> [gemini-2.5-pro, gemini-2.5-flash]. The simulator gets an exact sliding-window
quota of R requests/s on gemini-2.5-pro for the one API key the load uses. Open-loop load, sent
round-robin over the replicas whatever the completions: about 3R req/s for the storm phase,
then about 0.8R req/s for the recovery phase, back to back. Then it prints:

1. the upstream request rate to gemini-2.5-pro per second against R (the simulator's attempt
   log), and how many requests the fallback gemini-2.5-flash received (a 429 must not fail over);
2. how fast a shed answer returns compared to one that went upstream, and the client outcomes
   (200, 429 shed by reason, 429 relayed from the upstream, other);
3. the client success rate per second in the recovery phase, the seconds until it reaches 90%
   of the offered rate, and each replica's ``/admin/state`` quotas at the end of each phase.

The proxies run with their default ``quota`` settings (printed) unless ``--quota KEY=VALUE``
overrides one. Prints figures; asserts nothing. Run with ``python bench/rate_limits.py``
(``--help`` for the knobs); takes about a minute.
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
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # so ``bench.cluster`` imports when run as a script
    sys.path.insert(0, str(ROOT))

from bench.cluster import (  # noqa: E402
    BODY,
    GENERATE,
    heading,
    pct,
    report_logs,
    start_cluster,
    table,
)
from proxy.cluster.keys import Keys  # noqa: E402
from proxy.cluster.state import QuotaChange, QuotaParams, QuotaState, parse_any_event  # noqa: E402
from proxy.config import RetryBudgetSettings  # noqa: E402
from proxy.simulator.client import SimulatorControl  # noqa: E402

PRO, FLASH = "gemini-2.5-pro", "gemini-2.5-flash"
API_KEY = "storm-key"
HEADERS = {"x-goog-api-key": API_KEY, "content-type": "application/json"}
SHED_HEADER = "x-gemini-breaker-shed"
SHED_REASONS = ("cooldown", "pacing", "throttle", "budget")
MAX_EVENTS = 100_000
MAX_REQUESTS = 20_000
SUCCESS_TARGET = 0.9


# -- what was sent and what came back ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    rate: float
    seconds: float

    @property
    def count(self) -> int:
        return max(1, round(self.rate * self.seconds))


@dataclass(slots=True)
class Sent:
    """One client request."""

    phase: str
    replica: int
    wall: float
    """When it was sent (time.time())."""
    latency: float = math.nan
    """Seconds until the whole answer was read."""
    status: int | None = None
    shed: str | None = None
    served_by: str | None = None
    attempts: int | None = None
    retry_after: str | None = None
    error: str | None = None

    @property
    def outcome(self) -> str:
        if self.error is not None:
            return f"error {self.error}"
        if self.status == 200:
            return "200"
        if self.status == 429:
            return f"429 shed: {self.shed}" if self.shed else "429 relayed"
        return f"other {self.status}"

    @property
    def went_upstream(self) -> bool:
        return self.error is None and self.status is not None and self.shed is None


async def one_request(client: httpx.AsyncClient, url: str, record: Sent) -> None:
    started = time.perf_counter()
    try:
        response = await client.post(url, content=BODY, headers=HEADERS)
    except httpx.HTTPError as exc:
        record.error = type(exc).__name__
    else:
        headers = response.headers
        record.status = response.status_code
        record.shed = headers.get(SHED_HEADER)
        record.served_by = headers.get("x-gemini-breaker-model")
        record.retry_after = headers.get("retry-after")
        attempts = headers.get("x-gemini-breaker-attempts")
        record.attempts = int(attempts) if attempts and attempts.isdigit() else None
    record.latency = time.perf_counter() - started


async def open_loop(
    client: httpx.AsyncClient,
    replicas: Sequence[str],
    phases: Sequence[Phase],
    records: list[Sent],
    phase_starts: dict[str, float],
    drain: float,
) -> tuple[float, int]:
    """Send each phase's requests at fixed intervals, back to back, round-robin over the
    replicas, whatever the completions; then wait at most ``drain`` seconds for the ones in
    flight and abandon the rest. Returns (largest send lag in seconds, requests abandoned)."""
    loop = asyncio.get_running_loop()
    urls = [url + GENERATE for url in replicas]
    tasks: set[asyncio.Task[None]] = set()
    wall0, start = time.time(), loop.time()
    offset = 0.0
    lag = 0.0
    sent = 0
    for phase in phases:
        phase_starts[phase.name] = wall0 + offset
        for i in range(phase.count):
            if sent >= MAX_REQUESTS:
                break
            delay = start + offset + i / phase.rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                lag = max(lag, -delay)
            record = Sent(phase.name, sent % len(urls), time.time())
            records.append(record)
            task = asyncio.create_task(one_request(client, urls[sent % len(urls)], record))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        offset += phase.seconds
    phase_starts["end"] = wall0 + offset
    abandoned = 0
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=drain)
        for task in pending:
            task.cancel()
        abandoned = len(pending)
        await asyncio.gather(*pending, return_exceptions=True)
    return lag, abandoned


# -- what the replicas and the store said meanwhile -------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One replica's quota entries for PRO at one moment."""

    wall: float
    replica: int
    scale: float
    """1.0 when the replica holds no quota condition."""
    cooling: bool


async def admin_state(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    response = await client.get(url + "/admin/state")
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


def pro_entries(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [q for q in state.get("quotas", []) if q.get("model") == PRO]


async def sample_forever(
    client: httpx.AsyncClient,
    replicas: Sequence[str],
    interval: float,
    limit: int,
    stop: asyncio.Event,
    samples: list[Sample],
) -> None:
    """Every ``interval`` s, each replica's view of PRO's quota condition (bounded count)."""
    for _ in range(limit):
        if stop.is_set():
            return
        wall = time.time()
        states = await asyncio.gather(
            *(admin_state(client, url) for url in replicas), return_exceptions=True
        )
        for index, state in enumerate(states):
            if isinstance(state, BaseException):
                continue
            entries = pro_entries(state)
            scale = min((float(q["rate_scale"]) for q in entries), default=1.0)
            cooling = any(q["cooling_until_ms"] / 1000 > wall for q in entries)
            samples.append(Sample(wall, index, scale, cooling))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, wall + interval - time.time()))


async def snapshot_at(
    client: httpx.AsyncClient, replicas: Sequence[str], wall: float
) -> tuple[float, list[dict[str, Any] | str]]:
    """Every replica's ``/admin/state`` at (just after) ``wall``."""
    await asyncio.sleep(max(0.0, wall - time.time()))
    taken = time.time()
    states = await asyncio.gather(
        *(admin_state(client, url) for url in replicas), return_exceptions=True
    )
    return taken, [s if isinstance(s, dict) else f"{type(s).__name__}: {s}" for s in states]


@dataclass(frozen=True, slots=True)
class QuotaEvent:
    wall: float
    change: QuotaChange


async def listen(client: Redis, channel: str, stop: asyncio.Event, out: list[QuotaEvent]) -> None:
    """Every quota change published on the events channel (one per quota_feedback script)."""
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)
    try:
        while not stop.is_set() and len(out) < MAX_EVENTS:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if message is None:
                continue
            event = parse_any_event(message["data"])
            if isinstance(event, QuotaChange):
                out.append(QuotaEvent(time.time(), event))
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Run:
    records: list[Sent] = field(default_factory=list)
    phase_starts: dict[str, float] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    events: list[QuotaEvent] = field(default_factory=list)
    snapshots: dict[str, tuple[float, list[dict[str, Any] | str]]] = field(default_factory=dict)
    pro_attempts: list[dict[str, Any]] = field(default_factory=list)
    flash_attempts: list[dict[str, Any]] = field(default_factory=list)
    warmup: Counter[str] = field(default_factory=Counter)
    lag: float = 0.0
    abandoned: int = 0


async def execute(
    replicas: list[str], sim_url: str, redis_url: str, args: argparse.Namespace
) -> Run:
    run = Run()
    storm = Phase("storm", args.storm_factor * args.rate, args.storm_seconds)
    recovery = Phase("recovery", args.recovery_factor * args.rate, args.recovery_seconds)
    redis_client = Redis.from_url(redis_url)
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    tasks: list[asyncio.Task[None]] = []
    try:
        async with (
            httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30.0, pool=15.0)) as load,
            httpx.AsyncClient(timeout=5.0) as admin,
        ):
            with SimulatorControl(sim_url) as sim:
                await asyncio.to_thread(sim.clear_all)
                # Warm-up (no quota yet): connections open, every replica has served PRO.
                warm: list[Sent] = []
                warm_phase = Phase("warm-up", 5.0, args.warmup_seconds)
                await open_loop(load, replicas, [warm_phase], warm, {}, drain=10)
                run.warmup.update(r.outcome for r in warm)
                await asyncio.to_thread(sim.set_quota, PRO, requests_per_second=args.rate)
                if args.upstream_latency > 0:  # answers (not 429s: those come first) take time
                    latency = [{"kind": "latency", "seconds": args.upstream_latency}]
                    await asyncio.to_thread(sim.set_faults, PRO, latency)
                await asyncio.to_thread(sim.clear_attempts)

                tasks.append(
                    asyncio.create_task(listen(redis_client, Keys().events, stop, run.events))
                )
                await asyncio.sleep(0.3)  # subscribed
                total = storm.seconds + recovery.seconds + args.drain + 5
                tasks.append(
                    asyncio.create_task(
                        sample_forever(
                            admin,
                            replicas,
                            args.sample_interval,
                            math.ceil(total / args.sample_interval),
                            stop,
                            run.samples,
                        )
                    )
                )
                now = time.time() + 0.05  # the load starts right after this
                ends = {
                    "storm": now + storm.seconds,
                    "recovery": now + storm.seconds + recovery.seconds,
                }
                snapshot_tasks = {
                    name: asyncio.create_task(snapshot_at(admin, replicas, wall - 0.1))
                    for name, wall in ends.items()
                }
                run.lag, run.abandoned = await open_loop(
                    load, replicas, [storm, recovery], run.records, run.phase_starts, args.drain
                )
                for name, task in snapshot_tasks.items():
                    run.snapshots[name] = await task
                await asyncio.sleep(0.5)  # the last attempts are logged
                run.pro_attempts = await asyncio.to_thread(sim.attempts, PRO)
                run.flash_attempts = await asyncio.to_thread(sim.attempts, FLASH)
                await asyncio.to_thread(sim.clear_quotas)
                await asyncio.to_thread(sim.clear_faults)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await redis_client.aclose()
    return run


# -- figures -----------------------------------------------------------------------------------


def bucket(wall: float, origin: float) -> int:
    return math.floor(wall - origin)


def max_in_window(times: Sequence[float], width: float = 1.0) -> int:
    """The most events in any window of ``width`` seconds (a sliding window, as the quota)."""
    ordered = sorted(times)
    best = low = 0
    for high, when in enumerate(ordered):
        while ordered[low] <= when - width:
            low += 1
        best = max(best, high - low + 1)
    return best


def per_second_table(run: Run, args: argparse.Namespace) -> None:
    origin = run.phase_starts["storm"]
    recovery_from = bucket(run.phase_starts["recovery"], origin)
    last = max(
        [bucket(run.phase_starts["end"], origin) - 1]
        + [bucket(a["wall"], origin) for a in run.pro_attempts]
    )
    tries: Counter[int] = Counter(bucket(a["wall"], origin) for a in run.pro_attempts)
    ok: Counter[int] = Counter(
        bucket(a["wall"], origin) for a in run.pro_attempts if a["status"] == 200
    )
    rejected: Counter[int] = Counter(
        bucket(a["wall"], origin) for a in run.pro_attempts if a["status"] == 429
    )
    outcomes: dict[int, Counter[str]] = {}
    for r in run.records:
        counts = outcomes.setdefault(bucket(r.wall, origin), Counter())
        counts[r.outcome] += 1
        counts["offered"] += 1
        if r.status == 200 and (r.attempts or 0) > 1:
            counts["waited"] += 1
    scales: dict[int, list[float]] = {}
    cooling: dict[int, list[bool]] = {}
    for s in run.samples:
        scales.setdefault(bucket(s.wall, origin), []).append(s.scale)
        cooling.setdefault(bucket(s.wall, origin), []).append(s.cooling)
    rows = []
    for second in range(0, last + 1):
        c = outcomes.get(second, Counter())
        sc = scales.get(second, [])
        co = cooling.get(second, [])
        rows.append(
            (
                second,
                "storm" if second < recovery_from else "recovery",
                c["offered"],
                tries[second],
                ok[second],
                rejected[second],
                c["200"],
                c["waited"],
                c["429 shed: cooldown"],
                c["429 shed: pacing"],
                c["429 shed: throttle"],
                c["429 relayed"],
                f"{min(sc):.2f}-{max(sc):.2f}" if sc else "-",
                f"{sum(co) / len(co):.0%}" if co else "-",
            )
        )
    print(
        f"  Seconds from the storm's start (R = {args.rate} req/s). 'upstream' columns: the\n"
        f"  simulator's attempt log for {PRO}, by arrival time; 'client' columns: requests by\n"
        "  send time and their outcome; 'waited': 200s that waited out an upstream 429 and\n"
        "  retried; 'scale': the rate_scale the replicas showed in that second (min-max of\n"
        f"  /admin/state samples every {args.sample_interval:g} s); 'cooling': share of samples\n"
        "  in which a replica held a cooldown."
    )
    table(
        (
            "s",
            "phase",
            "offered",
            "upstream",
            "up 200",
            "up 429",
            "cli 200",
            "waited",
            "shed cool",
            "shed pace",
            "shed thr",
            "relayed",
            "scale",
            "cooling",
        ),
        rows,
    )


def figure_upstream(run: Run, args: argparse.Namespace) -> None:
    heading(f"1. Upstream request rate to {PRO} against the quota R = {args.rate}/s")
    per_second_table(run, args)
    origin, storm_end = run.phase_starts["storm"], run.phase_starts["recovery"]
    storm_attempts = [a for a in run.pro_attempts if a["wall"] < storm_end]
    first_429 = min((a["wall"] for a in storm_attempts if a["status"] == 429), default=None)
    print()
    rows: list[tuple[str, object]] = [
        ("offered in the storm (client req/s)", f"{args.storm_factor * args.rate:g}"),
        ("upstream attempts in the storm", len(storm_attempts)),
        ("  of which 200", sum(1 for a in storm_attempts if a["status"] == 200)),
        ("  of which 429", sum(1 for a in storm_attempts if a["status"] == 429)),
        ("  other", sum(1 for a in storm_attempts if a["status"] not in (200, 429))),
    ]
    if first_429 is None:
        rows.append(("first upstream 429", "none"))
    else:
        full_from = bucket(first_429, origin) + 1
        storm_secs = bucket(storm_end, origin)
        seconds = list(range(full_from, storm_secs))
        tries = Counter(bucket(a["wall"], origin) for a in storm_attempts)
        accepted = Counter(bucket(a["wall"], origin) for a in storm_attempts if a["status"] == 200)
        rejected = Counter(bucket(a["wall"], origin) for a in storm_attempts if a["status"] == 429)
        n = max(1, len(seconds))
        after = [a for a in storm_attempts if a["wall"] > first_429]
        rows += [
            ("first upstream 429 (s after storm start)", f"{first_429 - origin:.3f}"),
            (
                f"full seconds after it (s {full_from}..{storm_secs - 1})",
                len(seconds),
            ),
            ("  mean upstream attempts/s", sum(tries[s] for s in seconds) / n),
            (
                "  max upstream attempts in a 1-s bucket",
                max((tries[s] for s in seconds), default=0),
            ),
            ("  mean accepted (200)/s", sum(accepted[s] for s in seconds) / n),
            ("  max accepted in a 1-s bucket", max((accepted[s] for s in seconds), default=0)),
            ("  mean upstream 429/s", sum(rejected[s] for s in seconds) / n),
            ("  mean attempts/s as a share of R", sum(tries[s] for s in seconds) / n / args.rate),
            (
                "  mean accepted/s as a share of R",
                sum(accepted[s] for s in seconds) / n / args.rate,
            ),
            (
                "  unused quota: sum of (R - accepted) over those seconds",
                sum(max(0, args.rate - accepted[s]) for s in seconds),
            ),
            (
                "max attempts in any sliding 1-s window after the first 429",
                max_in_window([a["wall"] for a in after]),
            ),
            (
                "max accepted in any sliding 1-s window (quota: R)",
                max_in_window([a["wall"] for a in storm_attempts if a["status"] == 200]),
            ),
        ]
    rows += [
        (
            "upstream attempts in the recovery phase (and drain)",
            len(run.pro_attempts) - len(storm_attempts),
        ),
        (f"requests the fallback {FLASH} received (whole run)", len(run.flash_attempts)),
    ]
    table(("measure", "value"), rows)


def figure_latency(run: Run) -> None:
    heading("2. Shed answers vs upstream answers: latency and client outcomes")
    groups: dict[str, list[Sent]] = {}
    for r in run.records:
        groups.setdefault(r.phase, []).append(r)
    for phase, records in groups.items():
        shed = [r.latency * 1000 for r in records if r.shed]
        upstream = [r.latency * 1000 for r in records if r.went_upstream]
        direct_ok = [
            r.latency * 1000 for r in records if r.status == 200 and (r.attempts or 0) <= 1
        ]
        waited_ok = [r.latency * 1000 for r in records if r.status == 200 and (r.attempts or 0) > 1]
        relayed = [r.latency * 1000 for r in records if r.status == 429 and not r.shed]
        print(f"\n  {phase} phase: {len(records)} requests")
        rows = [
            ("429 shed by the proxy", *_lat(shed)),
            *(
                (
                    f"  shed: {reason}",
                    *_lat([r.latency * 1000 for r in records if r.shed == reason]),
                )
                for reason in SHED_REASONS
            ),
            ("went upstream (any answer)", *_lat(upstream)),
            ("  200, one attempt", *_lat(direct_ok)),
            ("  200 after waiting out a 429", *_lat(waited_ok)),
            ("  429 relayed from the upstream", *_lat(relayed)),
        ]
        table(("client requests", "n", "p50 ms", "p90 ms", "p99 ms", "max ms"), rows)
        outcomes = Counter(r.outcome for r in records)
        retry_after: dict[str, Counter[str]] = {}
        for r in records:
            if r.status == 429:
                retry_after.setdefault(r.outcome, Counter())[r.retry_after or "-"] += 1
        attempts: dict[str, Counter[int]] = {}
        for r in records:
            if r.went_upstream:
                attempts.setdefault(r.outcome, Counter())[r.attempts or 0] += 1
        print()
        table(
            (
                "outcome",
                "count",
                "share",
                "Retry-After values (count)",
                "upstream attempts (count)",
            ),
            [
                (
                    name,
                    count,
                    f"{count / len(records):.1%}",
                    _spread(retry_after.get(name)),
                    _spread(attempts.get(name)),
                )
                for name, count in sorted(outcomes.items(), key=lambda kv: -kv[1])
            ],
        )
        served = Counter(r.served_by or "-" for r in records)
        print(f"  x-gemini-breaker-model: {dict(served)}")


def _lat(values: Sequence[float]) -> tuple[int, float, float, float, float]:
    return (
        len(values),
        pct(values, 50),
        pct(values, 90),
        pct(values, 99),
        max(values, default=math.nan),
    )


def _spread(counts: Counter[Any] | None) -> str:
    if not counts:
        return "-"
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: str(kv[0])))


def figure_recovery(run: Run, args: argparse.Namespace) -> None:
    rate = args.recovery_factor * args.rate
    heading(f"3. Throughput recovered after the storm (offered {rate:g} req/s = 0.8R)")
    origin = run.phase_starts["recovery"]
    records = [r for r in run.records if r.phase == "recovery"]
    seconds = math.ceil(args.recovery_seconds)
    offered = Counter(bucket(r.wall, origin) for r in records)
    ok = Counter(bucket(r.wall, origin) for r in records if r.status == 200)
    shed = Counter(bucket(r.wall, origin) for r in records if r.shed)
    relayed = Counter(bucket(r.wall, origin) for r in records if r.status == 429 and not r.shed)
    up = Counter(bucket(a["wall"], origin) for a in run.pro_attempts if a["wall"] >= origin)
    up_429 = Counter(
        bucket(a["wall"], origin)
        for a in run.pro_attempts
        if a["wall"] >= origin and a["status"] == 429
    )
    scales: dict[int, list[float]] = {}
    for s in run.samples:
        if s.wall >= origin:
            scales.setdefault(bucket(s.wall, origin), []).append(s.scale)
    rows = []
    reached: int | None = None
    for second in range(seconds):
        share = ok[second] / offered[second] if offered[second] else math.nan
        if reached is None and share >= SUCCESS_TARGET:
            reached = second
        sc = scales.get(second, [])
        rows.append(
            (
                second,
                offered[second],
                ok[second],
                f"{share:.0%}" if offered[second] else "-",
                shed[second],
                relayed[second],
                up[second],
                up_429[second],
                f"{min(sc):.2f}-{max(sc):.2f}" if sc else "-",
            )
        )
    print(
        "  Seconds from the recovery phase's start; client requests by send time. 'success'\n"
        "  = 200s / offered in that second."
    )
    table(
        (
            "s",
            "offered",
            "200s",
            "success",
            "shed",
            "relayed 429",
            "upstream",
            "up 429",
            "scale",
        ),
        rows,
    )
    stays: int | None = None
    for second in range(seconds):
        if all(offered[s] and ok[s] / offered[s] >= SUCCESS_TARGET for s in range(second, seconds)):
            stays = second
            break
    total_ok = sum(ok.values())
    print()
    table(
        ("measure", "value"),
        [
            ("offered in the recovery phase", len(records)),
            ("200s", f"{total_ok} ({total_ok / max(1, len(records)):.1%})"),
            (
                f"first second with success >= {SUCCESS_TARGET:.0%} of offered",
                "never" if reached is None else f"s {reached} (reached within {reached + 1} s)",
            ),
            (
                f"from this second on, success stays >= {SUCCESS_TARGET:.0%}",
                "never" if stays is None else f"s {stays}",
            ),
            ("upstream 429s in the recovery phase", sum(up_429.values())),
            ("requests shed in the recovery phase", sum(shed.values())),
        ],
    )


def figure_quota_events(run: Run, recovery_per_second: float) -> None:
    heading("Quota changes published by the store (one per quota_feedback, i.e. upstream 429)")
    origin = run.phase_starts["storm"]
    rows = []
    lowered_at: list[float] = []
    previous: QuotaState | None = None
    for event in run.events:
        q = event.change.quota
        if q.model != PRO:
            continue
        now_ms = event.change.now_ms
        before = 1.0 if previous is None else previous.scale_at(now_ms, recovery_per_second)
        lowered = q.scale < before - 1e-9
        gap = (now_ms - lowered_at[-1]) if lowered and lowered_at else math.nan
        if lowered:
            lowered_at.append(now_ms)
        previous = q
        rows.append(
            (
                f"{now_ms / 1000 - origin:.3f}",
                q.epoch,
                f"{(q.until_ms - now_ms) / 1000:.3f}",
                f"{before:.4f}",
                f"{q.scale:.4f}",
                "yes" if lowered else "",
                gap,
            )
        )
    gaps = [b - a for a, b in itertools.pairwise(lowered_at)]
    print(
        f"  {len(rows)} quota changes for {PRO}; the scale was lowered {len(lowered_at)} times"
        f" (gaps between lowerings: p50 {pct(gaps, 50):.0f} ms, min "
        f"{min(gaps, default=math.nan):.0f} ms; {sum(1 for g in gaps if g < 1000)} under 1 s)."
    )
    if rows:
        shown = rows if len(rows) <= 40 else rows[:25] + rows[-15:]
        print(
            "  's' = the script's Redis time after the storm's start; 'cooldown' = until_ms\n"
            "  - that time; 'before' = the scale at that moment (recovered additively since the\n"
            "  previous change); 'gap ms' = since the previous lowering. First 25 and last 15\n"
            "  rows when there are more than 40."
        )
        table(
            ("s", "epoch", "cooldown s", "scale before", "stored scale", "lowered", "gap ms"),
            shown,
        )


def print_snapshots(run: Run) -> None:
    heading("/admin/state quotas at the end of each phase")
    for phase, (taken, states) in run.snapshots.items():
        print(f"\n  end of the {phase} phase (taken at {taken - run.phase_starts['storm']:.2f} s):")
        for index, state in enumerate(states):
            if isinstance(state, str):
                print(f"    replica {index + 1}: unavailable ({state})")
                continue
            breakers = state.get("breakers", {})
            brief = ", ".join(
                f"{m} {b['state']} (calls {b['calls']}, failures {b['failures']})"
                for m, b in breakers.items()
                if m in (PRO, FLASH)
            )
            print(
                f"    replica {index + 1}: quota_alerts {state.get('quota_alerts')}; "
                f"active {state['routes'][PRO]['active']}; {brief}"
            )
            entries = state.get("quotas", [])
            if not entries:
                print("      quotas: [] (no quota condition held)")
            for entry in entries:
                left = entry["cooling_until_ms"] / 1000 - taken
                print(f"      {json.dumps(entry)}  (cooldown left {left:+.3f} s)")


# -- main --------------------------------------------------------------------------------------


def quota_override(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    names = {f.name for f in dataclasses.fields(QuotaParams)}
    if not sep or name not in names:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY one of {sorted(names)}")
    return name, float(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=int, default=10, help="quota R, requests/s (default 10)")
    parser.add_argument("--storm-factor", type=float, default=3.0, help="storm load, x R")
    parser.add_argument("--storm-seconds", type=float, default=20.0)
    parser.add_argument("--recovery-factor", type=float, default=0.8, help="recovery load, x R")
    parser.add_argument("--recovery-seconds", type=float, default=15.0)
    parser.add_argument("--warmup-seconds", type=float, default=2.0, help="at 5 req/s, no quota")
    parser.add_argument("--drain", type=float, default=15.0, help="seconds to wait for stragglers")
    parser.add_argument(
        "--upstream-latency",
        type=float,
        default=0.0,
        help=f"seconds the simulator takes to answer {PRO} (a latency fault; default 0)",
    )
    parser.add_argument("--sample-interval", type=float, default=0.25, help="/admin/state polls")
    parser.add_argument(
        "--quota",
        type=quota_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one of the proxies' quota settings (repeatable)",
    )
    parser.add_argument("--max-seconds", type=float, default=110.0, help="overall time bound")
    args = parser.parse_args()
    overrides = dict(args.quota)
    if "throttle_window" in overrides:
        overrides["throttle_window"] = int(overrides["throttle_window"])
    effective = dataclasses.replace(QuotaParams(), **overrides)

    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="bench-rate-limits-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        directory = Path(tmp)
        bench = start_cluster(stack, directory, {"quota": overrides} if overrides else {})
        replicas, sim_url, redis_url, config, logs = (
            bench.replicas,
            bench.sim_url,
            bench.redis_url,
            bench.config,
            bench.logs,
        )
        budget = RetryBudgetSettings()
        print(
            f"redis-server {redis_url} (private), simulator {sim_url}, replicas "
            f"{', '.join(replicas)}\nconfig: {json.dumps(config)}\n"
            f"cpus: {os.cpu_count()}; every process shares them with this load generator.\n"
            f"proxy quota settings ({'overridden: ' + str(overrides) if overrides else 'defaults'}"
            f"): {json.dumps(dataclasses.asdict(effective))}\n"
            f"retry budget (defaults): ratio {budget.ratio:g} of requests over 10 s, at least "
            f"{budget.min_per_second:g}/s per replica\n"
            f"simulator quota: {PRO} {args.rate} requests/s (sliding 1-s window) for key "
            f"'{API_KEY}'; {FLASH} unlimited\n"
            f"upstream latency for {PRO}: {args.upstream_latency:g} s\n"
            f"load: warm-up {args.warmup_seconds:g} s at 5/s (no quota, not counted); storm "
            f"{args.storm_factor * args.rate:g} req/s for {args.storm_seconds:g} s, then "
            f"recovery {args.recovery_factor * args.rate:g} req/s for {args.recovery_seconds:g} s;"
            f" open loop, round-robin over {len(replicas)} replicas",
            flush=True,
        )
        try:
            run = asyncio.run(_bounded(replicas, sim_url, redis_url, args))
        except TimeoutError:
            print(f"\nstopped: the run took longer than --max-seconds {args.max_seconds:g}")
        else:
            print(
                f"warm-up outcomes: {dict(run.warmup)}; storm+recovery: {len(run.records)} "
                f"requests, max send lag {run.lag * 1000:.1f} ms, abandoned {run.abandoned}"
            )
            figure_upstream(run, args)
            figure_latency(run)
            figure_recovery(run, args)
            figure_quota_events(run, effective.recovery_per_second)
            print_snapshots(run)
        finally:
            report_logs(logs)
            print(f"\nfinished in {time.monotonic() - started:.1f} s")


async def _bounded(
    replicas: list[str], sim_url: str, redis_url: str, args: argparse.Namespace
) -> Run:
    async with asyncio.timeout(args.max_seconds):
        return await execute(replicas, sim_url, redis_url, args)


if __name__ == "__main__":
    main()
