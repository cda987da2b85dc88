"""What the proxy adds: the same load sent directly to the simulator and through the proxy.

Starts the simulator and the proxy as separate processes (the way they run in production),
then, for unary and streaming calls, measures latency one request at a time (added latency
p50/p99, and time to first byte for streams) and throughput with many requests in flight.
Prints a table; asserts nothing. Run with ``make bench`` or ``python bench/overhead.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

BODY = (
    b'{"contents": [{"parts": [{"text": "Say something about circuit breakers"}], "role": "user"}]}'
)
UNARY = "/v1beta/models/gemini-2.5-flash:generateContent"
STREAM = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
HEADERS = {"x-goog-api-key": "bench-key", "content-type": "application/json"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def process(args: list[str], url: str, env: dict[str, str], cpu: int | None) -> Iterator[None]:
    """Run ``python -m proxy ARGS`` (pinned to one CPU when asked) until the block ends."""
    command = [sys.executable, "-m", "proxy", *args]
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        command = ["taskset", "-c", str(cpu), *command]
    proc = subprocess.Popen(
        command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{args[0]} did not start: {proc.stderr.read()!r}")  # type: ignore[union-attr]
            time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass
class Sample:
    total: float
    first_byte: float


async def one(client: httpx.AsyncClient, url: str) -> Sample:
    started = time.perf_counter()
    first = 0.0
    async with client.stream("POST", url, content=BODY, headers=HEADERS) as response:
        async for _ in response.aiter_raw():
            if not first:
                first = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}")
    return Sample(time.perf_counter() - started, first)


async def sequential(base: str, path: str, count: int) -> list[Sample]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for _ in range(min(50, count)):  # warm up connections and code paths
            await one(client, path)
        return [await one(client, path) for _ in range(count)]


async def throughput(base: str, path: str, concurrency: int, seconds: float) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        done = 0
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                await one(client, path)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - started)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="sequential requests per case")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0, help="throughput run length")
    args = parser.parse_args()

    sim_port, proxy_port = free_port(), free_port()
    sim, proxy = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{proxy_port}"
    quiet = {"GEMINI_BREAKER_CONFIG": ""}
    with (
        process(
            ["simulate", "--port", str(sim_port), "--log-level", "warning"],
            sim + "/_sim/healthz",
            quiet,
            cpu=0,
        ),
        process(
            ["serve", "--port", str(proxy_port), "--log-level", "warning"],
            proxy + "/healthz",
            {**quiet, "GEMINI_BREAKER_UPSTREAM_URL": sim},
            cpu=1,
        ),
    ):
        rows = []
        for name, path in (("unary", UNARY), ("stream", STREAM)):
            direct = asyncio.run(sequential(sim, path, args.requests))
            proxied = asyncio.run(sequential(proxy, path, args.requests))
            rps_direct = asyncio.run(throughput(sim, path, args.concurrency, args.seconds))
            rps_proxied = asyncio.run(throughput(proxy, path, args.concurrency, args.seconds))
            d_total = [s.total for s in direct]
            p_total = [s.total for s in proxied]
            d_first = [s.first_byte for s in direct]
            p_first = [s.first_byte for s in proxied]
            rows.append(
                (
                    name,
                    pct(d_total, 50),
                    pct(p_total, 50),
                    pct(p_total, 50) - pct(d_total, 50),
                    pct(d_total, 99),
                    pct(p_total, 99),
                    pct(p_total, 99) - pct(d_total, 99),
                    pct(p_first, 50) - pct(d_first, 50),
                    rps_direct,
                    rps_proxied,
                )
            )
    print(
        f"\n{args.requests} sequential requests per case; throughput: {args.concurrency} "
        f"in flight for {args.seconds:g} s. Latencies in ms.\n"
    )
    header = (
        "call",
        "p50 direct",
        "p50 proxy",
        "added p50",
        "p99 direct",
        "p99 proxy",
        "added p99",
        "added TTFB p50",
        "rps direct",
        "rps proxy",
    )
    print(" | ".join(f"{h:>10}" for h in header))
    print("-" * (13 * len(header)))
    for row in rows:
        print(" | ".join(f"{v:>10}" if isinstance(v, str) else f"{v:>10.2f}" for v in row))


if __name__ == "__main__":
    main()
