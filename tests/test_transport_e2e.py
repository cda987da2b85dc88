"""The way to the upstream, end to end with real parts: the real SDK -> the proxy -> Debian's
tinyproxy (CONNECT, with and without proxy authentication) -> the simulator served over TLS
with a CA made by openssl; NO_PROXY; a failed TLS verification; and keep-alive connections
the upstream closes under the proxy."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.genai import errors

from proxy.app import create_app
from proxy.simulator import SimulatorConfig, create_simulator_app
from proxy.simulator.app import SimulatorApp
from proxy.simulator.client import SimulatorControl

from .conftest import calls, proxy_settings
from .redis_topologies import TlsFiles, make_tls_files
from .support import free_port, serve
from .test_sdk_e2e import sdk
from .test_streams import FLASH, PRO, PROMPT, proxy_with, text_of, whole_answer

PROXY_USER, PROXY_PASSWORD = "breaker", "pr0xy-s3cret"


@dataclass
class ForwardProxy:
    url: str
    log: Path

    def tunnels(self) -> int:
        """CONNECT requests tinyproxy received so far."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return sum("CONNECT" in line and "Request (" in line for line in text.splitlines())


@contextmanager
def tinyproxy(directory: Path, auth: bool = False) -> Iterator[ForwardProxy]:
    """Debian's tinyproxy on a free loopback port (skips without it, fails under CI=true)."""
    binary = shutil.which("tinyproxy")
    if binary is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("tinyproxy is missing (make test installs Debian's tinyproxy)")
        pytest.skip("tinyproxy is not installed (make test installs it when run as root)")
    port = free_port()
    log = directory / f"tinyproxy-{port}.log"
    lines = [
        f"Port {port}",
        "Listen 127.0.0.1",
        "Timeout 30",
        f'LogFile "{log}"',
        "LogLevel Connect",
        "MaxClients 64",
        "Allow 127.0.0.1",
        "DisableViaHeader Yes",
    ]
    if auth:
        lines.append(f"BasicAuth {PROXY_USER} {PROXY_PASSWORD}")
    conf = directory / f"tinyproxy-{port}.conf"
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(
        [binary, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 15
        while True:  # a process's start-up: nothing to wait on but its port
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"tinyproxy did not start: {conf.read_text()}") from None
                time.sleep(0.05)
        yield ForwardProxy(f"http://127.0.0.1:{port}", log)
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass
class TlsSimulator:
    url: str
    app: SimulatorApp
    files: TlsFiles

    def model_calls(self) -> int:
        return sum(a.method == "POST" for a in self.app.state.attempts.list())


@pytest.fixture(scope="module")
def tls_simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsSimulator]:
    files = make_tls_files(tmp_path_factory.mktemp("tls"))
    app = create_simulator_app(SimulatorConfig())
    with serve(app, tls=(str(files.server_cert), str(files.server_key))) as url:
        yield TlsSimulator(url, app, files)


def tls_proxy(simulator: TlsSimulator, **upstream: Any) -> Any:
    """The proxy in front of the TLS simulator, trusting the test's CA."""
    settings = proxy_settings(
        simulator.url,
        upstream={"tls": {"ca_file": str(simulator.files.ca)}, **upstream},
        model_defaults={
            "connect_timeout": 5,
            "headers_timeout": 10,
            "first_event_timeout": 10,
            "stall_timeout": 5,
        },
    )
    return serve(create_app(settings))


def unary_and_stream(url: str, simulator: TlsSimulator) -> None:
    before = simulator.model_calls()
    answer = sdk(url).models.generate_content(model=FLASH, contents=PROMPT)
    assert answer.text
    chunks = list(sdk(url).models.generate_content_stream(model=FLASH, contents=PROMPT))
    assert text_of(chunks) == answer.text
    assert simulator.model_calls() == before + 2


@pytest.mark.parametrize("auth", [False, True], ids=["open-proxy", "proxy-authentication"])
def test_the_sdk_reaches_a_tls_upstream_through_an_egress_proxy(
    tmp_path: Path, tls_simulator: TlsSimulator, auth: bool
) -> None:
    with tinyproxy(tmp_path, auth=auth) as forward:
        proxy_url = forward.url
        if auth:
            proxy_url = proxy_url.replace("://", f"://{PROXY_USER}:{PROXY_PASSWORD}@")
        with tls_proxy(tls_simulator, proxy_url=proxy_url, trust_env=False) as url:
            unary_and_stream(url, tls_simulator)
        assert forward.tunnels() >= 1


def test_an_http_upstream_goes_through_the_proxy_in_absolute_form(
    tmp_path: Path, simulator_url: str, simulator: SimulatorControl
) -> None:
    with tinyproxy(tmp_path, auth=True) as forward:
        proxy_url = forward.url.replace("://", f"://{PROXY_USER}:{PROXY_PASSWORD}@")
        settings = proxy_settings(simulator_url, upstream={"proxy_url": proxy_url})
        with serve(create_app(settings)) as url:
            assert sdk(url).models.generate_content(model=FLASH, contents=PROMPT).text
        log = forward.log.read_text()
    assert f"POST {simulator_url}/v1beta/models/{FLASH}:generateContent" in log
    assert [c["model"] for c in calls(simulator)] == [FLASH]


def test_https_proxy_from_the_environment_and_no_proxy(
    tmp_path: Path, tls_simulator: TlsSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    with tinyproxy(tmp_path) as forward:
        # The SDK's own http:// calls to the proxy are not proxied: only HTTPS_PROXY is set.
        monkeypatch.setenv("HTTPS_PROXY", forward.url)
        with tls_proxy(tls_simulator) as url:
            unary_and_stream(url, tls_simulator)
        assert forward.tunnels() >= 1
        seen = forward.tunnels()
        monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        with tls_proxy(tls_simulator) as url:
            unary_and_stream(url, tls_simulator)
        assert forward.tunnels() == seen  # tinyproxy saw nothing of these


def test_a_proxy_that_refuses_the_credentials_is_a_clear_502(
    tmp_path: Path, tls_simulator: TlsSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    with tinyproxy(tmp_path, auth=True) as forward:
        wrong = forward.url.replace("://", f"://{PROXY_USER}:not-the-password@")
        before = tls_simulator.model_calls()
        with tls_proxy(tls_simulator, proxy_url=wrong, trust_env=False) as url:
            response = httpx.post(
                f"{url}/v1beta/models/{PRO}:generateContent",
                json={"contents": [{"parts": [{"text": "hi"}]}]},
                headers={"x-goog-api-key": "k"},
            )
            breakers = httpx.get(f"{url}/admin/breakers").json()["breakers"]
    assert response.status_code == 502
    message = response.json()["error"]["message"]
    assert f"the egress proxy {forward.url} refused the credentials" in message
    assert "not-the-password" not in response.text + caplog.text
    assert response.headers["x-gemini-breaker-attempts"] == "1"  # no failover
    assert tls_simulator.model_calls() == before
    assert all(b["failures"] == 0 for b in breakers.values())


def test_a_failed_certificate_verification_is_a_502_logged_once(
    tls_simulator: TlsSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    # No ca_file: the system's trust store does not know the test's CA.
    settings = proxy_settings(tls_simulator.url)
    before = tls_simulator.model_calls()
    with (
        caplog.at_level(logging.WARNING, logger="gemini_breaker.upstream"),
        serve(create_app(settings)) as url,
    ):
        for _ in range(3):
            with pytest.raises(errors.ServerError) as caught:
                sdk(url).models.generate_content(model=PRO, contents="hi")
            assert caught.value.code == 502
            message = caught.value.message or ""
            assert "certificate verify failed" in message
            assert "unable to get local issuer certificate" in message
        breakers = httpx.get(f"{url}/admin/breakers").json()["breakers"]
    assert tls_simulator.model_calls() == before  # nothing reached a model, none was tried twice
    assert all(b["failures"] == 0 for b in breakers.values())
    logged = [r for r in caplog.records if "certificate verify failed" in r.getMessage()]
    assert len(logged) == 1
    assert "unable to get local issuer certificate" in logged[0].getMessage()


def test_a_stream_continued_on_the_connection_the_upstream_closed(
    simulator_url: str, simulator: SimulatorControl
) -> None:
    # The stream from pro ends without a finishReason, and the simulator closes that
    # connection as the next request arrives on it: the continuation, sent on the pooled
    # connection, goes once more on a new one and the client gets the whole answer.
    simulator.set_faults(PRO, [{"kind": "cut", "after_chunks": 2, "close": True, "times": 1}])
    with proxy_with(simulator_url) as url:
        chunks = list(sdk(url).models.generate_content_stream(model=PRO, contents=PROMPT))
        breakers = httpx.get(f"{url}/admin/breakers").json()["breakers"]
        metrics = httpx.get(f"{url}/metrics").text
    assert text_of(chunks) == whole_answer(simulator_url)
    assert [c["model"] for c in calls(simulator)][:2] == [PRO, FLASH]
    assert breakers.get(FLASH, {"failures": 0})["failures"] == 0
    assert "\ngemini_breaker_upstream_resends_total 1.0\n" in metrics  # what operators see


def test_no_request_is_lost_when_the_upstream_recycles_connections() -> None:
    app = create_simulator_app(SimulatorConfig(close_every=3))
    with (
        serve(app) as simulator_url,
        serve(create_app(proxy_settings(simulator_url))) as url,
        httpx.Client(base_url=url) as client,
    ):
        for _ in range(60):
            response = client.post(
                f"/v1beta/models/{FLASH}:generateContent",
                json={"contents": [{"parts": [{"text": "hi"}]}]},
                headers={"x-goog-api-key": "k"},
            )
            assert response.status_code == 200, response.text
    assert sum(a.method == "POST" for a in app.state.attempts.list()) == 60


def test_a_refused_connection_is_no_models_fault() -> None:
    settings = proxy_settings(f"http://127.0.0.1:{free_port()}")
    with serve(create_app(settings)) as url:
        for _ in range(3):
            response = httpx.post(
                f"{url}/v1beta/models/{PRO}:generateContent",
                json={"contents": [{"parts": [{"text": "hi"}]}]},
                headers={"x-goog-api-key": "k"},
            )
            assert response.status_code == 502
            assert "the upstream refused the connection" in response.json()["error"]["message"]
            assert response.headers["x-gemini-breaker-attempts"] == "1"  # no failover
        breakers = httpx.get(f"{url}/admin/breakers").json()["breakers"]
    assert all(b["failures"] == 0 for b in breakers.values())


def test_a_client_certificate_is_presented_when_configured(tls_simulator: TlsSimulator) -> None:
    files = tls_simulator.files
    app = create_simulator_app(SimulatorConfig())
    with serve(
        app, tls=(str(files.server_cert), str(files.server_key)), client_ca=str(files.ca)
    ) as simulator_url:
        trusting = {"tls": {"ca_file": str(files.ca)}}
        with serve(create_app(proxy_settings(simulator_url, upstream=trusting))) as url:
            with pytest.raises(errors.ServerError) as caught:
                sdk(url).models.generate_content(model=FLASH, contents=PROMPT)
            assert caught.value.code == 502
        certified = {
            "tls": {
                "ca_file": str(files.ca),
                "cert_file": str(files.client_cert),
                "key_file": str(files.client_key),
            }
        }
        with serve(create_app(proxy_settings(simulator_url, upstream=certified))) as url:
            assert sdk(url).models.generate_content(model=FLASH, contents=PROMPT).text
