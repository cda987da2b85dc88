"""A poison request in a loop: does one client's bad request open breakers for everyone?

Starts a private redis-server, the simulator and two proxy replicas (``--replicas``) as
separate processes on 127.0.0.1 (bench/cluster.py's harness), then sends a request the
simulator fails with 500 on every model, every time (its poison marker), ``--requests`` times
from one API key with ``--concurrency`` in flight, while another key sends ordinary requests
one after another. Prints the breakers opened, the upstream attempts per poison request, how
the poison client was answered, and the other key's errors and fallbacks. Asserts nothing.
Run with ``python bench/poison.py``; takes a few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from cluster import heading, report_logs, start_cluster, table

from proxy.simulator.content import POISON_MARKER

PRO, FLASH, LITE = "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"
CHAIN = [PRO, FLASH, LITE]
GENERATE = f"/v1beta/models/{PRO}:generateContent"
POISON = json.dumps({"contents": [{"parts": [{"text": f"{POISON_MARKER} 2 + 2?"}]}]}).encode()


def ordinary(n: int) -> bytes:
    return json.dumps({"contents": [{"parts": [{"text": f"question {n}"}]}]}).encode()


def headers(key: str) -> dict[str, str]:
    return {"x-goog-api-key": key, "content-type": "application/json"}


async def other_key(
    client: httpx.AsyncClient,
    replicas: list[str],
    warm: asyncio.Event,
    stop: asyncio.Event,
    out: Counter[str],
) -> None:
    """Ordinary requests of another key until ``stop``: counts by (model, fallbacks) or error;
    ``warm`` is set after the first 20."""
    for n, url in zip(itertools.count(), itertools.cycle(replicas)):
        if stop.is_set():
            return
        if n == 20:
            warm.set()
        try:
            response = await client.post(url + GENERATE, content=ordinary(n), headers=headers("a"))
        except httpx.HTTPError as exc:
            out[f"error {type(exc).__name__}"] += 1
            continue
        if response.status_code != 200:
            out[f"error {response.status_code}"] += 1
        else:
            model = response.headers["x-gemini-breaker-model"]
            out[f"{model} (fallbacks {response.headers['x-gemini-breaker-fallbacks']})"] += 1


async def poison_loop(
    client: httpx.AsyncClient, replicas: list[str], count: int, concurrency: int
) -> tuple[Counter[int], list[float]]:
    """The poison request ``count`` times: the statuses it got, and each one's seconds."""
    statuses: Counter[int] = Counter()
    seconds: list[float] = []
    turns = iter(range(count))

    async def worker(url: str) -> None:
        for _ in turns:
            started = time.perf_counter()
            response = await client.post(url + GENERATE, content=POISON, headers=headers("p"))
            seconds.append(time.perf_counter() - started)
            statuses[response.status_code] += 1

    await asyncio.gather(*(worker(replicas[n % len(replicas)]) for n in range(concurrency)))
    return statuses, seconds


async def run(replicas: list[str], sim_url: str, args: argparse.Namespace) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        await client.delete(sim_url + "/_sim/attempts")
        served: Counter[str] = Counter()
        warm, stop = asyncio.Event(), asyncio.Event()
        background = asyncio.create_task(other_key(client, replicas, warm, stop, served))
        await warm.wait()  # the other key is being served before the loop starts
        started = time.perf_counter()
        statuses, seconds = await poison_loop(client, replicas, args.requests, args.concurrency)
        elapsed = time.perf_counter() - started
        stop.set()
        await background
        await asyncio.sleep(0.5)  # a few flush intervals: whatever counted has reached Redis
        states = [(await client.get(url + "/admin/state")).json() for url in replicas]
        attempts = (await client.get(sim_url + "/_sim/attempts")).json()
    poison_attempts = sum(1 for a in attempts if a["fault"] == "poison")
    opened = {t["model"] for s in states for t in s["transitions"] if t["to"] == "open"}
    heading(
        f"Poison loop: {args.requests} requests, {args.concurrency} in flight, "
        f"{len(replicas)} replicas, {elapsed:.1f} s"
    )
    rows: list[list[object]] = [
        ["breakers opened", len(opened)],
        *[
            [
                f"{model}: state / failures in window",
                f"{s['breakers'][model]['state']} / "
                f"{max(x['breakers'][model]['failures'] for x in states)}",
            ]
            for model in CHAIN
            for s in states[:1]
        ],
        ["upstream attempts per poison request", f"{poison_attempts / args.requests:.3f}"],
        ["poison answers", ", ".join(f"{code}: {n}" for code, n in sorted(statuses.items()))],
        [
            "poison answer p50 / p99 (ms)",
            f"{statistics.median(seconds) * 1000:.1f} / "
            f"{sorted(seconds)[int(len(seconds) * 0.99) - 1] * 1000:.1f}",
        ],
        ["other key's requests", sum(served.values())],
        ["other key's errors", sum(n for k, n in served.items() if k.startswith("error"))],
        *[[f"other key served by {k}", n] for k, n in sorted(served.items())],
    ]
    table(["figure", "value"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args()
    extra = {
        "routes": {PRO: CHAIN},
        "model_defaults": {"max_attempts": 2, "backoff_initial": 0.01, "backoff_max": 0.02},
    }
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        cluster = start_cluster(stack, Path(tmp), extra, replica_count=args.replicas)
        try:
            asyncio.run(run(cluster.replicas, cluster.sim_url, args))
        finally:
            report_logs(cluster.logs)


if __name__ == "__main__":
    main()
