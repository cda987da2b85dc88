"""End to end for the Live API: the google-genai SDK's ``client.aio.live.connect`` -> the
proxy's TLS listener (a certificate from ``gemini-breaker certs``, trusted through
``SSL_CERT_FILE``) -> the simulator speaking the Live protocol over WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml
from google import genai
from google.genai import errors, types
from google.oauth2.credentials import Credentials
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from proxy.app import ProxyApp, create_app
from proxy.operators.admin_documents import breakers_document
from proxy.operators.certs import make_certificates
from proxy.simulator import create_simulator_app
from proxy.simulator.app import SimulatorApp
from proxy.simulator.attempts import key_digest
from proxy.simulator.live import LiveFault
from proxy.telemetry import Telemetry
from proxy.telemetry.jsonlog import JsonFormatter

from .conftest import ROUTES, proxy_settings
from .support import eventually, eventually_async, free_port, running, serve
from .tcp_gate import TcpGate

pytestmark = pytest.mark.anyio

LIVE_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
TEXT: Any = {"response_modalities": ["TEXT"]}


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_certificates(tmp_path_factory.mktemp("certs"), ["127.0.0.1"], days=2)


@pytest.fixture(scope="module")
def live_simulator() -> Iterator[tuple[SimulatorApp, str]]:
    app = create_simulator_app()
    with serve(app) as url:
        yield app, url


@pytest.fixture(scope="module")
def live_proxy(
    live_simulator: tuple[SimulatorApp, str], certificates: dict[str, Path]
) -> Iterator[tuple[ProxyApp, str]]:
    settings = proxy_settings(
        live_simulator[1],
        server={
            "tls": {"cert_file": str(certificates["cert"]), "key_file": str(certificates["key"])}
        },
        model_defaults={"connect_timeout": 5, "first_event_timeout": 5},
    )
    app = create_app(settings)
    with serve(app, tls=(str(certificates["cert"]), str(certificates["key"]))) as url:
        yield app, url


@pytest.fixture
def sim(live_simulator: tuple[SimulatorApp, str]) -> Iterator[SimulatorApp]:
    app = live_simulator[0]
    app.live.faults.clear()
    app.live.setups.clear()
    app.live.frames.clear()
    yield app
    app.live.faults.clear()


@pytest.fixture
def client(
    live_proxy: tuple[ProxyApp, str], certificates: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> genai.Client:
    """An SDK client of the proxy's https:// base URL, trusting the local CA the documented
    way (the SDK reads ``SSL_CERT_FILE`` when the client is made)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates["ca"]))
    return genai.Client(
        api_key="live-key",
        http_options=types.HttpOptions(base_url=live_proxy[1], api_version="v1beta"),
    )


async def turn(session: Any, text: str) -> str:
    """Send one user turn and return the model's text for it, up to ``turnComplete``."""
    await session.send_client_content(
        turns=types.Content(role="user", parts=[types.Part(text=text)]), turn_complete=True
    )
    parts = []
    async for message in session.receive():
        if message.text:
            parts.append(message.text)
    return "".join(parts)


async def test_turns_go_through_the_tls_listener(
    client: genai.Client, sim: SimulatorApp, live_proxy: tuple[ProxyApp, str]
) -> None:
    assert live_proxy[1].startswith("https://")
    async with client.aio.live.connect(model="gemini-2.5-flash", config=TEXT) as session:
        assert await turn(session, "hello there") == "Live reply 1 to: hello there"
        assert await turn(session, "and again") == "Live reply 2 to: and again"
    assert [setup["model"] for setup in sim.live.setups] == ["models/gemini-2.5-flash"]


async def test_tool_call_round_trip(client: genai.Client, sim: SimulatorApp) -> None:
    weather = types.FunctionDeclaration(name="get_weather", description="The weather now")
    config: Any = {**TEXT, "tools": [types.Tool(function_declarations=[weather])]}
    async with client.aio.live.connect(model="gemini-2.5-flash", config=config) as session:
        await session.send_client_content(
            turns=types.Content(role="user", parts=[types.Part(text="call get_weather")]),
            turn_complete=True,
        )
        calls = []
        async for message in session.receive():
            if message.tool_call and message.tool_call.function_calls:
                calls.extend(message.tool_call.function_calls)
                break
        assert [call.name for call in calls] == ["get_weather"]
        await session.send_tool_response(
            function_responses=[
                types.FunctionResponse(id=calls[0].id, name="get_weather", response={"temp": 21})
            ]
        )
        texts = [message.text async for message in session.receive() if message.text]
        assert "".join(texts) == 'Tool get_weather answered {"temp": 21}.'


@pytest.mark.parametrize(
    "fault", [LiveFault("close_at_setup"), LiveFault("refuse", status=503)], ids=lambda f: f.kind
)
async def test_a_failed_setup_fails_over_to_the_next_model(
    client: genai.Client, sim: SimulatorApp, live_proxy: tuple[ProxyApp, str], fault: LiveFault
) -> None:
    sim.live.add_fault("gemini-2.5-pro", fault)
    failures = live_proxy[0].live.sessions.setup_failures["gemini-2.5-pro"]
    async with client.aio.live.connect(model="gemini-2.5-pro", config=TEXT) as session:
        assert live_proxy[0].live.sessions.open["gemini-2.5-flash"] >= 1
        assert await turn(session, "hi") == "Live reply 1 to: hi"
    models = [setup["model"] for setup in sim.live.setups]
    expected = ["models/gemini-2.5-flash"]
    if fault.kind != "refuse":  # a refused upgrade never got to the setup
        expected.insert(0, "models/gemini-2.5-pro")
    assert models == expected
    assert live_proxy[0].live.sessions.setup_failures["gemini-2.5-pro"] == failures + 1


