"""The upstream client against a real loopback server: what goes upstream, and how the waits
for a response body are bounded (an upstream's silence fails it; a slow client does not)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from proxy.config import ModelSettings, UpstreamSettings
from proxy.upstream import Upstream, UpstreamBodyError

PATH = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@asynccontextmanager
async def upstream_serving(handler: Handler) -> AsyncIterator[Upstream]:
    """A raw HTTP server on a free loopback port answering with ``handler``, and the
    proxy's upstream client pointed at it."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = UpstreamSettings(base_url=f"http://127.0.0.1:{port}")
    try:
        async with Upstream.create_client(settings) as client:
            yield Upstream(settings, client)
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> dict[bytes, bytes]:
    """The request's headers (lowercase names); its body is read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    headers = dict(
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:] if line)
    )
    await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return headers


def limits(stall: float) -> ModelSettings:
    return dataclasses.replace(ModelSettings(), stall_timeout=stall)


def test_only_the_clients_headers_go_upstream() -> None:
    seen: list[dict[bytes, bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    async def run() -> bytes:
        async with upstream_serving(handler) as upstream:
            response = await upstream.open(
                "POST",
                PATH,
                b"alt=sse&key=%2Fa",
                [(b"x-goog-api-key", b"k"), (b"x-custom", b"1")],
                b'{"contents": []}',
                ModelSettings(),
            )
            try:
                return await response.aread()
            finally:
                await response.aclose()

    assert asyncio.run(run()) == b"{}"
    # No User-Agent, Accept, Accept-Encoding or Content-Type of the client library's own.
    assert set(seen[0]) == {b"host", b"content-length", b"x-goog-api-key", b"x-custom"}


def test_an_upstream_silent_past_the_stall_timeout_fails_the_body() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(HEAD + chunk(b"data: {}\r\n\r\n"))
        await writer.drain()
        await reader.read()  # silent until the client gives up and closes

    async def run() -> list[bytes]:
        got: list[bytes] = []
        async with upstream_serving(handler) as upstream:
            response = await upstream.open("POST", PATH, b"", [], b"{}", limits(0.2))
            try:
                async for part in upstream.iter_body(response, limits(0.2)):
                    got.append(part)
            finally:
                await response.aclose()
        return got

    with pytest.raises(UpstreamBodyError, match=r"stalled for 0\.2 s"):
        asyncio.run(run())


def test_a_slow_client_is_not_an_upstream_stall() -> None:
    """Time the consumer spends between chunks (a slow client) is not the upstream's."""
    parts = [b"data: {%d}\r\n\r\n" % i for i in range(3)]

    async def run() -> list[bytes]:
        asked: asyncio.Queue[None] = asyncio.Queue()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(HEAD)
            for part in parts:
                await asked.get()  # the next chunk goes out as soon as the client wants it
                writer.write(chunk(part))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()

        got: list[bytes] = []
        async with upstream_serving(handler) as upstream:
            response = await upstream.open("POST", PATH, b"", [], b"{}", limits(0.1))
            asked.put_nowait(None)
            try:
                async for part in upstream.iter_body(response, limits(0.1)):
                    got.append(part)
                    await asyncio.sleep(0.3)  # the slow client: three stall timeouts per chunk
                    asked.put_nowait(None)
            finally:
                await response.aclose()
        return got

    assert b"".join(asyncio.run(run())) == b"".join(parts)


def test_the_request_deadline_cuts_a_body_short() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(HEAD + chunk(b"data: {}\r\n\r\n"))
        await writer.drain()
        await reader.read()

    async def run() -> None:
        async with upstream_serving(handler) as upstream:
            response = await upstream.open("POST", PATH, b"", [], b"{}", limits(60))
            deadline = asyncio.get_running_loop().time() + 0.2
            try:
                async for _ in upstream.iter_body(response, limits(60), deadline):
                    pass
            finally:
                await response.aclose()

    with pytest.raises(UpstreamBodyError, match="deadline passed") as caught:
        asyncio.run(run())
    assert caught.value.status == 504


def test_a_cancelled_reader_is_cancelled_not_failed() -> None:
    """A client's disconnect cancels the read: that must stay a cancellation, never turn
    into an upstream failure (which would count against the model's breaker)."""

    async def run() -> None:
        started = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(HEAD + chunk(b"data: {}\r\n\r\n"))
            await writer.drain()
            await reader.read()

        async with upstream_serving(handler) as upstream:
            response = await upstream.open("POST", PATH, b"", [], b"{}", limits(0.05))

            async def read() -> None:
                async for _ in upstream.iter_body(response, limits(30)):
                    started.set()

            task = asyncio.create_task(read())
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await response.aclose()

    asyncio.run(run())
