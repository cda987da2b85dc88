"""The edges a new user or an abuser meets first, with the real commands: the upstream's own
headers, client tokens for the proxy's key, the default failover chains, and metrics that
random model names cannot grow."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google import genai
from google.genai import errors

from proxy.simulator import SimulatorConfig, create_simulator_app
from proxy.simulator.client import SimulatorControl

from .support import free_port, running, serve

PRO, FLASH, LITE = "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"
BODY = b'{"contents": [{"parts": [{"text": "hello"}]}]}'
REAL_KEY = "real-upstream-key-never-shown"
TOKENS = ("first-client-token-0001", "second-client-token-0002")


@pytest.fixture
def simulator_command() -> Iterator[str]:
    """The simulator as ``gemini-breaker simulate`` runs it."""
    port = free_port()
    with running(["simulate", "--port", str(port)], {}):
        yield f"http://127.0.0.1:{port}"


def serve_command() -> tuple[str, list[str]]:
    """Base URL and arguments of ``gemini-breaker serve`` on a free port."""
    port = free_port()
    return f"http://127.0.0.1:{port}", ["serve", "--port", str(port)]


def upstream_env(upstream: str, **more: str) -> dict[str, str]:
    return {"GEMINI_BREAKER_UPSTREAM_URL": upstream, **more}


# -- 5. the upstream's headers --------------------------------------------------------------------


def test_answers_carry_the_upstreams_date_and_server_once_and_the_proxys_own_one_date(
    simulator_command: str,
) -> None:
    direct = httpx.post(
        f"{simulator_command}/v1beta/models/{FLASH}:generateContent",
        content=BODY,
        headers={"x-goog-api-key": "k"},
    )
    # The simulator answers as Google's front end does (the wire reference, section 11).
    assert direct.headers.get_list("server") == ["scaffolding on HTTPServer2"]
    assert len(direct.headers.get_list("date")) == 1
    assert direct.headers["x-content-type-options"] == "nosniff"
    url, args = serve_command()
    with running(args, upstream_env(simulator_command)):
        relayed = [
            httpx.post(
                f"{url}/v1beta/models/{FLASH}:generateContent",
                content=BODY,
                headers={"x-goog-api-key": "k"},
            ),
            httpx.post(
                f"{url}/v1beta/models/{FLASH}:streamGenerateContent?alt=sse",
                content=BODY,
                headers={"x-goog-api-key": "k"},
            ),
            httpx.post(  # the upstream's own error, relayed
                f"{url}/v1beta/models/no-such-model:generateContent",
                content=BODY,
                headers={"x-goog-api-key": "k"},
            ),
        ]
        for response in relayed:
            assert response.headers.get_list("server") == ["scaffolding on HTTPServer2"]
            assert len(response.headers.get_list("date")) == 1
            assert response.headers.get_list("x-frame-options") == ["SAMEORIGIN"]
        assert [r.status_code for r in relayed] == [200, 200, 404]
        own = [
            httpx.get(f"{url}/healthz"),
            httpx.get(f"{url}/metrics"),
            httpx.get(f"{url}/not-a-gemini-path"),  # the forwarder's own 404
            httpx.post(f"{url}/healthz"),  # the operator's path, another method
        ]
        assert [r.status_code for r in own] == [200, 200, 404, 404]
        for response in own:
            assert response.headers.get_list("server") == []
            assert len(response.headers.get_list("date")) == 1
            assert response.headers["date"].endswith(" GMT")


# -- 6. client tokens for the proxy's key --------------------------------------------------------


def test_beyond_loopback_the_proxys_key_is_spent_only_for_a_client_token(tmp_path: Path) -> None:
    config = SimulatorConfig(api_keys=frozenset({REAL_KEY}))  # any other key: 400
    with serve(create_simulator_app(config)) as upstream:
        port = free_port()
        env = upstream_env(
            upstream, GEMINI_API_KEY=REAL_KEY, GEMINI_BREAKER_CLIENT_TOKENS=",".join(TOKENS)
        )
        # Listening on every interface; the test reaches it on loopback.
        with running(["serve", "--host", "0.0.0.0", "--port", str(port)], env) as log:
            url = f"http://127.0.0.1:{port}"
            for token in TOKENS:  # the application's SDK only changes its key and base URL
                client = genai.Client(api_key=token, http_options={"base_url": url})
                answer = client.models.generate_content(model=FLASH, contents="hello")
                assert answer.text
            # Resumable upload chunks carry no key (their upload id is their credential).
            document = tmp_path / "notes.txt"
            document.write_text("uploaded through the proxy")
            uploaded = client.files.upload(file=document)
            assert uploaded.name is not None and uploaded.size_bytes == document.stat().st_size
            generate = f"{url}/v1beta/models/{FLASH}:generateContent"
            assert httpx.post(f"{generate}?key={TOKENS[0]}", content=BODY).status_code == 200
            stranger = genai.Client(api_key="a-guess-0000000000", http_options={"base_url": url})
            with pytest.raises(errors.ClientError) as refused:
                stranger.models.generate_content(model=FLASH, contents="hello")
            assert refused.value.code == 403
            assert refused.value.status == "PERMISSION_DENIED"
            nobody = httpx.post(generate, content=BODY)
            assert nobody.status_code == 401
            assert nobody.json()["error"]["status"] == "UNAUTHENTICATED"
            bearer = httpx.post(generate, content=BODY, headers={"authorization": "Bearer x"})
            assert bearer.status_code == 401
            assert httpx.post(f"{generate}?key=nope", content=BODY).status_code == 403
        text = "".join(log)
        assert "a client token is required (2 configured)" in text
        for secret in (*TOKENS, REAL_KEY):
            assert secret not in text


def start_failure(args: list[str], env: dict[str, str], tmp_path: Path) -> str:
    """Run ``gemini-breaker ARGS`` expecting it to refuse to start; its stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        env={**os.environ, "GEMINI_BREAKER_CONFIG": "", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def test_exposing_the_key_or_the_unauthenticated_admin_api_refuses_to_start(
    tmp_path: Path,
) -> None:
    everywhere = ["serve", "--host", "0.0.0.0", "--port", str(free_port())]
    stderr = start_failure(everywhere, {"GEMINI_API_KEY": REAL_KEY}, tmp_path)
    assert "server.client_tokens" in stderr and "server.allow_open_relay" in stderr
    assert REAL_KEY not in stderr
    config = tmp_path / "admin.yaml"
    config.write_text("admin: {allow_unauthenticated_loopback: true}\n")
    stderr = start_failure([*everywhere, "--config", str(config)], {}, tmp_path)
    assert "admin.allow_unauthenticated_loopback" in stderr and "0.0.0.0" in stderr
    stderr = start_failure(["serve"], {"GEMINI_BREAKER_ADMIN_TOKEN": "fifteen-chars-x"}, tmp_path)
    assert "admin.token: expected at least 16" in stderr
    assert "fifteen-chars-x" not in stderr


def test_an_open_relay_is_an_opt_in_the_start_up_log_names(simulator_command: str) -> None:
    port = free_port()
    env = upstream_env(simulator_command, GEMINI_API_KEY=REAL_KEY)
    config = Path(os.environ.get("TMPDIR", "/tmp")) / f"open-relay-{uuid.uuid4().hex}.yaml"
    config.write_text("server: {allow_open_relay: true}\n")
    try:
        args = ["serve", "--host", "0.0.0.0", "--port", str(port), "--config", str(config)]
        with running(args, env) as log:
            generate = f"http://127.0.0.1:{port}/v1beta/models/{FLASH}:generateContent"
            assert httpx.post(generate, content=BODY).status_code == 200  # the proxy's key
        assert "OPEN RELAY" in "".join(log)
    finally:
        config.unlink()


# -- 7. default routes ----------------------------------------------------------------------------


def test_with_no_configuration_the_standard_chains_fail_over(simulator_command: str) -> None:
    url, args = serve_command()
    with (
        running(args, upstream_env(simulator_command)) as log,
        SimulatorControl(simulator_command) as simulator,
    ):
        text = "".join(log)
        pro3, flash3, lite3 = "gemini-3.1-pro-preview", "gemini-3.8-flash", "gemini-3.5-flash-lite"
        assert f"{pro3} -> {pro3} > {flash3} > {lite3}, {flash3} -> {flash3} > {lite3}" in text
        assert f"{PRO} -> {PRO} > {FLASH} > {LITE}, {FLASH} -> {FLASH} > {LITE}" in text
        assert "'routes: {}' turns them off" in text
        client = genai.Client(api_key="k", http_options={"base_url": url})
        for pro, flash, lite in ((PRO, FLASH, LITE), (pro3, flash3, lite3)):
            simulator.add_fault(pro, kind="error", status=503)
            simulator.add_fault(flash, kind="error", status=503)
            try:
                answer = client.models.generate_content(model=pro, contents="hello")
                assert answer.sdk_http_response is not None
                assert answer.sdk_http_response.headers is not None
                assert answer.sdk_http_response.headers["x-gemini-breaker-model"] == lite
            finally:
                simulator.clear_faults()


# -- 8. bounded telemetry ------------------------------------------------------------------------

WARM_UP = 1_000
MEASURED = 4_000
CONCURRENCY = 8
# With a series (and throttle state) per name, this scan adds about 19,000 series and 9 MiB;
# without, under 0.2 MiB. The limit leaves room for the allocator's and the collector's noise
# (collections every 50,000 allocations).
RSS_GROWTH_LIMIT = 3 * 1024 * 1024


def series_count(metrics_url: str) -> int:
    text = httpx.get(metrics_url).text
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def resident_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1)) * 1024


