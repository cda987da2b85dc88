"""One upstream attempt: send the request to a model, and come to a typed outcome.

The answer is relayed as it comes (``unary_relay``, or ``stream_attempt`` for a stream) unless
it must be kept: an error (to relay later, if no other model answers), a 429 (waited out or
answered), a 400 that may move the request to a larger-context model, a JSON-mode answer to
check (``answer_checks``). What follows an outcome is ``policy``'s to decide.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..cluster.coordinator import Admission
from ..config import ModelSettings
from ..gemini.quota import parse_rate_limit
from ..telemetry import AttemptSpan
from ..transport.upstream import (
    OriginUnreachable,
    UpstreamBusy,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
)
from . import answer_checks, unary_relay
from .deadlines import GAP, start_wait
from .outcomes import (
    SERVED,
    AttemptOutcome,
    Failed,
    ProxyError,
    RateLimited,
    Stopped,
    Verdict,
    classify_status,
)
from .respond import ATTEMPTS_HEADER, FALLBACKS_HEADER, MODEL_HEADER
from .stream_attempt import relay_stream

if TYPE_CHECKING:
    from .exchange import Exchange

log = logging.getLogger("gemini_breaker.forwarding")


async def attempt(
    exchange: Exchange, admission: Admission, limits: ModelSettings, position: int
) -> AttemptOutcome:
    """One upstream attempt, inside its own span."""
    with exchange.telemetry.attempt(
        admission.model,
        exchange.attempts + 1,
        retry=admission.model == exchange.last_model,
        failover=position > 0,
        probe=admission.probe,
        method=exchange.route.method,
    ) as span:
        exchange.span = span
        exchange.last_model = admission.model
        return await _attempt_once(exchange, admission, limits, position, span)


async def _attempt_once(
    exchange: Exchange,
    admission: Admission,
    limits: ModelSettings,
    position: int,
    span: AttemptSpan,
) -> AttemptOutcome:
    model = admission.model
    wait, kind = start_wait(
        exchange.settings,
        exchange.services.deadlines,
        model,
        limits,
        exchange.route.method,
        exchange.max_output_tokens,
    )
    remaining = exchange.remaining()
    exchange.attempts += 1
    exchange.coordinator.quota_requested(exchange.credential, model)
    sent_at = exchange.loop.time()
    try:
        response = await exchange.open(
            model, limits, headers_timeout=max(min(wait, remaining), 0.001)
        )
    except (UpstreamBusy, OriginUnreachable) as exc:
        # The proxy's own pool, or an origin no model of this upstream can reach: no
        # further attempt can help, and no model is to blame.
        busy = isinstance(exc, UpstreamBusy)
        span.outcome("busy" if busy else "unreachable", error_type=type(exc).__name__)
        return Stopped(ProxyError(model, exc.status, exc.message))
    except UpstreamTimeout as exc:
        if remaining < wait:  # the client's deadline, not the model, ran out
            message = f"The request's deadline passed while waiting for {model}."
            return Stopped(ProxyError(model, UpstreamTimeout.status, message))
        poison = exchange.report.hold(admission, type(exc).__name__)
        span.outcome(Verdict.FAILURE.value, error_type=type(exc).__name__)
        reply = ProxyError(model, exc.status, exc.message)
        if exc.deadline is None:  # connecting timed out: worth another connection
            return Failed(reply, poison=poison)
        exchange.deadline_missed(model, kind, wait)
        return Failed(reply, deadline_missed=True, poison=poison)
    except UpstreamError as exc:
        poison = exchange.report.hold(admission, type(exc).__name__)
        span.outcome(Verdict.FAILURE.value, error_type=type(exc).__name__)
        return Failed(ProxyError(model, exc.status, exc.message), poison=poison)
    return await _answered(exchange, admission, response, limits, position, (sent_at, wait, kind))


async def _answered(
    exchange: Exchange,
    admission: Admission,
    response: UpstreamResponse,
    limits: ModelSettings,
    position: int,
    start: tuple[float, float, str],
) -> AttemptOutcome:
    """The upstream answered: classify it, and relay it unless it is to be kept."""
    model, status, span = admission.model, response.status_code, exchange.span
    assert span is not None
    span.responded(status)
    if status == 404:
        exchange.coordinator.quota_not_found(exchange.credential, model)
    verdict = classify_status(status)
    span.outcome(verdict.value)
    if verdict is not Verdict.FAILURE:
        # The request is served by this model (or answered as it is).
        exchange.report.settle(answered=verdict is Verdict.SUCCESS)
    if verdict is Verdict.RATE_LIMITED:
        kept = await exchange.keep(model, response, limits)
        limit = parse_rate_limit(kept.body, response.headers.get("retry-after"))
        delay = exchange.coordinator.rate_limited(exchange.credential, model, limit)
        if limit.per_day:
            exchange.telemetry.quota_alert(model)
        return RateLimited(kept, limit, delay)
    if verdict is Verdict.FAILURE:
        poison = exchange.report.hold(admission, str(status))
        return Failed(await exchange.keep(model, response, limits), poison=poison)
    if status == 400:
        return await answer_checks.client_error(exchange, admission, response, limits)
    if verdict is Verdict.SUCCESS and answer_checks.checks_json(exchange):
        return await answer_checks.checked_json(exchange, admission, response, limits, position)
    if verdict is Verdict.CREDENTIAL:
        exchange.telemetry.credential_alert(model, status)
        log.warning(
            "credential alert: %s answered %d for %s; check the API key",
            exchange.upstream.host,
            status,
            model,
        )
    extra = [
        (MODEL_HEADER, model.encode()),
        (FALLBACKS_HEADER, str(position).encode()),
        (ATTEMPTS_HEADER, str(exchange.attempts).encode()),
    ]
    if exchange.sse and status == 200:
        return await relay_stream(exchange, response, admission, limits, position, extra, start)
    exchange.served_by = model
    usage_span = span if exchange.route.is_generate and not exchange.sse else None
    broken = await unary_relay.relay(
        exchange.upstream,
        exchange.client,
        response,
        limits,
        exchange.deadline,
        exchange.answer_headers(response, extra),
        usage_span,
    )
    if broken is not None and broken.deadline == GAP:
        exchange.telemetry.deadline_miss(model, GAP)
    exchange.report.outcome(admission, verdict if broken is None else Verdict.FAILURE)
    return SERVED
