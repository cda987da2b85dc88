"""The upstream client against a real loopback server: what goes upstream, and how the waits
for a response body are bounded (an upstream's silence fails it; a slow client does not)."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from proxy.config import ModelSettings, UpstreamSettings
from proxy.transport.upstream import (
    Upstream,
    UpstreamBodyError,
    UpstreamBusy,
    UpstreamTimeout,
    UpstreamUnreachable,
)

from .redis_topologies import make_tls_files

PATH = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@asynccontextmanager
async def upstream_serving(handler: Handler, **settings: Any) -> AsyncIterator[Upstream]:
    """A raw HTTP server on a free loopback port answering with ``handler``, and the
    proxy's upstream client pointed at it (``settings``: more ``UpstreamSettings``)."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    upstream_settings = UpstreamSettings(base_url=f"http://127.0.0.1:{port}", **settings)
    try:
        async with Upstream.create_client(upstream_settings) as pool:
            yield Upstream(upstream_settings, pool)
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


# -- the connection pool ----------------------------------------------------------------------


class Recorder:
    """A raw upstream that answers every request with ``answer`` and records each
    connection's requests (their heads and bodies, as received)."""

    def __init__(self, answer: bytes = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}") -> None:
        self.answer = answer
        self.connections: list[list[tuple[bytes, bytes]]] = []
        self.closed = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests: list[tuple[bytes, bytes]] = []
        self.connections.append(requests)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                requests.append((head, await read_body(reader, head)))
                writer.write(self.answer)
                await writer.drain()
        finally:
            self.closed += 1
            writer.close()


async def read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readexactly(2)
        return b"".join(parts)
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return await reader.readexactly(int(line.split(b":")[1]))
    return b""


async def fetch(upstream: Upstream, body: bytes | AsyncIterable[bytes] = b"{}") -> bytes:
    response = await upstream.open("POST", PATH, b"", [], body, ModelSettings())
    try:
        return await response.aread()
    finally:
        await response.aclose()


def test_requests_reuse_one_kept_alive_connection() -> None:
    recorder = Recorder()

    async def run() -> None:
        async with upstream_serving(recorder) as upstream:
            for _ in range(3):
                assert await fetch(upstream) == b"{}"
            heads = [head for head, _ in recorder.connections[0]]
            assert len(recorder.connections) == 1 and len(heads) == 3
            netloc = upstream.base_url.removeprefix("http://")
            assert heads[0].startswith(f"POST {PATH} HTTP/1.1\r\nhost: {netloc}\r\n".encode())

    asyncio.run(run())


def test_a_connection_the_upstream_closes_is_not_reused() -> None:
    recorder = Recorder(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}")

    async def run() -> None:
        async with upstream_serving(recorder) as upstream:
            assert [await fetch(upstream) for _ in range(2)] == [b"{}", b"{}"]
            assert [len(requests) for requests in recorder.connections] == [1, 1]

    asyncio.run(run())


def test_an_idle_connection_closed_by_the_upstream_is_replaced_not_failed() -> None:
    """An upstream drops idle keep-alive connections when it likes (Google does): the next
    request takes a new connection instead of failing on the dead one, also when the close
    arrived but the event loop has not handled it yet."""

    async def run() -> None:
        gone = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            await read_body(reader, head)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            await writer.drain()
            writer.close()  # the idle timeout of an upstream, right after the answer
            await writer.wait_closed()
            gone.set()

        async with upstream_serving(handler) as upstream:
            assert await fetch(upstream) == b"{}"
            await gone.wait()
            assert await fetch(upstream) == b"{}"

    asyncio.run(run())


def test_idle_connections_beyond_the_keepalive_cap_are_closed() -> None:
    recorder = Recorder()

    async def run() -> None:
        async with upstream_serving(recorder, max_keepalive_connections=1) as upstream:
            assert await asyncio.gather(*(fetch(upstream) for _ in range(3))) == [b"{}"] * 3
            assert len(recorder.connections) == 3
            # Two of the three are closed as they come back; the closes reach the server.
            for _ in range(100):
                if recorder.closed == 2:
                    break
                await asyncio.sleep(0.01)
            assert recorder.closed == 2
            assert await fetch(upstream) == b"{}"
            assert len(recorder.connections) == 3  # the kept one served it

    asyncio.run(run())


