"""One request's trip upstream and back: admission, retries, failover along the chain, and
the relay of the answer.

The outcome table of ``outcomes.py`` decides everything: failures are retried on the same model
with backoff (bounded by the model's attempts, the retry budget and the request's deadline),
then the next admitting model of the chain is tried; anything else goes back to the client as
the upstream sent it. Failed attempts reach the breakers only once the request's fate is known,
and only when they are evidence about the model (``failure_hold.py``, ``evidence.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import random
from collections.abc import AsyncIterable
from dataclasses import dataclass

from starlette.types import Receive, Scope, Send

from .capability_lookup import CapabilityLookup
from .cluster.coordinator import CLOCK_TOLERANCE, Admission, Coordinator, Shed
from .cluster.state import OPEN
from .config import ModelSettings, Settings
from .deadlines import (
    FIRST_EVENT,
    GAP,
    HEADERS,
    LEARNED,
    DeadlineBook,
    max_output_tokens,
    unary_budget,
)
from .failure_hold import FailureHold
from .gemini.errors import JSON_CONTENT_TYPE, sse_error_event
from .gemini.features import RequestNeeds, continuation_body, needs_of_body
from .gemini.paths import GeminiPath
from .gemini.quota import RateLimit, parse_rate_limit, shed_body
from .gemini.schema import check_json_answer, json_answer_problem
from .outcomes import Verdict, classify_status
from .retry_budget import RetryBudget
from .stream_relay import Continuation, SseRelay
from .telemetry import AttemptSpan, Telemetry
from .telemetry.usage import usage_from_tail
from .transport.asgi_io import BodyTooLarge, ClientDisconnected, send_error
from .transport.headers import (
    UPLOAD_URL_HEADER,
    Headers,
    client_response_headers,
    credential_scope,
    date_header,
    request_origin,
    rewrite_upload_url,
    upstream_request_headers,
)
from .transport.upstream import (
    OriginUnreachable,
    Upstream,
    UpstreamBodyError,
    UpstreamBusy,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
)

log = logging.getLogger("gemini_breaker.forwarding")

CLIENT_CLOSED = 499
# Model calls that a route's chain applies to. Other model calls (batch jobs, metadata) go to
# the model the client named.
ROUTED_METHODS = frozenset(
    {
        "generateContent",
        "streamGenerateContent",
        "countTokens",
        "embedContent",
        "batchEmbedContents",
    }
)
# An upstream error body kept to relay later if no other model answers (Google's are < 2 KiB).
MAX_KEPT_ERROR_BYTES = 64 * 1024
# The end of a unary answer kept for its usageMetadata.
USAGE_TAIL_BYTES = 4096
# How long a request that met "input too long" waits to learn the other models' limits.
LIMIT_LOOKUP_WAIT = 2.0
# A JSON-mode answer is held whole to be checked before it is sent.
MAX_CHECKED_ANSWER_BYTES = 32 * 1024 * 1024

MODEL_HEADER = b"x-gemini-breaker-model"
FALLBACKS_HEADER = b"x-gemini-breaker-fallbacks"
ATTEMPTS_HEADER = b"x-gemini-breaker-attempts"
SHED_HEADER = b"x-gemini-breaker-shed"


@dataclass(frozen=True, slots=True)
class _Failed:
    """A failed attempt, kept so the last one can be relayed if nothing else answers."""

    model: str
    error: UpstreamError | None = None
    status: int = 0
    headers: Headers = dataclasses.field(default_factory=list)
    body: bytes = b""
    final: bool = False
    """No further attempt may follow (the deadline is spent, or the proxy itself is full)."""
    rate_limit: RateLimit | None = None
    """Set for a 429: the request is answered with it (or waits it out), never failed over."""
    retry_after: float = 0.0
    """For a 429: seconds until the scope may be tried again."""
    larger: str | None = None
    """For a 400 "input too long": the larger-context model of the chain to try instead."""
    answer_now: bool = False
    """A kept answer that goes to the client as it is (a 4xx), with no further attempts."""
    deadline_missed: bool = False
    """The model did not start answering in time: the chain moves on without a retry, which
    would hold the request for as long again."""


@dataclass(frozen=True, slots=True)
class Services:
    """What every exchange of a running proxy shares."""

    settings: Settings
    upstream: Upstream
    coordinator: Coordinator
    budget: RetryBudget
    capabilities: CapabilityLookup
    telemetry: Telemetry
    deadlines: DeadlineBook


class Exchange:
    """Serves one request. ``status``, ``served_by`` and ``attempts`` describe how it went."""

    def __init__(
        self,
        services: Services,
        scope: Scope,
        send: Send,
        path: GeminiPath,
        body: bytes | AsyncIterable[bytes],
        deadline: float,
    ) -> None:
        self.upstream = services.upstream
        self.coordinator = services.coordinator
        self.budget = services.budget
        self.settings = services.settings
        self.capabilities = services.capabilities
        self.telemetry = services.telemetry
        self.deadlines = services.deadlines
        self.scope = scope
        self.send = send
        self.path = path
        self.body = body
        self.deadline = deadline
        self.status = CLIENT_CLOSED
        self.served_by: str | None = None
        self.attempts = 0
        self.credential = credential_scope(
            scope["headers"], scope["query_string"], services.settings.upstream.api_key
        )
        """Digest of the credential this request uses: its 429 conditions are its own."""
        self._finishing = False
        self._sse = path.method == "streamGenerateContent" and b"alt=sse" in scope["query_string"]
        self._passed_over: str | None = None
        self._last_model: str | None = None
        self._span: AttemptSpan | None = None
        """Why the chain's first model did not serve (for the failover metric)."""
        self._hold: FailureHold | None = None
        """Failed attempts not yet reported to the breakers (made at the first failure)."""
        self._loop = asyncio.get_running_loop()

    def remaining(self) -> float:
        return self.deadline - self._loop.time()

    async def run_cancelling_on_disconnect(self, receive: Receive) -> None:
        """Run, but give up (closing the upstream call) as soon as the client disconnects.

        One plain watcher task cancels this one: an anyio task group per request cost about
        a fifth of the proxy's CPU per request (docs/performance.md)."""
        task = asyncio.current_task()
        assert task is not None
        gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            # The server reports a disconnect once the response is complete, too.
            if not self._finishing:
                gone = True
                self.status = CLIENT_CLOSED
                task.cancel()

        watcher = self._loop.create_task(watch())
        try:
            await self.run()
        except asyncio.CancelledError:
            # Ours is swallowed; a cancellation from anywhere else (server shutdown) goes on.
            if not gone or task.uncancel() > 0:
                raise
        finally:
            watcher.cancel()

    async def run(self) -> None:
        try:
            if self.path.model is not None and self.path.method in ROUTED_METHODS:
                await self._route(self.path.model)
            else:
                await self._pass_through()
        except ClientDisconnected:
            self.status = CLIENT_CLOSED
        finally:
            if self._hold is not None:
                self._hold.settle()

    # -- calls that are not routed ----------------------------------------------------------

    async def _pass_through(self) -> None:
        limits = self.settings.model_settings(self.path.model)
        self.attempts = 1
        try:
            response = await self._open(self.path.upstream_path, limits)
        except BodyTooLarge as exc:
            await self._send_error(413, exc.args[0])
            return
        except UpstreamError as exc:
            await self._send_error(exc.status, exc.message)
            return
        await self._relay(response, limits, [])

    # -- routed calls: admission, retries, failover -------------------------------------------

    async def _route(self, requested: str) -> None:
        chain = self.coordinator.chain_for(requested)
        self.budget.record_request()
        self.capabilities.look_up(chain, self._upstream_headers, self.scope["query_string"])
        last: _Failed | None = None
        skipped: list[str] = []
        spill_to: str | None = None
        jumped_to: str | None = None
        position = -1
        while position + 1 < len(chain):
            position += 1
            model = chain[position]
            if self.remaining() <= 0 or (last is not None and last.final):
                break
            if position > 0 and model != jumped_to:
                reason = self.capabilities.registry.can_serve(model, self.needs)
                if reason is not None:  # semantic drift: never a degraded answer
                    log.info("skipping %s for this request: %s", model, reason)
                    continue
            if model != spill_to:
                shed = await self._gate(model)
                if shed is not None:
                    # A quota condition is backpressure: answer 429, and move to another model
                    # only as opt-in spillover that the next model's own budget admits.
                    following = chain[position + 1] if position + 1 < len(chain) else None
                    if (
                        following is None
                        or not self.coordinator.may_spill(following)
                        or await self._gate(following) is not None
                    ):
                        await self._send_shed(model, shed)
                        return
                    spill_to = following
                    self._passed_over = self._passed_over or "spillover"
                    continue
            admission = await self.coordinator.admit(model)
            if admission is None:
                skipped.append(model)
                self._passed_over = self._passed_over or "breaker_open"
                continue
            failed = await self._try_model(admission, position)
            if failed is None:
                if model != chain[0]:
                    self.telemetry.failover(
                        requested, chain[0], model, self._passed_over or "failure"
                    )
                return
            if failed.larger is not None and jumped_to is None:
                # Input too long for this model: once, to a larger-context model of the chain.
                jumped_to = failed.larger
                self._passed_over = self._passed_over or "input_too_long"
                position = chain.index(failed.larger) - 1
                last = failed
                continue
            if failed.answer_now:
                await self._send_failure(failed)
                return
            last = failed
        if last is not None:
            await self._send_failure(last)
        elif self.remaining() <= 0:
            await self._send_error(504, "The request's deadline passed before any model answered.")
        else:
            await self._send_unavailable(requested, skipped)

    @functools.cached_property
    def _checks_json(self) -> bool:
        """A unary answer to a JSON-mode request is checked before it is sent."""
        if self.path.method != "generateContent" or not isinstance(self.body, bytes):
            return False
        return b"application/json" in self.body and self.needs.expects_json

    @functools.cached_property
    def _upstream_headers(self) -> Headers:
        """The request's headers as every attempt sends them upstream (built once)."""
        scope = self.scope
        headers = upstream_request_headers(
            scope["headers"], scope["query_string"], self.settings.upstream.api_key
        )
        if self.path.is_generate:
            # Streams and JSON answers are checked as they pass, and every answer's usage is
            # read from it: they must come uncompressed (answers are text, and small).
            headers = [h for h in headers if h[0] != b"accept-encoding"]
            headers.append((b"accept-encoding", b"identity"))
        return headers

    @functools.cached_property
    def needs(self) -> RequestNeeds:
        """What the request needs from a model (parsed once, only when a fallback is weighed)."""
        return needs_of_body(self._body_bytes)

    async def _gate(self, model: str) -> Shed | None:
        """The quota checks before a model is tried: cooldown, pacing, throttle (no Redis
        call), then the model's cluster budget when it has one."""
        shed = self.coordinator.quota_gate(self.credential, model)
        if shed is None and self.coordinator.has_budget(model):
            size = len(self.body) if isinstance(self.body, bytes) else 0
            shed = await self.coordinator.budget_gate(model, tokens=max(1, size // 4))
        return shed

    async def _try_model(self, admission: Admission, position: int) -> _Failed | None:
        """Attempts on one model, with backoff between them; None once answered."""
        limits = self.settings.model_settings(admission.model)
        tries = 0
        waited_out_429 = False
        while True:
            tries += 1
            failed = await self._attempt(admission, limits, position)
            if failed is not None and failed.rate_limit is not None:
                if waited_out_429 or not await self._wait_out(failed):
                    await self._send_failure(failed)
                    return None
                waited_out_429 = True
                shed = self.coordinator.quota_gate(self.credential, admission.model, waited=True)
                if shed is not None:
                    await self._send_shed(admission.model, shed)
                    return None
                tries -= 1  # a 429 is not a failed try of the model
                continue
            if failed is not None and self._hold is not None and self._hold.request_fault():
                # The same failure on two models: the request's own, so no model is to blame.
                log.info("%s failed the same way on two models: answering it", self.path.method)
                return dataclasses.replace(failed, answer_now=True)
            if failed is None or failed.final or failed.answer_now or failed.larger:
                return failed
            if failed.deadline_missed:
                return failed
            if admission.probe or tries >= limits.max_attempts:
                return failed
            if not self.coordinator.still_admits(admission) or not self.budget.try_spend():
                return failed
            delay = random.uniform(
                0, min(limits.backoff_max, limits.backoff_initial * 2 ** (tries - 1))
            )
            if delay >= self.remaining():
                return failed
            self.telemetry.retry(admission.model, "failure")
            await asyncio.sleep(delay)
            if not self.coordinator.still_admits(admission):
                return failed

    async def _attempt(
        self, admission: Admission, limits: ModelSettings, position: int
    ) -> _Failed | None:
        """One upstream attempt, inside its own span."""
        with self.telemetry.attempt(
            admission.model,
            self.attempts + 1,
            retry=admission.model == self._last_model,
            failover=position > 0,
            probe=admission.probe,
            method=self.path.method,
        ) as span:
            self._span = span
            self._last_model = admission.model
            return await self._attempt_once(admission, limits, position)

    async def _attempt_once(
        self, admission: Admission, limits: ModelSettings, position: int
    ) -> _Failed | None:
        model = admission.model
        span = self._span
        assert span is not None
        wait, kind = self._start_wait(model, limits)
        remaining = self.remaining()
        cut_by_deadline = remaining < wait
        self.attempts += 1
        self.coordinator.quota_requested(self.credential, model)
        sent_at = self._loop.time()
        try:
            response = await self._open(
                self.path.path_for(model), limits, headers_timeout=max(min(wait, remaining), 0.001)
            )
        except UpstreamBusy as exc:  # the proxy's own pool, not the model's fault
            span.outcome("busy", error_type=type(exc).__name__)
            return _Failed(model, error=exc, final=True)
        except OriginUnreachable as exc:  # no model of this upstream can help; none is to blame
            span.outcome("unreachable", error_type=type(exc).__name__)
            return _Failed(model, error=exc, final=True)
        except UpstreamTimeout as exc:
            if cut_by_deadline:  # the client's deadline, not the model, ran out
                return _Failed(
                    model,
                    error=UpstreamTimeout(
                        f"The request's deadline passed while waiting for {model}."
                    ),
                    final=True,
                )
            poison = self._failed_attempt(admission, type(exc).__name__)
            span.outcome(Verdict.FAILURE.value, error_type=type(exc).__name__)
            if exc.deadline is None:  # connecting timed out: worth another connection
                return _Failed(model, error=exc, answer_now=poison)
            self._deadline_missed(model, kind, wait)
            return _Failed(model, error=exc, deadline_missed=True, answer_now=poison)
        except UpstreamError as exc:
            poison = self._failed_attempt(admission, type(exc).__name__)
            span.outcome(Verdict.FAILURE.value, error_type=type(exc).__name__)
            return _Failed(model, error=exc, answer_now=poison)
        span.responded(response.status_code)
        if response.status_code == 404:
            self.coordinator.quota_not_found(self.credential, model)
        verdict = classify_status(response.status_code)
        span.outcome(verdict.value)
        if verdict is not Verdict.FAILURE and self._hold is not None:
            self._hold.settle()  # the request is served by this model (or answered as it is)
        if verdict is Verdict.RATE_LIMITED:
            failed = await self._keep_failure(model, response, limits)
            limit = parse_rate_limit(failed.body, response.headers.get("retry-after"))
            delay = self.coordinator.rate_limited(self.credential, model, limit)
            if limit.per_day:
                self.telemetry.quota_alert(model)
            return dataclasses.replace(failed, rate_limit=limit, retry_after=delay)
        if verdict is Verdict.FAILURE:
            poison = self._failed_attempt(admission, str(response.status_code))
            kept = await self._keep_failure(model, response, limits)
            return dataclasses.replace(kept, answer_now=True) if poison else kept
        if response.status_code == 400:
            return await self._client_error(admission, response, limits)
        if verdict is Verdict.SUCCESS and self._checks_json:
            return await self._checked_json(admission, response, limits, position)
        if verdict is Verdict.CREDENTIAL:
            self.telemetry.credential_alert(model, response.status_code)
            log.warning(
                "credential alert: %s answered %d for %s; check the API key",
                self.upstream.host,
                response.status_code,
                model,
            )
        headers = [
            (MODEL_HEADER, model.encode()),
            (FALLBACKS_HEADER, str(position).encode()),
            (ATTEMPTS_HEADER, str(self.attempts).encode()),
        ]
        if self._sse and response.status_code == 200:
            return await self._relay_sse(
                response, admission, limits, position, headers, (sent_at, wait, kind)
            )
        self.served_by = model
        completed = await self._relay(response, limits, headers)
        self.coordinator.record(admission, verdict if completed else Verdict.FAILURE)
        return None

    def _start_wait(self, model: str, limits: ModelSettings) -> tuple[float, str]:
        """How long an attempt on ``model`` may wait for its answer to start, and the name of
        that limit: a stream's first event (learned, else the ceiling), a unary answer's
        budget (headers and body come together), or other calls' response headers."""
        if not self.path.is_generate:
            return limits.headers_timeout, HEADERS
        ceiling = self.settings.first_event_ceiling(model)
        if self.path.method == "streamGenerateContent":
            wait = self.deadlines.first_event(model, limits.first_event_learning, ceiling)
            return wait, LEARNED if wait < ceiling else FIRST_EVENT
        budget = unary_budget(
            ceiling, self._max_output_tokens, limits.min_tokens_per_second, limits.unary_timeout
        )
        return budget, FIRST_EVENT

    def _first_event_wait(self, model: str) -> float:
        """A stream's first-event wait on ``model`` (for continuations)."""
        limits = self.settings.model_settings(model)
        ceiling = self.settings.first_event_ceiling(model)
        return self.deadlines.first_event(model, limits.first_event_learning, ceiling)

    @functools.cached_property
    def _max_output_tokens(self) -> int | None:
        return max_output_tokens(self._body_bytes)

    def _deadline_missed(self, model: str, kind: str, waited: float) -> None:
        """Say which limit ran out (log, metric); a miss of a learned deadline widens it."""
        if kind == LEARNED:
            self.deadlines.missed(model)
        self.telemetry.deadline_miss(model, kind)
        log.warning("%s: no answer within the %s deadline (%.3g s)", model, kind, waited)

    async def _client_error(
        self, admission: Admission, response: UpstreamResponse, limits: ModelSettings
    ) -> _Failed:
        """A 400 goes back as it is, unless it says the input is too long for this model and
        the chain has a larger-context model: then the request moves there, once."""
        model = admission.model
        kept = await self._keep_failure(model, response, limits)
        registry = self.capabilities.registry
        too_long = registry.learn_from_error(model, kept.status, kept.body)
        if too_long is not None:
            needs = self.needs.with_input_tokens(too_long.token_count or 0)
            chain = self.coordinator.chain_for(self.path.model or model)
            following = list(chain[chain.index(model) + 1 :]) if model in chain else []
            await self.capabilities.ensure_known(
                following,
                self._upstream_headers,
                self.scope["query_string"],
                min(LIMIT_LOOKUP_WAIT, self.remaining()),
            )
            larger = registry.larger_context(chain, model, needs)
            if larger is not None:
                log.info("input too long for %s: moving the request to %s", model, larger)
                return dataclasses.replace(kept, larger=larger)
        return dataclasses.replace(kept, answer_now=True)

    async def _checked_json(
        self,
        admission: Admission,
        response: UpstreamResponse,
        limits: ModelSettings,
        position: int,
    ) -> _Failed | None:
        """A JSON-mode answer is read whole and checked against the requested schema before
        it is sent: an answer that is not valid JSON, or breaks the schema, is a failure of
        the model and the chain moves on."""
        model = admission.model
        kept = await self._keep_failure(model, response, limits, MAX_CHECKED_ANSWER_BYTES)
        problem = json_answer_problem(kept.body, self.needs)
        if problem is not None:
            self.coordinator.record(admission, Verdict.FAILURE)
            self.telemetry.schema_drift(model)
            log.warning("schema drift from %s: %s", model, problem)
            return _Failed(
                model,
                error=UpstreamBodyError(
                    f"The answer from {model} did not match the requested JSON: {problem}",
                    status=502,
                ),
            )
        self.coordinator.record(admission, Verdict.SUCCESS)
        self.served_by = model
        await self._send_failure(
            dataclasses.replace(kept, status=response.status_code),
            [(FALLBACKS_HEADER, str(position).encode())],
        )
        return None

    async def _relay_sse(
        self,
        response: UpstreamResponse,
        admission: Admission,
        limits: ModelSettings,
        position: int,
        headers: Headers,
        start: tuple[float, float, str],
    ) -> _Failed | None:
        """A stream, checked event by event; continued on the next model if it breaks.
        ``start``: when the attempt was sent, how long its first event may take, and the name
        of that limit."""
        model = admission.model
        sent_at, wait, kind = start
        relay = SseRelay(self.upstream, self.coordinator, self.send, self.deadline, self._count)
        relay.first_event_at = sent_at + wait
        span = self._span
        deadlines = self.deadlines

        def first_event() -> None:
            deadlines.succeeded(
                model,
                limits.first_event_learning,
                self.settings.first_event_ceiling(model),
                self._loop.time() - sent_at,
            )
            if span is not None:
                span.first_token()

        relay.on_first_event = first_event
        relay.served_by = model
        before_first_byte = await relay.first(response, limits, headers)
        if before_first_byte is not None:
            poison = self._failed_attempt(admission, f"stream {before_first_byte.status}")
            if before_first_byte.deadline == FIRST_EVENT:
                self._deadline_missed(model, kind, wait)
                message = f"{model} sent no first event within {wait:.3g} s."
                error = UpstreamBodyError(message, 504, kind)
                return _Failed(model, error=error, deadline_missed=True, answer_now=poison)
            return _Failed(
                model,
                error=UpstreamBodyError(before_first_byte.message, before_first_byte.status),
                answer_now=poison,
            )
        self.status, self.served_by = 200, model
        if span is not None:
            span.usage(relay.delivered.usage)
        if relay.broken is None:
            self.coordinator.record(admission, Verdict.SUCCESS)
            self._check_streamed_json(relay)
            self._finishing = True
            await relay.finish()
            return None
        self.coordinator.record(admission, Verdict.FAILURE)
        if relay.broken.deadline == GAP:
            self.telemetry.deadline_miss(model, GAP)
        log.warning("stream from %s broke after it started: %s", model, relay.broken.message)
        requested = self.path.model or model
        if self.settings.on_stream_break(requested) == "continue" and isinstance(self.body, bytes):
            chain = self.coordinator.chain_for(requested)
            continuation = Continuation(
                models=list(chain[position + 1 :]),
                build_body=lambda text: continuation_body(self._body_bytes, text),
                open=self._open_continuation,
                admit=self._admit_continuation,
                limits=self.settings.model_settings,
                first_event=self._first_event_wait,
            )
            continued = await relay.continue_on(continuation, relay.broken)
            self.telemetry.stream_continuation(model, relay.served_by if continued else None)
            if continued:
                self.served_by = relay.served_by
                self._check_streamed_json(relay)
                self._finishing = True
                await relay.finish()
                return None
        self._finishing = True
        await relay.fail(relay.broken)
        return None

    def _check_streamed_json(self, relay: SseRelay) -> None:
        """A streamed JSON answer can only be checked once it is whole, when it has already
        reached the client: drift is logged and counted, not undone."""
        if not (isinstance(self.body, bytes) and b"application/json" in self.body):
            return
        if not self.needs.expects_json or not relay.delivered.text:
            return
        problem = check_json_answer(relay.delivered.text, self.needs)
        if problem is not None:
            model = relay.served_by or "?"
            self.telemetry.schema_drift(model, streamed=True)
            log.warning("schema drift in a stream from %s: %s", model, problem)

    def _failed_attempt(self, admission: Admission, sign: str) -> bool:
        """Hold a failed attempt's verdict until the request's fate is known (``FailureHold``);
        True when the request is known poison and is to be answered now."""
        hold = self._hold
        if hold is None:
            body = self.body if isinstance(self.body, bytes) else None
            hold = FailureHold(self.coordinator, self.path.method or "", self.credential, body)
            self._hold = hold
        hold.hold(admission, sign)
        return hold.known_poison

    def _count(self) -> None:
        self.attempts += 1

    @property
    def _body_bytes(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else b""

    async def _open_continuation(
        self, model: str, limits: ModelSettings, body: bytes
    ) -> UpstreamResponse:
        wait = self._first_event_wait(model)
        return await self._open(self.path.path_for(model), limits, body, wait)

    async def _admit_continuation(self, model: str) -> Admission | None:
        """A model may continue a stream when it can serve the request, accepts a prefill,
        and its quota and breaker admit it."""
        reason = self.capabilities.registry.can_continue(model, self.needs)
        if reason is not None:
            log.info("%s cannot continue this stream: %s", model, reason)
            return None
        if self.coordinator.quota_gate(self.credential, model) is not None:
            return None
        return await self.coordinator.admit(model)

    async def _keep_failure(
        self,
        model: str,
        response: UpstreamResponse,
        limits: ModelSettings,
        most: int = MAX_KEPT_ERROR_BYTES,
    ) -> _Failed:
        """Read a response's body (an error's, or an answer to check) and close it."""
        parts: list[bytes] = []
        size = 0
        try:
            async for chunk in self.upstream.iter_body(response, limits, self.deadline):
                size += len(chunk)
                if size > most:
                    break
                parts.append(chunk)
        except UpstreamBodyError:
            pass
        finally:
            await response.aclose()  # never suspends, so a cancellation cannot cut it short
        headers = [
            (name, value)
            for name, value in client_response_headers(response.headers.raw)
            if name != b"content-length"
        ]
        return _Failed(model, status=response.status_code, headers=headers, body=b"".join(parts))

    # -- sending ------------------------------------------------------------------------------

    async def _open(
        self,
        path: str,
        limits: ModelSettings,
        body: bytes | None = None,
        headers_timeout: float | None = None,
    ) -> UpstreamResponse:
        scope = self.scope
        return await self.upstream.open(
            scope["method"],
            path,
            scope["query_string"],
            self._upstream_headers,
            self.body if body is None else body,
            limits,
            headers_timeout,
        )

    async def _relay(
        self, response: UpstreamResponse, limits: ModelSettings, extra: Headers
    ) -> bool:
        """Stream the response to the client; False if its body broke off."""
        try:
            headers = client_response_headers(response.headers.raw)
            if response.headers.get("x-goog-upload-url"):
                headers = self._rewrite_upload_url(headers)
            headers.extend(extra)
            self.status = response.status_code
            send = self.send
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": headers}
            )
            # The end of a unary answer carries its usageMetadata: keep the last few KiB.
            keep_tail = self._span is not None and self.path.is_generate and not self._sse
            tail = b""
            try:
                async for chunk in self.upstream.iter_body(response, limits, self.deadline):
                    if keep_tail:
                        tail = (
                            chunk[-USAGE_TAIL_BYTES:]
                            if len(chunk) >= USAGE_TAIL_BYTES
                            else (tail + chunk)[-USAGE_TAIL_BYTES:]
                        )
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except UpstreamBodyError as exc:
                log.warning("upstream response broke off: %s", exc.message)
                if exc.deadline == GAP and self.served_by is not None:
                    self.telemetry.deadline_miss(self.served_by, GAP)
                if _is_plain_sse(response):
                    # The SDK raises on an in-band error event; a silent close would look whole.
                    self._finishing = True
                    await send(
                        {
                            "type": "http.response.body",
                            "body": sse_error_event(exc.status, exc.message),
                            "more_body": False,
                        }
                    )
                # Otherwise return without completing the response: the server then closes
                # the connection mid-body, and the client sees a truncated body as an error.
                return False
            self._finishing = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            if keep_tail and self._span is not None and response.status_code == 200:
                self._span.usage(usage_from_tail(tail))
            return True
        finally:
            # Never suspends: closing finishes even when the client's disconnect cancelled us.
            await response.aclose()

    async def _send_failure(self, failed: _Failed, more: Headers | None = None) -> None:
        """Send a kept answer (an upstream error, or a checked answer) or the proxy's error."""
        self.served_by = failed.model
        extra = [
            (MODEL_HEADER, failed.model.encode()),
            (ATTEMPTS_HEADER, str(self.attempts).encode()),
            *(more or []),
        ]
        if failed.error is not None:
            await self._send_error(failed.error.status, failed.error.message, extra)
            return
        self.status = failed.status
        self._finishing = True
        if failed.rate_limit is not None:
            # Gemini sends no Retry-After; clients and SDK retry helpers understand one.
            extra.append((b"retry-after", str(max(1, math.ceil(failed.retry_after))).encode()))
        headers = [
            *(h for h in failed.headers if h[0] != b"retry-after"),
            (b"content-length", str(len(failed.body)).encode()),
            *extra,
        ]
        await self.send(
            {"type": "http.response.start", "status": failed.status, "headers": headers}
        )
        await self.send({"type": "http.response.body", "body": failed.body})

    async def _wait_out(self, failed: _Failed) -> bool:
        """Wait out a 429's delay before the one retry, when the deadline, the configured
        longest wait and the retry budget all allow it; False to answer the 429 now."""
        limit = failed.rate_limit
        if limit is None or limit.per_day or limit.retry_delay is None:
            return False
        longest = min(self.settings.quota.max_retry_wait, self.remaining() - 0.05)
        left = max(limit.retry_delay, self.coordinator.cooldown_left(self.credential, failed.model))
        if left > longest or not self.budget.try_spend():
            return False
        self.telemetry.retry(failed.model, "rate_limited")
        waited = 0.0
        for _ in range(3):
            await asyncio.sleep(left)
            waited += left
            # The cluster's cooldown can end a little after this 429's own delay (its clock
            # started when the script ran), or be extended by other 429s meanwhile.
            left = self.coordinator.cooldown_left(self.credential, failed.model)
            if left <= CLOCK_TOLERANCE:
                return True
            if waited + left > longest:
                return False
        return False

    async def _send_shed(self, model: str, shed: Shed) -> None:
        self.telemetry.shed(model, shed.reason)
        self.served_by = model
        self.status = 429
        self._finishing = True
        body = shed_body(model, shed.retry_after, shed.message, shed.quota_id)
        seconds = str(max(1, math.ceil(shed.retry_after))).encode()
        await self.send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", JSON_CONTENT_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", seconds),
                    date_header(),
                    (MODEL_HEADER, model.encode()),
                    (SHED_HEADER, shed.reason.encode()),
                ],
            }
        )
        await self.send({"type": "http.response.body", "body": body})

    async def _send_unavailable(self, requested: str, skipped: list[str]) -> None:
        self.telemetry.shed(requested, "breakers_open")
        """Every model of the chain is open: shed at once, saying when to come back."""
        now = self.coordinator.mirror.store_now_ms()
        waits = [
            breaker.open_until_ms - now
            for breaker in map(self.coordinator.mirror.breaker, skipped)
            if breaker.state == OPEN
        ]
        retry_after = max(1, math.ceil(min(waits) / 1000)) if waits else 1
        await self._send_error(
            503,
            f"No model of the route for {requested} is available right now: "
            f"{', '.join(skipped)} are not admitting requests (circuit breakers open). "
            f"Retry in {retry_after} s.",
            [(b"retry-after", str(retry_after).encode())],
        )

    async def _send_error(self, code: int, message: str, extra: Headers | None = None) -> None:
        self.status = code
        self._finishing = True
        await send_error(self.send, code, message, headers=extra)

    def _rewrite_upload_url(self, headers: Headers) -> Headers:
        origin = request_origin(
            self.scope["scheme"], self.scope["headers"], self.scope.get("server")
        )
        return [
            (
                name,
                rewrite_upload_url(
                    value.decode("latin-1"), self.upstream.base_url, origin, self.path.prefix
                ).encode("latin-1"),
            )
            if name == UPLOAD_URL_HEADER
            else (name, value)
            for name, value in headers
        ]


def _is_plain_sse(response: UpstreamResponse) -> bool:
    content_type = response.headers.get("content-type", "")
    return content_type.startswith("text/event-stream") and not response.headers.get(
        "content-encoding"
    )
