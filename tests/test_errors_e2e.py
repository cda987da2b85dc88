"""Errors reach the SDK as the right exception with Google's message, and the proxy stays up.

Upstream errors pass through untouched; errors the proxy makes itself (unknown path, body too
large, upstream down or hanging, stream stalled) are ``google.rpc.Status`` JSON with the
matching status code.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google.genai import errors

from proxy.app import create_app
from proxy.simulator.client import SimulatorControl

from .conftest import calls, proxy_settings
from .support import free_port, serve
from .test_sdk_e2e import sdk

MODEL = "gemini-2.5-flash"


def still_serves(proxy_url: str) -> None:
    assert sdk(proxy_url).models.generate_content(model=MODEL, contents="still there?").text


@pytest.mark.parametrize(
    ("fault", "exception", "code", "status"),
    [
        ({"kind": "error", "status": 500}, errors.ServerError, 500, "INTERNAL"),
        ({"kind": "error", "status": 503}, errors.ServerError, 503, "UNAVAILABLE"),
        ({"kind": "error", "status": 504}, errors.ServerError, 504, "DEADLINE_EXCEEDED"),
        ({"kind": "error", "status": 401}, errors.ClientError, 401, "UNAUTHENTICATED"),
        ({"kind": "error", "status": 403}, errors.ClientError, 403, "PERMISSION_DENIED"),
        ({"kind": "input_too_long"}, errors.ClientError, 400, "INVALID_ARGUMENT"),
        (
            {"kind": "rate_limited", "retry_delay": 15},
            errors.ClientError,
            429,
            "RESOURCE_EXHAUSTED",
        ),
    ],
)
def test_upstream_errors_reach_the_sdk_unchanged(
    proxy_url: str,
    simulator_url: str,
    simulator: SimulatorControl,
    fault: dict[str, Any],
    exception: type[errors.APIError],
    code: int,
    status: str,
) -> None:
    simulator.set_faults(MODEL, [{**fault, "times": 2}])
    # Its own key: a 429 makes the proxy hold that credential's quota for a while.
    with pytest.raises(exception) as via_proxy:
        sdk(proxy_url, key=f"key-{code}").models.generate_content(model=MODEL, contents="hi")
    with pytest.raises(exception) as direct:
        sdk(simulator_url).models.generate_content(model=MODEL, contents="hi")
    assert (via_proxy.value.code, via_proxy.value.status) == (code, status)
    assert via_proxy.value.details == direct.value.details  # the whole body, byte-faithful
    still_serves(proxy_url)


def test_rate_limit_details_survive(proxy_url: str, simulator: SimulatorControl) -> None:
    simulator.set_faults(MODEL, [{"kind": "rate_limited", "retry_delay": 2.5, "times": 1}])
    with pytest.raises(errors.ClientError) as caught:
        sdk(proxy_url, key="key-details").models.generate_content(model=MODEL, contents="hi")
    details = caught.value.details["error"]["details"]
    retry = [d for d in details if d["@type"].endswith("RetryInfo")]
    assert retry == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2.5s"}]
    assert any(d["@type"].endswith("QuotaFailure") for d in details)


def test_error_before_a_stream_raises_from_the_sdk(
    proxy_url: str, simulator: SimulatorControl
) -> None:
    simulator.set_faults(MODEL, [{"kind": "error", "status": 503, "times": 1}])
    with pytest.raises(errors.ServerError) as caught:
        list(sdk(proxy_url).models.generate_content_stream(model=MODEL, contents="hi"))
    assert caught.value.code == 503
    still_serves(proxy_url)


def test_blocked_prompt_is_a_normal_answer(proxy_url: str, simulator: SimulatorControl) -> None:
    simulator.set_faults(MODEL, [{"kind": "blocked", "times": 1}])
    response = sdk(proxy_url).models.generate_content(model=MODEL, contents="hi")
    assert response.prompt_feedback is not None
    assert response.prompt_feedback.block_reason is not None
    assert not response.candidates


def test_unknown_path_is_a_google_404(proxy_url: str) -> None:
    for path in ("/nothing/here", "/v2/models/x:generateContent", "/v1", "/"):
        response = httpx.post(proxy_url + path, content=b"{}")
        assert response.status_code == 404, path
        body = response.json()
        assert body["error"]["code"] == 404
        assert body["error"]["status"] == "NOT_FOUND"
    still_serves(proxy_url)


def test_oversized_body_is_refused_before_going_upstream(
    proxy_url: str, simulator: SimulatorControl
) -> None:
    huge = "x" * (300 * 1024)  # the test proxy allows 256 KiB
    with pytest.raises(errors.ClientError) as caught:
        sdk(proxy_url).models.generate_content(model=MODEL, contents=huge)
    assert caught.value.code == 413
    assert "exceeds the limit: 262144 bytes" in (caught.value.message or "")
    assert calls(simulator) == []

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        for _ in range(300):
            yield b"x" * 1024

    response = httpx.post(
        proxy_url + "/v1beta/models/gemini-2.5-flash:generateContent",
        content=chunked(),
        headers={"x-goog-api-key": "k"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert calls(simulator) == []
    still_serves(proxy_url)


def test_malformed_json_gets_googles_400(proxy_url: str, simulator: SimulatorControl) -> None:
    response = httpx.post(
        proxy_url + "/v1beta/models/gemini-2.5-flash:generateContent",
        content=b'{"contents": [',
        headers={"x-goog-api-key": "k", "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    still_serves(proxy_url)


@pytest.fixture
def impatient_proxy(simulator_url: str) -> Iterator[str]:
    """A proxy with sub-second deadlines, for hangs and stalls."""
    settings = proxy_settings(
        simulator_url,
        model_defaults={
            "connect_timeout": 1,
            "headers_timeout": 0.5,
            "first_event_timeout": 0.5,
            "unary_timeout": 0.5,
            "stall_timeout": 0.5,
        },
    )
    with serve(create_app(settings)) as url:
        yield url


def test_upstream_that_hangs_gives_504(impatient_proxy: str, simulator: SimulatorControl) -> None:
    simulator.set_faults(MODEL, [{"kind": "hang", "times": 1}])
    with pytest.raises(errors.ServerError) as caught:
        sdk(impatient_proxy).models.generate_content(model=MODEL, contents="hi")
    assert caught.value.code == 504
    assert caught.value.status == "DEADLINE_EXCEEDED"
    still_serves(impatient_proxy)


def test_upstream_reset_gives_502(proxy_url: str, simulator: SimulatorControl) -> None:
    # Every time: a reset on a reused connection is resent once on a new one.
    simulator.set_faults(MODEL, [{"kind": "reset"}])
    with pytest.raises(errors.ServerError) as caught:
        sdk(proxy_url).models.generate_content(model=MODEL, contents="hi")
    assert caught.value.code == 502
    assert caught.value.status == "UNAVAILABLE"
    simulator.clear_faults()
    still_serves(proxy_url)


def test_stalled_stream_ends_with_an_in_band_error(
    impatient_proxy: str, simulator: SimulatorControl
) -> None:
    simulator.set_faults(MODEL, [{"kind": "stall", "after_chunks": 1, "times": 1}])
    received = []
    with pytest.raises(errors.ServerError) as caught:
        for chunk in sdk(impatient_proxy).models.generate_content_stream(
            model=MODEL, contents="a long enough prompt to make several chunks"
        ):
            received.append(chunk.text)
    assert len(received) == 1  # what arrived before the stall was delivered
    assert caught.value.code == 502
    assert "stalled" in (caught.value.message or "")
    still_serves(impatient_proxy)


def test_upstream_down_gives_502_and_the_proxy_keeps_serving() -> None:
    closed_port = free_port()
    settings = proxy_settings(f"http://127.0.0.1:{closed_port}")
    with serve(create_app(settings)) as url:
        for _ in range(3):
            with pytest.raises(errors.ServerError) as caught:
                sdk(url).models.generate_content(model=MODEL, contents="hi")
            assert caught.value.code == 502
            assert caught.value.status == "UNAVAILABLE"
            assert "unreachable" in (caught.value.message or "")
        assert httpx.get(url + "/healthz").json() == {"status": "ok"}


def test_proxy_errors_are_pretty_google_json(proxy_url: str) -> None:
    response = httpx.get(proxy_url + "/not-gemini")
    assert response.headers["content-type"] == "application/json; charset=UTF-8"
    assert set(json.loads(response.content)) == {"error"}
    assert response.content.startswith(b'{\n  "error": {')