async def test_a_quota_close_is_backpressure_not_failover(
    client: genai.Client, sim: SimulatorApp, live_proxy: tuple[ProxyApp, str]
) -> None:
    sim.live.add_fault("gemini-2.5-flash-lite", LiveFault("quota"))
    failures = dict(live_proxy[0].live.sessions.setup_failures)
    with pytest.raises(errors.APIError) as raised:
        async with client.aio.live.connect(model="gemini-2.5-flash-lite", config=TEXT):
            pass
    assert raised.value.code == 1011
    assert "RESOURCE_EXHAUSTED" in str(raised.value)
    # Not a breaker failure, and the cooldown holds the model for this key: the next session
    # is shed before it reaches the upstream (the model has no fallback to spill to).
    assert dict(live_proxy[0].live.sessions.setup_failures) == failures
    with pytest.raises(errors.APIError):
        async with client.aio.live.connect(model="gemini-2.5-flash-lite", config=TEXT):
            pass
    assert [setup["model"] for setup in sim.live.setups] == ["models/gemini-2.5-flash-lite"]


def sdk_client(base_url: str, api_key: str = "live-key") -> genai.Client:
    return genai.Client(
        api_key=api_key, http_options=types.HttpOptions(base_url=base_url, api_version="v1beta")
    )


def breaker(app: ProxyApp, model: str) -> dict[str, Any]:
    coordinator = app.forwarder.coordinator
    assert coordinator is not None
    found: dict[str, Any] = breakers_document(coordinator)["breakers"][model]
    return found


async def test_a_refused_connection_at_setup_fails_over_to_the_next_model(
    live_simulator: tuple[SimulatorApp, str],
    certificates: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The upstream connection of the first model is reset before the upgrade (the proxy
    reaches the simulator through a TCP gate): the session is served by the next model, and
    the failed setup is counted, in the metric and against the first model's breaker."""
    sim = live_simulator[0]
    sim.live.setups.clear()
    gate = TcpGate(int(live_simulator[1].rsplit(":", 1)[1]))
    pair = (str(certificates["cert"]), str(certificates["key"]))
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates["ca"]))
    with gate.serve() as gate_url:
        settings = proxy_settings(
            gate_url,
            server={"tls": {"cert_file": pair[0], "key_file": pair[1]}},
            model_defaults={"connect_timeout": 5, "first_event_timeout": 5},
        )
        app = create_app(settings)
        with serve(app, tls=pair) as url:
            gate.reset_next(1)
            client = sdk_client(url)
            async with client.aio.live.connect(model="gemini-2.5-pro", config=TEXT) as session:
                assert app.live.sessions.open["gemini-2.5-flash"] == 1
                assert await turn(session, "hi") == "Live reply 1 to: hi"
            assert gate.resets == 1
            # The reset connection never carried a setup: the simulator saw flash's only.
            assert [setup["model"] for setup in sim.live.setups] == ["models/gemini-2.5-flash"]
            assert app.live.sessions.setup_failures["gemini-2.5-pro"] == 1
            async with httpx.AsyncClient(
                verify=ssl.create_default_context(cafile=str(certificates["ca"]))
            ) as http:
                metrics = (await http.get(f"{url}/metrics")).text
            assert 'gemini_breaker_live_setup_failures_total{model="gemini-2.5-pro"} 1.0' in metrics
            await eventually_async(
                lambda: breaker(app, "gemini-2.5-pro")["failures"] == 1,
                what="the failed setup in pro's breaker",
            )


async def metrics_of(url: str, certificates: dict[str, Path]) -> str:
    async with httpx.AsyncClient(
        verify=ssl.create_default_context(cafile=str(certificates["ca"]))
    ) as http:
        return (await http.get(f"{url}/metrics")).text


def sheds(metrics: str, model: str, reason: str) -> float:
    prefix = f'gemini_breaker_sheds_total{{model="{model}",reason="{reason}"}} '
    found = [line for line in metrics.splitlines() if line.startswith(prefix)]
    return float(found[0].removeprefix(prefix)) if found else 0.0


SHED_REASON = "RESOURCE_EXHAUSTED: the proxy shed this session ("


