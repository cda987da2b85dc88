"""The command line as a user runs it: real processes, the SDK configured by environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from google import genai
from google.genai import errors, types
from google.oauth2.credentials import Credentials

from proxy.app import create_app
from proxy.cluster.keys import Keys
from proxy.operators.admin_cli import _segment as admin_cli_segment

from .conftest import proxy_settings
from .redis_support import RedisServer
from .redis_support import redis_server as redis_server  # the fixture
from .support import free_port, running, serve


def test_serve_and_simulate_work_together_as_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    sim_port, proxy_port = free_port(), free_port()
    with (
        running(["simulate", "--port", str(sim_port)], {}),
        running(
            ["serve", "--port", str(proxy_port)],
            {"GEMINI_BREAKER_UPSTREAM_URL": f"http://127.0.0.1:{sim_port}"},
        ),
    ):
        # The application changes nothing but the base URL, here through the environment.
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", f"http://127.0.0.1:{proxy_port}")
        client = genai.Client(api_key="k")
        response = client.models.generate_content(model="gemini-2.5-flash", contents="hello")
        assert response.text
        assert response.sdk_http_response is not None
        assert response.sdk_http_response.headers is not None
        assert response.sdk_http_response.headers["x-gemini-breaker-model"] == "gemini-2.5-flash"


def test_invalid_configuration_fails_fast_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("routes:\n  gemini-2.5-pro: [gemini-2.5-pro, 7]\n")
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "routes.gemini-2.5-pro[1]" in result.stderr
    assert "Traceback" not in result.stderr


def test_api_keys_never_reach_the_logs_even_at_debug_level() -> None:
    client_key, proxy_key = "AIzaCLIENT-secret-1", "AIzaPROXY-secret-2"
    sim_port, proxy_port = free_port(), free_port()
    generate = f"http://127.0.0.1:{proxy_port}/v1beta/models/gemini-2.5-flash:generateContent"
    body = b'{"contents": [{"parts": [{"text": "hi"}]}]}'
    with running(["simulate", "--port", str(sim_port)], {}):
        proxy_env = {
            "GEMINI_BREAKER_UPSTREAM_URL": f"http://127.0.0.1:{sim_port}",
            "GEMINI_API_KEY": proxy_key,
        }
        with running(
            ["serve", "--port", str(proxy_port), "--log-level", "debug"], proxy_env
        ) as log:
            assert httpx.post(
                generate, content=body, headers={"x-goog-api-key": client_key}
            ).is_success
            assert httpx.post(generate + f"?key={client_key}", content=body).is_success
            assert httpx.post(generate, content=body).is_success  # the proxy's key is injected
            client = genai.Client(
                api_key=client_key, http_options={"base_url": f"http://127.0.0.1:{proxy_port}"}
            )
            with pytest.raises(errors.ClientError):
                client.models.generate_content(model="no-such-model", contents="hi")
    text = "".join(log)
    assert "key=REDACTED" in text  # requests were logged, with the key blanked
    assert client_key not in text
    assert proxy_key not in text


def test_several_workers_need_redis() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "GEMINI_BREAKER_CONFIG": "", "GEMINI_BREAKER_REDIS_URL": ""},
    )
    assert result.returncode == 2
    assert "server.workers" in result.stderr and "redis.url" in result.stderr


def test_workers_are_replicas_of_one_cluster(redis_server: RedisServer) -> None:
    sim_port, proxy_port = free_port(), free_port()
    env = {
        "GEMINI_BREAKER_UPSTREAM_URL": f"http://127.0.0.1:{sim_port}",
        "GEMINI_BREAKER_REDIS_URL": redis_server.url,
    }
    with (
        running(["simulate", "--port", str(sim_port)], {}),
        running(["serve", "--port", str(proxy_port), "--workers", "2"], env),
    ):
        url = f"http://127.0.0.1:{proxy_port}/v1beta/models/gemini-2.5-flash:generateContent"
        body = b'{"contents": [{"parts": [{"text": "hi"}]}]}'
        client = redis.Redis.from_url(redis_server.url)
        deadline = time.monotonic() + 30
        # Each worker registers itself with the cluster as it starts.
        while client.hlen(Keys().route_digests) < 2:
            assert time.monotonic() < deadline, "the second worker never joined"
            time.sleep(0.05)
        # A worker registers during its start-up, a moment before it starts accepting.
        while not serving(f"http://127.0.0.1:{proxy_port}/healthz"):
            assert time.monotonic() < deadline, "the workers never started serving"
            time.sleep(0.05)
        for _ in range(5):
            assert httpx.post(url, content=body, headers={"x-goog-api-key": "k"}).is_success
        client.close()


def serving(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


# -- Vertex targets ---------------------------------------------------------------------------

PRO, FLASH = "gemini-2.5-pro", "gemini-2.5-flash"
US, EU = "us-central1", "europe-west4"
ADMIN_TOKEN = "cli-admin-t0ken-vertex"


@pytest.fixture
def vertex_proxy(simulator_url: str) -> Iterator[str]:
    """A proxy whose route runs over Vertex targets (``model@location``), both locations served
    by the session's simulator."""
    settings = proxy_settings(
        simulator_url,
        vertex={
            "project": "test-project",
            "location": US,
            "origins": {US: simulator_url, EU: simulator_url},
        },
        routes={PRO: [f"{PRO}@{US}", f"{PRO}@{EU}", f"{FLASH}@{US}"]},
        admin={"token": ADMIN_TOKEN},
    )
    with serve(create_app(settings)) as url:
        yield url


