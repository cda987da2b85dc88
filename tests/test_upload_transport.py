"""Upload chunks through the real proxy to a raw loopback upstream: they keep the length the
client declared, they are bounded by the request's deadline, and a client that leaves
cancels the upstream call."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from proxy.app import create_app

from .conftest import proxy_settings
from .support import serve

UPLOAD = "/upload/v1beta/files?upload_id=abc&upload_protocol=resumable"
CHUNK = b"x" * 300_000
ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class RawUpstream:
    """A loopback server in its own thread: records each request's head and body; answers
    them (``answer``) or never does, noting when the proxy closes the connection."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.closed = threading.Event()
        self.received = threading.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            length = next(
                int(line.split(b":")[1])
                for line in head.lower().split(b"\r\n")
                if line.startswith(b"content-length:")
            )
            self.bodies.append(await reader.readexactly(length))
            self.received.set()
            if self.answer:
                writer.write(ANSWER)
                await writer.drain()
            await reader.read()  # until the proxy closes the connection
        except (asyncio.IncompleteReadError, ConnectionError, StopIteration):
            pass
        finally:
            self.closed.set()
            writer.close()


@contextmanager
def raw_upstream(answer: bool) -> Iterator[tuple[str, RawUpstream]]:
    upstream = RawUpstream(answer)
    loop = asyncio.new_event_loop()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    ready = threading.Event()
    stop: asyncio.Future[None] = loop.create_future()

    async def main() -> None:
        async with await asyncio.start_server(upstream.handle, sock=sock):
            ready.set()
            await stop

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield f"http://127.0.0.1:{port}", upstream
    finally:
        loop.call_soon_threadsafe(stop.set_result, None)
        thread.join(10)
        loop.close()


def test_an_upload_chunk_keeps_its_declared_length() -> None:
    with (
        raw_upstream(answer=True) as (upstream_url, upstream),
        serve(create_app(proxy_settings(upstream_url))) as url,
    ):
        response = httpx.post(
            url + UPLOAD,
            content=CHUNK,
            headers={
                "x-goog-api-key": "k",
                "x-goog-upload-command": "upload, finalize",
                "x-goog-upload-offset": "0",
            },
        )
    assert response.status_code == 200
    head = upstream.heads[0].lower()
    assert f"content-length: {len(CHUNK)}\r\n".encode() in head
    assert b"transfer-encoding" not in head
    assert upstream.bodies == [CHUNK]


def test_an_upload_is_bounded_by_the_requests_deadline() -> None:
    with raw_upstream(answer=False) as (upstream_url, upstream):
        settings = proxy_settings(upstream_url, server={"request_deadline": 1})
        with serve(create_app(settings)) as url:
            response = httpx.post(
                url + UPLOAD, content=CHUNK, headers={"x-goog-api-key": "k"}, timeout=30
            )
    assert response.status_code == 504
    assert "deadline" in response.json()["error"]["message"]
    assert upstream.closed.is_set()


def test_a_client_that_leaves_an_upload_cancels_the_upstream_call() -> None:
    with (
        raw_upstream(answer=False) as (upstream_url, upstream),
        serve(create_app(proxy_settings(upstream_url))) as url,
    ):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(
                b"POST " + UPLOAD.encode() + b" HTTP/1.1\r\nhost: x\r\n"
                b"x-goog-api-key: k\r\ncontent-length: %d\r\n\r\n" % len(CHUNK) + CHUNK
            )
            assert upstream.received.wait(10)  # the whole chunk reached the upstream
        # The client left before any answer: the proxy closes its upstream call.
        assert upstream.closed.wait(10), "the upstream call was not cancelled"