async def test_a_429_on_the_upgrade_is_backpressure(
    sim: SimulatorApp,
    live_proxy: tuple[ProxyApp, str],
    certificates: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 429 answering the upgrade: the client's session fails with the quota close as it
    came, no breaker failure is counted, and the key cools down on that model: its next
    session is shed by the proxy, closed as Google closes a quota-exhausted session, without
    reaching any upstream, and counted as a shed; it never moves to a weaker model. (A key
    of its own, so the cooldown stays in this test.)"""
    app, url = live_proxy
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates["ca"]))
    client = sdk_client(url, api_key="live-key-429")
    sim.live.add_fault("gemini-2.5-pro", LiveFault("refuse", status=429))
    failures = dict(app.live.sessions.setup_failures)
    pro_failures = breaker(app, "gemini-2.5-pro")["failures"]
    with pytest.raises(errors.APIError) as raised:
        async with client.aio.live.connect(model="gemini-2.5-pro", config=TEXT):
            pass
    assert raised.value.code == 1011
    assert "RESOURCE_EXHAUSTED: upstream answered the upgrade with 429" in str(raised.value)
    assert not sim.live.faults["gemini-2.5-pro"]  # the refusal was used
    assert sim.live.setups == []  # the refused upgrade carried no setup; nothing failed over
    shed_before = sheds(await metrics_of(url, certificates), "gemini-2.5-pro", "cooldown")
    upgrades = len(sim.live.paths)
    with pytest.raises(errors.APIError) as raised:
        async with client.aio.live.connect(model="gemini-2.5-pro", config=TEXT):
            pass
    assert raised.value.code == 1011
    reason = str(raised.value)
    assert f"{SHED_REASON}cooldown); retry in " in reason
    assert reason.endswith("s (gemini-2.5-pro)")
    assert len(sim.live.paths) == upgrades and sim.live.setups == []  # no upstream connection
    assert not app.live.sessions.open
    assert dict(app.live.sessions.setup_failures) == failures
    metrics = await metrics_of(url, certificates)
    assert sheds(metrics, "gemini-2.5-pro", "cooldown") == shed_before + 1
    assert breaker(app, "gemini-2.5-pro")["failures"] == pro_failures


@pytest.fixture
def observed_proxy(
    live_simulator: tuple[SimulatorApp, str], certificates: dict[str, Path]
) -> Iterator[tuple[ProxyApp, str, InMemorySpanExporter]]:
    """A proxy of its own whose spans are kept, with a cluster budget of one session a
    minute on gemini-2.0-flash."""
    spans = InMemorySpanExporter()
    pair = (str(certificates["cert"]), str(certificates["key"]))
    settings = proxy_settings(
        live_simulator[1],
        server={"tls": {"cert_file": pair[0], "key_file": pair[1]}},
        model_defaults={"connect_timeout": 5, "first_event_timeout": 5},
        models={"gemini-2.0-flash": {"requests_per_minute": 1}},
        routes={**ROUTES, "gemini-2.0-flash": ["gemini-2.0-flash", "gemini-2.0-flash-lite"]},
    )
    telemetry = Telemetry(span_exporter=spans, prometheus=True)
    app = create_app(settings, telemetry=telemetry)
    with serve(app, tls=pair) as url:
        yield app, url, spans


def session_spans(spans: InMemorySpanExporter) -> list[ReadableSpan]:
    return [span for span in spans.get_finished_spans() if span.name.startswith("WEBSOCKET ")]


async def test_a_session_has_a_span_and_an_access_log_line(
    sim: SimulatorApp,
    observed_proxy: tuple[ProxyApp, str, InMemorySpanExporter],
    certificates: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One span and one access log line per session, at its end: the route, the requested
    and the serving model, the close code and the resumptions; never the key."""
    caplog.set_level(logging.INFO, logger="gemini_breaker.access")
    _, url, spans = observed_proxy
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates["ca"]))
    secret = "AIzaSecretKeyOfTheCaller0123456789"
    client = sdk_client(url, api_key=secret)
    sim.live.add_fault("gemini-2.5-pro", LiveFault("close_at_setup"))
    sim.live.add_fault("gemini-2.5-flash", LiveFault("drop", after_turns=1))
    config: Any = {**TEXT, "session_resumption": types.SessionResumptionConfig()}
    async with client.aio.live.connect(model="gemini-2.5-pro", config=config) as session:
        assert await turn(session, "one") == "Live reply 1 to: one"
        assert await turn(session, "two") == "Live reply 2 to: two"
    (span,) = await eventually_async(lambda: session_spans(spans), what="the session's span")
    attributes = dict(span.attributes or {})
    assert span.kind is SpanKind.SERVER
    assert attributes["http.route"] == LIVE_PATH
    assert attributes["gen_ai.request.model"] == "gemini-2.5-pro"
    assert attributes["gen_ai.response.model"] == "gemini-2.5-flash"
    assert attributes["gemini_breaker.close_code"] == 1000
    assert attributes["gemini_breaker.resumptions"] == 1
    assert span.status.status_code is not StatusCode.ERROR
    lines = [r.getMessage() for r in caplog.records if r.name == "gemini_breaker.access"]
    (line,) = lines
    assert line.startswith(f"WEBSOCKET {LIVE_PATH} 1000 model=gemini-2.5-flash ")
    assert "requested=gemini-2.5-pro resumptions=1 " in line
    # A session that ends on the server's side: an error span, its code in the line.
    spans.clear()
    sim.live.add_fault("gemini-2.5-flash-lite", LiveFault("drop", after_turns=1))
    async with client.aio.live.connect(model="gemini-2.5-flash-lite", config=TEXT) as session:
        assert await turn(session, "one") == "Live reply 1 to: one"
        with pytest.raises(errors.APIError):
            async for _ in session.receive():
                pass
    (span,) = await eventually_async(lambda: session_spans(spans), what="the second span")
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["gemini_breaker.close_code"] == 1011
    lines = [r.getMessage() for r in caplog.records if r.name == "gemini_breaker.access"]
    assert lines[-1].startswith(f"WEBSOCKET {LIVE_PATH} 1011 model=gemini-2.5-flash-lite ")
    assert not any(secret in line for line in lines)
    assert not any(secret in str(s.attributes) for s in spans.get_finished_spans())


async def test_a_session_takes_one_request_of_the_cluster_budget(
    sim: SimulatorApp,
    observed_proxy: tuple[ProxyApp, str, InMemorySpanExporter],
    certificates: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gemini-2.0-flash may take one request a minute across the cluster: the first session
    spends it, the second is shed (the budget's own reason), not moved to the next model."""
    url = observed_proxy[1]
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates["ca"]))
    client = sdk_client(url)
    async with client.aio.live.connect(model="gemini-2.0-flash", config=TEXT) as session:
        assert await turn(session, "hi") == "Live reply 1 to: hi"
    with pytest.raises(errors.APIError) as raised:
        async with client.aio.live.connect(model="gemini-2.0-flash", config=TEXT):
            pass
    assert raised.value.code == 1011
    assert f"{SHED_REASON}budget); retry in " in str(raised.value)
    assert [setup["model"] for setup in sim.live.setups] == ["models/gemini-2.0-flash"]
    metrics = await metrics_of(url, certificates)
    assert sheds(metrics, "gemini-2.0-flash", "budget") == 1


