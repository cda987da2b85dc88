"""Relaying an SSE stream with integrity checks, and continuing it on another model if it breaks.

Every event is parsed before it is forwarded, so a corrupt chunk never reaches the client. Until
the first event is forwarded, a failure is an ordinary failure (retry, fail over). After it, the
answer is continued on the next capable model of the chain: the original request plus the text
already delivered as a ``model`` turn, its chunks stitched into the same stream (same
``responseId``, usage summed). When that is impossible the stream ends with an in-band Google
error carrying the original failure: never a silent close, never the fallback's own 400.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

from starlette.types import Send

from .cluster.coordinator import Admission, Coordinator
from .config import ModelSettings
from .gemini.errors import sse_error_event
from .gemini.sse import (
    CorruptEvent,
    Delivered,
    EventSplitter,
    encode_event,
    parse_event,
    stitch,
)
from .outcomes import Verdict, classify_status
from .transport.headers import Headers, client_response_headers
from .transport.upstream import Upstream, UpstreamBodyError, UpstreamError, UpstreamResponse

log = logging.getLogger("gemini_breaker.streams")


class StreamBroken(Exception):
    """A stream failed: cut, stalled, corrupt, or an in-band error from the upstream."""

    def __init__(self, message: str, status: int = 502, deadline: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.deadline = deadline
        """When a wait ran out: which limit (``first_event`` or ``gap``)."""


@dataclass(frozen=True, slots=True)
class Continuation:
    """Where and how a broken stream may be continued."""

    models: list[str]
    """The models after the broken one, in chain order."""
    build_body: Callable[[str], bytes]
    """The continuation request for the text delivered so far."""
    open: Callable[[str, ModelSettings, bytes], Awaitable[UpstreamResponse]]
    """Sends a continuation request to a model."""
    admit: Callable[[str], Awaitable[Admission | None]]
    """Admission for a model (breaker, quota, capability), or None to skip it."""
    limits: Callable[[str], ModelSettings]
    first_event: Callable[[str], float]
    """Seconds a model's continuation may wait for its first event."""


