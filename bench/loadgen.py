"""A cheap HTTP/1.1 load generator: raw asyncio connections with keep-alive and httptools'
response parser, so the client costs little next to the proxy it measures.

``open_loop`` sends at a steady rate whatever the answers, and measures every latency from
the request's scheduled send time (so a stalled server cannot hide its queue: no coordinated
omission). ``StreamWatch`` holds many slow streams open and records, for every chunk, the
delay from the upstream's ``benchSentNs`` stamp to its arrival.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools


def request_bytes(url: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    host = urlsplit(url).netloc
    lines = [f"POST {path} HTTP/1.1", f"host: {host}", f"content-length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Result:
    started: float  # scheduled send time (perf_counter)
    first_byte: float = 0.0  # first body byte
    done: float = 0.0
    status: int = 0


class Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, on_chunk: ChunkSink | None = None) -> None:
        self.on_first_byte: Callable[[], None] | None = None
        """Called as an answer's first body byte arrives."""
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.result: Result | None = None
        self.finished: asyncio.Future[Result] | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.on_chunk = on_chunk

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(None)
        if self.finished is not None and not self.finished.done():
            self.finished.set_exception(ConnectionError("connection lost mid-answer"))

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def send(self, payload: bytes, result: Result) -> asyncio.Future[Result]:
        assert self.transport is not None
        self.result = result
        self.finished = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return self.finished

    # httptools callbacks
    def on_headers_complete(self) -> None:
        if self.result is not None:
            self.result.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        result = self.result
        if result is not None and not result.first_byte:
            result.first_byte = time.perf_counter()
            if self.on_first_byte is not None:
                self.on_first_byte()
        if self.on_chunk is not None:
            self.on_chunk(body)

    def on_message_complete(self) -> None:
        result, finished = self.result, self.finished
        if result is None or finished is None:
            return
        result.done = time.perf_counter()
        if not result.first_byte:
            result.first_byte = result.done
        self.result = self.finished = None
        if not self.parser.should_keep_alive() and self.transport is not None:
            self.transport.close()  # the server said "connection: close": open another
        if not finished.done():
            finished.set_result(result)


class ChunkSink:
    """Collects the per-chunk delay of stamped SSE events."""

    STAMP = re.compile(rb'"benchSentNs":(\d+)')

    def __init__(self) -> None:
        self.delays_ms: list[float] = []
        self.recording = False
        self.events = 0

    def __call__(self, body: bytes) -> None:
        now = time.monotonic_ns()
        for sent in self.STAMP.findall(body):
            self.events += 1
            if self.recording:
                self.delays_ms.append((now - int(sent)) / 1e6)


async def connect(url: str, on_chunk: ChunkSink | None = None) -> Connection:
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(
        lambda: Connection(on_chunk), parts.hostname, parts.port
    )
    return protocol


@dataclass
class OpenLoop:
    results: list[Result] = field(default_factory=list)
    errors: int = 0
    connections: int = 0


async def open_loop(url: str, payload: bytes, rate: float, seconds: float) -> OpenLoop:
    """Send ``payload`` at ``rate`` per second for ``seconds``, on as many keep-alive
    connections as the answers need (at most 512); latencies from the scheduled time."""
    out = OpenLoop()
    idle: list[Connection] = []
    pending: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    count = int(rate * seconds)
    start = time.perf_counter() + 0.05

    async def one(scheduled: float) -> None:
        try:
            conn = idle.pop() if idle else None
            if conn is None or conn.transport is None:
                if out.connections >= 512:
                    out.errors += 1
                    return
                out.connections += 1
                conn = await connect(url)
            result = await conn.send(payload, Result(scheduled))
            out.results.append(result)
            idle.append(conn)
        except (OSError, ConnectionError):
            out.errors += 1

    for i in range(count):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = loop.create_task(one(scheduled))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending, timeout=30)
    for conn in idle:
        if conn.transport is not None:
            conn.transport.close()
    return out


async def closed_loop(url: str, payload: bytes, concurrency: int, seconds: float) -> float:
    """Requests per second with ``concurrency`` requests always in flight."""
    done = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        conn = await connect(url)
        try:
            while time.perf_counter() < stop:
                if conn.transport is None:
                    conn = await connect(url)
                await conn.send(payload, Result(time.perf_counter()))
                done += 1
        finally:
            if conn.transport is not None:
                conn.transport.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)
