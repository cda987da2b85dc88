"""The exchange and the SSE relay with scripted upstream responses (plain objects, no server):
retries, failover, 429s, a stream continued on another model, and the relay's checks.

The coordinator is the real one on its embedded store; only the upstream is scripted."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from proxy.cluster.connect import store_client
from proxy.cluster.coordinator import Coordinator
from proxy.dialects import GEMINI, OPENAI, Dialect
from proxy.pipeline.capability_lookup import CapabilityLookup
from proxy.pipeline.deadlines import DeadlineBook
from proxy.pipeline.exchange import Exchange, Services
from proxy.pipeline.respond import Responder
from proxy.pipeline.retry_budget import RetryBudget
from proxy.pipeline.stream_relay import SseRelay
from proxy.telemetry import Telemetry
from proxy.transport.origins import OriginPools
from proxy.transport.upstream import UpstreamBodyError, UpstreamTimeout

from .conftest import proxy_settings

PRO, FLASH, LITE = "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"
UNARY = f"/v1beta/models/{PRO}:generateContent"
STREAM = f"/v1beta/models/{PRO}:streamGenerateContent"
BODY = json.dumps({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).encode()

pytestmark = pytest.mark.anyio


class Scripted:
    """An upstream response: a status, headers, and body chunks (an exception breaks it)."""

    def __init__(
        self, status: int, chunks: list[bytes | Exception], content_type: str = "application/json"
    ) -> None:
        self.status_code = status
        self.headers = httpx.Headers({"content-type": content_type})
        self.chunks = chunks
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True


class ScriptedUpstream:
    """Answers each model's attempts from its script, in order; records what was sent."""

    base_url = "https://upstream.invalid"
    host = "upstream.invalid"

    def __init__(self, script: dict[str, list[Scripted | Exception]]) -> None:
        self.script = script
        self.sent: list[tuple[str, bytes]] = []

    async def open(
        self, method: str, path: str, query: bytes, headers: Any, body: Any, *_: Any
    ) -> Scripted:
        if "models/" in path:
            model = path.split("models/", 1)[1].split(":", 1)[0]
        else:  # the compatible API names its model in the body
            model = json.loads(body)["model"]
        self.sent.append((model, body))
        step = self.script[model].pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    async def iter_body(self, response: Scripted, *_: Any, **__: Any) -> AsyncIterator[bytes]:
        for chunk in response.chunks:
            if isinstance(chunk, Exception):
                raise chunk
            yield chunk

    @property
    def models(self) -> list[str]:
        return [model for model, _ in self.sent]


