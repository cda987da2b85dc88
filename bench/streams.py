"""Thousands of open streams through one proxy process: resident memory and per-chunk delay.

The canned upstream (bench/fast_upstream.py) answers each stream with ``--chunks`` events,
``--interval`` ms apart, each stamped with the monotonic time it was written; the client (the
raw asyncio client of bench/loadgen.py, one process on core 0 with the upstream) opens
``--streams`` streams spread over ``--ramp`` seconds, so their chunks are spread evenly over
time, and records every chunk's delay from its stamp to its arrival while all streams are
open (from one interval after every stream's first event arrived). The same load runs
directly against the upstream first (the delay the client and the loopback add by
themselves), then through one gemini-breaker process on core 1, whose VmRSS
is sampled meanwhile. Prints a table with the targets (docs/performance.md); asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import harness
import loadgen
import uvloop
from harness import BODY, HEADERS, STREAM, pct


@dataclass
class Run:
    name: str
    opened: int = 0
    errors: int = 0
    delays_ms: list[float] | None = None
    peak_rss: int = 0
    events: int = 0
    window_events: int = 0
    window_cpu: float = float("nan")
    """The proxy's CPU seconds while every stream was open (steady state)."""
    late_open: float = 0.0
    """Seconds after the ramp until every stream's first event had arrived."""