class SseRelay:
    """One client's stream: the first model's events, then any continuations."""

    def __init__(
        self,
        upstream: Upstream,
        coordinator: Coordinator,
        send: Send,
        deadline: float,
        on_attempt: Callable[[], None],
    ) -> None:
        self.upstream = upstream
        self.coordinator = coordinator
        self.send = send
        self.deadline = deadline
        self.delivered = Delivered()
        self.served_by: str | None = None
        self.started = False
        self.broken: StreamBroken | None = None
        """Set when the stream broke after bytes reached the client."""
        self._on_attempt = on_attempt
        self.on_first_event: Callable[[], None] | None = None
        """Called as the first event goes out (time to first token)."""
        self.first_event_at: float | None = None
        """When (``loop.time()``) the stream's first event must have come; unset: the model's
        stall timeout applies from the start."""

    async def events(
        self, response: UpstreamResponse, limits: ModelSettings
    ) -> AsyncGenerator[list[tuple[bytes, dict[str, object]]], None]:
        """Complete, parsed events, a chunk's worth at a time; ``StreamBroken`` on a stall, a
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
        """The body's next chunk; ``StreamBroken`` if it broke, ``StopAsyncIteration`` at its
        (whole) end."""
        try:
            return await chunks.__anext__()
        except UpstreamBodyError as exc:
            raise StreamBroken(exc.message, exc.status, exc.deadline) from None
        except StopAsyncIteration:
            if splitter.pending.strip():
                raise StreamBroken(
                    "The upstream's stream ended in the middle of a chunk."
                ) from None
            raise

    async def first(
        self, response: UpstreamResponse, limits: ModelSettings, extra: Headers
    ) -> StreamBroken | None:
        """Relay a stream from its start. Returns the failure if it broke before anything
        reached the client (an ordinary failure then); None once the stream is the client's
        (finished, or broken after bytes were sent: see ``broken``).

        The loop reads the body's chunks itself and checks their events in plain calls: a
        generator of events in between cost a resumption per chunk (docs/performance.md)."""
        splitter = EventSplitter()
        chunks = self._chunks(response, limits)
        try:
            good: list[tuple[bytes, dict[str, object]]] = []
            failure: StreamBroken | None = None
            while not good:
                try:
                    chunk = await self._next(chunks, splitter)
                except StopAsyncIteration:
                    return StreamBroken("The upstream's stream ended before its first chunk.")
                except StreamBroken as exc:
                    return exc
                good, failure = _checked(splitter, chunk)
                if failure is not None and not good:
                    return failure
            headers = [
                (name, value)
                for name, value in client_response_headers(response.headers.raw)
                if name != b"content-length"
            ]
            await self.send(
                {"type": "http.response.start", "status": 200, "headers": [*headers, *extra]}
            )
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
                        failure = StreamBroken(
                            "The upstream's stream ended without a finishReason."
                        )
                    break
                except StreamBroken as exc:
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
        take = self.delivered.take
        for _, chunk in batch:
            take(chunk)
        body = batch[0][0] if len(batch) == 1 else b"".join([raw for raw, _ in batch])
        await self.send({"type": "http.response.body", "body": body, "more_body": True})

    async def finish(self) -> None:
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def fail(self, broken: StreamBroken) -> None:
        """End the stream with Google's in-band error, which the SDK raises."""
        await self.send(
            {
                "type": "http.response.body",
                "body": sse_error_event(broken.status, broken.message),
                "more_body": False,
            }
        )

    async def continue_on(self, continuation: Continuation, broken: StreamBroken) -> bool:
        """Finish the answer on the next models that can; False if none could (the caller
        then ends the stream with the original failure)."""
        for model in continuation.models:
            if asyncio.get_running_loop().time() >= self.deadline:
                return False
            admission = await continuation.admit(model)
            if admission is None:
                continue
            limits = continuation.limits(model)
            self._on_attempt()
            loop = asyncio.get_running_loop()
            self.first_event_at = loop.time() + continuation.first_event(model)
            try:
                response = await continuation.open(
                    model, limits, continuation.build_body(self.delivered.text)
                )
            except UpstreamError:
                self.coordinator.record(admission, Verdict.FAILURE)
                continue
            if response.status_code != 200:
                # A model that rejects the prefill (400) or fails (5xx) cannot continue; the
                # client is told the original failure, never this model's own answer.
                self.coordinator.record(admission, classify_status(response.status_code))
                await response.aclose()
                log.info("%s could not continue the stream (%d)", model, response.status_code)
                continue
            if await self._relay_continuation(response, limits, admission):
                self.served_by = model
                return True
        return False

    async def _relay_continuation(
        self, response: UpstreamResponse, limits: ModelSettings, admission: Admission
    ) -> bool:
        usage_before = self.delivered.usage
        try:
            async for batch in self.events(response, limits):
                body = []
                for _, chunk in batch:
                    stitched = stitch(chunk, self.delivered, usage_before)
                    self.delivered.take(stitched)
                    body.append(encode_event(stitched))
                await self.send(
                    {"type": "http.response.body", "body": b"".join(body), "more_body": True}
                )
        except StreamBroken as exc:
            log.warning("continuation on %s broke too: %s", admission.model, exc.message)
            self.coordinator.record(admission, Verdict.FAILURE)
            return False
        finally:
            await response.aclose()  # never suspends, so a cancellation cannot cut it short
        finished = self.delivered.finish_reason is not None
        self.coordinator.record(admission, Verdict.SUCCESS if finished else Verdict.FAILURE)
        return finished


def _checked(
    splitter: EventSplitter, chunk: bytes
) -> tuple[list[tuple[bytes, dict[str, object]]], StreamBroken | None]:
    """The complete events a chunk finished, parsed, up to the first bad one (corrupt, or an
    in-band error), which is returned as the failure: what came before it is whole."""
    good: list[tuple[bytes, dict[str, object]]] = []
    try:
        for event in splitter.feed(chunk):
            if event.isspace():  # a blank event (keep-alive): nothing to relay
                continue
            parsed = parse_event(event)
            error = parsed.get("error")  # ``error_in``, inlined: this runs for every event
            if isinstance(error, dict):
                code = error.get("code")
                return good, StreamBroken(
                    str(error.get("message") or "in-band error"),
                    code if isinstance(code, int) else 502,
                )
            good.append((event, parsed))
    except CorruptEvent as exc:
        return good, StreamBroken(f"The upstream sent a corrupt chunk ({exc}).")
    return good, None
