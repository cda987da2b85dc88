"""An attempt whose answer is an SSE stream: relayed event by event (``SseRelay``), and, if it
breaks after it started, continued on the next capable models of the chain: the original
request plus the text already delivered as a ``model`` turn, stitched into the same stream.
When no model can, the stream ends with an in-band Google error carrying the original
failure: never a silent close, never the fallback's own 400."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..cluster.coordinator import Admission
from ..config import ModelSettings
from ..gemini.features import NotContinuable
from ..transport.headers import Headers
from ..transport.upstream import UpstreamError, UpstreamResponse
from . import answer_checks
from .deadlines import FIRST_EVENT, GAP, stream_first_event_wait
from .outcomes import SERVED, AttemptOutcome, Failed, ProxyError, Verdict, classify_status
from .policy import continues_broken_stream
from .stream_relay import SseRelay

if TYPE_CHECKING:
    from .exchange import Exchange

log = logging.getLogger("gemini_breaker.forwarding")


async def relay_stream(
    exchange: Exchange,
    response: UpstreamResponse,
    admission: Admission,
    limits: ModelSettings,
    position: int,
    extra: Headers,
    start: tuple[float, float, str],
) -> AttemptOutcome:
    """Relay a 200 stream. ``start``: when the attempt was sent, how long its first event may
    take, and the name of that limit. A failure before the first event is an ordinary failed
    attempt; after it the stream is the client's, whatever happens."""
    model = admission.model
    sent_at, wait, kind = start
    relay = SseRelay(exchange.upstream, exchange.client, exchange.deadline)
    relay.first_event_at = sent_at + wait
    span, settings, deadlines = exchange.span, exchange.settings, exchange.services.deadlines
    loop = exchange.loop

    def first_event() -> None:
        deadlines.succeeded(
            model,
            limits.first_event_learning,
            settings.first_event_ceiling(model),
            loop.time() - sent_at,
        )
        if span is not None:
            span.first_token()

    relay.on_first_event = first_event
    before_first_byte = await relay.first(response, limits, extra)
    if before_first_byte is not None:
        poison = exchange.report.hold(admission, f"stream {before_first_byte.status}")
        if before_first_byte.deadline == FIRST_EVENT:
            exchange.deadline_missed(model, kind, wait)
            message = f"{model} sent no first event within {wait:.3g} s."
            return Failed(ProxyError(model, 504, message), deadline_missed=True, poison=poison)
        reply = ProxyError(model, before_first_byte.status, before_first_byte.message)
        return Failed(reply, poison=poison)
    exchange.served_by = model
    if span is not None:
        span.usage(relay.delivered.usage)
    broken = relay.broken
    if broken is None:
        exchange.report.outcome(admission, Verdict.SUCCESS)
        answer_checks.check_streamed(exchange, model, relay.delivered.text)
        await relay.finish()
        return SERVED
    exchange.report.outcome(admission, Verdict.FAILURE)
    if broken.deadline == GAP:
        exchange.telemetry.deadline_miss(model, GAP)
    log.warning("stream from %s broke after it started: %s", model, broken.message)
    requested = exchange.route.model or model
    if continues_broken_stream(
        settings.on_stream_break(requested), isinstance(exchange.body, bytes)
    ):
        continued_on = await _continue(exchange, relay, requested, position)
        exchange.telemetry.stream_continuation(model, continued_on)
        if continued_on is not None:
            exchange.served_by = continued_on
            answer_checks.check_streamed(exchange, continued_on, relay.delivered.text)
            await relay.finish()
            return SERVED
    await relay.fail(broken)
    return SERVED


async def _continue(
    exchange: Exchange, relay: SseRelay, requested: str, position: int
) -> str | None:
    """Finish the answer on the next models of the chain that can; the model that did, or
    None if none could (the stream then ends with the original failure)."""
    settings, report, loop = exchange.settings, exchange.report, exchange.loop
    for model in exchange.coordinator.chain_for(requested)[position + 1 :]:
        if loop.time() >= exchange.deadline:
            return None
        try:
            body = exchange.services.dialect.continuation_body(
                exchange.body_bytes, relay.delivered.text
            )
        except NotContinuable as exc:
            # Built before admission, so no permit is taken for a model never sent to.
            log.info("the stream cannot be continued: %s", exc)
            return None
        admission = await _admit(exchange, model)
        if admission is None:
            continue
        report.admitted(admission)
        limits = settings.model_settings(model)
        exchange.attempts += 1
        wait = stream_first_event_wait(settings, exchange.services.deadlines, model)
        relay.first_event_at = loop.time() + wait
        try:
            response = await exchange.open(model, limits, body, wait)
        except UpstreamError:
            report.outcome(admission, Verdict.FAILURE)
            continue
        if response.status_code != 200:
            # A model that rejects the prefill (400) or fails (5xx) cannot continue; the
            # client is told the original failure, never this model's own answer.
            report.outcome(admission, classify_status(response.status_code))
            await response.aclose()
            log.info("%s could not continue the stream (%d)", model, response.status_code)
            continue
        broken = await relay.append(response, limits)
        if broken is not None:
            log.warning("continuation on %s broke too: %s", model, broken.message)
            report.outcome(admission, Verdict.FAILURE)
            continue
        finished = relay.delivered.finish_reason is not None
        report.outcome(admission, Verdict.SUCCESS if finished else Verdict.FAILURE)
        if finished:
            return model
    return None


async def _admit(exchange: Exchange, model: str) -> Admission | None:
    """A model may continue a stream when it can serve the request, accepts a prefill, and
    its quota and breaker admit it."""
    reason = exchange.services.capabilities.registry.can_continue(model, exchange.needs)
    if reason is not None:
        log.info("%s cannot continue this stream: %s", model, reason)
        return None
    if exchange.coordinator.quota_gate(exchange.credential, model) is not None:
        return None
    return await exchange.coordinator.admit(model)