class Client:
    """What the client received."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.messages[0]["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])


def event(text: str, finish: str | None = None) -> bytes:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}}
    if finish:
        candidate["finishReason"] = finish
    chunk = {"candidates": [candidate], "responseId": "r1"}
    return b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n"


def answer(text: str) -> Scripted:
    chunk = {"candidates": [{"content": {"parts": [{"text": text}]}, "finishReason": "STOP"}]}
    return Scripted(200, [json.dumps(chunk).encode()])


def error(status: int, extra: dict[str, Any] | None = None) -> Scripted:
    body = {"error": {"code": status, "message": f"error {status}", **(extra or {})}}
    return Scripted(status, [json.dumps(body).encode()])


def stream(*chunks: bytes | Exception) -> Scripted:
    return Scripted(200, list(chunks), "text/event-stream")


@pytest.fixture
def settings() -> Any:
    return proxy_settings(
        "https://upstream.invalid",
        model_defaults={"max_attempts": 2, "backoff_initial": 0.001, "backoff_max": 0.002},
    )


@pytest.fixture
async def coordinator(settings: Any) -> AsyncIterator[Coordinator]:
    client = store_client(settings.redis)
    coordinator = Coordinator(settings, client, embedded=True, replica="unit")
    await coordinator.start()
    try:
        yield coordinator
    finally:
        await coordinator.stop()
        await client.aclose()


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    yield Telemetry(replica="unit", prometheus=False)


async def run(
    settings: Any,
    coordinator: Coordinator,
    telemetry: Telemetry,
    upstream: ScriptedUpstream,
    path: str = UNARY,
    query: bytes = b"",
    body: bytes = BODY,
    dialect: Dialect = GEMINI,
) -> tuple[Exchange, Client]:
    services = Services(
        settings,
        upstream,  # type: ignore[arg-type]
        coordinator,
        RetryBudget(1.0, 10.0),
        CapabilityLookup(settings),
        telemetry,
        DeadlineBook(),
        dialect,
        OriginPools(settings.upstream),
    )
    route = dialect.parse(path, query, [])
    assert route is not None
    if dialect.model_in_body:
        route = dialect.with_body(route, body)
    scope = {
        "type": "http",
        "method": "POST",
        "scheme": "https",
        "server": ("proxy.test", 443),
        "headers": [(b"content-type", b"application/json"), (b"x-goog-api-key", b"key")],
        "query_string": query,
    }
    client = Client()
    loop = asyncio.get_running_loop()
    exchange = Exchange(services, scope, client.send, route, body, loop.time() + 1000)
    await exchange.run()
    return exchange, client


async def test_a_failing_model_is_retried_then_failed_over(
    settings: Any, coordinator: Coordinator, telemetry: Telemetry
) -> None:
    upstream = ScriptedUpstream({PRO: [error(503), error(500)], FLASH: [answer("ok")]})
    exchange, client = await run(settings, coordinator, telemetry, upstream)
    assert upstream.models == [PRO, PRO, FLASH]
    assert (client.status, exchange.served_by, exchange.attempts) == (200, FLASH, 3)
    assert client.headers[b"x-gemini-breaker-fallbacks"] == b"1"
    assert b'"ok"' in client.body


async def test_a_missed_deadline_fails_over_without_a_retry(
    settings: Any, coordinator: Coordinator, telemetry: Telemetry
) -> None:
    missed = UpstreamTimeout("no answer in time", deadline="first_event")
    upstream = ScriptedUpstream({PRO: [missed], FLASH: [answer("ok")]})
    _, client = await run(settings, coordinator, telemetry, upstream)
    assert upstream.models == [PRO, FLASH]
    assert client.status == 200


async def test_the_last_failure_is_relayed_when_every_model_failed(
    settings: Any, coordinator: Coordinator, telemetry: Telemetry
) -> None:
    upstream = ScriptedUpstream({model: [error(500), error(503)] for model in (PRO, FLASH, LITE)})
    exchange, client = await run(settings, coordinator, telemetry, upstream)
    assert upstream.models == [PRO, PRO, FLASH, FLASH, LITE, LITE]
    assert (client.status, exchange.served_by) == (503, LITE)
    assert json.loads(client.body)["error"]["code"] == 503
    assert client.headers[b"x-gemini-breaker-attempts"] == b"6"


async def test_a_repeat_of_a_request_another_model_served_still_fails_over(
    settings: Any, coordinator: Coordinator, telemetry: Telemetry
) -> None:
    """Pro and flash both down (the same 503 for everything): the same prompt sent again is
    not the request's fault, because flash-lite answered it the first time."""
    for _ in range(2):
        upstream = ScriptedUpstream(
            {PRO: [error(503), error(503)], FLASH: [error(503), error(503)], LITE: [answer("ok")]}
        )
        exchange, client = await run(settings, coordinator, telemetry, upstream)
        assert (client.status, exchange.served_by) == (200, LITE)
        assert upstream.models == [PRO, PRO, FLASH, FLASH, LITE]


async def test_a_429_is_answered_with_retry_after_and_never_failed_over(
    settings: Any, coordinator: Coordinator, telemetry: Telemetry
) -> None:
    retry_info = {
        "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}]
    }
    upstream = ScriptedUpstream({PRO: [error(429, retry_info)], FLASH: [answer("never")]})
    _, client = await run(settings, coordinator, telemetry, upstream)
    assert upstream.models == [PRO]
    assert client.status == 429
    assert client.headers[b"retry-after"] == b"17"


async def test_a_400_goes_back_as_it_is(
    settings: Any, coordinator: Coordinator, telemetry: Telemetry
) -> None:
    upstream = ScriptedUpstream({PRO: [error(400)], FLASH: [answer("never")]})
    _, client = await run(settings, coordinator, telemetry, upstream)
    assert upstream.models == [PRO]
    assert (client.status, json.loads(client.body)["error"]["message"]) == (400, "error 400")


async def test_a_broken_stream_is_continued_on_the_next_model(
    settings: Any, coordinator: Coordinator, telemetry: Telemetry
) -> None:
    upstream = ScriptedUpstream(
        {
            PRO: [stream(event("Hel"), UpstreamBodyError("cut", 502))],
            FLASH: [stream(event("lo"), event("!", finish="STOP"))],
        }
    )
    exchange, client = await run(settings, coordinator, telemetry, upstream, STREAM, b"alt=sse")
    assert upstream.models == [PRO, FLASH]
    assert (client.status, exchange.served_by) == (200, FLASH)
    # The continuation asked FLASH to go on from the text already delivered.
    continuation = json.loads(upstream.sent[1][1])
    assert continuation["contents"][-1]["role"] == "model"
    assert "Hel" in json.dumps(continuation["contents"][-1])
    events = [json.loads(line[6:]) for line in client.body.split(b"\r\n\r\n") if line]
    texts = [e["candidates"][0]["content"]["parts"][0]["text"] for e in events]
    assert texts == ["Hel", "lo", "!"]
    assert {e["responseId"] for e in events} == {"r1"}
    assert client.messages[-1]["more_body"] is False


