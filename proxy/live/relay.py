"""The ASGI app for Live API WebSockets: the setup picks a model by the route's chain and
breakers, then frames go both ways unchanged, with back-pressure on both sockets.

At setup, a refused connection, a 5xx on the upgrade or a close before ``setupComplete``
counts against the model and the next one is tried; a quota close is backpressure (a cooldown
for the credential and model) and reaches the client as it came, and a model the quota gate
sheds (cooling down, paced, throttled, its cluster budget spent) closes the session as Google
closes a quota-exhausted one, unless the route spills over to the next model, as for a call.
Vertex sessions go to the origin of each target's location, their setup's resource rewritten
for it. Mid-session, when the client enabled session resumption and a handle was seen, an
upstream ``goAway`` or drop is resumed on the same model with the last handle, the client
seeing nothing of it; otherwise the client's socket closes with the upstream's code and reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import time
from dataclasses import dataclass

from opentelemetry import context as context_api
from opentelemetry.trace import set_span_in_context
from starlette.types import Message, Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ..client_tokens import ClientTokens, without_credentials
from ..cluster.coordinator import Coordinator
from ..cluster.quota_gate import Shed
from ..config import Settings, VertexSettings
from ..dialects.vertex import model_of, shared_capacity
from ..errors import PipelineError
from ..gemini.quota import rate_limit_of_close
from ..pipeline.breaker_report import BreakerReport
from ..pipeline.forwarding import has_credential
from ..pipeline.outcomes import Verdict
from ..pipeline.policy import next_location_on_429
from ..telemetry import Telemetry
from ..telemetry.names import label
from ..telemetry.session_span import SessionSpan
from ..transport.adc import AdcTokens, CredentialsUnavailable
from ..transport.headers import Headers, credential_scope, upstream_request_headers
from .sessions import LiveSessions
from .vertex import VertexModel, is_vertex, parse_vertex_model
from .wire import (
    BadSetup,
    CloseKind,
    Setup,
    classify_close,
    classify_upgrade_status,
    is_go_away,
    is_setup_complete,
    live_path,
    new_handle,
    parse_setup,
    setup_for,
    upstream_url,
)

log = logging.getLogger("gemini_breaker.live")
access_log = logging.getLogger("gemini_breaker.access")

Frame = str | bytes
# Handshake headers the client library makes itself for the upstream connection.
_HANDSHAKE = frozenset(
    {
        b"host",
        b"upgrade",
        b"connection",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"content-length",
    }
)
SETUP_TIMEOUT = 30.0
"""Longest wait for the client's setup message."""
RESUMES_PER_SESSION = 5
"""Transparent resumptions one session may use (bounded, like every retry)."""


class NoModel(PipelineError):
    """The chain ran out at setup; ``code`` and ``reason`` go to the client."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(slots=True)
class _Ended:
    """How a session ended, for its span and access log line: the close code of the
    client's socket (1008 until a setup was read: a refused upgrade or none sent)."""

    code: int = 1008
    requested: str | None = None
    model: str | None = None
    """The serving model (the last one, after a failover at setup)."""
    resumptions: int = 0


@dataclass(frozen=True, slots=True)
class _Where:
    """Where each target of a session's chain is served, and the model field its setup
    names: the Developer API's one origin, or a Vertex origin per location."""

    path: str
    query: bytes
    base_url: str
    vertex: VertexModel | None
    vertex_settings: VertexSettings

    def url(self, target: str) -> str:
        vertex, settings = self.vertex, self.vertex_settings
        origin = self.base_url if vertex is None else vertex.origin_for(target, settings)
        return upstream_url(origin, self.path, self.query)

    def name(self, target: str) -> str | None:
        return None if self.vertex is None else self.vertex.resource_for(target)


@dataclass(slots=True)
class Upstream:
    """The current upstream socket of a session and the model it serves."""

    socket: ClientConnection
    model: str


