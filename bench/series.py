"""What the cluster series costs Redis: commands and memory per replica per minute.

Starts a private redis-server (bench/harness.py; the shared one is never touched) and runs
``--replicas`` coordinators' series path as the proxy does: each replica's request path
counts into its ``SeriesTallies`` (here a synthetic mix at ``--rate`` requests/s per replica:
both models serving, fallbacks, 5xx, sheds, every latency bucket, so every kind of field is
present: the worst case for memory), and once per heartbeat (``redis.reconcile_interval``, 1 s)
``Coordinator.send_tallies`` adds them to the series. Runs ``--seconds`` of real time (the
buckets follow Redis's clock), then prints the ``INFO commandstats`` deltas and the
``MEMORY USAGE`` of the series' keys. Asserts nothing.

Run with ``python bench/series.py`` (``--help`` for the knobs); about 40 s.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from harness import private_redis
from redis.asyncio import Redis

from proxy.cluster.coordinator import Coordinator
from proxy.config_load import build_settings
from proxy.telemetry.tallies import LATENCY_BOUNDS, SeriesTallies

PRO, FLASH, LITE = "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"
ROUTES = {PRO: [PRO, FLASH, LITE]}


async def commandstats(client: Redis) -> Counter[str]:
    info: dict[str, Any] = await client.info("commandstats")
    return Counter(
        {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in info.items()}
    )


def one_second_of_requests(tallies: SeriesTallies, rate: int, rng: random.Random) -> None:
    """A mix with every kind of field in it."""
    for _ in range(rate):
        served = rng.choice((PRO, FLASH))
        status = rng.choices((200, 429, 503, 400), weights=(90, 5, 3, 2))[0]
        tallies.request(PRO, served if status == 200 else None, status, rng.uniform(0, 70))
        tallies.add("", served, "attempts")
        if served == FLASH:
            tallies.add(PRO, FLASH, "fallbacks")
        if status == 429:
            tallies.add("", served, "shed")


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as workdir, private_redis(Path(workdir)) as url:
        settings = build_settings(
            {
                "routes": ROUTES,
                "redis": {"url": url},
                "admin": {"series_resolution": args.resolution, "series_window": args.window},
            }
        )
        client = Redis.from_url(url)
        replicas = []
        for i in range(args.replicas):
            coordinator = Coordinator(settings, client, embedded=False, replica=f"bench-{i}")
            tallies = SeriesTallies()
            tallies.know([PRO, FLASH, LITE])
            coordinator.sync.tallies = tallies
            replicas.append((coordinator, tallies))
        rng = random.Random(7)
        await client.info("commandstats")  # the client's own connection set up first
        before = await commandstats(client)
        used_before = int((await client.info("memory"))["used_memory"])
        for _ in range(args.seconds):
            for coordinator, tallies in replicas:
                one_second_of_requests(tallies, args.rate, rng)
                await coordinator.sync.send_tallies()
            await asyncio.sleep(settings.redis.reconcile_interval)
        delta = await commandstats(client) - before
        delta.pop("info", None)
        keys = [
            key async for key in client.scan_iter(match=replicas[0][0].keys.prefix + "series:*")
        ]
        sizes = [int(await client.memory_usage(key) or 0) for key in keys]
        fields = [int(await client.hlen(key)) for key in keys]
        used_after = int((await client.info("memory"))["used_memory"])
        await client.aclose()

    minutes = args.seconds / 60
    per_replica_minute = sum(delta.values()) / args.replicas / minutes
    calls = delta.get("evalsha", 0) + delta.get("eval", 0)
    print(
        f"{args.replicas} replicas, {args.rate} requests/s each, {args.seconds} s, "
        f"buckets of {args.resolution:g} s kept {args.window:g} s "
        f"({len(LATENCY_BOUNDS) + 1} latency buckets)"
    )
    print("\nRedis commands (INFO commandstats deltas, script calls and the commands inside):")
    for name, count in sorted(delta.items(), key=lambda item: -item[1]):
        print(f"  {name:12s} {count:7d}  {count / args.replicas / minutes:8.1f} per replica/min")
    print(f"  {'all':12s} {sum(delta.values()):7d}  {per_replica_minute:8.1f} per replica/min")
    print(f"  script calls (round trips): {calls / args.replicas / minutes:.1f} per replica/min")
    print("\nRedis memory of the series (MEMORY USAGE of each bucket):")
    print(f"  buckets {len(keys)}, fields per bucket {fields}, bytes per bucket {sizes}")
    full = max(sizes) if sizes else 0
    per_minute = full * 60 / args.resolution
    window_buckets = args.window / args.resolution
    print(
        f"  per minute of series (summed over replicas, so whatever their number): "
        f"{per_minute / 1024:.1f} KiB"
    )
    print(f"  whole window ({window_buckets:.0f} buckets): {full * window_buckets / 1024:.0f} KiB")
    print(f"  used_memory delta over the run: {(used_after - used_before) / 1024:.1f} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--rate", type=int, default=100, help="requests/s per replica")
    parser.add_argument("--seconds", type=int, default=40)
    parser.add_argument("--resolution", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=1800.0)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
