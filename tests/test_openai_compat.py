"""The OpenAI-compatible endpoint end to end: the real ``openai`` SDK (sync, async, streams,
tool calls) -> the proxy -> the simulator's compatible endpoint, with failover, 429 shedding
and broken streams."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from proxy.app import create_app
from proxy.simulator import create_simulator_app
from proxy.simulator.app import SimulatorApp
from proxy.simulator.attempts import key_digest
from proxy.simulator.client import SimulatorControl
from proxy.simulator.config import build_simulator_config
from proxy.simulator.openai_compat import STREAM_FAULT_KINDS
from proxy.telemetry import Telemetry

from .conftest import calls, proxy_settings
from .redis_support import redis_server as redis_server  # the fixture
from .support import serve
from .test_cluster_e2e import Cluster, wait_all
from .test_cluster_e2e import cluster as cluster  # the fixture
from .test_streams import proxy_with
from .test_telemetry_e2e import samples, value

PRO, FLASH, LITE = "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"
PROMPT = "Explain in many words how a circuit breaker protects a service from overload"
MESSAGES: list[Any] = [{"role": "user", "content": PROMPT}]


@pytest.fixture
def proxy(simulator_url: str) -> Iterator[str]:
    with proxy_with(simulator_url) as url:
        yield url


def client(url: str, key: str = "test-key") -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=f"{url}/v1beta/openai/", max_retries=0)


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def whole_answer(simulator_url: str, model: str = FLASH) -> str:
    answer = client(simulator_url).chat.completions.create(model=model, messages=MESSAGES)
    text = answer.choices[0].message.content
    assert text
    return text


def test_a_completion_is_unchanged_by_the_proxy(
    proxy: str, simulator_url: str, simulator: SimulatorControl
) -> None:
    raw = client(proxy).chat.completions.with_raw_response.create(model=FLASH, messages=MESSAGES)
    via_proxy = raw.parse()
    direct = client(simulator_url).chat.completions.create(model=FLASH, messages=MESSAGES)
    assert via_proxy.choices[0].message.content == direct.choices[0].message.content
    assert via_proxy.id == direct.id
    assert via_proxy.model == FLASH
    assert raw.headers["x-gemini-breaker-model"] == FLASH
    assert [a["model"] for a in calls(simulator)] == [FLASH, FLASH]


def test_the_model_may_be_named_with_models_prefix_and_routes_apply(
    proxy: str, simulator: SimulatorControl
) -> None:
    answer = client(proxy).chat.completions.create(model=f"models/{PRO}", messages=MESSAGES)
    assert answer.model == PRO
    assert [a["model"] for a in calls(simulator)] == [PRO]


def test_failover_rewrites_the_model_in_the_body(
    proxy: str, simulator_url: str, simulator: SimulatorControl
) -> None:
    simulator.set_faults(PRO, [{"kind": "error", "status": 503}])
    raw = client(proxy).chat.completions.with_raw_response.create(model=PRO, messages=MESSAGES)
    answer = raw.parse()
    seen = calls(simulator, include_body=True)
    assert raw.headers["x-gemini-breaker-model"] == FLASH
    assert answer.model == FLASH  # the model that served
    assert answer.choices[0].message.content == whole_answer(simulator_url)
    assert [(a["model"], a["status"]) for a in seen] == [(PRO, 503), (FLASH, 200)]
    assert json.loads(simulator.body_of(seen[1]))["model"] == FLASH
    assert json.loads(simulator.body_of(seen[0]))["model"] == PRO


def test_an_error_reaches_the_sdk_as_its_status_class(
    proxy: str, simulator: SimulatorControl
) -> None:
    for model in (PRO, FLASH, LITE):
        simulator.set_faults(model, [{"kind": "error", "status": 503}])
    with pytest.raises(openai.InternalServerError) as caught:
        client(proxy).chat.completions.create(model=PRO, messages=MESSAGES)
    assert caught.value.status_code == 503
    with pytest.raises(openai.NotFoundError) as missing:
        client(proxy).chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert missing.value.status_code == 404
    # Gemini's compatible endpoint wraps Google's error object in a list.
    body = httpx.post(
        f"{proxy}/v1beta/openai/chat/completions",
        json={"model": "no-such-model", "messages": MESSAGES},
        headers={"authorization": "Bearer test-key"},
    ).json()
    assert body[0]["error"]["code"] == 404


def test_a_429_is_backpressure_and_the_key_and_model_are_shed(
    simulator_url: str, simulator: SimulatorControl
) -> None:
    simulator.set_faults(PRO, [{"kind": "rate_limited", "retry_delay": 30, "times": 1}])
    with proxy_with(simulator_url) as proxy:
        for _ in range(2):  # the upstream's 429, then the proxy's own
            with pytest.raises(openai.RateLimitError) as caught:
                client(proxy, "key-a").chat.completions.create(model=PRO, messages=MESSAGES)
            assert caught.value.status_code == 429
        assert caught.value.response.headers["x-gemini-breaker-shed"] == "cooldown"
        assert caught.value.response.json()[0]["error"]["status"] == "RESOURCE_EXHAUSTED"
        # Another key is not affected; nothing failed over, nothing counted for the breaker.
        answer = client(proxy, "key-b").chat.completions.create(model=PRO, messages=MESSAGES)
        assert answer.model == PRO
        assert [(a["model"], a["status"]) for a in calls(simulator)] == [(PRO, 429), (PRO, 200)]
        assert httpx.get(proxy + "/admin/state").json()["breakers"][PRO]["failures"] == 0


def test_the_cooldown_is_shared_with_the_native_api(
    simulator_url: str, simulator: SimulatorControl
) -> None:
    """Same key and model, either API: one cooldown."""
    simulator.set_faults(PRO, [{"kind": "rate_limited", "retry_delay": 30, "times": 1}])
    with proxy_with(simulator_url) as proxy:
        native = httpx.post(
            f"{proxy}/v1beta/models/{PRO}:generateContent",
            json={"contents": [{"parts": [{"text": "hi"}]}]},
            headers={"x-goog-api-key": "key-c"},
        )
        assert native.status_code == 429
        with pytest.raises(openai.RateLimitError) as caught:
            client(proxy, "key-c").chat.completions.create(model=PRO, messages=MESSAGES)
        assert caught.value.response.headers["x-gemini-breaker-shed"] == "cooldown"
        assert len(calls(simulator)) == 1


def test_a_stream_arrives_whole_and_ends_with_done(
    proxy: str, simulator_url: str, simulator: SimulatorControl
) -> None:
    chunks = list(
        client(proxy).chat.completions.create(model=FLASH, messages=MESSAGES, stream=True)
    )
    assert len(chunks) > 1
    assert text_of(chunks) == whole_answer(simulator_url)
    assert chunks[-1].choices[0].finish_reason == "stop"
    raw = httpx.post(
        f"{proxy}/v1beta/openai/chat/completions",
        json={"model": FLASH, "messages": MESSAGES, "stream": True},
        headers={"authorization": "Bearer test-key"},
    )
    assert raw.text.endswith("data: [DONE]\n\n")
    assert raw.headers["x-gemini-breaker-model"] == FLASH


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "cut", "after_chunks": 2},
        {"kind": "cut", "after_chunks": 2, "abrupt": True},
        {"kind": "stall", "after_chunks": 2},
        {"kind": "malformed", "after_chunks": 2},
        {"kind": "error", "status": 503, "after_chunks": 2},
    ],
    ids=["cut", "reset", "stall", "corrupt", "in-band-error"],
)
def test_a_broken_stream_is_completed_by_the_fallback(
    proxy: str, simulator_url: str, simulator: SimulatorControl, fault: dict[str, Any]
) -> None:
    simulator.set_faults(PRO, [fault])
    chunks = list(client(proxy).chat.completions.create(model=PRO, messages=MESSAGES, stream=True))
    assert text_of(chunks) == whole_answer(simulator_url)  # nothing repeated, nothing missing
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].model == FLASH  # the model that finished it
    continuation = [
        a
        for a in calls(simulator, model=FLASH, include_body=True)
        if a["api_method"] == "streamGenerateContent"
    ]
    assert len(continuation) == 1
    messages = json.loads(simulator.body_of(continuation[0]))["messages"]
    assert messages[-1]["role"] == "assistant"  # the delivered text, as an assistant message
    assert whole_answer(simulator_url).startswith(messages[-1]["content"])


def test_a_broken_stream_no_model_can_continue_raises_in_the_sdk(
    simulator_url: str, simulator: SimulatorControl
) -> None:
    simulator.set_faults(PRO, [{"kind": "cut", "after_chunks": 2}])
    for model in (FLASH, LITE):
        simulator.set_faults(model, [{"kind": "reject_continuation"}])
    received: list[str] = []
    with proxy_with(simulator_url) as proxy, pytest.raises(openai.APIError) as caught:
        for chunk in client(proxy).chat.completions.create(
            model=PRO, messages=MESSAGES, stream=True
        ):
            received.append(chunk.choices[0].delta.content or "")
    assert len(received) == 2  # what was delivered stays delivered, and is not called whole
    assert "finish" in caught.value.message


def test_a_route_can_end_broken_streams_with_an_error(
    simulator_url: str, simulator: SimulatorControl
) -> None:
    simulator.set_faults(PRO, [{"kind": "stall", "after_chunks": 1}])
    route = {"chain": [PRO, FLASH], "on_stream_break": "error"}
    with (
        proxy_with(simulator_url, **{PRO: route}) as proxy,
        pytest.raises(openai.APIError) as caught,
    ):
        list(client(proxy).chat.completions.create(model=PRO, messages=MESSAGES, stream=True))
    assert "stalled" in caught.value.message
    assert calls(simulator, model=FLASH) == []


def test_a_tool_call_passes_through(proxy: str, simulator: SimulatorControl) -> None:
    tools: list[Any] = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    sdk = client(proxy)
    first = sdk.chat.completions.create(
        model=PRO, messages=MESSAGES, tools=tools, tool_choice="required"
    )
    calls_made = first.choices[0].message.tool_calls
    assert first.choices[0].finish_reason == "tool_calls"
    assert calls_made is not None and calls_made[0].function.name == "get_weather"  # type: ignore[union-attr]
    follow_up: list[Any] = [
        *MESSAGES,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": calls_made[0].id, "content": "sunny"},
    ]
    second = sdk.chat.completions.create(
        model=PRO, messages=follow_up, tools=tools, tool_choice="required"
    )
    assert second.choices[0].message.content
    sent = json.loads(simulator.body_of(calls(simulator, include_body=True)[0]))
    assert sent["tools"] == tools  # passed through as the app sent them


def test_embeddings_and_models(proxy: str, simulator_url: str) -> None:
    via_proxy = client(proxy).embeddings.create(model="gemini-embedding-001", input=["a", "b"])
    direct = client(simulator_url).embeddings.create(model="gemini-embedding-001", input=["a", "b"])
    assert [e.embedding for e in via_proxy.data] == [e.embedding for e in direct.data]
    assert len(via_proxy.data) == 2
    ids = [model.id for model in client(proxy).models.list()]
    assert f"models/{FLASH}" in ids


@pytest.mark.anyio
async def test_the_async_client_and_stream(proxy: str, simulator_url: str) -> None:
    sdk = openai.AsyncOpenAI(api_key="test-key", base_url=f"{proxy}/v1beta/openai/", max_retries=0)
    answer = await sdk.chat.completions.create(model=FLASH, messages=MESSAGES)
    assert answer.choices[0].message.content == whole_answer(simulator_url)
    text = ""
    async for chunk in await sdk.chat.completions.create(
        model=FLASH, messages=MESSAGES, stream=True
    ):
        text += chunk.choices[0].delta.content or ""
    assert text == answer.choices[0].message.content
    await sdk.close()


def test_the_configured_key_is_sent_as_a_bearer_when_the_client_sends_none(
    simulator_url: str, simulator: SimulatorControl
) -> None:
    settings = proxy_settings(simulator_url, upstream={"api_key": "configured-key"})
    with serve(create_app(settings)) as proxy:
        answer = httpx.post(
            f"{proxy}/v1beta/openai/chat/completions", json={"model": FLASH, "messages": MESSAGES}
        )
    assert answer.status_code == 200
    assert answer.json()["model"] == FLASH
    assert [a["key_digest"] for a in calls(simulator)] == [key_digest("configured-key")]


def test_a_client_token_is_sent_as_the_bearer_key(
    simulator_url: str, simulator: SimulatorControl
) -> None:
    token = "client-token-0123456789"
    settings = proxy_settings(
        simulator_url, upstream={"api_key": "real-key"}, server={"client_tokens": [token]}
    )
    with serve(create_app(settings)) as proxy:
        answer = client(proxy, token).chat.completions.create(model=FLASH, messages=MESSAGES)
        assert answer.model == FLASH
        with pytest.raises(openai.PermissionDeniedError):
            client(proxy, "real-key").chat.completions.create(model=FLASH, messages=MESSAGES)
    [seen] = calls(simulator)
    assert seen["key_digest"] == key_digest("real-key")  # the token never went upstream


def test_compatible_calls_open_the_cluster_breakers_and_fail_over(
    cluster: Cluster, simulator: SimulatorControl
) -> None:
    """Replicas as separate processes on one real redis-server: compatible-API failures open
    the primary's breaker for every replica, which then leave it alone."""
    replicas = cluster()
    simulator.set_faults(PRO, [{"kind": "error", "status": 503}])
    for index in range(6):
        answer = client(replicas[index % 3]).chat.completions.create(
            model=PRO, messages=[{"role": "user", "content": f"request {index}"}]
        )
        assert answer.model == FLASH
    wait_all(replicas, lambda s: s["breakers"][PRO]["state"] == "open")
    simulator.clear_attempts()
    for index in range(6):
        raw = client(replicas[index % 3]).chat.completions.with_raw_response.create(
            model=PRO, messages=MESSAGES
        )
        assert raw.headers["x-gemini-breaker-model"] == FLASH
    assert [a["model"] for a in calls(simulator)] == [FLASH] * 6  # the primary left alone


