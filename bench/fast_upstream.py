"""A canned Gemini upstream for benchmarks: the simulator's answers, served at C-parser speed.

The simulator (a Starlette app) would itself be the bottleneck at the request rates the proxy
is measured at, and it shares a core with the load generator. This server answers every
``generateContent`` with one fixed unary answer and every ``streamGenerateContent?alt=sse``
with fixed SSE events (the simulator's bytes, CRLF framing, ``finishReason`` on the last), and
``/v1beta/openai/chat/completions`` the same way in the compatible API's shape, on
uvloop with httptools' parser, keep-alive, nothing else.

For the concurrency benchmark a stream can be slowed down by the request's own headers:
``x-bench-chunks: N`` events, ``x-bench-interval-ms: M`` between them (default 0: all at
once). Each event then carries ``benchSentNs``, the ``time.monotonic_ns()`` at which it was
written (one clock for every process on the machine), so a client can measure the delay each
chunk picked up on the way.

With ``--close-every N`` it closes the connection right after every Nth answer (counted over all
connections, with no ``connection: close`` to announce it), as Google's front ends recycle
keep-alive connections; with ``--racing`` as well, it closes that connection only as the next
request arrives on it, unanswered (the close crossed that request on the wire).

Run as ``python bench/fast_upstream.py PORT [--close-every N [--racing]]``; it prints ``ready``
once it listens.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httptools
import uvloop

UNARY = json.dumps(
    {
        "candidates": [
            {
                "content": {
                    "parts": [
                        {
                            "text": 'The simulator says: you wrote "Say something about circuit '
                            'breakers", and this is a simulated answer.'
                        }
                    ],
                    "role": "model",
                },
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 9,
            "candidatesTokenCount": 26,
            "totalTokenCount": 35,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 9}],
        },
        "modelVersion": "gemini-2.5-flash",
        "responseId": "2IWntvZ1cgDeFMny3hUOiZY",
    },
    indent=2,
).encode()
TEXTS = [
    "The simulator says: ",
    'you wrote "Say ',
    "something about circuit ",
    'breakers", and this ',
    "is a simulated ",
    "answer.",
]
UNARY_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=UTF-8\r\n"
    b"content-length: %d\r\n\r\n" % len(UNARY)
) + UNARY
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
# The OpenAI-compatible endpoint's answers to the same prompt: one chat.completion, and its
# chunks (LF framing) ended by ``data: [DONE]``.
COMPATIBLE_UNARY = json.dumps(
    {
        "id": "2IWntvZ1cgDeFMny3hUOiZY",
        "object": "chat.completion",
        "created": 1764979200,
        "model": "gemini-2.5-flash",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(TEXTS)},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 26, "total_tokens": 35},
    }
).encode()
COMPATIBLE_UNARY_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\n\r\n" % len(COMPATIBLE_UNARY)
) + COMPATIBLE_UNARY


def compatible_event(index: int) -> bytes:
    last = index == len(TEXTS) - 1
    chunk = {
        "id": "2IWntvZ1cgDeFMny3hUOiZY",
        "object": "chat.completion.chunk",
        "created": 1764979200,
        "model": "gemini-2.5-flash",
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": TEXTS[index]},
                "finish_reason": "stop" if last else None,
            }
        ],
    }
    data = b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
    if last:
        data += b"data: [DONE]\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


COMPATIBLE_STREAM = (
    STREAM_HEAD + b"".join(compatible_event(i) for i in range(len(TEXTS))) + b"0\r\n\r\n"
)
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def event(index: int, count: int, sent_ns: int | None) -> bytes:
    """One SSE event, as a chunk of a chunked body."""
    last = index == count - 1
    candidate: dict[str, object] = {
        "content": {"parts": [{"text": TEXTS[index % len(TEXTS)]}], "role": "model"},
        "index": 0,
    }
    if last:
        candidate["finishReason"] = "STOP"
    chunk: dict[str, object] = {
        "candidates": [candidate],
        "usageMetadata": {
            "promptTokenCount": 9,
            "candidatesTokenCount": 5 * (index + 1),
            "totalTokenCount": 9 + 5 * (index + 1),
        },
        "modelVersion": "gemini-2.5-flash",
        "responseId": "2IWntvZ1cgDeFMny3hUOiZY",
    }
    if sent_ns is not None:
        chunk["benchSentNs"] = sent_ns
    data = b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\r\n\r\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


FAST_STREAM = (
    STREAM_HEAD + b"".join(event(i, len(TEXTS), None) for i in range(len(TEXTS))) + (b"0\r\n\r\n")
)


STREAMING: set[asyncio.Future[None]] = set()  # slow streams in progress (kept referenced)


class Recycling:
    """Counts the answers of every connection, to close one after every Nth (0: never)."""

    def __init__(self, every: int, racing: bool) -> None:
        self.every = every
        self.racing = racing
        self.answers = 0

    def closes_now(self) -> bool:
        self.answers += 1
        return bool(self.every) and self.answers % self.every == 0


class Connection(asyncio.Protocol):
    """One client connection: parse requests, answer each when its body is complete."""

    def __init__(self, recycling: Recycling) -> None:
        self.recycling = recycling
        self.doomed = False
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.streams = False
        """The body asks for a stream (the compatible endpoint names it there)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.streams = False

    def on_body(self, body: bytes) -> None:
        self.streams = self.streams or b'"stream":true' in body or b'"stream": true' in body

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_message_complete(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if self.doomed:
            transport.abort()
            return
        url = self.url
        if b":streamGenerateContent" in url:
            chunks = int(self.headers.get(b"x-bench-chunks", b"0"))
            if chunks:
                interval = float(self.headers.get(b"x-bench-interval-ms", b"0")) / 1000
                task = asyncio.ensure_future(slow_stream(self, chunks, interval))
                STREAMING.add(task)
                task.add_done_callback(STREAMING.discard)
            else:
                transport.write(FAST_STREAM)
        elif b":generateContent" in url:
            transport.write(UNARY_RESPONSE)
        elif url.endswith(b"/openai/chat/completions"):
            transport.write(COMPATIBLE_STREAM if self.streams else COMPATIBLE_UNARY_RESPONSE)
        elif url.startswith(b"/healthz"):
            transport.write(OK)
        else:
            transport.write(NOT_FOUND)
        if self.recycling.closes_now():
            if self.recycling.racing:
                self.doomed = True
            else:
                transport.close()


async def slow_stream(connection: Connection, chunks: int, interval: float) -> None:
    """A stream of ``chunks`` events, ``interval`` seconds apart, each stamped when written."""
    transport = connection.transport
    if transport is None:
        return
    transport.write(STREAM_HEAD)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for index in range(chunks):
        if index:
            await asyncio.sleep(max(0.0, start + index * interval - loop.time()))
        transport = connection.transport
        if transport is None:
            return
        transport.write(event(index, chunks, time.monotonic_ns()))
    transport.write(b"0\r\n\r\n")


async def serve(port: int, close_every: int = 0, racing: bool = False) -> None:
    loop = asyncio.get_running_loop()
    recycling = Recycling(close_every, racing)
    server = await loop.create_server(
        lambda: Connection(recycling), "127.0.0.1", port, backlog=8192
    )
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    every = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[2] == "--close-every" else 0
    uvloop.run(serve(int(sys.argv[1]), every, racing="--racing" in sys.argv[4:]))