async def random_model_requests(url: str, count: int) -> list[int]:
    """``count`` generate calls, each naming a model nobody has heard of."""
    statuses: list[int] = []
    queue = iter(range(count))
    async with httpx.AsyncClient(timeout=30) as client:

        async def worker() -> None:
            for _ in queue:
                model = f"scan-{uuid.uuid4().hex}"
                response = await client.post(
                    f"{url}/v1beta/models/{model}:generateContent",
                    content=BODY,
                    headers={"x-goog-api-key": "k"},
                )
                statuses.append(response.status_code)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return statuses


def test_random_model_names_leave_series_and_memory_flat(simulator_command: str) -> None:
    url, args = serve_command()
    with running(args, upstream_env(simulator_command)) as log:
        started = re.search(r"replica \S+:(\d+) forwarding", "".join(log))
        assert started is not None
        pid = int(started.group(1))
        # Warm up: every code path, buffer and label set the scan will use exists afterwards.
        assert set(asyncio.run(random_model_requests(url, WARM_UP))) == {404}
        series, rss = series_count(f"{url}/metrics"), resident_bytes(pid)
        assert set(asyncio.run(random_model_requests(url, MEASURED))) == {404}
        grown_series = series_count(f"{url}/metrics") - series
        grown_rss = resident_bytes(pid) - rss
        print(f"after {MEASURED} random names: {grown_series} series, {grown_rss / 2**20:.2f} MiB")
        assert grown_series == 0
        assert grown_rss < RSS_GROWTH_LIMIT
        metrics = httpx.get(f"{url}/metrics").text
        assert "scan-" not in metrics
        assert 'model="other"' in metrics