def test_a_full_pool_answers_busy_within_the_connect_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(HEAD + chunk(b"data: {}\r\n\r\n"))  # a stream that stays open
        await writer.drain()
        await reader.read()

    async def run() -> None:
        async with upstream_serving(handler, max_connections=1) as upstream:
            held = await upstream.open("POST", PATH, b"", [], b"{}", ModelSettings())
            quick = dataclasses.replace(ModelSettings(), connect_timeout=0.1)
            with pytest.raises(UpstreamBusy, match="pool is exhausted"):
                await upstream.open("POST", PATH, b"", [], b"{}", quick)
            await held.aclose()  # an unfinished body closes its connection: room again
            second = await upstream.open("POST", PATH, b"", [], b"{}", quick)
            await second.aclose()

    asyncio.run(run())


def test_an_upload_of_unknown_length_goes_up_chunked() -> None:
    recorder = Recorder()
    parts = [b"a" * 70_000, b"", b"b" * 10, b"c" * 300_000]

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    async def run() -> None:
        async with upstream_serving(recorder) as upstream:
            assert await fetch(upstream, body()) == b"{}"
            assert await fetch(upstream, b"after") == b"{}"  # the connection is still good
        [(first_head, first_body), (_, second_body)] = recorder.connections[0]
        assert b"transfer-encoding: chunked" in first_head
        assert first_body == b"".join(parts) and second_body == b"after"

    asyncio.run(run())


def test_a_large_body_is_read_whole_under_backpressure() -> None:
    """A body larger than the read buffer's high-water mark pauses the socket while unread and
    arrives intact."""
    payload = bytes(range(256)) * 8192  # 2 MiB

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(payload) + payload)
        await writer.drain()
        await reader.read()

    async def run() -> bytes:
        async with upstream_serving(handler) as upstream:
            response = await upstream.open("POST", PATH, b"", [], b"{}", ModelSettings())
            await asyncio.sleep(0.05)  # let the socket fill the buffer past its mark
            try:
                return await response.aread()
            finally:
                await response.aclose()

    assert asyncio.run(run()) == payload


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}",  # cut short
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",  # bad framing
    ],
    ids=["cut", "garbled"],
)
def test_a_broken_body_fails_the_read(answer: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()
        writer.close()

    async def run() -> None:
        async with upstream_serving(handler) as upstream:
            response = await upstream.open("POST", PATH, b"", [], b"{}", ModelSettings())
            try:
                async for _ in upstream.iter_body(response, ModelSettings()):
                    pass
            finally:
                await response.aclose()

    with pytest.raises(UpstreamBodyError, match="broke off"):
        asyncio.run(run())


def test_no_answer_at_all_is_unreachable_and_garbage_is_too() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()
        await reader.read()

    async def run(handler: Handler) -> None:
        async with upstream_serving(handler) as upstream:
            await upstream.open("POST", PATH, b"", [], b"{}", ModelSettings())

    for handler in (hang_up, garbage):
        with pytest.raises(UpstreamUnreachable, match="unreachable: ReadError"):
            asyncio.run(run(handler))


def test_a_silent_upstream_times_out_at_the_headers_deadline() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()

    async def run() -> None:
        async with upstream_serving(handler) as upstream:
            quick = dataclasses.replace(ModelSettings(), headers_timeout=0.1)
            await upstream.open("POST", PATH, b"", [], b"{}", quick)

    with pytest.raises(UpstreamTimeout, match=r"no response within 0\.1 s"):
        asyncio.run(run())


def test_https_upstream_with_a_verified_certificate(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(files.server_cert, files.server_key)
    trusting = ssl.create_default_context(cafile=str(files.ca))

    async def run(client_context: ssl.SSLContext | None) -> bytes:
        recorder = Recorder()
        server = await asyncio.start_server(recorder, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        settings = UpstreamSettings(base_url=f"https://localhost:{port}")
        try:
            async with Upstream.create_client(settings, client_context) as pool:
                return await fetch(Upstream(settings, pool))
        finally:
            server.close()

    assert asyncio.run(run(trusting)) == b"{}"
    # The system's trust store does not know the test CA: the handshake is refused.
    with pytest.raises(UpstreamUnreachable, match="certificate verify failed"):
        asyncio.run(run(None))