async def test_with_spillover_a_shed_session_moves_when_the_next_models_budget_admits_it(
    live_simulator: tuple[SimulatorApp, str],
    sim: SimulatorApp,
    certificates: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The route opts into spillover: a session the first model's budget sheds goes to the
    next model while that model's own budget admits it, and is shed once that is spent."""
    pair = (str(certificates["cert"]), str(certificates["key"]))
    settings = proxy_settings(
        live_simulator[1],
        server={"tls": {"cert_file": pair[0], "key_file": pair[1]}},
        model_defaults={"connect_timeout": 5, "first_event_timeout": 5},
        quota={"spillover_share": 1.0},
        models={
            "gemini-2.0-flash": {"requests_per_minute": 1},
            "gemini-2.0-flash-lite": {"requests_per_minute": 1},
        },
        routes={**ROUTES, "gemini-2.0-flash": ["gemini-2.0-flash", "gemini-2.0-flash-lite"]},
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates["ca"]))
    with serve(create_app(settings), tls=pair) as url:
        client = sdk_client(url)
        for _ in range(2):
            async with client.aio.live.connect(model="gemini-2.0-flash", config=TEXT) as session:
                assert await turn(session, "hi") == "Live reply 1 to: hi"
        with pytest.raises(errors.APIError) as raised:
            async with client.aio.live.connect(model="gemini-2.0-flash", config=TEXT):
                pass
        metrics = await metrics_of(url, certificates)
    assert f"{SHED_REASON}budget); retry in " in str(raised.value)
    assert [setup["model"] for setup in sim.live.setups] == [
        "models/gemini-2.0-flash",
        "models/gemini-2.0-flash-lite",
    ]
    assert sheds(metrics, "gemini-2.0-flash", "budget") == 1


async def test_a_dropped_upstream_closes_the_client_with_its_code_and_reason(
    client: genai.Client, sim: SimulatorApp
) -> None:
    sim.live.add_fault("gemini-2.5-flash", LiveFault("drop", after_turns=1))
    async with client.aio.live.connect(model="gemini-2.5-flash", config=TEXT) as session:
        assert await turn(session, "one") == "Live reply 1 to: one"
        with pytest.raises(errors.APIError) as raised:
            async for _ in session.receive():
                pass
    assert raised.value.code == 1011
    assert "INTERNAL: Internal error encountered." in str(raised.value)


async def test_without_resumption_a_go_away_is_relayed_then_the_upstreams_close(
    client: genai.Client, sim: SimulatorApp, live_proxy: tuple[ProxyApp, str]
) -> None:
    """A session that did not enable resumption: the client gets the ``goAway`` itself, then
    its socket closes with the upstream's code and reason; nothing is resumed."""
    reason = "session time limit reached"
    sim.live.add_fault("gemini-2.5-flash", LiveFault("go_away", after_turns=1, reason=reason))
    resumptions = dict(live_proxy[0].live.sessions.resumptions)
    async with client.aio.live.connect(model="gemini-2.5-flash", config=TEXT) as session:
        assert await turn(session, "one") == "Live reply 1 to: one"
        seen = []
        with pytest.raises(errors.APIError) as raised:
            async for message in session.receive():
                seen.append(message)
    assert [message.go_away is not None for message in seen] == [True]
    assert raised.value.code == 1000
    assert reason in str(raised.value)
    assert len(sim.live.setups) == 1
    assert dict(live_proxy[0].live.sessions.resumptions) == resumptions


async def test_a_drop_before_any_handle_closes_a_resumable_session_as_the_upstream_did(
    client: genai.Client, sim: SimulatorApp, live_proxy: tuple[ProxyApp, str]
) -> None:
    """Resumption enabled, but the upstream drops mid-way through the first turn, before it
    gave a handle: there is nothing to resume with, so the client's socket closes with the
    upstream's code and reason, and no new upstream session is opened."""
    sim.live.add_fault("gemini-2.5-flash", LiveFault("drop_mid_turn", after_turns=1))
    resumptions = dict(live_proxy[0].live.sessions.resumptions)
    config: Any = {**TEXT, "session_resumption": types.SessionResumptionConfig()}
    async with client.aio.live.connect(model="gemini-2.5-flash", config=config) as session:
        with pytest.raises(errors.APIError) as raised:
            await turn(session, "one")
    assert raised.value.code == 1011
    assert "INTERNAL: Internal error encountered." in str(raised.value)
    (setup,) = sim.live.setups  # no resumption attempted
    assert "handle" not in setup["sessionResumption"]
    assert dict(live_proxy[0].live.sessions.resumptions) == resumptions


def resumptions_metric(metrics: str, model: str) -> float:
    prefix = f'gemini_breaker_live_resumptions_total{{model="{model}"}} '
    found = [line for line in metrics.splitlines() if line.startswith(prefix)]
    return float(found[0].removeprefix(prefix)) if found else 0.0


@pytest.mark.parametrize("kind", ["drop", "go_away"])
async def test_a_resumable_session_is_resumed_without_the_client_noticing(
    client: genai.Client,
    sim: SimulatorApp,
    live_proxy: tuple[ProxyApp, str],
    certificates: dict[str, Path],
    kind: str,
) -> None:
    """A drop or ``goAway`` after a handle: the next turn is answered in the same
    conversation, and the resumption is counted, in the replica's counter and in
    ``/metrics``."""
    sim.live.add_fault("gemini-2.5-flash", LiveFault(kind, after_turns=1))
    resumptions = live_proxy[0].live.sessions.resumptions["gemini-2.5-flash"]
    scraped = resumptions_metric(await metrics_of(live_proxy[1], certificates), "gemini-2.5-flash")
    config: Any = {**TEXT, "session_resumption": types.SessionResumptionConfig()}
    async with client.aio.live.connect(model="gemini-2.5-flash", config=config) as session:
        assert await turn(session, "one") == "Live reply 1 to: one"
        # The simulator numbers replies per conversation: 2 means the context carried over.
        assert await turn(session, "two") == "Live reply 2 to: two"
    assert live_proxy[0].live.sessions.resumptions["gemini-2.5-flash"] == resumptions + 1
    metrics = await metrics_of(live_proxy[1], certificates)
    assert resumptions_metric(metrics, "gemini-2.5-flash") == scraped + 1
    first, resumed = sim.live.setups
    assert "handle" not in first["sessionResumption"]
    assert resumed["sessionResumption"]["handle"].endswith("-1")


