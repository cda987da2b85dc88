"""One request's trip upstream and back: admission, attempts, and carrying out the policy.

Each attempt comes to a typed outcome (``outcomes``); ``policy.after_attempt`` decides what
follows (retry after a backoff, wait out a 429, next model, a larger-context model, answer
now); this module does the I/O around that: the quota gate and breaker admission for each
model of the chain, the upstream call, the relay of the answer (``unary_relay``,
``stream_relay``) or the proxy's own answer (``respond``). Breaker outcomes go through the
request's ``BreakerReport`` only.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import AsyncIterable
from dataclasses import dataclass

from starlette.types import Receive, Scope, Send

from ..cluster.coordinator import CLOCK_TOLERANCE, Admission, Coordinator, Shed
from ..cluster.state import OPEN
from ..config import ModelSettings, Settings
from ..dialects import Dialect, Framing, RequestRoute
from ..dialects.vertex import model_of, shared_capacity
from ..gemini.features import RequestNeeds
from ..telemetry import AttemptSpan, Telemetry
from ..transport.asgi_io import BodyTooLarge, ClientDisconnected
from ..transport.headers import Headers
from ..transport.origins import OriginPools
from ..transport.upstream import (
    Upstream,
    UpstreamError,
    UpstreamResponse,
)
from . import unary_relay
from .attempt import attempt
from .breaker_report import BreakerReport
from .capability_lookup import CapabilityLookup
from .deadlines import LEARNED, DeadlineBook, max_output_tokens
from .outcomes import (
    Failed,
    KeptAnswer,
    RateLimited,
    Reply,
    Served,
)
from .policy import (
    DONE,
    Answer,
    Decision,
    Done,
    LargerModel,
    NextModel,
    Retry,
    Situation,
    WaitOut,
    after_attempt,
    backoff_ceiling,
    next_location_on_429,
    when_chain_ends,
)
from .respond import (
    CLIENT_CLOSED,
    Responder,
    unavailable_retry_after,
)
from .retry_budget import RetryBudget

log = logging.getLogger("gemini_breaker.forwarding")

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
    dialect: Dialect
    origins: OriginPools
    """Upstreams for the origins a dialect picks per request (Vertex locations)."""


class Exchange:
    """Serves one request. ``status``, ``served_by``, ``attempts`` and ``fallbacks`` describe
    how it went."""

    def __init__(
        self,
        services: Services,
        scope: Scope,
        send: Send,
        route: RequestRoute,
        body: bytes | AsyncIterable[bytes],
        deadline: float,
    ) -> None:
        self.services = services
        self.upstream = services.upstream
        self.coordinator = services.coordinator
        self.settings = services.settings
        self.telemetry = services.telemetry
        self.scope = scope
        self.route = route
        self.body = body
        self.deadline = deadline
        self.client = Responder(send, services.dialect)
        self.served_by: str | None = None
        self.attempts = 0
        self.fallbacks: int | None = None
        """How far down the chain the model that answered was (0: the first), once one did."""
        self.credential = services.dialect.credential(
            scope["headers"], scope["query_string"], services.settings.upstream.api_key
        )
        """Digest of the credential this request uses: its 429 conditions are its own."""
        self.report = BreakerReport(
            services.coordinator,
            route.method or "",
            self.credential,
            body if isinstance(body, bytes) else None,
        )
        self.sse = services.dialect.framing(route, scope["query_string"]) is not Framing.NONE
        self._moved_on_429 = False
        """The last model's 429 moved the request to the same model in the next location."""
        self._passed_over: str | None = None
        """Why the chain's first model did not serve (for the failover metric)."""
        self.last_model: str | None = None
        self.span: AttemptSpan | None = None
        self.loop = asyncio.get_running_loop()

    @property
    def status(self) -> int:
        return self.client.status

    def remaining(self) -> float:
        return self.deadline - self.loop.time()

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
            if not self.client.finishing:
                gone = True
                self.client.status = CLIENT_CLOSED
                task.cancel()

        watcher = self.loop.create_task(watch())
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
            if self.route.model is not None and self.route.method in ROUTED_METHODS:
                await self._route(self.route.model)
            else:
                await self._pass_through()
        except ClientDisconnected:
            self.client.status = CLIENT_CLOSED
        finally:
            self.report.finish()

    async def _pass_through(self) -> None:
        """A call no route applies to: to the model (or resource) the client named, once."""
        limits = self.settings.model_settings(self.route.model)
        self.attempts = 1
        try:
            response = await self.open(self.route.model, limits)
        except BodyTooLarge as exc:
            await self.client.error(413, exc.args[0])
            return
        except UpstreamError as exc:
            await self.client.error(exc.status, exc.message)
            return
        await unary_relay.relay(
            self.upstream,
            self.client,
            response,
            limits,
            self.deadline,
            self.answer_headers(response),
        )

    # -- the chain ----------------------------------------------------------------------------

    async def _route(self, requested: str) -> None:
        chain = self.coordinator.chain_for(requested)
        self.services.budget.record_request()
        capabilities = self.services.capabilities
        capabilities.look_up(chain, self.lookup_headers, self.scope["query_string"])
        last: Reply | None = None
        skipped: list[str] = []
        spill_to: str | None = None
        jumped_to: str | None = None
        # After a 429 moved the request to another location: the model it may not leave, and
        # the cooldown it moved away from (answered if no location of the model takes it).
        held_to: str | None = None
        held_shed: tuple[str, Shed] | None = None
        position = -1
        while position + 1 < len(chain) and self.remaining() > 0:
            position += 1
            model = chain[position]
            if held_to is not None and model_of(model) != held_to:
                break  # a 429 never moves to a weaker model
            if position > 0 and model != jumped_to:
                reason = capabilities.registry.can_serve(model, self.needs)
                if reason is not None:  # semantic drift: never a degraded answer
                    log.info("skipping %s for this request: %s", model, reason)
                    continue
            if model != spill_to:
                shed = await self._gate(model)
                if shed is not None and self._next_location(position, shed.shared_capacity):
                    # Cooling down after a 429 on shared capacity: the same model in the next
                    # location may have it (no attempt here, so nothing for the breaker).
                    self._passed_over = self._passed_over or "rate_limited"
                    held_to, held_shed = model_of(model), (model, shed)
                    continue
                if shed is not None:
                    # A quota condition is backpressure: answer 429, and move to another model
                    # only as opt-in spillover that the next model's own budget admits.
                    following = chain[position + 1] if position + 1 < len(chain) else None
                    if (
                        following is None
                        or not self.coordinator.may_spill(following)
                        or await self._gate(following) is not None
                    ):
                        await self._shed(model, shed)
                        return
                    spill_to = following
                    self._passed_over = self._passed_over or "spillover"
                    continue
            admission = await self.coordinator.admit(model)
            if admission is None:
                skipped.append(model)
                self._passed_over = self._passed_over or "breaker_open"
                continue
            self.report.admitted(admission)
            self._moved_on_429 = False
            decision = await self._try_model(admission, position, jumped_to is not None)
            # Once a location was tried, its outcome decides (a failure there fails over as
            # any failure does); a 429 that moves again holds the request to the model.
            held_to = model_of(model) if self._moved_on_429 else None
            held_shed = None
            if isinstance(decision, Done):
                self.fallbacks = position
                if model != chain[0]:
                    self.telemetry.failover(
                        requested, chain[0], model, self._passed_over or "failure"
                    )
                return
            if isinstance(decision, Answer):
                await self._answer(decision.reply)
                return
            if isinstance(decision, LargerModel):
                # Input too long for this model: once, to a larger-context model of the chain.
                jumped_to = decision.model
                self._passed_over = self._passed_over or "input_too_long"
                position = chain.index(decision.model) - 1
            assert not isinstance(decision, (Done, Retry, WaitOut))
            last = decision.reply
        if last is None and held_shed is not None:
            await self._shed(*held_shed)
            return
        end = when_chain_ends(last, self.remaining())
        if end == "deadline":
            await self.client.error(504, "The request's deadline passed before any model answered.")
        elif end == "unavailable":
            await self._unavailable(requested, skipped)
        else:
            assert last is not None
            await self._answer(last)

    async def _gate(self, model: str) -> Shed | None:
        """The quota checks before a model is tried: cooldown, pacing, throttle (no Redis
        call), then the model's cluster budget when it has one."""
        shed = self.coordinator.quota_gate(self.credential, model)
        if shed is None and self.coordinator.has_budget(model):
            size = len(self.body) if isinstance(self.body, bytes) else 0
            shed = await self.coordinator.budget_gate(model, tokens=max(1, size // 4))
        return shed

    async def _try_model(self, admission: Admission, position: int, jumped: bool) -> Decision:
        """Attempts on one model, as the policy decides; ``DONE`` once the client has its
        answer, else how the chain goes on."""
        model = admission.model
        limits = self.settings.model_settings(model)
        coordinator, budget = self.coordinator, self.services.budget
        tries = 0
        waited_out_429 = False
        while True:
            tries += 1
            outcome = await attempt(self, admission, limits, position)
            if isinstance(outcome, Served):
                return DONE
            request_fault = False
            if not isinstance(outcome, RateLimited):
                request_fault = self.report.request_fault()
                if request_fault:
                    log.info(
                        "%s failed the same way on two models: answering it", self.route.method
                    )
            ceiling = backoff_ceiling(tries, limits.backoff_initial, limits.backoff_max)
            now = Situation(
                tries=tries,
                max_attempts=limits.max_attempts,
                remaining=self.remaining(),
                backoff=random.uniform(0, ceiling),
                probe=admission.probe,
                still_admits=coordinator.still_admits(admission),
                budget_left=budget.can_spend(),
                request_fault=request_fault,
                waited_out_429=waited_out_429,
                jumped=jumped,
                cooldown_left=coordinator.cooldown_left(self.credential, model),
                longest_wait=self.settings.quota.max_retry_wait,
            )
            decision = after_attempt(outcome, now)
            if isinstance(outcome, RateLimited) and self._next_location(
                position, shared_capacity(outcome.limit)
            ):
                self._passed_over = self._passed_over or "rate_limited"
                self._moved_on_429 = True
                return NextModel(outcome.reply)
            if isinstance(decision, WaitOut):
                assert isinstance(outcome, RateLimited)
                budget.try_spend()
                if not await self._wait_out(model, decision):
                    await self._answer(outcome.reply, outcome.retry_after)
                    return DONE
                waited_out_429 = True
                shed = coordinator.quota_gate(self.credential, model, waited=True)
                if shed is not None:
                    await self._shed(model, shed)
                    return DONE
                tries -= 1  # a 429 is not a failed try of the model
            elif isinstance(decision, Retry):
                assert isinstance(outcome, Failed)
                budget.try_spend()
                self.telemetry.retry(model, "failure")
                await asyncio.sleep(decision.delay)
                if not coordinator.still_admits(admission):
                    return NextModel(outcome.reply)
            elif isinstance(decision, Answer) and isinstance(outcome, RateLimited):
                # Answered on this model: not a failover the chain goes on from.
                await self._answer(outcome.reply, outcome.retry_after)
                return DONE
            else:
                return decision

    def _next_location(self, position: int, shared: bool) -> bool:
        """Whether a 429 (``shared``: on Vertex's shared capacity) at ``position`` of the chain
        moves to the same model in the next location (``policy.next_location_on_429``)."""
        requested = self.route.model
        if requested is None:
            return False
        return next_location_on_429(
            self.coordinator.chain_for(requested),
            position,
            self.settings.moves_location_on_429(requested),
            shared,
        )

    async def _wait_out(self, model: str, wait: WaitOut) -> bool:
        """Wait out a 429's delay; False if the cluster's cooldown outlasts the longest wait."""
        self.telemetry.retry(model, "rate_limited")
        left, waited = wait.seconds, 0.0
        for _ in range(3):
            await asyncio.sleep(left)
            waited += left
            # The cluster's cooldown can end a little after this 429's own delay (its clock
            # started when the script ran), or be extended by other 429s meanwhile.
            left = self.coordinator.cooldown_left(self.credential, model)
            if left <= CLOCK_TOLERANCE:
                return True
            if waited + left > wait.longest:
                return False
        return False

    def deadline_missed(self, model: str, kind: str, waited: float) -> None:
        """Say which limit ran out (log, metric); a miss of a learned deadline widens it."""
        if kind == LEARNED:
            self.services.deadlines.missed(model)
        self.telemetry.deadline_miss(model, kind)
        log.warning("%s: no answer within the %s deadline (%.3g s)", model, kind, waited)

    # -- the request, as every attempt sends it -----------------------------------------------

    @functools.cached_property
    def upstream_headers(self) -> Headers:
        """The request's headers as every attempt sends them upstream (built once)."""
        scope = self.scope
        headers = self.services.dialect.upstream_headers(
            scope["headers"], scope["query_string"], self.settings.upstream.api_key
        )
        if self.route.is_generate:
            # Streams and JSON answers are checked as they pass, and every answer's usage is
            # read from it: they must come uncompressed (answers are text, and small).
            headers = [h for h in headers if h[0] != b"accept-encoding"]
            headers.append((b"accept-encoding", b"identity"))
        return headers

    @functools.cached_property
    def lookup_headers(self) -> Headers:
        """The headers of the proxy's own look-ups of a model (``GET models/{m}``, Gemini's
        native API), with the request's credential."""
        return self.services.dialect.native_headers(self.upstream_headers)

    @functools.cached_property
    def needs(self) -> RequestNeeds:
        """What the request needs from a model (parsed once, only when a fallback is weighed)."""
        return self.services.dialect.request_needs(self.body_bytes)

    @functools.cached_property
    def max_output_tokens(self) -> int | None:
        return max_output_tokens(self.body_bytes)

    @property
    def body_bytes(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else b""

    async def open(
        self,
        model: str | None,
        limits: ModelSettings,
        body: bytes | None = None,
        headers_timeout: float | None = None,
    ) -> UpstreamResponse:
        """Send the request (or ``body`` instead of its own) to ``model``."""
        scope, dialect = self.scope, self.services.dialect
        sent = self.body if body is None else body
        if model is not None and model != self.route.model and isinstance(sent, bytes):
            sent = dialect.body_for(self.route, sent, model)
        origin = dialect.origin(self.route, model)
        upstream = self.upstream if origin is None else self.services.origins.upstream(origin)
        return await upstream.open(
            scope["method"],
            dialect.upstream_path(self.route, model),
            scope["query_string"],
            self.upstream_headers,
            sent,
            limits,
            headers_timeout,
        )

    async def keep(
        self, model: str, response: UpstreamResponse, limits: ModelSettings, most: int = 0
    ) -> KeptAnswer:
        """Read a response whole (an error to relay later, or an answer to check)."""
        most = most or unary_relay.MAX_KEPT_ERROR_BYTES
        return await unary_relay.keep(self.upstream, model, response, limits, self.deadline, most)

    def answer_headers(self, response: UpstreamResponse, extra: Headers | None = None) -> Headers:
        return unary_relay.answer_headers(
            response, extra or [], self.scope, self.upstream.base_url, self.route.prefix
        )

    # -- the proxy's own answers --------------------------------------------------------------

    async def _answer(self, reply: Reply, retry_after: float | None = None) -> None:
        self.served_by = reply.model
        await self.client.reply(reply, self.attempts, retry_after)

    async def _shed(self, model: str, shed: Shed) -> None:
        self.telemetry.shed(model, shed.reason)
        self.served_by = model
        await self.client.shed(model, shed)

    async def _unavailable(self, requested: str, skipped: list[str]) -> None:
        """Every model of the chain is open: shed at once, saying when to come back."""
        self.telemetry.shed(requested, "breakers_open")
        mirror = self.coordinator.mirror
        now = mirror.store_now_ms()
        waits = [
            breaker.open_until_ms - now
            for breaker in map(mirror.breaker, skipped)
            if breaker.state == OPEN
        ]
        await self.client.unavailable(requested, skipped, unavailable_retry_after(waits))
