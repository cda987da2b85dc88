"""Keep-alive done right, against raw loopback servers: a request that a reused connection
lost before any answer byte goes once more on a new connection (when it may be sent twice);
what follows a complete response is never read as the next one; connections the upstream
said it would close are never reused; uploads keep their declared length."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from proxy.config import ModelSettings
from proxy.transport.upstream import StreamedBody, Upstream, UpstreamUnreachable

from .test_upstream_client import PATH, read_body, upstream_serving

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"


class Recycler:
    """Answers the first request of each connection, then closes the connection when the
    next request arrives on it, unread (the close crossed that request on the wire)."""

    def __init__(self, first: bytes = OK) -> None:
        self.first = first
        self.connections = 0
        self.answered = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            await read_body(reader, head)
            writer.write(self.first)
            self.answered += 1
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")  # the next request: not answered
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.transport.abort()


async def call(upstream: Upstream, method: str = "POST", path: str = PATH) -> bytes:
    response = await upstream.open(
        method, path, b"", [], b"{}" if method == "POST" else b"", ModelSettings()
    )
    try:
        return await response.aread()
    finally:
        await response.aclose()


def test_a_request_lost_on_a_reused_connection_goes_again_on_a_new_one() -> None:
    recycler = Recycler()

    async def run() -> tuple[list[bytes], int]:
        async with upstream_serving(recycler) as upstream:
            answers = [await call(upstream)]
            answers.append(await call(upstream))  # the pooled connection is closed under it
            answers.append(await call(upstream, "GET", "/v1beta/models"))
            return answers, upstream.stale_retries

    answers, retries = asyncio.run(run())
    assert answers == [b"{}", b"{}", b"{}"]
    assert retries == 2
    assert recycler.connections == 3  # each resent request opened the next one
    assert recycler.answered == 3


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1beta/files"), ("PATCH", "/v1beta/cachedContents/c1")],
)
def test_a_request_that_may_not_go_twice_is_not_resent(method: str, path: str) -> None:
    recycler = Recycler()

    async def run() -> None:
        async with upstream_serving(recycler) as upstream:
            await call(upstream)
            await call(upstream, method, path)

    with pytest.raises(UpstreamUnreachable, match="ReadError"):
        asyncio.run(run())
    assert recycler.connections == 1


def test_a_new_connections_failure_is_not_resent() -> None:
    connections = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()

    async def run() -> None:
        async with upstream_serving(hang_up) as upstream:
            await call(upstream)

    with pytest.raises(UpstreamUnreachable):
        asyncio.run(run())
    assert connections == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}",
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n{}",
    ],
    ids=["connection-close", "http-1.0"],
)
def test_a_connection_the_upstream_will_close_is_not_pooled(answer: bytes) -> None:
    # The server keeps the connection open and would answer on it again: only the answer's
    # own framing says not to reuse it.
    connections: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(0)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                await read_body(reader, head)
                connections[-1] += 1
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def run() -> None:
        async with upstream_serving(handler) as upstream:
            for _ in range(3):
                assert await call(upstream) == b"{}"

    asyncio.run(run())
    assert connections == [1, 1, 1]


def test_bytes_after_a_complete_response_are_never_the_next_response() -> None:
    # Each connection's first answer comes with a second, unasked-for one in the same write,
    # and the later ones with stray bytes after the first answer was read.
    smuggled = b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nsmuggled!"
    connections = 0
    late = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                await read_body(reader, head)
                if connections == 1:
                    writer.write(OK + smuggled)
                else:
                    writer.write(OK)
                    await writer.drain()
                    writer.write(b"garbage")
                    await writer.drain()
                    late.set()
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def run() -> list[bytes]:
        async with upstream_serving(handler) as upstream:
            answers = [await call(upstream), await call(upstream)]
            response = await upstream.open("POST", PATH, b"", [], b"{}", ModelSettings())
            answers.append(await response.aread())
            await late.wait()  # the stray bytes were sent before the answer is released
            await response.aclose()
            answers.append(await call(upstream))
            return answers

    assert asyncio.run(run()) == [b"{}"] * 4
    # Never reused after stray bytes: the first connection, then one per answer.
    assert connections == 4


def test_an_upload_keeps_its_declared_length() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        seen.append(await read_body(reader, head))
        writer.write(OK)
        await writer.drain()
        writer.close()

    async def parts() -> AsyncIterator[bytes]:
        for part in (b"abc", b"", b"defg"):
            yield part

    async def run() -> bytes:
        async with upstream_serving(handler) as upstream:
            deadline = asyncio.get_running_loop().time() + 30
            body = StreamedBody(parts(), 7, deadline)
            response = await upstream.open(
                "POST", "/upload/v1beta/files", b"upload_id=1", [], body, ModelSettings()
            )
            try:
                return await response.aread()
            finally:
                await response.aclose()

    assert asyncio.run(run()) == b"{}"
    head, body = seen
    assert b"content-length: 7\r\n" in head.lower()
    assert b"transfer-encoding" not in head.lower()
    assert body == b"abcdefg"