async def test_sessions_show_in_metrics_and_admin(
    client: genai.Client,
    sim: SimulatorApp,
    live_proxy: tuple[ProxyApp, str],
    certificates: dict[str, Path],
) -> None:
    url = live_proxy[1]
    async with (
        httpx.AsyncClient(
            verify=ssl.create_default_context(cafile=str(certificates["ca"]))
        ) as http,
        client.aio.live.connect(model="gemini-2.0-flash", config=TEXT) as session,
    ):
        assert await turn(session, "hi") == "Live reply 1 to: hi"
        view = (await http.get(f"{url}/admin/live")).json()
        assert view["open"]["gemini-2.0-flash"] == 1
        metrics = (await http.get(f"{url}/metrics")).text
        assert 'gemini_breaker_live_sessions_open{model="gemini-2.0-flash"} 1.0' in metrics
    # The proxy learns of the close on its own loop, a moment after the client's.
    sessions = live_proxy[0].live.sessions
    await eventually_async(lambda: not sessions.open.get("gemini-2.0-flash"), what="the close")


@contextlib.asynccontextmanager
async def raw_session(
    live_proxy: tuple[ProxyApp, str],
    certificates: dict[str, Path],
    model: str = "gemini-2.0-flash-lite",
    resumable: bool = False,
    **options: Any,
) -> AsyncIterator[ClientConnection]:
    """A session through the proxy with a plain WebSocket client (frames as they are), set up."""
    url = live_proxy[1].replace("https://", "wss://") + LIVE_PATH
    context = ssl.create_default_context(cafile=str(certificates["ca"]))
    setup: dict[str, Any] = {"model": f"models/{model}"}
    if resumable:
        setup["sessionResumption"] = {}
    async with connect(
        url, ssl=context, additional_headers={"x-goog-api-key": "k"}, **options
    ) as socket:
        await socket.send(json.dumps({"setup": setup}))
        assert json.loads(await socket.recv()) == {"setupComplete": {}}
        yield socket


async def until_turn_complete(socket: ClientConnection) -> None:
    while b"turnComplete" not in await socket.recv(decode=False):
        pass


# Valid JSON a serializer would not write: odd whitespace, key order and escapes.
ODD_TEXT = (
    '{ "clientContent" :{"turnComplete" : true ,\n\t"turns":[ {"parts":[{"text":"caf\\u00e9'
    '  x"}] , "role":"user"} ]} }  '
)
ODD_BINARY = '{"realtimeInput":{ "text" :"bin\u00e9"}}\r\n'.encode()


async def test_client_frames_reach_the_upstream_byte_for_byte_and_of_their_type(
    sim: SimulatorApp, live_proxy: tuple[ProxyApp, str], certificates: dict[str, Path]
) -> None:
    """Text stays text and binary stays binary, unchanged to the byte, an empty text frame
    included (the simulator, like Google, takes that for invalid JSON and closes 1007)."""
    async with raw_session(live_proxy, certificates) as socket:
        await socket.send(ODD_TEXT)
        await until_turn_complete(socket)
        await socket.send(ODD_BINARY)
        await until_turn_complete(socket)
        await socket.send("")
        with pytest.raises(ConnectionClosed) as closed:
            await socket.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
    assert list(sim.live.frames) == [ODD_TEXT, ODD_BINARY, ""]
    assert [type(frame) for frame in sim.live.frames] == [str, bytes, str]


@pytest.mark.parametrize("resumable", [False, True], ids=["plain", "resumable"])
async def test_upstream_frames_reach_the_client_byte_for_byte_and_of_their_type(
    sim: SimulatorApp,
    live_proxy: tuple[ProxyApp, str],
    certificates: dict[str, Path],
    resumable: bool,
) -> None:
    """Also when the client enabled resumption, where the relay looks into each frame."""
    frames: tuple[str | bytes, ...] = (
        ODD_TEXT,
        ODD_BINARY,
        "",
        b"",
        b"\x00\xff not JSON",
        '{"sessionResumptionUpdate": {"resumable": false}}',
    )
    sim.live.add_fault("gemini-2.0-flash-lite", LiveFault("send", frames=frames))
    async with raw_session(live_proxy, certificates, resumable=resumable) as socket:
        received = [await socket.recv() for _ in frames]
    assert received == list(frames)
    assert [type(frame) for frame in received] == [type(frame) for frame in frames]


async def test_a_client_that_stops_reading_stops_the_proxy_reading_the_upstream(
    sim: SimulatorApp,
    live_proxy: tuple[ProxyApp, str],
    certificates: dict[str, Path],
    figures: dict[str, str],
) -> None:
    """The upstream sends 400 frames of 512 KiB to a client that reads none: the simulator's
    sends stop returning after a bounded number (what the kernel's socket buffers and the
    frame queues of the client library and of the proxy's upstream socket hold, about 60 here),
    so the proxy does not read, and buffer, the rest; once the client reads, every frame
    arrives whole. (Random bytes, so a compressing connection cannot shrink them.)"""
    total = 400
    block = os.urandom(1 << 19)
    sim.live.add_fault("gemini-2.0-flash-lite", LiveFault("send", frames=(block,) * total))
    sent_before = sim.live.frames_sent
    async with raw_session(live_proxy, certificates, max_size=None) as socket:

        def settled() -> int | None:
            """The count of frames sent, once it stopped growing for a while (nothing
            signals that sends are blocked; a count still growing fails the bound anyway)."""
            history.append(sim.live.frames_sent - sent_before)
            recent = history[-40:]
            return recent[-1] if len(recent) == 40 and len(set(recent)) == 1 else None

        history: list[int] = []
        in_flight = await eventually_async(
            lambda: settled() or None, timeout=60, interval=0.025, what="the sends to stop"
        )
        figures["live: 512 KiB frames sent upstream while the client reads none"] = (
            f"{in_flight} of {total}"
        )
        assert 0 < in_flight < total // 2
        for _ in range(total):
            assert await socket.recv() == block
    assert sim.live.frames_sent - sent_before == total