async def hold_streams(
    url: str,
    args: argparse.Namespace,
    sample: Callable[[], int] | None,
    cpu: Callable[[], float] | None = None,
) -> Run:
    run = Run(url)
    sink = loadgen.ChunkSink()
    headers = {
        **HEADERS,
        "x-bench-chunks": str(args.chunks),
        "x-bench-interval-ms": str(args.interval),
    }
    payload = loadgen.request_bytes(url, STREAM, BODY, headers)
    finished: list[asyncio.Future[loadgen.Result]] = []
    connections: list[loadgen.Connection] = []
    start = time.perf_counter()
    flowing = 0
    all_flowing = asyncio.Event()

    def first_byte() -> None:
        nonlocal flowing
        flowing += 1
        if flowing >= args.streams - run.errors:
            all_flowing.set()

    async def open_one(index: int) -> None:
        delay = start + index * args.ramp / args.streams - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            conn = await loadgen.connect(url, sink)
        except OSError:
            run.errors += 1
            return
        conn.on_first_byte = first_byte
        connections.append(conn)
        finished.append(conn.send(payload, loadgen.Result(time.perf_counter())))
        run.opened += 1

    await asyncio.gather(*(open_one(i) for i in range(args.streams)))
    # A stream is open once its first event came back: a proxy that fell behind the ramp is
    # still opening streams when the last request is sent. Measure once every stream flows.
    stream_seconds = args.chunks * args.interval / 1000
    if flowing < run.opened:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_flowing.wait(), stream_seconds / 2 - args.ramp)
    run.late_open = time.perf_counter() - (start + args.ramp)
    await asyncio.sleep(args.interval / 1000)
    sink.recording = True
    cpu_before = cpu() if cpu is not None else 0.0
    measure_until = start + stream_seconds - args.interval / 1000
    while time.perf_counter() < measure_until:
        if sample is not None:
            run.peak_rss = max(run.peak_rss, sample())
        await asyncio.sleep(0.5)
    sink.recording = False
    if cpu is not None:
        run.window_cpu = cpu() - cpu_before
    run.window_events = len(sink.delays_ms)
    done, pending = await asyncio.wait(finished, timeout=stream_seconds + 30)
    for late in pending:
        late.cancel()  # counted as errors below; closing their connections must not raise
    run.errors += len(pending) + sum(
        1 for f in done if f.exception() is not None or f.result().status != 200
    )
    for conn in connections:
        if conn.transport is not None:
            conn.transport.close()
    run.delays_ms = sink.delays_ms
    run.events = sink.events
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=5000)
    parser.add_argument("--chunks", type=int, default=20, help="events per stream")
    parser.add_argument("--interval", type=float, default=1000.0, help="ms between events")
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds to open every stream")
    parser.add_argument("--source", type=Path, default=harness.ROOT, help="proxy checkout")
    args = parser.parse_args()
    if args.ramp >= args.chunks * args.interval / 1000 - 2 * args.interval / 1000:
        parser.error("the streams must outlast the ramp by two intervals")
    harness.pin_self()
    limit = harness.raise_open_files(4 * args.streams + 1024)
    if limit < 3 * args.streams:
        print(f"open-file limit {limit} is too low for {args.streams} streams")
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="gb-streams-") as tmp:
        work = Path(tmp)
        with harness.fast_upstream(work) as upstream:
            print(f"{args.streams} streams directly ...", flush=True)
            direct = uvloop.run(hold_streams(upstream, args, None))
            direct.name = "direct"
            runs.append(direct)
            config = {
                "upstream": {
                    "max_connections": args.streams + 100,
                    "max_keepalive_connections": args.streams + 100,
                }
            }
            with harness.proxy(work, upstream, "proxy", config, source=args.source) as (
                url,
                proc,
            ):
                idle_rss = harness.resident_bytes([proc.pid])
                print(f"{args.streams} streams through gemini-breaker ...", flush=True)
                proxied = uvloop.run(
                    hold_streams(
                        url,
                        args,
                        lambda: harness.resident_bytes([proc.pid]),
                        lambda: harness.cpu_seconds([proc.pid]),
                    )
                )
                proxied.name = "gemini-breaker"
                runs.append(proxied)
    print(
        f"\n{args.streams} streams opened over {args.ramp:g} s, {args.chunks} events each "
        f"{args.interval:g} ms apart; delay = arrival - upstream's write stamp, for the "
        "events of the window in which every stream was open. Memory: the proxy's VmRSS.\n"
    )
    harness.table(
        ["target", "streams", "errors", "events seen", "delay p50 ms", "p99 ms", "max ms", "RSS"],
        [
            [
                r.name,
                r.opened,
                r.errors,
                len(r.delays_ms or []),
                pct(r.delays_ms or [], 50),
                pct(r.delays_ms or [], 99),
                max(r.delays_ms or [float("nan")]),
                f"{r.peak_rss / 2**20:.0f} MiB" if r.peak_rss else "-",
            ]
            for r in runs
        ],
    )
    proxied, direct = runs[-1], runs[0]
    added99 = pct(proxied.delays_ms or [], 99) - pct(direct.delays_ms or [], 99)
    print(f"\nproxy idle RSS before the streams: {idle_rss / 2**20:.0f} MiB")
    print(f"every stream's first event arrived {proxied.late_open:.2f} s after the ramp")
    if proxied.window_events:
        print(
            "proxy CPU per relayed event while every stream was open: "
            f"{proxied.window_cpu / proxied.window_events * 1e6:.0f} us "
            f"({proxied.window_cpu:.1f} s for {proxied.window_events} events)"
        )
    print("\nTargets (5,000 concurrent streams, one process):")
    harness.table(
        ["figure", "measured", "target", ""],
        [
            [
                "resident memory",
                f"{proxied.peak_rss / 2**20:.0f} MiB",
                "< 1024 MiB",
                "met" if 0 < proxied.peak_rss < 2**30 else "NOT met",
            ],
            [
                "per-chunk delay p99 (through the proxy)",
                pct(proxied.delays_ms or [], 99),
                "<= 5 ms",
                "met" if pct(proxied.delays_ms or [], 99) <= 5 else "NOT met",
            ],
            ["  of which added (p99 proxy - p99 direct)", added99, "report", "-"],
            [
                "streams completed",
                f"{proxied.opened - proxied.errors}/{args.streams}",
                "all",
                "met" if proxied.opened - proxied.errors == args.streams else "NOT met",
            ],
        ],
    )


if __name__ == "__main__":
    main()
