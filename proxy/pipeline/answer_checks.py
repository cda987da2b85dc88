"""Answers read whole before anything is sent: a 400 that may say "input too long" (then a
larger-context model of the chain may take the request), and a JSON-mode answer checked
against the requested schema; and the after-the-fact check of a streamed JSON answer."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..cluster.coordinator import Admission
from ..config import ModelSettings
from ..gemini.schema import check_json_answer, json_answer_problem
from ..transport.upstream import UpstreamResponse
from .outcomes import SERVED, Failed, ProxyError, Rejected, Served, TooLong, Verdict
from .respond import FALLBACKS_HEADER

if TYPE_CHECKING:
    from .exchange import Exchange

log = logging.getLogger("gemini_breaker.forwarding")

# How long a request that met "input too long" waits to learn the other models' limits.
LIMIT_LOOKUP_WAIT = 2.0
# A JSON-mode answer is held whole to be checked before it is sent.
MAX_CHECKED_ANSWER_BYTES = 32 * 1024 * 1024


def checks_json(exchange: Exchange) -> bool:
    """A unary answer to a JSON-mode request is checked before it is sent."""
    if exchange.route.method != "generateContent" or not isinstance(exchange.body, bytes):
        return False
    return b"application/json" in exchange.body and exchange.needs.expects_json


async def client_error(
    exchange: Exchange, admission: Admission, response: UpstreamResponse, limits: ModelSettings
) -> TooLong | Rejected:
    """A 400 goes back as it is, unless it says the input is too long for this model and
    the chain has a larger-context model: then the request moves there, once."""
    model = admission.model
    kept = await exchange.keep(model, response, limits)
    capabilities = exchange.services.capabilities
    registry = capabilities.registry
    too_long = registry.learn_from_error(model, kept.status, kept.body)
    if too_long is not None:
        needs = exchange.needs.with_input_tokens(too_long.token_count or 0)
        chain = exchange.coordinator.chain_for(exchange.route.model or model)
        following = list(chain[chain.index(model) + 1 :]) if model in chain else []
        await capabilities.ensure_known(
            following,
            exchange.lookup_headers,
            exchange.scope["query_string"],
            min(LIMIT_LOOKUP_WAIT, exchange.remaining()),
        )
        larger = registry.larger_context(chain, model, needs)
        if larger is not None:
            log.info("input too long for %s: moving the request to %s", model, larger)
            return TooLong(kept, larger)
    return Rejected(kept)


async def checked_json(
    exchange: Exchange,
    admission: Admission,
    response: UpstreamResponse,
    limits: ModelSettings,
    position: int,
) -> Failed | Served:
    """A JSON-mode answer is read whole and checked against the requested schema before
    it is sent: an answer that is not valid JSON, or breaks the schema, is a failure of
    the model and the chain moves on."""
    model = admission.model
    kept = await exchange.keep(model, response, limits, MAX_CHECKED_ANSWER_BYTES)
    problem = json_answer_problem(kept.body, exchange.needs)
    if problem is not None:
        exchange.report.outcome(admission, Verdict.FAILURE)
        _drifted(exchange, model, problem, streamed=False)
        message = f"The answer from {model} did not match the requested JSON: {problem}"
        return Failed(ProxyError(model, 502, message))
    exchange.report.outcome(admission, Verdict.SUCCESS)
    exchange.served_by = model
    await exchange.client.answer(
        kept, exchange.attempts, [(FALLBACKS_HEADER, str(position).encode())]
    )
    return SERVED


def check_streamed(exchange: Exchange, model: str, text: str) -> None:
    """A streamed JSON answer can only be checked once it is whole, when it has already
    reached the client: drift is logged and counted, not undone."""
    if not (isinstance(exchange.body, bytes) and b"application/json" in exchange.body):
        return
    if not exchange.needs.expects_json or not text:
        return
    problem = check_json_answer(text, exchange.needs)
    if problem is not None:
        _drifted(exchange, model, problem, streamed=True)


def _drifted(exchange: Exchange, model: str, problem: str, *, streamed: bool) -> None:
    exchange.telemetry.schema_drift(model, streamed=streamed)
    where = "in a stream from" if streamed else "from"
    log.warning("schema drift %s %s: %s", where, model, problem)
