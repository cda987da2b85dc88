"""A scan of made-up model names: what it leaves in one proxy's /metrics and resident memory.

The simulator answers every generate call naming an unknown model with 404, as Google does.
After ``--warm-up`` such calls (every buffer and label set the scan uses exists afterwards),
``--requests`` more are sent, ``--concurrency`` at a time; the series on ``/metrics``, the
scrape's size and the proxy's VmRSS are read before and after. ``--source`` runs another
checkout's proxy (an older version, for comparison). Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import uuid
from pathlib import Path

import harness
import httpx

BODY = b'{"contents": [{"parts": [{"text": "hello"}]}]}'


async def scan(url: str, count: int, concurrency: int) -> list[int]:
    statuses: list[int] = []
    numbers = iter(range(count))
    async with httpx.AsyncClient(timeout=30) as client:

        async def worker() -> None:
            for _ in numbers:
                response = await client.post(
                    f"{url}/v1beta/models/scan-{uuid.uuid4().hex}:generateContent",
                    content=BODY,
                    headers={"x-goog-api-key": "k"},
                )
                statuses.append(response.status_code)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def scrape(url: str) -> tuple[int, int]:
    """(series, bytes) of one ``/metrics`` scrape."""
    body = httpx.get(f"{url}/metrics", timeout=30).text
    series = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
    return series, len(body.encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm-up", type=int, default=1_000)
    parser.add_argument("--requests", type=int, default=4_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--source", type=Path, default=harness.ROOT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = harness.free_port()
        simulate = [sys.executable, "-m", "proxy", "simulate", "--port", str(port)]
        with harness.started(simulate, port, "simulator", work, env=harness.clean_env()):
            upstream = f"http://127.0.0.1:{port}"
            with harness.proxy(work, upstream, source=args.source) as (url, proc):
                warm = asyncio.run(scan(url, args.warm_up, args.concurrency))
                series, size = scrape(url)
                rss = harness.resident_bytes([proc.pid])
                statuses = asyncio.run(scan(url, args.requests, args.concurrency))
                series_after, size_after = scrape(url)
                rss_after = harness.resident_bytes([proc.pid])
    answers = sorted(set(warm + statuses))
    print(f"{args.requests} generate calls naming random models (answers: {answers}),")
    print(f"after {args.warm_up} such calls, through {args.source}:")
    harness.table(
        ["", "before", "after", "growth"],
        [
            ["/metrics series", series, series_after, series_after - series],
            ["scrape (KiB)", size // 1024, size_after // 1024, (size_after - size) // 1024],
            [
                "VmRSS (MiB)",
                f"{rss / 2**20:.1f}",
                f"{rss_after / 2**20:.1f}",
                f"{(rss_after - rss) / 2**20:.2f}",
            ],
        ],
    )


if __name__ == "__main__":
    main()