def admin(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "admin", "--url", url, "--token", ADMIN_TOKEN, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result


def vertex_served_by(url: str) -> str:
    client = genai.Client(
        vertexai=True,
        project="test-project",
        location=US,
        credentials=Credentials(token="client-oauth-token"),
        http_options=types.HttpOptions(base_url=url),
    )
    response = client.models.generate_content(model=PRO, contents="hello")
    assert response.sdk_http_response is not None and response.sdk_http_response.headers
    return str(response.sdk_http_response.headers["x-gemini-breaker-model"])


def test_the_admin_cli_forces_pins_and_shows_vertex_targets(vertex_proxy: str) -> None:
    us_pro, eu_pro, us_flash = f"{PRO}@{US}", f"{PRO}@{EU}", f"{FLASH}@{US}"
    forced = admin(vertex_proxy, "force-open", us_pro, "--reason", "regional outage")
    assert f"breaker {us_pro}: forced_open" in forced.stdout
    assert f"{PRO} -> {eu_pro}" in forced.stdout
    breakers = json.loads(admin(vertex_proxy, "breakers", "--json").stdout)["breakers"]
    assert breakers[us_pro]["state"] == "forced_open"
    assert breakers[eu_pro]["state"] == "closed"
    table = admin(vertex_proxy, "breakers").stdout
    assert [line.split()[:2] for line in table.splitlines() if line.startswith(us_pro)] == [
        [us_pro, "forced_open"]
    ]
    assert vertex_served_by(vertex_proxy) == eu_pro

    pinned = admin(vertex_proxy, "pin", PRO, us_flash, "--ttl", "10m", "--reason", "cost")
    assert f"route {PRO} pinned to {us_flash}" in pinned.stdout
    routes = admin(vertex_proxy, "routes").stdout
    assert any(
        us_flash in line and f"{us_flash} > {us_pro} > {eu_pro}" in line
        for line in routes.splitlines()
    )
    assert vertex_served_by(vertex_proxy) == us_flash
    state = json.loads(admin(vertex_proxy, "state", "--json").stdout)
    assert state["routes"][PRO]["pin"]["model"] == us_flash
    admin(vertex_proxy, "unpin", PRO, "--reason", "done")
    admin(vertex_proxy, "reset", us_pro, "--reason", "recovered")
    assert vertex_served_by(vertex_proxy) == us_pro
    audit = admin(vertex_proxy, "audit", "--json").stdout
    targets = [(e["action"], e["target"]) for e in json.loads(audit)["entries"]]
    assert targets == [("reset", us_pro), ("unpin", PRO), ("pin", PRO), ("force_open", us_pro)]


def test_names_go_to_the_admin_api_as_one_path_segment() -> None:
    assert admin_cli_segment("gemini-2.5-pro@us-central1") == "gemini-2.5-pro@us-central1"
    assert admin_cli_segment("odd?name#1 %") == "odd%3Fname%231%20%25"