async def test_a_stream_that_cannot_be_continued_ends_with_an_in_band_error(
    settings: Any, coordinator: Coordinator, telemetry: Telemetry
) -> None:
    upstream = ScriptedUpstream(
        {
            PRO: [stream(event("Hel"), UpstreamBodyError("cut short", 502))],
            FLASH: [error(500)],
            LITE: [error(400)],
        }
    )
    _, client = await run(settings, coordinator, telemetry, upstream, STREAM, b"alt=sse")
    assert upstream.models == [PRO, FLASH, LITE]
    last = client.messages[-1]
    assert last["more_body"] is False
    assert (
        json.loads(last["body"][6:])["error"]
        == {
            "code": 502,
            "message": "cut short",
            "status": "BAD_GATEWAY",
        }
        or json.loads(last["body"][6:])["error"]["message"] == "cut short"
    )


def openai_event(text: str, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
    return b"data: " + json.dumps({"id": "c1", "choices": [choice]}).encode() + b"\n\n"


async def test_a_break_whose_body_cannot_carry_a_continuation_ends_with_the_error(
    settings: Any, coordinator: Coordinator, telemetry: Telemetry
) -> None:
    """The stream is the client's: it ends with the original failure in the Gemini shape,
    and no fallback is sent a continuation it could not take."""
    upstream = ScriptedUpstream(
        {PRO: [stream(event("Hel"), UpstreamBodyError("cut short", 502))], FLASH: [], LITE: []}
    )
    body = b'{"contents": "not a list"}'
    exchange, client = await run(
        settings, coordinator, telemetry, upstream, STREAM, b"alt=sse", body
    )
    assert upstream.models == [PRO]
    assert (client.status, exchange.served_by, exchange.attempts) == (200, PRO, 1)
    last = client.messages[-1]
    assert last["more_body"] is False
    assert last["body"].startswith(b"data: ") and last["body"].endswith(b"\r\n\r\n")
    assert json.loads(last["body"][6:])["error"] == {
        "code": 502,
        "message": "cut short",
        "status": "UNAVAILABLE",
    }


async def test_a_compatible_break_that_cannot_be_continued_ends_with_an_error_chunk(
    settings: Any, coordinator: Coordinator, telemetry: Telemetry
) -> None:
    """A chat stream without a messages list: the error chunk the openai SDK raises on, and
    no ``[DONE]`` that would make the cut answer look whole."""
    upstream = ScriptedUpstream(
        {PRO: [stream(openai_event("Hel"), UpstreamBodyError("cut short", 502))], FLASH: []}
    )
    body = json.dumps({"model": PRO, "stream": True, "prompt": "hi"}).encode()
    path = "/v1beta/openai/chat/completions"
    exchange, client = await run(
        settings, coordinator, telemetry, upstream, path, b"", body, OPENAI
    )
    assert upstream.models == [PRO]
    assert (client.status, exchange.served_by) == (200, PRO)
    assert client.body.startswith(openai_event("Hel"))
    last = client.messages[-1]
    assert last["more_body"] is False
    assert b"[DONE]" not in client.body
    error = json.loads(last["body"].removeprefix(b"data: "))["error"]
    assert (error["code"], error["message"]) == (502, "cut short")


# -- the relay on its own ---------------------------------------------------------------------


async def relay_of(
    response: Scripted, settings: Any
) -> tuple[SseRelay, Client, UpstreamBodyError | None]:
    client = Client()
    upstream = ScriptedUpstream({})
    loop = asyncio.get_running_loop()
    relay = SseRelay(upstream, Responder(client.send, GEMINI), loop.time() + 10)  # type: ignore[arg-type]
    failure = await relay.first(response, settings.model_settings(PRO), [])  # type: ignore[arg-type]
    return relay, client, failure


async def test_a_corrupt_first_chunk_is_an_ordinary_failure(settings: Any) -> None:
    relay, client, failure = await relay_of(stream(b"data: {not json\r\n\r\n"), settings)
    assert failure is not None and "corrupt" in failure.message
    assert client.messages == [] and not relay.started


async def test_an_in_band_error_after_the_start_breaks_the_stream(settings: Any) -> None:
    in_band = b'data: {"error": {"code": 503, "message": "overloaded"}}\r\n\r\n'
    response = stream(event("a") + event("b"), in_band + event("never"))
    relay, client, failure = await relay_of(response, settings)
    assert failure is None and relay.started
    assert relay.broken is not None
    assert (relay.broken.status, relay.broken.message) == (503, "overloaded")
    assert relay.delivered.text == "ab"
    assert b"never" not in client.body and b"overloaded" not in client.body
    assert response.closed


async def test_a_stream_without_a_finish_reason_is_broken(settings: Any) -> None:
    relay, _, failure = await relay_of(stream(event("a")), settings)
    assert failure is None
    assert relay.broken is not None and "finishReason" in relay.broken.message


async def test_a_short_429_is_waited_out_once_on_the_same_model(
    coordinator: Coordinator, telemetry: Telemetry
) -> None:
    settings = proxy_settings("https://upstream.invalid", quota={"max_retry_wait": 5})
    retry_info = {
        "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.05s"}]
    }
    upstream = ScriptedUpstream({PRO: [error(429, retry_info), answer("ok")]})
    exchange, client = await run(settings, coordinator, telemetry, upstream)
    assert upstream.models == [PRO, PRO]
    assert (client.status, exchange.served_by) == (200, PRO)