def _pid_listening_with(port: int) -> int:
    """The pid of this process's child started with ``--port PORT`` (the free port makes it
    unique)."""
    wanted = ["--port", str(port)]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().decode().split("\0")
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[1]) == os.getpid() and any(
                argv[i : i + 2] == wanted for i in range(len(argv))
            ):
                return int(entry.name)
    raise AssertionError(f"no child process listening on {port}")


def _rss_kib(pid: int) -> float:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1024


async def test_a_thousand_idle_sessions_are_held_at_once(
    sim: SimulatorApp,
    live_simulator: tuple[SimulatorApp, str],
    certificates: dict[str, Path],
    tmp_path: Path,
    figures: dict[str, str],
) -> None:
    """1,000 concurrent sessions (set up, then idle) through one proxy process; each still
    answers a turn afterwards. The proxy runs as a process of its own (``gemini-breaker
    serve``), so the growth of its resident memory is the proxy's alone (both of a session's
    sockets, TLS towards the client, the relay's state): a figure, with a generous ceiling."""
    sessions = 1000
    port = free_port()
    config = {
        "upstream": {"base_url": live_simulator[1]},
        "routes": {},
        "server": {
            "tls": {"cert_file": str(certificates["cert"]), "key_file": str(certificates["key"])}
        },
        "model_defaults": {"connect_timeout": 5, "first_event_timeout": 5},
        "admin": {"allow_unauthenticated_loopback": True},
    }
    (tmp_path / "proxy.yaml").write_text(yaml.safe_dump(config))
    context = ssl.create_default_context(cafile=str(certificates["ca"]))
    base = f"https://127.0.0.1:{port}"
    url = base.replace("https://", "wss://") + LIVE_PATH
    setup = json.dumps({"setup": {"model": "models/gemini-2.0-flash-lite"}})
    args = ["serve", "--config", str(tmp_path / "proxy.yaml"), "--port", str(port)]
    with running(args, {}):
        pid = _pid_listening_with(port)
        async with contextlib.AsyncExitStack() as stack:

            async def open_one() -> ClientConnection:
                socket = await stack.enter_async_context(
                    connect(url, ssl=context, additional_headers={"x-goog-api-key": "k"})
                )
                await socket.send(setup)
                assert json.loads(await socket.recv()) == {"setupComplete": {}}
                return socket

            # One session first, so what every session shares (imports, pools, the first
            # TLS handshake's caches) is not counted per session.
            sockets = [await open_one()]
            before = _rss_kib(pid)
            for _ in range(10):  # in waves, so the handshakes do not all time out at once
                sockets += await asyncio.gather(*(open_one() for _ in range(sessions // 10)))
            after = _rss_kib(pid)
            async with httpx.AsyncClient(verify=context) as http:
                view = (await http.get(f"{base}/admin/live")).json()
            assert view["open"]["gemini-2.0-flash-lite"] == sessions + 1
            turn_message = {
                "clientContent": {"turns": [{"role": "user", "parts": [{"text": "x"}]}]}
            }
            for socket in (sockets[0], sockets[-1]):
                await socket.send(json.dumps(turn_message))
                texts = []
                while True:
                    message = json.loads(await socket.recv())
                    content = message.get("serverContent", {})
                    if content.get("turnComplete"):
                        break
                    parts = content.get("modelTurn", {}).get("parts", [])
                    texts += [part["text"] for part in parts]
                assert "".join(texts) == "Live reply 1 to: x"
    per_session = (after - before) / sessions
    figures["live: proxy memory per idle session (RSS growth over 1,000, TLS)"] = (
        f"{per_session:.1f} KiB"
    )
    assert per_session < 256


async def test_shutdown_closes_open_sessions_with_a_close_frame(
    live_simulator: tuple[SimulatorApp, str],
) -> None:
    settings = proxy_settings(live_simulator[1])
    with contextlib.ExitStack() as server:
        base = server.enter_context(serve(create_app(settings)))
        url = base.replace("http://", "ws://") + LIVE_PATH
        async with connect(url, additional_headers={"x-goog-api-key": "k"}) as socket:
            await socket.send(json.dumps({"setup": {"model": "models/gemini-2.0-flash"}}))
            assert json.loads(await socket.recv()) == {"setupComplete": {}}
            # Stop the server off this loop, so the client keeps answering the close handshake.
            stopping = asyncio.ensure_future(asyncio.to_thread(server.close))
            with pytest.raises(ConnectionClosed) as closed:
                await socket.recv()
            await stopping
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code in (1001, 1012)  # going away / service restart


async def test_with_client_tokens_a_caller_without_one_is_refused(
    live_simulator: tuple[SimulatorApp, str],
) -> None:
    settings = proxy_settings(
        live_simulator[1],
        server={"client_tokens": ["tok-0123456789abcdef"]},
        upstream={"api_key": "real"},
    )
    with serve(create_app(settings)) as base:
        url = base.replace("http://", "ws://") + LIVE_PATH
        for key in ({}, {"x-goog-api-key": "not-a-token"}):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url, additional_headers=key):
                    pass
            assert refused.value.response.status_code == 403
        async with connect(
            url, additional_headers={"x-goog-api-key": "tok-0123456789abcdef"}
        ) as socket:
            await socket.send(json.dumps({"setup": {"model": "models/gemini-2.0-flash"}}))
            assert json.loads(await socket.recv()) == {"setupComplete": {}}


US, EU, PROJECT = "us-central1", "europe-west4", "live-project"
VERTEX_PATH = "/ws/google.cloud.aiplatform.v1beta1.LlmBidiService/BidiGenerateContent"
VERTEX_TOKEN = "vertex-live-oauth-token"


@pytest.fixture(scope="module")
def regions() -> Iterator[dict[str, tuple[SimulatorApp, str]]]:
    """One simulator per location, standing for that region's Vertex origin."""
    us, eu = create_simulator_app(), create_simulator_app()
    with serve(us) as us_url, serve(eu) as eu_url:
        yield {US: (us, us_url), EU: (eu, eu_url)}


@pytest.fixture
def vertex_proxy(
    regions: dict[str, tuple[SimulatorApp, str]], certificates: dict[str, Path]
) -> Iterator[str]:
    """A replica whose Developer API upstream is neither region (Vertex sessions must never
    go there), with the route ``[pro@us-central1, pro@europe-west4]``."""
    with vertex_proxy_with(
        regions, certificates, [f"gemini-2.5-pro@{US}", f"gemini-2.5-pro@{EU}"]
    ) as url:
        yield url


@contextlib.contextmanager
def vertex_proxy_with(
    regions: dict[str, tuple[SimulatorApp, str]],
    certificates: dict[str, Path],
    route: Any,
    **settings: Any,
) -> Iterator[str]:
    """The Vertex replica of ``vertex_proxy``, with ``route`` for gemini-2.5-pro."""
    for sim, _ in regions.values():
        sim.live.faults.clear()
        sim.live.setups.clear()
        sim.live.paths.clear()
        sim.live.credentials.clear()
    developer = create_simulator_app()
    pair = (str(certificates["cert"]), str(certificates["key"]))
    with serve(developer) as developer_url:
        settings = proxy_settings(
            developer_url,
            server={"tls": {"cert_file": pair[0], "key_file": pair[1]}},
            model_defaults={"connect_timeout": 5, "first_event_timeout": 5},
            vertex={
                "project": PROJECT,
                "location": US,
                "origins": {location: url for location, (_, url) in regions.items()},
            },
            routes={"gemini-2.5-pro": route},
            upstream={"api_key": "developer-api-key"},
            **settings,
        )
        with serve(create_app(settings), tls=pair) as url:
            yield url
        assert developer.live.paths == []


def vertex_client(url: str, location: str = US) -> genai.Client:
    """The SDK in Vertex mode, pointed at the proxy: it opens ``wss://{base}/ws/...
    LlmBidiService/BidiGenerateContent`` with the client's bearer token, naming the model
    ``projects/P/locations/L/publishers/google/models/M`` in the setup."""
    return genai.Client(
        vertexai=True,
        project=PROJECT,
        location=location,
        credentials=Credentials(token=VERTEX_TOKEN),
        http_options=types.HttpOptions(base_url=url),
    )


def resource(location: str, model: str = "gemini-2.5-pro") -> str:
    return f"projects/{PROJECT}/locations/{location}/publishers/google/models/{model}"


async def test_a_vertex_session_goes_to_the_origin_of_its_location(
    regions: dict[str, tuple[SimulatorApp, str]],
    vertex_proxy: str,
    certificates: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A model with no route is its own target in the client's location: served by that
    location's origin with the client's token, never by the Developer API upstream."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates["ca"]))
    client = vertex_client(vertex_proxy, EU)
    async with client.aio.live.connect(model="gemini-2.5-flash", config=TEXT) as session:
        assert await turn(session, "hello") == "Live reply 1 to: hello"
    us, eu = regions[US][0], regions[EU][0]
    assert eu.live.paths == [VERTEX_PATH]
    assert [setup["model"] for setup in eu.live.setups] == [resource(EU, "gemini-2.5-flash")]
    assert eu.live.credentials == [key_digest(VERTEX_TOKEN)]  # the client's own token
    assert us.live.paths == []


async def test_a_vertex_setup_failure_moves_to_the_same_model_in_the_next_location(
    regions: dict[str, tuple[SimulatorApp, str]],
    vertex_proxy: str,
    certificates: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pro@us-central1 refuses the upgrade (503): the session is served by
    pro@europe-west4, at that region's origin, its setup naming that location."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates["ca"]))
    us, eu = regions[US][0], regions[EU][0]
    us.live.add_fault("gemini-2.5-pro", LiveFault("refuse", status=503))
    client = vertex_client(vertex_proxy, US)
    async with client.aio.live.connect(model="gemini-2.5-pro", config=TEXT) as session:
        assert await turn(session, "hi") == "Live reply 1 to: hi"
    assert not us.live.faults["gemini-2.5-pro"]  # the refusal was used
    assert us.live.setups == []
    assert eu.live.paths == [VERTEX_PATH]
    assert [setup["model"] for setup in eu.live.setups] == [resource(EU)]
    assert eu.live.credentials == [key_digest(VERTEX_TOKEN)]


def failures_of(url: str, certificates: dict[str, Path], target: str) -> int:
    """The failures ``target``'s breaker counts, from the admin API."""
    trust = ssl.create_default_context(cafile=str(certificates["ca"]))
    breakers = httpx.get(f"{url}/admin/breakers", verify=trust).json()["breakers"]
    return int(breakers.get(target, {"failures": 0})["failures"])


async def test_a_refused_connection_moves_to_the_same_model_in_the_next_location(
    regions: dict[str, tuple[SimulatorApp, str]],
    certificates: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """us-central1's origin refuses the connection (nothing listens on its port): the session
    is served by pro@europe-west4, and the refusal counts against pro@us-central1."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates["ca"]))
    us, eu = regions[US][0], regions[EU][0]
    refusing = {US: (us, f"http://127.0.0.1:{free_port()}"), EU: regions[EU]}
    route = [f"gemini-2.5-pro@{US}", f"gemini-2.5-pro@{EU}"]
    with vertex_proxy_with(refusing, certificates, route) as url:
        client = vertex_client(url, US)
        async with client.aio.live.connect(model="gemini-2.5-pro", config=TEXT) as session:
            assert await turn(session, "hi") == "Live reply 1 to: hi"
        # Outcomes reach the breakers with the next flush of the tallies.
        await anyio.to_thread.run_sync(
            lambda: eventually(
                lambda: failures_of(url, certificates, f"gemini-2.5-pro@{US}") == 1,
                what="the refused setup in pro@us-central1's breaker",
            )
        )
        trust = ssl.create_default_context(cafile=str(certificates["ca"]))
        async with httpx.AsyncClient(verify=trust) as http:
            live = (await http.get(f"{url}/admin/live")).json()
    assert [setup["model"] for setup in eu.live.setups] == [resource(EU)]
    assert us.live.paths == []
    assert live["setup_failures"] == {f"gemini-2.5-pro@{US}": 1}


async def test_a_quota_close_on_shared_capacity_moves_to_the_next_location(
    regions: dict[str, tuple[SimulatorApp, str]],
    certificates: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``on_429: next_location``, pro@us-central1 closing the setup RESOURCE_EXHAUSTED
    (naming no quota of the project's) moves the session to pro@europe-west4; the next session,
    while us-central1 cools down, goes to europe-west4 without reaching us-central1."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates["ca"]))
    us, eu = regions[US][0], regions[EU][0]
    route = {"chain": [f"gemini-2.5-pro@{US}", f"gemini-2.5-pro@{EU}"], "on_429": "next_location"}
    quota = {"max_retry_wait": 0, "default_cooldown": 120}
    with vertex_proxy_with(regions, certificates, route, quota=quota) as url:
        us.live.add_fault("gemini-2.5-pro", LiveFault("quota"))
        for n in range(2):
            client = vertex_client(url, US)
            async with client.aio.live.connect(model="gemini-2.5-pro", config=TEXT) as session:
                assert await turn(session, "hi") == "Live reply 1 to: hi"
            assert [setup["model"] for setup in eu.live.setups] == [resource(EU)] * (n + 1)
        assert us.live.paths == [VERTEX_PATH]  # the first session only
        trust = ssl.create_default_context(cafile=str(certificates["ca"]))
        async with httpx.AsyncClient(verify=trust) as http:
            breakers = (await http.get(f"{url}/admin/breakers")).json()
    assert breakers["breakers"].get(f"gemini-2.5-pro@{US}", {"failures": 0})["failures"] == 0


async def test_without_next_location_a_quota_close_reaches_the_client(
    regions: dict[str, tuple[SimulatorApp, str]],
    vertex_proxy: str,
    certificates: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates["ca"]))
    us, eu = regions[US][0], regions[EU][0]
    us.live.add_fault("gemini-2.5-pro", LiveFault("quota"))
    client = vertex_client(vertex_proxy, US)
    with pytest.raises(errors.APIError, match="RESOURCE_EXHAUSTED"):
        async with client.aio.live.connect(model="gemini-2.5-pro", config=TEXT) as session:
            await turn(session, "hi")
    assert eu.live.paths == []


async def test_a_probe_that_is_the_clients_fault_hands_its_permit_back(
    live_simulator: tuple[SimulatorApp, str],
) -> None:
    """A half-open breaker with one probe permit: the session it admits names an unknown
    resumption handle (the upstream closes 1008 INVALID_ARGUMENT, the session's own fault).
    The permit is handed back uncounted, so a later session probes and closes the breaker;
    without that, the breaker would admit nothing until the probe is taken as lost and then
    reopen it."""
    model = "gemini-2.5-flash-lite"  # a model of the routes, so the admin API knows it
    settings = proxy_settings(
        live_simulator[1],
        model_defaults={
            "connect_timeout": 5,
            "first_event_timeout": 5,
            "breaker": {"open_seconds": 0, "half_open_probes": 1, "half_open_timeout": 60},
        },
    )
    app = create_app(settings)
    with serve(app) as base:
        async with httpx.AsyncClient() as http:
            opened = await http.post(f"{base}/admin/breakers/{model}/open", json={"reason": "t"})
        assert opened.status_code == 200, opened.text
        url = base.replace("http://", "ws://") + LIVE_PATH
        key = {"x-goog-api-key": "probe-key"}
        bad = {"setup": {"model": f"models/{model}", "sessionResumption": {"handle": "nope"}}}
        async with connect(url, additional_headers=key) as socket:
            await socket.send(json.dumps(bad))
            with pytest.raises(ConnectionClosed) as closed:
                await socket.recv()
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason.split(":")[0]) == (
            1008,
            "INVALID_ARGUMENT",
        )
        await eventually_async(
            lambda: breaker(app, model)["probes_issued"] == 0, what="the permit handed back"
        )
        assert breaker(app, model)["state"] == "half_open"

        async def served() -> bool:
            async with connect(url, additional_headers=key) as socket:
                await socket.send(json.dumps({"setup": {"model": f"models/{model}"}}))
                try:
                    return json.loads(await socket.recv()) == {"setupComplete": {}}
                except ConnectionClosed:  # this replica asks for a permit at most every 0.1 s
                    return False

        for _ in range(100):
            if await served():
                break
            await anyio.sleep(0.05)
        await eventually_async(
            lambda: breaker(app, model)["state"] == "closed", what="the probe closing it"
        )


class _Lines(logging.Handler):
    """Records formatted as the JSON log formats them, when they are emitted (the trace
    context is read then)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


async def test_the_relays_log_lines_carry_the_sessions_trace(
    sim: SimulatorApp,
    observed_proxy: tuple[ProxyApp, str, InMemorySpanExporter],
    certificates: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, url, spans = observed_proxy
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates["ca"]))
    sim.live.add_fault("gemini-2.5-pro", LiveFault("close_at_setup"))
    live_log = logging.getLogger("gemini_breaker.live")
    lines = _Lines()
    level = live_log.level
    live_log.addHandler(lines)
    live_log.setLevel(logging.INFO)
    try:
        client = sdk_client(url)
        async with client.aio.live.connect(model="gemini-2.5-pro", config=TEXT) as session:
            assert await turn(session, "hi") == "Live reply 1 to: hi"
    finally:
        live_log.removeHandler(lines)
        live_log.setLevel(level)
    (span,) = await eventually_async(lambda: session_spans(spans), what="the session's span")
    (failed,) = [line for line in lines.lines if "live setup on gemini-2.5-pro" in line["message"]]
    assert failed["trace_id"] == format(span.context.trace_id, "032x")