def test_the_request_span_carries_what_a_native_calls_carries(
    simulator_url: str, simulator: SimulatorControl
) -> None:
    """Route, requested and serving model, attempts and fallbacks, as on a native call."""
    exporter = InMemorySpanExporter()
    telemetry = Telemetry("gemini-breaker", "replica-test", span_exporter=exporter)
    simulator.set_faults(PRO, [{"kind": "error", "status": 503}])
    with serve(create_app(proxy_settings(simulator_url), telemetry=telemetry)) as proxy:
        client(proxy).chat.completions.create(model=PRO, messages=MESSAGES)
        native = httpx.post(
            f"{proxy}/v1beta/models/{PRO}:generateContent",
            json={"contents": [{"parts": [{"text": PROMPT}]}]},
            headers={"x-goog-api-key": "test-key"},
        )
        assert native.status_code == 200
    telemetry.force_flush()
    compatible, gemini = [
        dict(s.attributes or {}) for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER
    ]
    assert compatible["http.route"] == "/v1beta/openai/chat/completions"
    for attributes in (compatible, gemini):
        assert attributes["gen_ai.request.model"] == PRO
        assert attributes["gen_ai.response.model"] == FLASH
        assert attributes["gen_ai.operation.name"] == "generate_content"
        assert (attributes["gemini_breaker.attempts"], attributes["gemini_breaker.fallbacks"]) == (
            2,
            1,
        )
    assert set(compatible) == set(gemini)