class LiveRelay:
    """ASGI app for ``websocket`` scopes; ``coordinator`` is set by the app's lifespan."""

    def __init__(
        self,
        settings: Settings,
        sessions: LiveSessions,
        telemetry: Telemetry,
        adc: AdcTokens | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.telemetry = telemetry
        self.adc = adc or AdcTokens()
        """Tokens for Vertex sessions that bring no credential (shared with HTTP calls)."""
        self.coordinator: Coordinator | None = None
        self.upstream_ssl = _upstream_ssl(settings)
        tokens = settings.server.client_tokens
        self.client_tokens = ClientTokens(tokens) if tokens else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        raw_path: bytes | None = scope.get("raw_path")
        shown = raw_path.decode("latin-1") if raw_path else scope["path"]
        path = live_path(shown)
        if (await receive())["type"] != "websocket.connect":
            return
        # The path alone: a query may carry a key (``key=``, ``access_token=``). A path that is
        # not a Live one is logged, but does not name a span (span names stay a small set).
        route = path or (shown if len(shown) <= 200 else shown[:200] + "...")
        span = self.telemetry.session(scope["headers"], path or "other")
        ended = _Ended()
        # The session's span is current while it runs, so the relay's log lines carry its trace.
        token = context_api.attach(set_span_in_context(span.span))
        try:
            await self._serve(scope, path, receive, send, span, ended)
        finally:
            span.end(ended.code, ended.model, ended.resumptions)
            context_api.detach(token)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "WEBSOCKET %s %d model=%s requested=%s resumptions=%d %.1fms",
                    route,
                    ended.code,
                    ended.model or "-",
                    label(ended.requested) or "-",
                    ended.resumptions,
                    (time.perf_counter() - started) * 1000,
                )

    async def _serve(
        self,
        scope: Scope,
        path: str | None,
        receive: Receive,
        send: Send,
        span: SessionSpan,
        ended: _Ended,
    ) -> None:
        coordinator = self.coordinator
        if path is None or coordinator is None:
            # Before accept: the client sees the upgrade refused (403).
            await send({"type": "websocket.close", "code": 1008})
            return
        headers: Headers = scope["headers"]
        query_string: bytes = scope["query_string"]
        if self.client_tokens is not None:
            # As for every other call: a caller without a client token never spends the key.
            if self.client_tokens.check(headers, query_string) is not None:
                await send({"type": "websocket.close", "code": 1008})
                return
            headers, query_string = without_credentials(headers, query_string)
        await send({"type": "websocket.accept"})
        try:
            async with asyncio.timeout(SETUP_TIMEOUT):
                first = await receive()
        except TimeoutError:
            await _close(send, 1008, "DEADLINE_EXCEEDED: no setup message")
            return
        if first["type"] != "websocket.receive":
            ended.code = first.get("code", 1005)
            return
        frame = frame_of(first)
        vertex_settings = self.settings.vertex
        vertex: VertexModel | None = None
        try:
            setup = parse_setup(frame.encode() if isinstance(frame, str) else frame)
            if is_vertex(path):
                express = any(name == b"x-goog-api-key" for name, _ in headers) or (
                    b"key=" in query_string
                )
                vertex = parse_vertex_model(setup.model, vertex_settings, express)
        except BadSetup as exc:
            ended.code = 1007
            await _close(send, 1007, f"INVALID_ARGUMENT: {exc}")
            return
        route = setup.model if vertex is None else vertex.target
        ended.requested = route
        span.requested(route)
        # Vertex never gets the Developer API's key; a session with no credential of its own
        # gets an ADC token, as a Vertex call does.
        api_key = self.settings.upstream.api_key if vertex is None else None
        injected: bytes | None = None
        if vertex is not None and not has_credential(headers, {"query_string": query_string}):
            try:
                injected = await self.adc.authorization()
                headers = [*headers, (b"authorization", injected)]
            except CredentialsUnavailable as exc:
                ended.code = 1008
                await _close(send, 1008, f"UNAUTHENTICATED: No credentials: {exc.args[0]}")
                return
        credential = credential_scope(headers, query_string, api_key)
        where = _Where(path, query_string, self.settings.upstream.base_url, vertex, vertex_settings)
        session = _Session(
            self, coordinator, setup, route, credential, where, headers, api_key, receive, send
        )
        session.text = isinstance(frame, str)
        session.injected = injected
        session.ended = ended
        await session.run()


