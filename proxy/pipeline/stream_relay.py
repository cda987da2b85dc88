"""Relaying an SSE stream with integrity checks, and appending a continuation's events to it.

Every event is parsed before it is forwarded, so a corrupt chunk never reaches the client.
``first`` reports a failure before the first event (an ordinary failed attempt) or, after it,
keeps it in ``broken``; ``append`` stitches another model's continuation into the same stream
(same ``responseId``, usage summed). Which model continues, and when, is the exchange's
(``stream_attempt``); the relay only reads, checks and sends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable

from ..config import ModelSettings
from ..dialects.openai import DONE_CHUNK
from ..gemini.sse import CorruptEvent, Delivered, EventSplitter, parse_event
from ..transport.headers import Headers, client_response_headers
from ..transport.upstream import Upstream, UpstreamBodyError, UpstreamResponse
from .respond import Responder

log = logging.getLogger("gemini_breaker.streams")


class SseRelay:
    """One client's stream: the first model's events, then any continuations. A failure is an
    ``UpstreamBodyError`` from first to last (a stall, a cut, a corrupt or in-band error)."""

    def __init__(self, upstream: Upstream, client: Responder, deadline: float) -> None:
        self.upstream = upstream
        self.client = client
        self.deadline = deadline
        self.delivered = Delivered()
        self.account = client.dialect.stream_account(self.delivered)
        """Reads the chunks, in the client's dialect, into ``delivered``."""
        self.started = False
        self.broken: UpstreamBodyError | None = None
        """Set when the stream broke after bytes reached the client."""
        self.on_first_event: Callable[[], None] | None = None
        """Called as the first event goes out (time to first token)."""
        self.first_event_at: float | None = None
        """When (``loop.time()``) the stream's first event must have come; unset: the model's
        stall timeout applies from the start."""

    async def events(
        self, response: UpstreamResponse, limits: ModelSettings
    ) -> AsyncGenerator[list[tuple[bytes, dict[str, object]]], None]:
        """Complete, parsed events, a chunk's worth at a time; ``UpstreamBodyError`` on a stall, a
        cut or a corrupt event, after the good events before it."""
        splitter = EventSplitter()
        chunks = self._chunks(response, limits)
        try:
            while True:
                try:
                    chunk = await self._next(chunks, splitter)
                except StopAsyncIteration:
                    return
                good, failure = _checked(splitter, chunk)
                if good:
                    yield good
                if failure is not None:
                    raise failure
        finally:
            await chunks.aclose()

    def _chunks(
        self, response: UpstreamResponse, limits: ModelSettings
    ) -> AsyncGenerator[bytes, None]:
        first_event_at = self.first_event_at
        wait = None
        if first_event_at is not None:
            wait = max(first_event_at - asyncio.get_running_loop().time(), 0.001)
        return self.upstream.iter_body(response, limits, self.deadline, first_chunk_timeout=wait)

    @staticmethod
    async def _next(chunks: AsyncGenerator[bytes, None], splitter: EventSplitter) -> bytes:
        """The body's next chunk; ``UpstreamBodyError`` if it broke, ``StopAsyncIteration`` at its
        (whole) end."""
        try:
            return await chunks.__anext__()
        except StopAsyncIteration:
            if splitter.pending.strip():
                raise UpstreamBodyError(
                    "The upstream's stream ended in the middle of a chunk."
                ) from None
            raise

    async def first(
        self, response: UpstreamResponse, limits: ModelSettings, extra: Headers
    ) -> UpstreamBodyError | None:
        """Relay a stream from its start. Returns the failure if it broke before anything
        reached the client (an ordinary failure then); None once the stream is the client's
        (finished, or broken after bytes were sent: see ``broken``).

        The loop reads the body's chunks itself and checks their events in plain calls: a
        generator of events in between cost a resumption per chunk (docs/performance.md)."""
        splitter = EventSplitter()
        chunks = self._chunks(response, limits)
        try:
            good: list[tuple[bytes, dict[str, object]]] = []
            failure: UpstreamBodyError | None = None
            while not good:
                try:
                    chunk = await self._next(chunks, splitter)
                except StopAsyncIteration:
                    return UpstreamBodyError("The upstream's stream ended before its first chunk.")
                except UpstreamBodyError as exc:
                    return exc
                good, failure = _checked(splitter, chunk)
                if failure is not None and not good:
                    return failure
            headers = [
                (name, value)
                for name, value in client_response_headers(response.headers.raw)
                if name != b"content-length"
            ]
            await self.client.start(200, [*headers, *extra])
            self.started = True
            # The first event alone, at once (time to first byte); the rest of its batch after.
            await self._forward(good[:1])
            if self.on_first_event is not None:
                self.on_first_event()
            if len(good) > 1:
                await self._forward(good[1:])
            while failure is None:
                try:
                    chunk = await self._next(chunks, splitter)
                except StopAsyncIteration:
                    if self.delivered.finish_reason is None:
                        failure = UpstreamBodyError(
                            "The upstream's stream ended without a finishReason."
                        )
                    break
                except UpstreamBodyError as exc:
                    failure = exc
                    break
                good, failure = _checked(splitter, chunk)
                if good:
                    await self._forward(good)
            self.broken = failure
            return None
        finally:
            await chunks.aclose()
            await response.aclose()  # never suspends, so a cancellation cannot cut it short

    async def _forward(self, batch: list[tuple[bytes, dict[str, object]]]) -> None:
        take, delivered = self.account.take, self.delivered
        ended_early = False
        for _, chunk in batch:
            take(chunk)
            # A compatible ``[DONE]`` with no ``finish_reason`` before it ends the client's
            # stream (the SDK stops reading there) although the answer did not end: held
            # back, so what follows (a continuation, or the error chunk) is still read.
            ended_early = ended_early or (chunk is DONE_CHUNK and delivered.finish_reason is None)
        if ended_early:
            batch = [(raw, chunk) for raw, chunk in batch if chunk is not DONE_CHUNK]
            if not batch:
                return
        body = batch[0][0] if len(batch) == 1 else b"".join([raw for raw, _ in batch])
        await self.client.send({"type": "http.response.body", "body": body, "more_body": True})

    async def finish(self) -> None:
        await self.client.end()

    async def fail(self, broken: UpstreamBodyError) -> None:
        """End the stream with Google's in-band error, which the SDK raises."""
        await self.client.stream_error(broken.status, broken.message)

    async def append(
        self, response: UpstreamResponse, limits: ModelSettings
    ) -> UpstreamBodyError | None:
        """Relay a continuation's events into the stream, stitched onto what was delivered
        (same ``responseId``, usage summed); the failure if it broke too. Whether it finished
        the answer is ``delivered.finish_reason``."""
        usage_before = self.delivered.usage
        restitched = self.account.restitched
        try:
            async for batch in self.events(response, limits):
                body = b"".join([restitched(chunk, usage_before) for _, chunk in batch])
                await self.client.send(
                    {"type": "http.response.body", "body": body, "more_body": True}
                )
        except UpstreamBodyError as exc:
            return exc
        finally:
            await response.aclose()  # never suspends, so a cancellation cannot cut it short
        return None


def _checked(
    splitter: EventSplitter, chunk: bytes
) -> tuple[list[tuple[bytes, dict[str, object]]], UpstreamBodyError | None]:
    """The complete events a chunk finished, parsed, up to the first bad one (corrupt, or an
    in-band error), which is returned as the failure: what came before it is whole."""
    good: list[tuple[bytes, dict[str, object]]] = []
    try:
        for event in splitter.feed(chunk):
            if event.isspace():  # a blank event (keep-alive): nothing to relay
                continue
            if event.startswith(b"data: [DONE]"):  # the compatible API's end of stream
                good.append((event, DONE_CHUNK))
                continue
            parsed = parse_event(event)
            error = parsed.get("error")  # ``error_in``, inlined: this runs for every event
            if isinstance(error, dict):
                code = error.get("code")
                return good, UpstreamBodyError(
                    str(error.get("message") or "in-band error"),
                    code if isinstance(code, int) else 502,
                )
            good.append((event, parsed))
    except CorruptEvent as exc:
        return good, UpstreamBodyError(f"The upstream sent a corrupt chunk ({exc}).")
    return good, None