def tokens(proxy: str, model: str) -> tuple[float, float]:
    """The proxy's input and output token counters for ``model``."""
    metrics = samples(httpx.get(proxy + "/metrics").text)
    name = "gemini_breaker_tokens_total"
    return (
        value(metrics, name, model=model, gen_ai_token_type="input"),
        value(metrics, name, model=model, gen_ai_token_type="output"),
    )


def test_the_tokens_of_compatible_answers_are_counted(proxy: str) -> None:
    answer = client(proxy).chat.completions.create(model=FLASH, messages=MESSAGES)
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    assert tokens(proxy, FLASH) == (answer.usage.prompt_tokens, answer.usage.completion_tokens)
    chunks = list(
        client(proxy).chat.completions.create(
            model=FLASH,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    [usage] = [c.usage for c in chunks if c.usage is not None]  # the last chunk's
    assert tokens(proxy, FLASH) == (
        answer.usage.prompt_tokens + usage.prompt_tokens,
        answer.usage.completion_tokens + usage.completion_tokens,
    )


def test_a_fallback_lacking_a_capability_the_chat_needs_is_skipped(
    simulator_url: str, simulator: SimulatorControl
) -> None:
    settings = proxy_settings(
        simulator_url,
        models={LITE: {"capabilities": {"unsupported": ["function_calling"]}}},
        routes={PRO: [PRO, LITE, FLASH]},
    )
    simulator.set_faults(PRO, [{"kind": "error", "status": 503}])
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    with serve(create_app(settings)) as proxy:
        with_tools = client(proxy).chat.completions.with_raw_response.create(
            model=PRO, messages=MESSAGES, tools=[tool]
        )
        assert with_tools.headers["x-gemini-breaker-model"] == FLASH  # flash-lite was skipped
        plain = client(proxy).chat.completions.with_raw_response.create(
            model=PRO, messages=MESSAGES
        )
        assert plain.headers["x-gemini-breaker-model"] == LITE  # it can serve this one
    assert [a["model"] for a in calls(simulator)] == [PRO, FLASH, PRO, LITE]


EMBED, EMBED_NEXT = "gemini-embedding-001", "gemini-embedding-exp"


@pytest.fixture(scope="module")
def compat_simulator() -> Iterator[tuple[SimulatorApp, str]]:
    """A simulator of this module's own, in process (its compatible API's stream faults are
    added there), with a second embedding model to fail over to."""
    app = create_simulator_app(build_simulator_config({"models": {EMBED_NEXT: {}}}))
    with serve(app) as url:
        yield app, url


@pytest.fixture
def compat(
    compat_simulator: tuple[SimulatorApp, str],
) -> Iterator[tuple[SimulatorApp, SimulatorControl, str]]:
    """That simulator, cleared, its control client, and a proxy in front of it whose
    embedding route falls back to the second embedding model."""
    app, url = compat_simulator
    app.openai.stream_faults.clear()
    with SimulatorControl(url) as control:
        control.clear_all()
        with proxy_with(url, **{PRO: [PRO, FLASH, LITE], EMBED: [EMBED, EMBED_NEXT]}) as proxy:
            yield app, control, proxy
        control.clear_faults()
        control.clear_quotas()


@pytest.mark.parametrize("kind", STREAM_FAULT_KINDS)
def test_a_stream_lacking_its_finish_or_its_done_is_continued_not_passed_off_as_whole(
    compat: tuple[SimulatorApp, SimulatorControl, str], kind: str
) -> None:
    """``[DONE]`` after no ``finish_reason``, or a ``finish_reason`` and then the end of the
    body without ``[DONE]``: either way the answer was not seen to end, so the next model
    continues it; the SDK gets the whole answer once, ended by the fallback's finish."""
    app, control, proxy = compat
    whole = whole_answer(proxy)
    control.clear_attempts()
    app.openai.add_stream_fault(PRO, kind)
    chunks = list(client(proxy).chat.completions.create(model=PRO, messages=MESSAGES, stream=True))
    assert text_of(chunks) == whole  # nothing repeated, nothing missing
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].model == FLASH  # the model that finished it
    assert len({c.id for c in chunks}) == 1
    streams = [
        (a["model"], a["api_method"])
        for a in calls(control)
        if a["api_method"] == "streamGenerateContent"
    ]
    assert streams == [(PRO, "streamGenerateContent"), (FLASH, "streamGenerateContent")]
    app.openai.add_stream_fault(PRO, kind)
    raw = httpx.post(
        f"{proxy}/v1beta/openai/chat/completions",
        json={"model": PRO, "messages": MESSAGES, "stream": True},
        headers={"authorization": "Bearer test-key"},
    )
    # One [DONE], the last event: an early one would end the SDK's stream short.
    assert raw.text.count("data: [DONE]") == 1 and raw.text.endswith("data: [DONE]\n\n")


@pytest.mark.parametrize("kind", STREAM_FAULT_KINDS)
def test_a_stream_lacking_its_finish_or_its_done_that_no_model_continues_raises(
    compat: tuple[SimulatorApp, SimulatorControl, str], kind: str
) -> None:
    app, control, proxy = compat
    app.openai.add_stream_fault(PRO, kind)
    for model in (FLASH, LITE):
        control.set_faults(model, [{"kind": "reject_continuation"}])
    received: list[Any] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in client(proxy).chat.completions.create(
            model=PRO, messages=MESSAGES, stream=True
        ):
            received.append(chunk)
    assert received  # what was delivered stays delivered, and is not called whole
    assert "finish" in caught.value.message


def test_embeddings_fail_over_on_a_503(compat: tuple[SimulatorApp, SimulatorControl, str]) -> None:
    _, control, proxy = compat
    control.set_faults(EMBED, [{"kind": "error", "status": 503}])
    raw = client(proxy).embeddings.with_raw_response.create(model=EMBED, input=["a", "b"])
    answer = raw.parse()
    assert raw.headers["x-gemini-breaker-model"] == EMBED_NEXT
    assert answer.model == EMBED_NEXT
    seen = calls(control, include_body=True)
    assert [(a["model"], a["status"]) for a in seen] == [(EMBED, 503), (EMBED_NEXT, 200)]
    assert json.loads(control.body_of(seen[1]))["model"] == EMBED_NEXT
    direct = client(proxy).embeddings.create(model=EMBED_NEXT, input=["a", "b"])
    assert [e.embedding for e in answer.data] == [e.embedding for e in direct.data]


def test_an_embeddings_429_is_backpressure_not_failover(
    compat: tuple[SimulatorApp, SimulatorControl, str],
) -> None:
    """The SDK raises ``RateLimitError``; nothing moves to the next embedding model, and the
    key and model cool down: the next call is shed by the proxy without reaching upstream."""
    _, control, proxy = compat
    control.set_faults(EMBED, [{"kind": "rate_limited", "retry_delay": 30, "times": 1}])
    sdk = client(proxy, "embed-key")
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.embeddings.create(model=EMBED, input=["a"])
    assert caught.value.status_code == 429
    with pytest.raises(openai.RateLimitError) as shed:
        sdk.embeddings.create(model=EMBED, input=["a"])
    assert shed.value.response.headers["x-gemini-breaker-shed"] == "cooldown"
    assert [(a["model"], a["status"]) for a in calls(control)] == [(EMBED, 429)]
