"""Forwarding details an application relies on: keys, headers, prefixes, stream forms,
cancellation, and secrets kept out of logs."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from google.genai import errors, types
from starlette.types import Receive, Scope, Send

from proxy.app import create_app
from proxy.simulator.client import SimulatorControl

from .conftest import calls, proxy_settings
from .support import free_port, serve
from .test_sdk_e2e import sdk

GENERATE = "/v1beta/models/gemini-2.5-flash:generateContent"
BODY = b'{"contents": [{"parts": [{"text": "hello"}], "role": "user"}]}'


def key_digest_seen(simulator: SimulatorControl) -> str:
    (attempt,) = calls(simulator)
    simulator.clear_attempts()
    digest: str = attempt["key_digest"]
    return digest


def test_client_key_header_and_query_key_are_forwarded_as_is(
    simulator_url: str, simulator: SimulatorControl
) -> None:
    settings = proxy_settings(simulator_url, upstream={"api_key": "proxy-key"})
    with serve(create_app(settings)) as proxy:
        for send in (
            lambda base: httpx.post(base + GENERATE, content=BODY, headers={"x-goog-api-key": "a"}),
            lambda base: httpx.post(base + GENERATE + "?key=a", content=BODY),
        ):
            assert send(proxy).status_code == 200
            via_proxy = key_digest_seen(simulator)
            assert send(simulator_url).status_code == 200
            assert via_proxy == key_digest_seen(simulator)
        httpx.post(simulator_url + GENERATE, content=BODY, headers={"x-goog-api-key": "proxy-key"})
        assert via_proxy != key_digest_seen(simulator)


def test_configured_key_is_used_when_the_client_sends_none(
    simulator_url: str, simulator: SimulatorControl
) -> None:
    settings = proxy_settings(simulator_url, upstream={"api_key": "proxy-key"})
    with serve(create_app(settings)) as proxy:
        response = httpx.post(
            proxy + GENERATE, content=BODY, headers={"authorization": "Bearer app-token"}
        )
        assert response.status_code == 200
        injected = key_digest_seen(simulator)
    httpx.post(simulator_url + GENERATE, content=BODY, headers={"x-goog-api-key": "proxy-key"})
    assert injected == key_digest_seen(simulator)


def test_without_any_key_google_answers_403(proxy_url: str, simulator: SimulatorControl) -> None:
    response = httpx.post(proxy_url + GENERATE, content=BODY)
    assert response.status_code == 403
    assert response.json()["error"]["status"] == "PERMISSION_DENIED"


def test_json_array_stream_form_passes_through_byte_for_byte(
    proxy_url: str, simulator_url: str, simulator: SimulatorControl
) -> None:
    path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    headers = {"x-goog-api-key": "k"}
    via_proxy = httpx.post(proxy_url + path, content=BODY, headers=headers)
    direct = httpx.post(simulator_url + path, content=BODY, headers=headers)
    assert via_proxy.status_code == 200
    assert via_proxy.headers["content-type"].startswith("application/json")
    assert via_proxy.content == direct.content
    assert via_proxy.content.startswith(b"[") and len(via_proxy.json()) > 1


def test_sse_bytes_pass_through_untouched(
    proxy_url: str, simulator_url: str, simulator: SimulatorControl
) -> None:
    path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    headers = {"x-goog-api-key": "k"}
    via_proxy = httpx.post(proxy_url + path, content=BODY, headers=headers)
    direct = httpx.post(simulator_url + path, content=BODY, headers=headers)
    assert via_proxy.headers["content-type"].startswith("text/event-stream")
    assert via_proxy.content == direct.content
    assert via_proxy.content.count(b"\r\n\r\n") > 1
    assert all(
        event.startswith(b"data: ") for event in via_proxy.content.split(b"\r\n\r\n") if event
    )


def test_base_url_with_a_path_prefix(proxy_url: str, simulator: SimulatorControl) -> None:
    client = sdk(proxy_url + "/team/gemini/")
    assert client.models.generate_content(model="gemini-2.5-flash", contents="hi").text
    uploaded = client.files.upload(
        file=io.BytesIO(b"prefixed upload"), config=types.UploadFileConfig(mime_type="text/plain")
    )
    assert uploaded.size_bytes == len(b"prefixed upload")


def test_upload_url_is_rewritten_to_the_proxy(proxy_url: str, simulator: SimulatorControl) -> None:
    start = httpx.post(
        proxy_url + "/pre/upload/v1beta/files",
        json={"file": {"display_name": "f", "mime_type": "text/plain", "size_bytes": 3}},
        headers={
            "x-goog-api-key": "k",
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": "3",
            "X-Goog-Upload-Header-Content-Type": "text/plain",
        },
    )
    assert start.status_code == 200
    upload_url = start.headers["x-goog-upload-url"]
    assert upload_url.startswith(proxy_url + "/pre/upload/v1beta/files?")
    assert "upload_id=" in upload_url
    final = httpx.post(
        upload_url,
        content=b"abc",
        headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"},
    )
    assert final.headers["x-goog-upload-status"] == "final"
    assert final.json()["file"]["sizeBytes"] == "3"


@dataclass
class ObservedUpstream:
    """A bare upstream that records the headers it gets and notices client disconnects."""

    address: str = ""
    stream_first: bool = False
    headers: list[dict[str, str]] = field(default_factory=list)
    disconnected: threading.Event = field(default_factory=threading.Event)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        while (await receive()).get("more_body"):
            pass
        if self.stream_first:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            await send(
                {"type": "http.response.body", "body": b'data: {"a": 1}\r\n\r\n', "more_body": True}
            )
        while (await receive())["type"] != "http.disconnect":
            pass
        self.disconnected.set()


@pytest.fixture
def observed() -> Iterator[tuple[ObservedUpstream, str]]:
    upstream = ObservedUpstream()
    with serve(upstream) as upstream_url, serve(create_app(proxy_settings(upstream_url))) as proxy:
        upstream.address = upstream_url.removeprefix("http://")
        yield upstream, proxy


def test_client_disconnect_cancels_a_waiting_upstream_call(
    observed: tuple[ObservedUpstream, str],
) -> None:
    upstream, proxy = observed
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(proxy + GENERATE, content=BODY, headers={"x-goog-api-key": "k"}, timeout=0.5)
    assert upstream.disconnected.wait(10), "the upstream call outlived the client"


def test_client_disconnect_cancels_a_stream(observed: tuple[ObservedUpstream, str]) -> None:
    upstream, proxy = observed
    upstream.stream_first = True
    path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    with httpx.stream("POST", proxy + path, content=BODY, headers={"x-goog-api-key": "k"}) as r:
        assert next(r.iter_raw()) == b'data: {"a": 1}\r\n\r\n'
    assert upstream.disconnected.wait(10), "the upstream stream outlived the client"


def test_hop_by_hop_headers_are_not_forwarded(observed: tuple[ObservedUpstream, str]) -> None:
    upstream, proxy = observed
    upstream.stream_first = True
    path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    headers = {
        "x-goog-api-key": "k",
        "connection": "keep-alive, x-hop",
        "x-hop": "1",
        "proxy-authorization": "Basic eA==",
        "x-app": "kept",
    }
    with httpx.stream("POST", proxy + path, content=BODY, headers=headers) as response:
        next(response.iter_raw())
    (seen,) = upstream.headers
    assert seen["x-goog-api-key"] == "k"
    assert seen["x-app"] == "kept"
    assert "x-hop" not in seen and "proxy-authorization" not in seen
    assert seen["host"] == upstream.address  # the upstream's own host, not the proxy's


def test_api_keys_never_reach_error_bodies(proxy_url: str, simulator: SimulatorControl) -> None:
    secret = "AIzaSECRET-do-not-leak"
    simulator.set_faults("gemini-2.5-flash", [{"kind": "reset"}])
    broken = httpx.post(proxy_url + GENERATE + f"?alt=json&key={secret}", content=BODY)
    assert broken.status_code == 502
    assert secret not in broken.text
    down = proxy_settings(f"http://127.0.0.1:{free_port()}", upstream={"api_key": secret})
    with serve(create_app(down)) as proxy:
        with pytest.raises(errors.ServerError) as caught:
            sdk(proxy, key=secret).models.generate_content(model="gemini-2.5-flash", contents="x")
        assert secret not in str(caught.value.details)