class _Session:
    """One client's Live session."""

    def __init__(
        self,
        relay: LiveRelay,
        coordinator: Coordinator,
        setup: Setup,
        route: str,
        credential: str,
        where: _Where,
        headers: Headers,
        api_key: str | None,
        receive: Receive,
        send: Send,
    ) -> None:
        self.relay = relay
        self.coordinator = coordinator
        self.setup = setup
        self.route = route
        """The chain's key: the model (a Vertex session's ``model@location`` target)."""
        self.credential = credential
        self.where = where
        self.headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in upstream_request_headers(headers, b"", api_key)
            if name not in _HANDSHAKE
        ]
        self.receive = receive
        self.send = send
        self.text = False
        self.injected: bytes | None = None
        """The ADC ``Authorization`` header the proxy added (None: the client's own)."""
        self.handle: str | None = None
        self.resumes = 0
        self.client_gone = False
        self.ended = _Ended()

    async def run(self) -> None:
        try:
            upstream, first = await self._open_by_chain()
        except NoModel as exc:
            self.ended.code = exc.code
            await _close(self.send, exc.code, exc.reason)
            return
        self.ended.model = upstream.model
        await self._to_client(first)
        sessions = self.relay.sessions
        key = id(self)
        model = upstream.model
        current = [upstream]
        sessions.opened(key, model, lambda: self._shutdown(current[0]))
        try:
            await self._relay(current)
        finally:
            sessions.closed(key, model)
            await current[0].socket.close()

    # -- setup ----------------------------------------------------------------------------

    async def _open_by_chain(self) -> tuple[Upstream, Frame]:
        """The chain as for any call: the quota gate (a session is one request of the cluster
        budget), breakers, and the outcomes through the same ``BreakerReport``: a failed setup
        is held, and counted against its model once the session's fate is known (as a
        request's failed attempt is)."""
        report = BreakerReport(self.coordinator, "LIVE", self.credential, None)
        try:
            return await self._walk(report)
        finally:
            report.finish()

    async def _walk(self, report: BreakerReport) -> tuple[Upstream, Frame]:
        coordinator = self.coordinator
        chain = coordinator.chain_for(self.route)
        last = NoModel(1011, "UNAVAILABLE: no model of the chain is available; retry later.")
        spill_to: str | None = None
        # After a quota condition on shared capacity moved the session to the model's next
        # location (``on_429: next_location``): the model it may not leave, and the close the
        # client gets if no location takes it.
        held_to: str | None = None
        held: NoModel | tuple[str, Shed] | None = None
        for position, model in enumerate(chain):
            if held_to is not None and model_of(model) != held_to:
                break  # a quota condition never moves to a weaker model
            if model != spill_to:
                shed = await self._gate(model)
                if shed is not None and self._next_location(chain, position, shed.shared_capacity):
                    held_to, held = model_of(model), (model, shed)
                    continue
                if shed is not None:
                    # Backpressure, as for a call: the session is shed, and moves to another
                    # model only as opt-in spillover that the next model's own gate admits.
                    following = chain[position + 1] if position + 1 < len(chain) else None
                    if (
                        following is None
                        or not coordinator.may_spill(following)
                        or await self._gate(following) is not None
                    ):
                        self.relay.telemetry.shed(model, shed.reason)
                        raise NoModel(1011, shed_reason(model, shed))
                    spill_to = following
                    continue
            admission = await coordinator.admit(model)
            if admission is None:
                continue
            report.admitted(admission)
            coordinator.quota_requested(self.credential, model)
            held_to = held = None  # a location was tried: its outcome decides
            try:
                opened = await self._open(model, None)
            except NoModel as exc:
                kind = classify_close(exc.code, exc.reason)
                if kind is CloseKind.FAILURE:
                    report.hold(admission, str(exc.code))
                    self.relay.sessions.setup_failures[model] += 1
                    log.info("live setup on %s failed (%s); next model", model, exc.reason)
                    last = exc
                    continue
                # Neither a quota close nor the session's own fault says anything of the
                # model: not counted (a probe's permit is handed back as the walk ends).
                if kind is CloseKind.RATE_LIMITED:
                    limit = rate_limit_of_close(exc.reason)
                    coordinator.rate_limited(self.credential, model, limit)
                    if self._next_location(chain, position, shared_capacity(limit)):
                        held_to, held = model_of(model), exc
                        continue
                raise
            report.outcome(admission, Verdict.SUCCESS)
            report.settle(answered=True)
            return opened
        if isinstance(held, tuple):
            self.relay.telemetry.shed(held[0], held[1].reason)
            raise NoModel(1011, shed_reason(*held))
        raise held or last

    def _next_location(self, chain: tuple[str, ...], position: int, shared: bool) -> bool:
        """Whether a quota condition on ``chain[position]`` moves the session to the same
        model in the next location, as for a call (``policy.next_location_on_429``)."""
        moves = self.relay.settings.moves_location_on_429(self.route)
        return next_location_on_429(chain, position, moves, shared)

    async def _gate(self, model: str) -> Shed | None:
        """The quota checks before a model is tried, as for a call: cooldown, pacing,
        throttle, then the model's cluster budget when it has one. The session's tokens are
        not known ahead, so it spends one request and the least tokens."""
        coordinator = self.coordinator
        shed = coordinator.quota_gate(self.credential, model)
        if shed is None and coordinator.has_budget(model):
            shed = await coordinator.budget_gate(model, tokens=1)
        return shed

    async def _open(self, model: str, handle: str | None) -> tuple[Upstream, Frame]:
        """Connect to ``model``, send the setup and wait for the first answer (normally
        ``setupComplete``); NoModel with the code and reason the attempt ended with."""
        limits = self.relay.settings.model_settings(model)
        url = self.where.url(model)
        try:
            socket = await connect(
                url,
                additional_headers=self.headers,
                open_timeout=limits.connect_timeout,
                compression=None,
                max_size=self.relay.settings.server.max_body_bytes,
                ssl=self.relay.upstream_ssl if url.startswith("wss://") else None,
                # The client's own pings keep the session; the proxy does not add its own.
                ping_interval=None,
                user_agent_header=None,
                proxy=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status == 401 and self.injected is not None:
                self.relay.adc.reject(self.injected)  # the next session fetches a new token
            code = {
                CloseKind.FAILURE: 1011,
                CloseKind.RATE_LIMITED: 1011,
                CloseKind.CLIENT_ERROR: 1008,
            }[classify_upgrade_status(status)]
            name = "RESOURCE_EXHAUSTED" if status == 429 else "UNAVAILABLE"
            raise NoModel(code, f"{name}: upstream answered the upgrade with {status}") from exc
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise NoModel(1011, f"UNAVAILABLE: upstream connection failed ({exc})") from exc
        try:
            setup = setup_for(self.setup, model, handle, self.where.name(model))
            await socket.send(setup, text=self.text)
            async with asyncio.timeout(self.relay.settings.first_event_ceiling(model)):
                first = await socket.recv()
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            await socket.close()
            if rcvd is None:
                raise NoModel(1011, "UNAVAILABLE: upstream closed before setupComplete") from exc
            raise NoModel(rcvd.code, rcvd.reason) from exc
        except TimeoutError as exc:
            await socket.close()
            raise NoModel(1011, "DEADLINE_EXCEEDED: no setupComplete in time") from exc
        return Upstream(socket, model), first

    # -- relay ----------------------------------------------------------------------------

    async def _relay(self, current: list[Upstream]) -> None:
        """Both directions until either side ends; the client's socket is closed with the
        upstream's code and reason when the upstream ends (and is not resumed). ``current``
        holds the upstream socket, replaced when the session is resumed."""
        resumed = asyncio.Event()
        up = asyncio.create_task(self._upstream_to_client(current, resumed))
        down = asyncio.create_task(self._client_to_upstream(current, resumed))
        try:
            await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
            for task in (up, down):
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await task

    async def _client_to_upstream(self, current: list[Upstream], ready: asyncio.Event) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "websocket.disconnect":
                self.client_gone = True
                code = message.get("code", 1000)
                self.ended.code = code
                await current[0].socket.close(code if code in (1000, 1001) else 1000)
                return
            frame = frame_of(message)
            while True:
                socket = current[0].socket
                try:
                    await socket.send(frame)  # waits for the socket to drain
                    break
                except ConnectionClosed:
                    # The other direction is resuming (or closing, and cancels this task);
                    # no await between the check and the clear, so a swap is never missed.
                    while current[0].socket is socket:
                        ready.clear()
                        await ready.wait()

    async def _upstream_to_client(self, current: list[Upstream], resumed: asyncio.Event) -> None:
        resumable = self.setup.resumable
        while True:
            socket = current[0].socket
            try:
                frame = await socket.recv()
            except ConnectionClosed as exc:
                if (
                    resumable
                    and self.handle is not None
                    and self.resumes < RESUMES_PER_SESSION
                    and await self._resume(current)
                ):
                    resumed.set()
                    continue
                rcvd = exc.rcvd
                code, reason = (rcvd.code, rcvd.reason) if rcvd else (1011, "upstream dropped")
                code = code if code not in (1005, 1006) else 1011
                self.ended.code = code
                await _close(self.send, code, reason)
                return
            if resumable:
                data = frame.encode() if isinstance(frame, str) else frame
                handle = new_handle(data)
                if handle is not None:
                    self.handle = handle
                if is_go_away(data) and self.handle is not None:
                    continue  # resumed when the upstream closes; the client need not know
            await self._to_client(frame)

    async def _resume(self, current: list[Upstream]) -> bool:
        model = current[0].model
        self.resumes += 1
        try:
            upstream, first = await self._open(model, self.handle)
        except NoModel as exc:
            log.info("live resumption on %s failed: %s", model, exc.reason)
            return False
        if not is_setup_complete(first.encode() if isinstance(first, str) else first):
            await self._to_client(first)
        current[0] = upstream
        self.relay.sessions.resumptions[model] += 1
        self.ended.resumptions += 1
        log.info("live session resumed on %s", model)
        return True

    async def _to_client(self, frame: Frame) -> None:
        if isinstance(frame, bytes):
            await self.send({"type": "websocket.send", "bytes": frame})
        else:
            await self.send({"type": "websocket.send", "text": frame})

    async def _shutdown(self, upstream: Upstream) -> None:
        """Shutdown: a close frame to the client (going away) and to the upstream."""
        self.ended.code = 1001
        await _close(self.send, 1001, "the proxy is shutting down")
        await upstream.socket.close(1001)


def frame_of(message: Message) -> Frame:
    """The frame of a ``websocket.receive`` message, of its type: a text frame stays text even
    when empty (ASGI sets exactly one of ``text`` and ``bytes``; a falsy test would turn an
    empty text frame into a binary one)."""
    text: str | None = message.get("text")
    if text is not None:
        return text
    data: bytes | None = message.get("bytes")
    return data if data is not None else b""


def shed_reason(model: str, shed: Shed) -> str:
    """The close reason of a session the proxy shed, as Google closes a quota-exhausted one:
    the status first (the SDK raises it as an ``APIError`` with the close code), then the
    retry delay, well within a close frame's 123 bytes."""
    seconds = max(1, math.ceil(shed.retry_after))
    return (
        f"RESOURCE_EXHAUSTED: the proxy shed this session ({shed.reason}); "
        f"retry in {seconds}s ({model})"
    )


async def _close(send: Send, code: int, reason: str) -> None:
    message: Message = {"type": "websocket.close", "code": code, "reason": reason[:120]}
    with contextlib.suppress(OSError, RuntimeError):
        await send(message)


def _upstream_ssl(settings: Settings) -> ssl.SSLContext:
    tls = settings.upstream.tls
    context = ssl.create_default_context()
    if tls.ca_file:
        context.load_verify_locations(tls.ca_file)
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context
