"""CPU per request of the upstream clients considered: httpx, aiohttp and the proxy's own.

Each sends the proxy's unary request to the canned upstream (bench/fast_upstream.py on core 0)
from this process (on core 1, uvloop), with ``--in-flight`` requests at a time, the body read
raw and the response closed, as the proxy does; the figure is this process's CPU time per
request. This is the measurement behind the proxy's move from httpx to aiohttp and then to
its own client (proxy/transport/http_client.py). aiohttp is no longer a dependency: it is
measured when installed (``pip install aiohttp``).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import harness
import httpx
import uvloop
from harness import BODY, UNARY

from proxy.config import ModelSettings, UpstreamSettings
from proxy.transport.upstream import Upstream

HEADERS = [("content-type", "application/json"), ("x-goog-api-key", "bench-key")]


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def per_request(one: Callable[[], Awaitable[None]], in_flight: int, count: int) -> float:
    for _ in range(200):  # warm up
        await one()
    before = cpu()

    async def worker() -> None:
        for _ in range(count // in_flight):
            await one()

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return (cpu() - before) / (count // in_flight * in_flight) * 1e6


async def with_httpx(url: str, in_flight: int, count: int) -> float:
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=128)
    async with httpx.AsyncClient(limits=limits, trust_env=False) as client:

        async def one() -> None:
            request = client.build_request("POST", url, headers=HEADERS, content=BODY)
            response = await client.send(request, stream=True)
            async for _ in response.aiter_raw():
                pass
            await response.aclose()

        return await per_request(one, in_flight, count)


async def with_own(url: str, in_flight: int, count: int) -> float:
    settings = UpstreamSettings(base_url=url.removesuffix(UNARY))
    limits = ModelSettings()
    headers = [(k.encode(), v.encode()) for k, v in HEADERS]
    async with Upstream.create_client(settings) as pool:
        upstream = Upstream(settings, pool)

        async def one() -> None:
            response = await upstream.open("POST", UNARY, b"", headers, BODY, limits)
            async for _ in upstream.iter_body(response, limits):
                pass
            await response.aclose()

        return await per_request(one, in_flight, count)


async def with_aiohttp(url: str, in_flight: int, count: int) -> float:
    import aiohttp  # optional: see the docstring
    from yarl import URL

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=512),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    ) as session:

        async def one() -> None:
            response = await session.request(
                "POST", URL(url, encoded=True), headers=HEADERS, data=BODY
            )
            while await response.content.readany():
                pass
            response.release()

        return await per_request(one, in_flight, count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    harness.pin_self(harness.SERVER_CPU)
    rows: list[list[object]] = []
    with (
        tempfile.TemporaryDirectory(prefix="gb-clients-") as tmp,
        harness.fast_upstream(Path(tmp)) as upstream,
    ):
        for name, run in (("httpx", with_httpx), ("aiohttp", with_aiohttp), ("own", with_own)):
            try:
                figure: object = uvloop.run(run(upstream + UNARY, args.in_flight, args.requests))
            except ModuleNotFoundError as exc:
                figure = f"not installed ({exc.name})"
            rows.append([name, figure])
    print(f"\n{args.requests} requests, {args.in_flight} in flight; CPU of the client process.\n")
    harness.table(["client", "CPU us/request"], rows)


if __name__ == "__main__":
    main()
