"""The Gemini simulator over real loopback HTTP: wire format, SDK compatibility, faults, quotas."""

from __future__ import annotations

import base64
import dataclasses
import enum
import io
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from google import genai
from google.genai import errors, types
from pydantic import BaseModel, ValidationError

from proxy.errors import ConfigError
from proxy.simulator import (
    SimulatorConfig,
    TransportUnavailableError,
    build_simulator_config,
    create_simulator_app,
    jsonmode,
    load_simulator_config,
)
from proxy.simulator.catalogue import default_catalogue
from proxy.simulator.client import SimulatorControl, SimulatorControlError
from proxy.simulator.config import QuotaSpec
from proxy.simulator.content import POISON_MARKER
from proxy.simulator.quota import QuotaBook
from proxy.simulator.wire import format_duration
from tests.support import serve

from .support import eventually

KEY = "test-key"
FLASH = "gemini-2.5-flash"
PRO = "gemini-2.5-pro"
LITE = "gemini-2.5-flash-lite"
HELLO = {"contents": [{"role": "user", "parts": [{"text": "Tell me about circuit breakers"}]}]}
GENERATE = f"/v1beta/models/{FLASH}:generateContent"
SSE = f"/v1beta/models/{FLASH}:streamGenerateContent?alt=sse"
ANSWER_START = "The simulator says: "


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve(create_simulator_app(SimulatorConfig(seed=1))) as url:
        yield url


@pytest.fixture
def sim(base_url: str) -> Iterator[SimulatorControl]:
    with SimulatorControl(base_url) as control:
        control.clear_all()
        yield control
        control.clear_all()


@pytest.fixture
def http(base_url: str, sim: SimulatorControl) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, headers={"x-goog-api-key": KEY}, timeout=10) as client:
        yield client


def sdk(base_url: str, version: str = "v1beta") -> genai.Client:
    options = types.HttpOptions(base_url=base_url, api_version=version)
    return genai.Client(api_key=KEY, http_options=options)


def sse_events(raw: bytes) -> list[bytes]:
    """The data payloads of an SSE body, checking Gemini's exact framing on the way."""
    assert raw.endswith(b"\r\n\r\n")
    frames = raw[: -len(b"\r\n\r\n")].split(b"\r\n\r\n")
    for frame in frames:
        assert frame.startswith(b"data: ") and b"\n" not in frame, frame
    return [frame[len(b"data: ") :] for frame in frames]


def error_of(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


def detail(error: dict[str, Any], kind: str) -> dict[str, Any] | None:
    matches = [d for d in error.get("details", []) if d["@type"].endswith(f".{kind}")]
    return matches[0] if matches else None


# Healthy behaviour ----------------------------------------------------------------------------


def test_generate_content_wire_format_and_determinism(http: httpx.Client) -> None:
    response = http.post(GENERATE, json=HELLO)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=UTF-8"
    assert response.text.startswith('{\n  "candidates": [\n')
    body = response.json()
    candidate = body["candidates"][0]
    assert candidate["content"]["role"] == "model"
    assert candidate["finishReason"] == "STOP" and candidate["index"] == 0
    text = candidate["content"]["parts"][0]["text"]
    assert text.startswith(ANSWER_START) and "circuit breakers" in text
    usage = body["usageMetadata"]
    assert usage["promptTokenCount"] == math.ceil(len("Tell me about circuit breakers") / 4)
    assert usage["candidatesTokenCount"] == math.ceil(len(text) / 4)
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]
    assert body["modelVersion"] == FLASH and len(body["responseId"]) == 23

    # Same request (even re-serialised differently): same bytes. Other request: other answer.
    again = http.post(GENERATE, content=json.dumps(HELLO, indent=4).encode())
    assert again.content == response.content
    other = http.post(GENERATE, json={"contents": [{"parts": [{"text": "Something else"}]}]})
    assert other.json()["responseId"] != body["responseId"]
    pro = http.post(f"/v1beta/models/{PRO}:generateContent", json=HELLO).json()
    assert pro["modelVersion"] == PRO and pro["responseId"] != body["responseId"]


def test_max_output_tokens_truncates_with_max_tokens(http: httpx.Client) -> None:
    body = {**HELLO, "generationConfig": {"maxOutputTokens": 3}}
    candidate = http.post(GENERATE, json=body).json()["candidates"][0]
    assert candidate["finishReason"] == "MAX_TOKENS"
    assert len(candidate["content"]["parts"][0]["text"]) == 12


def test_sse_stream_wire_format(http: httpx.Client) -> None:
    response = http.post(SSE, json=HELLO)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    events = sse_events(response.content)
    assert len(events) >= 3
    chunks = [json.loads(e) for e in events]
    # One-line JSON with ": " after keys and a bare "," between members, as Google sends it.
    assert events == [json.dumps(c, separators=(",", ": ")).encode() for c in chunks]
    assert {c["responseId"] for c in chunks} == {chunks[0]["responseId"]}
    finishes = [c["candidates"][0].get("finishReason") for c in chunks]
    assert finishes == [None] * (len(chunks) - 1) + ["STOP"]
    counts = [c["usageMetadata"]["candidatesTokenCount"] for c in chunks]
    assert counts == sorted(counts)
    streamed = "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks)
    unary = http.post(GENERATE, json=HELLO).json()
    assert streamed == unary["candidates"][0]["content"]["parts"][0]["text"]
    assert chunks[-1]["usageMetadata"] == unary["usageMetadata"]
    assert chunks[0]["responseId"] == unary["responseId"]


def test_json_array_stream_without_alt_sse(http: httpx.Client) -> None:
    response = http.post(f"/v1beta/models/{FLASH}:streamGenerateContent", json=HELLO)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.content.startswith(b"[{\n") and response.content.endswith(b"}]")
    assert b"},\r\n{" in response.content
    elements = response.json()
    assert len(elements) >= 3 and elements[-1]["candidates"][0]["finishReason"] == "STOP"


def test_sdk_sync_generate_stream_and_count_on_v1_and_v1beta(base_url: str) -> None:
    for version in ("v1", "v1beta"):
        client = sdk(base_url, version)
        reply = client.models.generate_content(model=FLASH, contents="Hello SDK")
        assert reply.text is not None and reply.text.startswith(ANSWER_START)
        assert reply.response_id and reply.model_version == FLASH
        assert reply.usage_metadata is not None
        prompt_tokens = reply.usage_metadata.prompt_token_count
        chunks = list(client.models.generate_content_stream(model=FLASH, contents="Hello SDK"))
        assert len(chunks) >= 3
        assert "".join(c.text or "" for c in chunks) == reply.text
        count = client.models.count_tokens(model=FLASH, contents="Hello SDK")
        assert count.total_tokens == prompt_tokens == math.ceil(len("Hello SDK") / 4)
    with SimulatorControl(base_url) as control:
        versions = {a["api_version"] for a in control.attempts()}
    assert {"v1", "v1beta"} <= versions


def test_sdk_behind_a_path_prefix(base_url: str) -> None:
    client = sdk(base_url + "/some/prefix/")
    reply = client.models.generate_content(model=PRO, contents="Hi")
    assert reply.text is not None and reply.text.startswith(ANSWER_START)


@pytest.mark.anyio
async def test_sdk_async_generate_and_stream(base_url: str) -> None:
    sync_client = sdk(base_url)  # owns the async client too: keep it alive
    client = sync_client.aio
    try:
        reply = await client.models.generate_content(model=FLASH, contents="Hello async")
        chunks = [
            c
            async for c in await client.models.generate_content_stream(
                model=FLASH, contents="Hello async"
            )
        ]
        assert "".join(c.text or "" for c in chunks) == reply.text
        embedded = await client.models.embed_content(
            model="gemini-embedding-001", contents=["a", "b"]
        )
        assert embedded.embeddings is not None and len(embedded.embeddings) == 2
        uploaded = await client.files.upload(
            file=io.BytesIO(b"async bytes"), config={"mime_type": "text/plain"}
        )
        assert uploaded.size_bytes == 11 and uploaded.name is not None
        assert (await client.files.get(name=uploaded.name)).name == uploaded.name
    finally:
        await client.aclose()


def test_embeddings_deterministic_one_per_request(base_url: str, http: httpx.Client) -> None:
    client = sdk(base_url)
    model = "gemini-embedding-001"
    result = client.models.embed_content(model=model, contents=["alpha", "beta", "alpha"])
    assert result.embeddings is not None and len(result.embeddings) == 3
    vectors = [e.values or [] for e in result.embeddings]
    assert len(vectors[0]) == 768 and vectors[0] == vectors[2] != vectors[1]
    assert math.isclose(sum(v * v for v in vectors[0]), 1.0, abs_tol=1e-3)
    small = client.models.embed_content(
        model=model, contents="alpha", config=types.EmbedContentConfig(output_dimensionality=16)
    )
    assert small.embeddings is not None and len(small.embeddings[0].values or []) == 16
    single = http.post(
        f"/v1beta/models/{model}:embedContent", json={"content": {"parts": [{"text": "alpha"}]}}
    )
    assert single.json()["embedding"]["values"] == vectors[0]
    # A generative model does not embed, and an embedding model does not generate.
    wrong = http.post(
        f"/v1beta/models/{FLASH}:embedContent", json={"content": {"parts": [{"text": "a"}]}}
    )
    assert wrong.status_code == 404 and "not supported for embedContent" in wrong.text
    assert http.post(f"/v1beta/models/{model}:generateContent", json=HELLO).status_code == 404


def test_models_list_and_get(base_url: str, http: httpx.Client) -> None:
    client = sdk(base_url)
    names = [m.name for m in client.models.list(config={"page_size": 2})]
    expected = [
        "gemini-2.5-pro",
        "gemini-2.5-flash",
        "gemini-2.5-flash-lite",
        "gemini-3-flash-preview",
        "gemini-3.1-pro-preview",
        "gemini-3.1-flash-lite",
        "gemini-3.5-flash-lite",
        "gemini-3.8-flash",
        "gemini-embedding-001",
        "text-embedding-004",
    ]
    assert names == [f"models/{name}" for name in expected]
    model = client.models.get(model=PRO)
    assert model.input_token_limit == 1_048_576 and model.output_token_limit == 65_536
    assert model.supported_actions is not None and "generateContent" in model.supported_actions
    page = http.get("/v1/models", params={"pageSize": 3}).json()
    assert len(page["models"]) == 3 and page["nextPageToken"]
    rest = http.get("/v1/models", params={"pageToken": page["nextPageToken"]}).json()
    assert len(rest["models"]) == len(expected) - 3 and "nextPageToken" not in rest
    assert http.get("/v1beta/tunedModels").json() == {}
    with pytest.raises(errors.ClientError) as caught:
        client.models.get(model="no-such-model")
    assert caught.value.code == 404


def test_unknown_model_and_paths_are_google_404s(http: httpx.Client) -> None:
    response = http.post("/v1beta/models/gemini-9:generateContent", json=HELLO)
    assert response.status_code == 404
    assert error_of(response) == {
        "code": 404,
        "message": "models/gemini-9 is not found for API version v1beta, or is not supported "
        "for generateContent. Call ListModels to see the list of available models and their "
        "supported methods.",
        "status": "NOT_FOUND",
    }
    for path in ("/v1beta/nothing", "/nothing", "/v2/models", "/v1/models/x/y"):
        response = http.get(path)
        assert response.status_code == 404 and error_of(response)["status"] == "NOT_FOUND"


def test_bad_requests_are_invalid_argument(http: httpx.Client) -> None:
    cases: list[tuple[bytes, str]] = [
        (b"{not json", "Invalid JSON payload"),
        (b"{}", "contents is not specified"),
        (b'{"contents": []}', "contents is not specified"),
        (b'{"contents": [{"role": "user"}]}', "parts must not be empty"),
        (b'{"contents": [{"role": "bot", "parts": [{"text": "x"}]}]}', "valid role"),
    ]
    for body, message in cases:
        response = http.post(GENERATE, content=body)
        assert response.status_code == 400, body
        assert error_of(response)["status"] == "INVALID_ARGUMENT"
        assert message in error_of(response)["message"]


@pytest.mark.parametrize("path", [GENERATE, SSE, f"/v1beta/models/{FLASH}:countTokens"])
def test_bodies_that_are_not_a_request_are_invalid_argument(http: httpx.Client, path: str) -> None:
    deep = b'{"contents": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    cases: list[tuple[bytes, str]] = [
        (deep, "Invalid JSON payload"),
        (b"[" * 5000 + b"]" * 5000, "Invalid JSON payload"),
        (b'[{"contents": [{"parts": [{"text": "x"}]}]}]', "Invalid JSON payload"),
        (b'{"contents": "a string"}', "expected a list"),
        (b'{"contents": {"parts": [{"text": "x"}]}}', "expected a list"),
        (b'{"contents": [["x"]]}', "expected an object"),
    ]
    for body, message in cases:
        response = http.post(path, content=body)
        assert response.status_code == 400, body[:40]
        assert error_of(response)["status"] == "INVALID_ARGUMENT"
        assert message in error_of(response)["message"]


def test_the_poison_marker_fails_on_every_model_every_time(
    base_url: str, http: httpx.Client, sim: SimulatorControl
) -> None:
    poison = {"contents": [{"role": "user", "parts": [{"text": f"x {POISON_MARKER} y"}]}]}
    for model in (PRO, FLASH, LITE):
        for path in (
            f"/v1beta/models/{model}:generateContent",
            f"/v1beta/models/{model}:streamGenerateContent?alt=sse",
        ):
            for _ in range(3):
                response = http.post(path, json=poison)
                assert response.status_code == 500
                assert error_of(response)["status"] == "INTERNAL"
    assert {a["fault"] for a in sim.attempts()} == {"poison"}
    client = sdk(base_url)
    with pytest.raises(errors.ServerError) as caught:
        client.models.generate_content(model=FLASH, contents=f"{POISON_MARKER} hello")
    assert caught.value.code == 500
    # Everything else about the request is as usual: the same text without the marker works.
    assert http.post(GENERATE, json=HELLO).status_code == 200


def test_credentials(base_url: str) -> None:
    with httpx.Client(base_url=base_url) as client:
        missing = client.post(GENERATE, json=HELLO)
        assert missing.status_code == 403
        assert error_of(missing)["status"] == "PERMISSION_DENIED"
        assert error_of(missing)["message"].startswith("Method doesn't allow unregistered callers")
        assert client.post(GENERATE, params={"key": KEY}, json=HELLO).status_code == 200
        both = client.post(
            GENERATE, headers={"x-goog-api-key": KEY, "authorization": "Bearer t"}, json=HELLO
        )
        assert both.status_code == 401 and error_of(both)["status"] == "UNAUTHENTICATED"
        bearer = client.post(GENERATE, headers={"authorization": "Bearer t"}, json=HELLO)
        assert bearer.status_code == 200


def test_cached_contents_crud(http: httpx.Client) -> None:
    created = http.post(
        "/v1beta/cachedContents", json={"model": f"models/{FLASH}", "ttl": "300s", **HELLO}
    )
    assert created.status_code == 200
    name = created.json()["name"]
    assert name.startswith("cachedContents/") and created.json()["model"] == f"models/{FLASH}"
    assert http.get(f"/v1beta/{name}").json()["name"] == name
    listed = http.get("/v1beta/cachedContents").json()["cachedContents"]
    assert [c["name"] for c in listed] == [name]
    patched = http.patch(f"/v1beta/{name}", json={"ttl": "600s"}).json()
    assert patched["expireTime"] > created.json()["expireTime"]
    assert http.delete(f"/v1beta/{name}").json() == {}
    assert http.get(f"/v1beta/{name}").status_code == 403


# Files ----------------------------------------------------------------------------------------


def test_sdk_file_upload_get_list_delete(base_url: str) -> None:
    client = sdk(base_url)
    uploaded = client.files.upload(
        file=io.BytesIO(b"hello"), config={"mime_type": "text/plain", "display_name": "greeting"}
    )
    assert uploaded.name is not None and uploaded.name.startswith("files/")
    assert uploaded.size_bytes == 5 and uploaded.mime_type == "text/plain"
    assert uploaded.display_name == "greeting" and uploaded.state == types.FileState.ACTIVE
    assert uploaded.sha256_hash is not None
    assert client.files.get(name=uploaded.name).size_bytes == 5
    assert uploaded.name in [f.name for f in client.files.list()]
    client.files.delete(name=uploaded.name)
    with pytest.raises(errors.ClientError) as caught:
        client.files.get(name=uploaded.name)
    assert caught.value.code == 403


def test_resumable_upload_protocol(base_url: str, http: httpx.Client) -> None:
    start_headers = {
        "x-goog-upload-protocol": "resumable",
        "x-goog-upload-command": "start",
        "x-goog-upload-header-content-length": "10",
        "x-goog-upload-header-content-type": "application/octet-stream",
        "host": "sim.example:1234",
    }
    start = http.post("/gw/upload/v1beta/files", headers=start_headers, json={"file": {}})
    assert start.status_code == 200 and start.headers["x-goog-upload-status"] == "active"
    url = start.headers["x-goog-upload-url"]
    # Built from the caller's own Host header and prefix, so the caller can reach it.
    assert url.startswith("http://sim.example:1234/gw/upload/v1beta/files?upload_id=")
    assert url.endswith("&upload_protocol=resumable")
    local = url.replace("http://sim.example:1234", base_url)
    with httpx.Client(timeout=10) as anonymous:  # no API key: the upload_id is the credential
        first = anonymous.post(
            local,
            content=b"01234",
            headers={"x-goog-upload-command": "upload", "x-goog-upload-offset": "0"},
        )
        assert first.status_code == 200 and first.headers["x-goog-upload-status"] == "active"
        wrong = anonymous.post(
            local,
            content=b"56789",
            headers={"x-goog-upload-command": "upload, finalize", "x-goog-upload-offset": "3"},
        )
        assert wrong.status_code == 400
        final = anonymous.post(
            local,
            content=b"56789",
            headers={"x-goog-upload-command": "upload, finalize", "x-goog-upload-offset": "5"},
        )
    assert final.status_code == 200 and final.headers["x-goog-upload-status"] == "final"
    file = final.json()["file"]
    assert file["sizeBytes"] == "10" and file["state"] == "ACTIVE" and file["source"] == "UPLOADED"
    assert set(file) >= {"name", "mimeType", "createTime", "expirationTime", "sha256Hash", "uri"}
    assert http.get(f"/v1beta/{file['name']}").json() == file
    too_big = {**start_headers, "x-goog-upload-header-content-length": str(65 * 1024 * 1024)}
    assert http.post("/upload/v1beta/files", headers=too_big).status_code == 400
    no_key = httpx.post(base_url + "/upload/v1beta/files", headers=start_headers)
    assert no_key.status_code == 403


# Faults ---------------------------------------------------------------------------------------


def test_error_503_through_the_sdk(base_url: str, sim: SimulatorControl) -> None:
    sim.set_faults(FLASH, [{"kind": "error", "status": 503}])
    client = sdk(base_url)
    with pytest.raises(errors.ServerError) as caught:
        client.models.generate_content(model=FLASH, contents="Hi")
    assert caught.value.code == 503 and caught.value.status == "UNAVAILABLE"
    assert caught.value.message == "The model is overloaded. Please try again later."
    # Other models are not affected.
    assert client.models.generate_content(model=PRO, contents="Hi").text
    attempts = sim.attempts()
    assert [(a["model"], a["fault"], a["status"]) for a in attempts] == [
        (FLASH, "error", 503),
        (PRO, None, 200),
    ]


@pytest.mark.parametrize(
    ("status", "name"),
    [
        (500, "INTERNAL"),
        (504, "DEADLINE_EXCEEDED"),
        (401, "UNAUTHENTICATED"),
        (403, "PERMISSION_DENIED"),
        (400, "INVALID_ARGUMENT"),
    ],
)
def test_error_statuses(http: httpx.Client, sim: SimulatorControl, status: int, name: str) -> None:
    sim.set_faults(FLASH, [{"kind": "error", "status": status}])
    response = http.post(GENERATE, json=HELLO)
    assert response.status_code == status
    assert error_of(response)["status"] == name and error_of(response)["message"]
    sim.set_faults(FLASH, [{"kind": "error", "status": status, "message": "custom"}])
    assert error_of(http.post(SSE, json=HELLO))["message"] == "custom"


def test_rate_limited_fault_body(base_url: str, http: httpx.Client, sim: SimulatorControl) -> None:
    sim.set_faults(FLASH, [{"kind": "rate_limited", "retry_delay": 2.5}])
    client = sdk(base_url)
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model=FLASH, contents="Hi")
    assert caught.value.code == 429 and caught.value.status == "RESOURCE_EXHAUSTED"
    error = caught.value.details["error"]
    assert detail(error, "RetryInfo") == {
        "@type": "type.googleapis.com/google.rpc.RetryInfo",
        "retryDelay": "2.5s",
    }
    violation = (detail(error, "QuotaFailure") or {})["violations"][0]
    assert violation["quotaId"] == "GenerateRequestsPerMinutePerProjectPerModel"
    assert violation["quotaDimensions"] == {"location": "global", "model": FLASH}
    assert detail(error, "Help") is not None

    response = http.post(GENERATE, json=HELLO)
    assert response.status_code == 429 and "retry-after" not in response.headers
    sim.set_faults(
        FLASH,
        [{"kind": "rate_limited", "per": "day", "retry_info": False, "retry_after_header": True}],
    )
    response = http.post(GENERATE, json=HELLO)
    error = error_of(response)
    assert response.headers["retry-after"] == "15" and detail(error, "RetryInfo") is None
    quota_id = (detail(error, "QuotaFailure") or {})["violations"][0]["quotaId"]
    assert quota_id == "GenerateRequestsPerDayPerProjectPerModel"


def test_input_too_long_fault_and_natural_limit(http: httpx.Client, sim: SimulatorControl) -> None:
    sim.set_faults(FLASH, [{"kind": "input_too_long"}])
    response = http.post(GENERATE, json=HELLO)
    assert response.status_code == 400
    assert error_of(response)["message"] == (
        "The input token count (1048577) exceeds the maximum number of tokens allowed (1048576)."
    )
    config = build_simulator_config({"models": {"tiny": {"input_token_limit": 5}}})
    with serve(create_simulator_app(config)) as url:
        path = f"{url}/v1beta/models/tiny:generateContent"
        long = {"contents": [{"parts": [{"text": "x" * 40}]}]}
        response = httpx.post(path, headers={"x-goog-api-key": KEY}, json=long)
        assert response.status_code == 400
        assert error_of(response)["message"] == (
            "The input token count (10) exceeds the maximum number of tokens allowed (5)."
        )
        short = {"contents": [{"parts": [{"text": "x" * 20}]}]}
        assert httpx.post(path, headers={"x-goog-api-key": KEY}, json=short).status_code == 200


def test_latency_stacks_with_an_error(http: httpx.Client, sim: SimulatorControl) -> None:
    sim.set_faults(FLASH, [{"kind": "latency", "seconds": 0.3}, {"kind": "error", "status": 500}])
    started = time.monotonic()
    response = http.post(GENERATE, json=HELLO)
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 500
    attempt = sim.attempts()[-1]
    assert attempt["fault"] == "error" and attempt["faults"] == ["latency", "error"]


def test_slow_first_chunk(http: httpx.Client, sim: SimulatorControl) -> None:
    sim.set_faults(FLASH, [{"kind": "slow_first_chunk", "seconds": 0.6}])
    started = time.monotonic()
    assert http.post(GENERATE, json=HELLO).status_code == 200
    assert time.monotonic() - started >= 0.6
    # A stream sends its headers at once; only the first chunk waits.
    with http.stream("POST", SSE, json=HELLO) as response:
        headers_at = time.monotonic()
        assert response.status_code == 200
        first = next(response.iter_raw())
        assert time.monotonic() - headers_at >= 0.3
        assert first.startswith(b"data: ")


def test_reset_gives_a_transport_error(base_url: str, sim: SimulatorControl) -> None:
    sim.set_faults(FLASH, [{"kind": "reset", "times": 1}])
    with httpx.Client(base_url=base_url, headers={"x-goog-api-key": KEY}) as client:
        with pytest.raises(httpx.TransportError):
            client.post(GENERATE, json=HELLO)
        assert client.post(GENERATE, json=HELLO).status_code == 200
    attempts = sim.attempts()
    assert [(a["fault"], a["status"]) for a in attempts] == [("reset", None), (None, 200)]


def test_hang_never_answers(base_url: str, sim: SimulatorControl) -> None:
    sim.set_faults(FLASH, [{"kind": "hang"}])
    with (
        httpx.Client(base_url=base_url, headers={"x-goog-api-key": KEY}, timeout=0.4) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.post(GENERATE, json=HELLO)
    # The simulator notices the client leaving and records it.
    eventually(lambda: sim.attempts()[-1]["client_disconnected"], timeout=5.0, interval=0.02)
    assert sim.attempts()[-1]["status"] is None and sim.attempts()[-1]["fault"] == "hang"


def test_stall_goes_silent_after_chunks(base_url: str, sim: SimulatorControl) -> None:
    sim.set_faults(FLASH, [{"kind": "stall", "after_chunks": 2}])
    received = b""
    with (
        httpx.Client(base_url=base_url, headers={"x-goog-api-key": KEY}, timeout=0.8) as client,
        client.stream("POST", SSE, json=HELLO) as response,
    ):
        assert response.status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            for chunk in response.iter_raw():
                received += chunk
    assert len(sse_events(received)) == 2
    assert b"finishReason" not in received


def test_cut_ends_stream_without_finish_reason(http: httpx.Client, sim: SimulatorControl) -> None:
    sim.set_faults(FLASH, [{"kind": "cut", "after_chunks": 2}])
    response = http.post(SSE, json=HELLO)
    assert response.status_code == 200
    events = sse_events(response.content)
    assert len(events) == 2 and b"finishReason" not in response.content
    # after_chunks beyond the stream's length still stops before the last chunk.
    sim.set_faults(FLASH, [{"kind": "cut", "after_chunks": 99}])
    assert b"finishReason" not in http.post(SSE, json=HELLO).content


def test_abrupt_cut_aborts_mid_body(base_url: str, sim: SimulatorControl) -> None:
    sim.set_faults(FLASH, [{"kind": "cut", "after_chunks": 1, "abrupt": True}])
    received = b""
    with (
        httpx.Client(base_url=base_url, headers={"x-goog-api-key": KEY}) as client,
        client.stream("POST", SSE, json=HELLO) as response,
    ):
        assert response.status_code == 200
        with pytest.raises(httpx.TransportError):
            for chunk in response.iter_raw():
                received += chunk
    assert len(sse_events(received)) == 1


def test_malformed_stream_chunk(base_url: str, http: httpx.Client, sim: SimulatorControl) -> None:
    sim.set_faults(FLASH, [{"kind": "malformed", "after_chunks": 1}])
    events = sse_events(http.post(SSE, json=HELLO).content)
    assert len(events) == 2
    json.loads(events[0])
    with pytest.raises(ValueError):
        json.loads(events[1])
    client = sdk(base_url)
    stream = client.models.generate_content_stream(model=FLASH, contents="Hi")
    assert next(stream).text
    with pytest.raises(errors.UnknownApiResponseError):
        next(stream)


def test_error_mid_stream(base_url: str, http: httpx.Client, sim: SimulatorControl) -> None:
    sim.set_faults(FLASH, [{"kind": "error", "status": 503, "after_chunks": 1}])
    response = http.post(SSE, json=HELLO)
    assert response.status_code == 200
    events = sse_events(response.content)
    assert len(events) == 2
    assert json.loads(events[1]) == {
        "error": {
            "code": 503,
            "message": "The model is overloaded. Please try again later.",
            "status": "UNAVAILABLE",
        }
    }
    client = sdk(base_url)
    stream = client.models.generate_content_stream(model=FLASH, contents="Hi")
    assert next(stream).text
    with pytest.raises(errors.ServerError):
        next(stream)
    # A unary call gets the error up front.
    assert http.post(GENERATE, json=HELLO).status_code == 503


def test_blocked_prompt(base_url: str, http: httpx.Client, sim: SimulatorControl) -> None:
    sim.set_faults(FLASH, [{"kind": "blocked"}])
    client = sdk(base_url)
    reply = client.models.generate_content(model=FLASH, contents="Hi")
    assert reply.candidates is None
    assert reply.prompt_feedback is not None
    assert reply.prompt_feedback.block_reason == types.BlockedReason.SAFETY
    events = sse_events(http.post(SSE, json=HELLO).content)
    assert len(events) == 1
    chunk = json.loads(events[0])
    assert chunk["promptFeedback"] == {"blockReason": "SAFETY"} and "candidates" not in chunk
    assert chunk["usageMetadata"]["promptTokenCount"] > 0
    # Not a generate call: blocked does not apply.
    count = http.post(f"/v1beta/models/{FLASH}:countTokens", json=HELLO)
    assert count.status_code == 200


def test_times_schedule_expires(http: httpx.Client, sim: SimulatorControl) -> None:
    sim.set_faults(
        FLASH, [{"kind": "error", "status": 500, "times": 1}, {"kind": "error", "times": 2}]
    )
    assert sim.faults(FLASH)[FLASH][0]["remaining"] == 1
    statuses = [http.post(GENERATE, json=HELLO).status_code for _ in range(4)]
    assert statuses == [500, 503, 503, 200]
    assert [a["fault"] for a in sim.attempts()] == ["error", "error", "error", None]
    assert sim.faults() == {}


def test_for_seconds_then_healthy(http: httpx.Client, sim: SimulatorControl) -> None:
    sim.set_faults(FLASH, [{"kind": "error", "status": 503, "for_seconds": 0.6}])
    assert http.post(GENERATE, json=HELLO).status_code == 503
    eventually(
        lambda: http.post(GENERATE, json=HELLO).status_code == 200, timeout=5.0, interval=0.02
    )


def test_after_seconds_starts_later(http: httpx.Client, sim: SimulatorControl) -> None:
    sim.set_faults(FLASH, [{"kind": "error", "status": 503, "after_seconds": 0.6}])
    assert http.post(GENERATE, json=HELLO).status_code == 200
    eventually(
        lambda: http.post(GENERATE, json=HELLO).status_code == 503, timeout=5.0, interval=0.02
    )


def test_methods_filter_and_stream_only_kinds(http: httpx.Client, sim: SimulatorControl) -> None:
    sim.set_faults(FLASH, [{"kind": "error", "methods": ["streamGenerateContent"]}])
    assert http.post(GENERATE, json=HELLO).status_code == 200
    assert http.post(SSE, json=HELLO).status_code == 503
    sim.set_faults(FLASH, [{"kind": "cut"}])
    assert http.post(GENERATE, json=HELLO).status_code == 200
    assert http.post(f"/v1beta/models/{FLASH}:countTokens", json=HELLO).status_code == 200


def test_chunking_settings() -> None:
    config = build_simulator_config({"chunk_words": 1, "chunk_interval": 0.1})
    with serve(create_simulator_app(config)) as url:
        started = time.monotonic()
        response = httpx.post(url + SSE, headers={"x-goog-api-key": KEY}, json=HELLO)
        elapsed = time.monotonic() - started
    chunks = [json.loads(event) for event in sse_events(response.content)]
    texts = [c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks]
    assert len(texts) == len("".join(texts).split()) > 5
    assert elapsed >= 0.1 * (len(chunks) - 1)


def test_probability_is_reproducible_with_a_seed() -> None:
    def pattern() -> list[int]:
        config = build_simulator_config(
            {"seed": 7, "faults": {FLASH: [{"kind": "error", "probability": 0.5}]}}
        )
        with serve(create_simulator_app(config)) as url, httpx.Client(base_url=url) as client:
            headers = {"x-goog-api-key": KEY}
            return [
                client.post(GENERATE, headers=headers, json=HELLO).status_code for _ in range(16)
            ]

    first = pattern()
    assert set(first) == {200, 503}
    assert pattern() == first


def test_reset_without_reachable_transport_fails_loudly() -> None:
    config = build_simulator_config({"faults": {FLASH: [{"kind": "reset"}]}})
    app = create_simulator_app(config)

    async def call() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
            await client.post(GENERATE, headers={"x-goog-api-key": KEY}, json=HELLO)

    with pytest.raises(TransportUnavailableError):
        anyio.run(call)


# Model-independent answers and continuation -----------------------------------------------


def text_of(response: dict[str, Any]) -> str:
    text: str = response["candidates"][0]["content"]["parts"][0]["text"]
    return text


def streamed_text(events: list[dict[str, Any]]) -> str:
    return "".join(
        part.get("text", "")
        for event in events
        for part in event["candidates"][0].get("content", {}).get("parts", [])
    )


def sse_chunks(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return [json.loads(event) for event in sse_events(response.content)]


def continuing(body: dict[str, Any], delivered: str) -> dict[str, Any]:
    """``body`` with the delivered text appended as a trailing model turn (a prefill)."""
    turn = {"role": "model", "parts": [{"text": delivered}]}
    return {**body, "contents": [*body["contents"], turn]}


def test_answer_text_is_the_same_whichever_model_serves(http: httpx.Client) -> None:
    answers = {
        model: http.post(f"/v1beta/models/{model}:generateContent", json=HELLO).json()
        for model in (FLASH, PRO, LITE, "gemini-3-flash-preview")
    }
    assert len({text_of(a) for a in answers.values()}) == 1
    assert len({json.dumps(a["usageMetadata"]) for a in answers.values()}) == 1
    assert {m: a["modelVersion"] for m, a in answers.items()} == {m: m for m in answers}
    assert len({a["responseId"] for a in answers.values()}) == len(answers)
    for model in (FLASH, PRO):
        path = f"/v1beta/models/{model}:streamGenerateContent?alt=sse"
        chunks = sse_chunks(http.post(path, json=HELLO))
        assert len(chunks) >= 3 and streamed_text(chunks) == text_of(answers[FLASH])
        assert {c["modelVersion"] for c in chunks} == {model}


@pytest.mark.parametrize("split", [0, 1, 20, 33, -1, None])
def test_a_prefilled_model_turn_is_continued(http: httpx.Client, split: int | None) -> None:
    whole = text_of(http.post(GENERATE, json=HELLO).json())
    delivered = whole if split is None else whole[:split]
    body = continuing(HELLO, delivered)
    # Another model finishes the answer: prefill + continuation is the whole answer, exactly.
    path = f"/v1beta/models/{PRO}:generateContent"
    response = http.post(path, json=body).json()
    candidate = response["candidates"][0]
    rest = candidate["content"]["parts"][0]["text"]
    assert delivered + rest == whole and candidate["finishReason"] == "STOP"
    # The prefill is prompt: counted, and billed, as input.
    prompt = math.ceil((len("Tell me about circuit breakers") + len(delivered)) / 4)
    usage = response["usageMetadata"]
    assert usage["promptTokenCount"] == prompt
    assert usage.get("candidatesTokenCount", 0) == math.ceil(len(rest) / 4)
    assert usage["totalTokenCount"] == prompt + math.ceil(len(rest) / 4)
    count = http.post(f"/v1beta/models/{PRO}:countTokens", json={"contents": body["contents"]})
    assert count.json()["totalTokens"] == prompt
    chunks = sse_chunks(http.post(f"/v1beta/models/{PRO}:streamGenerateContent?alt=sse", json=body))
    assert streamed_text(chunks) == rest
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert chunks[-1]["usageMetadata"] == usage


def test_a_prefill_that_strays_gets_the_rest_after_the_common_prefix(http: httpx.Client) -> None:
    whole = text_of(http.post(GENERATE, json=HELLO).json())
    strayed = continuing(HELLO, whole[:12] + "[not what the model said]")
    assert text_of(http.post(GENERATE, json=strayed).json()) == whole[12:]
    # Thought summaries in the model turn are not part of the delivered answer.
    turn = {"role": "model", "parts": [{"text": "pondering", "thought": True}, {"text": whole[:9]}]}
    body = {**HELLO, "contents": [*HELLO["contents"], turn]}
    assert text_of(http.post(GENERATE, json=body).json()) == whole[9:]


def test_a_continuation_keeps_the_whole_answers_finish_reason(http: httpx.Client) -> None:
    body = {**HELLO, "generationConfig": {"maxOutputTokens": 10}}
    whole = http.post(GENERATE, json=body).json()
    assert whole["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert len(text_of(whole)) == 40
    rest = http.post(GENERATE, json=continuing(body, text_of(whole)[:15])).json()
    assert rest["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert text_of(rest) == text_of(whole)[15:]


def test_the_sdk_continues_a_model_turn(base_url: str) -> None:
    client = sdk(base_url)
    prompt = "Why do breakers open?"
    whole = client.models.generate_content(model=FLASH, contents=prompt).text
    assert whole
    contents = [
        types.Content(role="user", parts=[types.Part(text=prompt)]),
        types.Content(role="model", parts=[types.Part(text=whole[:25])]),
    ]
    rest = client.models.generate_content(model=PRO, contents=contents)
    assert rest.model_version == PRO and whole[:25] + (rest.text or "") == whole
    chunks = list(client.models.generate_content_stream(model=LITE, contents=contents))
    assert whole[:25] + "".join(c.text or "" for c in chunks) == whole


def test_a_model_without_prefill_support_refuses_a_trailing_model_turn(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text(f"models:\n  {LITE}: {{supports_prefill: false}}\n")
    config = load_simulator_config(str(path))
    assert not config.models[LITE].supports_prefill and config.models[FLASH].supports_prefill
    body = continuing(HELLO, "The simulator")
    message = "Please ensure that multiturn requests end with a user role or a function response."
    with serve(create_simulator_app(config)) as url, httpx.Client(base_url=url) as client:
        headers = {"x-goog-api-key": KEY}
        for verb in ("generateContent", "streamGenerateContent?alt=sse"):
            refused = client.post(f"/v1beta/models/{LITE}:{verb}", headers=headers, json=body)
            assert refused.status_code == 400
            assert error_of(refused) == {
                "code": 400,
                "message": message,
                "status": "INVALID_ARGUMENT",
            }
        lite = f"/v1beta/models/{LITE}:generateContent"
        assert client.post(lite, headers=headers, json=HELLO).status_code == 200
        other = client.post(f"/v1beta/models/{FLASH}:generateContent", headers=headers, json=body)
        assert other.status_code == 200
        assert "supportsPrefill" not in client.get(f"/v1beta/models/{LITE}", headers=headers).text
        contents = [
            types.Content(role="user", parts=[types.Part(text="Hi")]),
            types.Content(role="model", parts=[types.Part(text="The")]),
        ]
        genai_client = sdk(url)  # kept in a variable: a collected client closes its connections
        with pytest.raises(errors.ClientError) as caught:
            genai_client.models.generate_content(model=LITE, contents=contents)
        assert caught.value.code == 400 and caught.value.message == message


def test_reject_continuation_fault(http: httpx.Client, sim: SimulatorControl) -> None:
    sim.set_faults(FLASH, [{"kind": "reject_continuation", "times": 1}])
    body = continuing(HELLO, "The simulator says")
    # A request that is not a continuation is served and does not use the fault up.
    assert http.post(GENERATE, json=HELLO).status_code == 200
    refused = http.post(SSE, json=body)
    assert refused.status_code == 400 and error_of(refused)["message"].startswith(
        "Please ensure that multiturn requests end with a user role"
    )
    assert http.post(GENERATE, json=body).status_code == 200  # times: 1, so used up
    assert [a["fault"] for a in sim.attempts()] == [None, "reject_continuation", None]
    sim.set_faults(FLASH, [{"kind": "reject_continuation", "message": "no prefill here"}])
    assert error_of(http.post(GENERATE, json=body))["message"] == "no prefill here"
    assert http.post(f"/v1beta/models/{PRO}:generateContent", json=body).status_code == 200


# Stream endings -------------------------------------------------------------------------------


def test_empty_final_chunk(base_url: str, http: httpx.Client, sim: SimulatorControl) -> None:
    unary = http.post(GENERATE, json=HELLO).json()
    sim.set_faults(FLASH, [{"kind": "empty_final_chunk"}])
    assert http.post(GENERATE, json=HELLO).json() == unary  # unary calls are not affected
    chunks = sse_chunks(http.post(SSE, json=HELLO))
    assert len(chunks) >= 3
    assert chunks[-1] == {
        "candidates": [{"finishReason": "STOP", "index": 0}],
        "usageMetadata": unary["usageMetadata"],
        "modelVersion": FLASH,
        "responseId": unary["responseId"],
    }
    assert all("finishReason" not in c["candidates"][0] for c in chunks[:-1])
    assert all(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks[:-1])
    assert streamed_text(chunks) == text_of(unary)
    array = http.post(f"/v1beta/models/{FLASH}:streamGenerateContent", json=HELLO).json()
    assert array == chunks
    client = sdk(base_url)
    stream = list(client.models.generate_content_stream(model=FLASH, contents="Hi"))
    assert "".join(c.text or "" for c in stream) == text_of(
        http.post(GENERATE, json={"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}).json()
    )
    last = stream[-1].candidates
    assert last is not None and last[0].content is None
    assert last[0].finish_reason == types.FinishReason.STOP
    faults = [a["fault"] for a in sim.attempts()]
    assert faults == [None, None, *["empty_final_chunk"] * 3, None]


# JSON mode ------------------------------------------------------------------------------------


class Course(enum.Enum):
    STARTER = "starter"
    MAIN = "main"
    DESSERT = "dessert"


class Step(BaseModel):
    order: int
    action: str


class Recipe(BaseModel):
    name: str
    minutes: int
    vegetarian: bool
    rating: float
    course: Course
    tags: list[str]
    steps: list[Step]
    note: str | None = None


def json_config(**fields: Any) -> dict[str, Any]:
    return {**HELLO, "generationConfig": {"responseMimeType": "application/json", **fields}}


def test_json_mode_with_a_response_schema_through_the_sdk(base_url: str) -> None:
    client = sdk(base_url)
    config = types.GenerateContentConfig(
        response_mime_type="application/json", response_schema=Recipe
    )
    reply = client.models.generate_content(model=FLASH, contents="A recipe", config=config)
    assert isinstance(reply.parsed, Recipe)
    recipe = Recipe.model_validate_json(reply.text or "", strict=True)
    assert 1 <= len(recipe.tags) <= 2 and 1 <= len(recipe.steps) <= 2
    assert list(json.loads(reply.text or "")) == list(Recipe.model_fields)  # propertyOrdering
    # Same JSON from another model, and the stream carries it in several chunks.
    other = client.models.generate_content(model=PRO, contents="A recipe", config=config)
    assert other.text == reply.text
    chunks = list(
        client.models.generate_content_stream(model=LITE, contents="A recipe", config=config)
    )
    assert len(chunks) >= 3 and "".join(c.text or "" for c in chunks) == reply.text
    # Another prompt, other values.
    again = client.models.generate_content(model=FLASH, contents="Another recipe", config=config)
    assert again.text != reply.text and isinstance(again.parsed, Recipe)
    listed = types.GenerateContentConfig(
        response_mime_type="application/json", response_schema=list[Recipe]
    )
    many = client.models.generate_content(model=FLASH, contents="Recipes", config=listed)
    assert isinstance(many.parsed, list) and 1 <= len(many.parsed) <= 2


def test_json_mode_with_a_response_json_schema(base_url: str, http: httpx.Client) -> None:
    schema = Recipe.model_json_schema()
    assert "$defs" in schema  # $ref, anyOf with null, enum: the parts a generator must follow
    client = sdk(base_url)
    config = types.GenerateContentConfig(
        response_mime_type="application/json", response_json_schema=schema
    )
    reply = client.models.generate_content(model=FLASH, contents="A recipe", config=config)
    Recipe.model_validate_json(reply.text or "", strict=True)
    # snake_case keys, as Google's parser also accepts them.
    raw = {
        **HELLO,
        "generation_config": {
            "response_mime_type": "application/json",
            "response_json_schema": schema,
        },
    }
    assert text_of(http.post(GENERATE, json=raw).json()) == text_of(
        http.post(GENERATE, json=json_config(responseJsonSchema=schema)).json()
    )


def test_json_mode_openapi_schema_keywords(http: httpx.Client) -> None:
    schema = {
        "type": "OBJECT",
        "properties": {
            "size": {"type": "STRING", "format": "enum", "enum": ["S", "M", "L"]},
            "count": {"type": "INTEGER", "minimum": 10, "maximum": 12},
            "ratio": {"type": "NUMBER", "minimum": 0, "maximum": 1},
            "flags": {"type": "ARRAY", "items": {"type": "BOOLEAN"}, "min_items": "3"},
            "empty": {"type": "OBJECT"},
            "maybe": {"type": "STRING", "nullable": True},
        },
        "property_ordering": ["maybe", "count"],
        "required": ["size", "count"],
    }
    value = json.loads(text_of(http.post(GENERATE, json=json_config(responseSchema=schema)).json()))
    assert list(value) == ["maybe", "count", "size", "ratio", "flags", "empty"]
    assert value["size"] in ("S", "M", "L") and 10 <= value["count"] <= 12
    assert 0 <= value["ratio"] <= 1 and isinstance(value["ratio"], float)
    assert len(value["flags"]) == 3 and all(isinstance(f, bool) for f in value["flags"])
    assert value["empty"] == {} and isinstance(value["maybe"], str)
    scalar = json_config(responseSchema={"type": "INTEGER"})
    assert isinstance(json.loads(text_of(http.post(GENERATE, json=scalar).json())), int)


def test_json_mode_without_a_schema(http: httpx.Client) -> None:
    plain = text_of(http.post(GENERATE, json=HELLO).json())
    answer = json.loads(text_of(http.post(GENERATE, json=json_config()).json()))
    assert answer == {"answer": plain}
    chunks = sse_chunks(http.post(SSE, json=json_config()))
    assert len(chunks) >= 3 and json.loads(streamed_text(chunks)) == answer
    # Another mime type is not JSON mode.
    other = {**HELLO, "generationConfig": {"responseMimeType": "text/plain"}}
    assert text_of(http.post(GENERATE, json=other).json()) == plain


def test_json_answers_are_continued_like_text(http: httpx.Client) -> None:
    body = json_config(responseJsonSchema=Recipe.model_json_schema())
    whole = text_of(http.post(GENERATE, json=body).json())
    rest = text_of(
        http.post(f"/v1beta/models/{PRO}:generateContent", json=continuing(body, whole[:30])).json()
    )
    assert whole[:30] + rest == whole


def test_json_drift_invalid(base_url: str, http: httpx.Client, sim: SimulatorControl) -> None:
    body = json_config(responseJsonSchema=Recipe.model_json_schema())
    good = text_of(http.post(GENERATE, json=body).json())
    sim.set_faults(FLASH, [{"kind": "json_drift", "mode": "invalid", "times": 2}])
    # Not JSON mode: served as usual, and the fault is not used up.
    assert text_of(http.post(GENERATE, json=HELLO).json()).startswith(ANSWER_START)
    broken = http.post(GENERATE, json=body).json()
    assert broken["candidates"][0]["finishReason"] == "STOP"
    drifted = text_of(broken)
    assert good.startswith(drifted) and drifted != good
    with pytest.raises(ValueError):
        json.loads(drifted)
    chunks = sse_chunks(http.post(SSE, json=body))
    assert streamed_text(chunks) == drifted
    assert [a["fault"] for a in sim.attempts()] == [None, None, "json_drift", "json_drift"]
    assert text_of(http.post(GENERATE, json=body).json()) == good
    # A schema-less JSON answer breaks too, and so does a JSON scalar.
    sim.set_faults(FLASH, [{"kind": "json_drift"}])
    for config in (json_config(), json_config(responseSchema={"type": "INTEGER"})):
        with pytest.raises(ValueError):
            json.loads(text_of(http.post(GENERATE, json=config).json()))
    config = types.GenerateContentConfig(
        response_mime_type="application/json", response_schema=Recipe
    )
    client = sdk(base_url)
    reply = client.models.generate_content(model=FLASH, contents="A recipe", config=config)
    assert reply.parsed is None and reply.text


@pytest.mark.parametrize(
    ("schema", "check"),
    [
        # A required property goes missing.
        (
            {"type": "OBJECT", "properties": {"a": {"type": "STRING"}}, "required": ["a"]},
            lambda value: value == {},
        ),
        # Nothing required: a property gets the wrong type.
        (
            {"type": "object", "properties": {"a": {}, "b": {"type": "integer"}}},
            lambda value: isinstance(value["a"], str) and not isinstance(value["b"], int),
        ),
        # Not an object: the whole value has the wrong type.
        ({"type": "ARRAY", "items": {"type": "STRING"}}, lambda value: not isinstance(value, list)),
        (
            {"type": ["string", "null"]},
            lambda value: not isinstance(value, str) and value is not None,
        ),
        (
            {"anyOf": [{"type": "string"}, {"type": "object"}]},
            lambda value: not isinstance(value, str | dict),
        ),
    ],
)
def test_json_drift_schema(
    http: httpx.Client, sim: SimulatorControl, schema: dict[str, Any], check: Any
) -> None:
    sim.set_faults(FLASH, [{"kind": "json_drift", "mode": "schema"}])
    value = json.loads(
        text_of(http.post(GENERATE, json=json_config(responseJsonSchema=schema)).json())
    )
    assert check(value), value


def test_json_drift_schema_through_the_sdk(base_url: str, sim: SimulatorControl) -> None:
    sim.set_faults(FLASH, [{"kind": "json_drift", "mode": "schema"}])
    client = sdk(base_url)
    config = types.GenerateContentConfig(
        response_mime_type="application/json", response_schema=Recipe
    )
    reply = client.models.generate_content(model=FLASH, contents="A recipe", config=config)
    value = json.loads(reply.text or "")
    assert "name" not in value and reply.parsed is None  # the first required property is gone
    with pytest.raises(ValidationError):
        Recipe.model_validate(value)
    healthy = client.models.generate_content(model=PRO, contents="A recipe", config=config)
    assert {**value, "name": json.loads(healthy.text or "")["name"]} == json.loads(
        healthy.text or ""
    )


# Input limits -----------------------------------------------------------------------------------


def test_input_limit_per_catalogue_model(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text(f"models:\n  {LITE}: {{input_token_limit: 10}}\n")
    from_yaml = load_simulator_config(str(path))
    catalogue = default_catalogue()
    catalogue[LITE] = dataclasses.replace(catalogue[LITE], input_token_limit=10)
    assert from_yaml == SimulatorConfig(models=catalogue)
    long = {"contents": [{"role": "user", "parts": [{"text": "x" * 100}]}]}
    message = "The input token count (25) exceeds the maximum number of tokens allowed (10)."
    with serve(create_simulator_app(from_yaml)) as url, httpx.Client(base_url=url) as client:
        headers = {"x-goog-api-key": KEY}
        assert client.get(f"/v1beta/models/{LITE}", headers=headers).json()["inputTokenLimit"] == 10
        for verb in ("generateContent", "streamGenerateContent?alt=sse"):
            refused = client.post(f"/v1beta/models/{LITE}:{verb}", headers=headers, json=long)
            assert refused.status_code == 400 and error_of(refused) == {
                "code": 400,
                "message": message,
                "status": "INVALID_ARGUMENT",
            }
            served = client.post(f"/v1beta/models/{FLASH}:{verb}", headers=headers, json=long)
            assert served.status_code == 200
        # A prefill counts as input too: 5 tokens of prompt and 8 of delivered answer.
        short = {"contents": [{"role": "user", "parts": [{"text": "x" * 20}]}]}
        lite = f"/v1beta/models/{LITE}:generateContent"
        assert client.post(lite, headers=headers, json=short).status_code == 200
        refused = client.post(lite, headers=headers, json=continuing(short, "y" * 32))
        assert error_of(refused)["message"] == (
            "The input token count (13) exceeds the maximum number of tokens allowed (10)."
        )
        genai_client = sdk(url)
        with pytest.raises(errors.ClientError) as caught:
            genai_client.models.generate_content(model=LITE, contents="x" * 100)
        assert caught.value.code == 400 and caught.value.message == message


def test_json_schema_generator_edge_cases() -> None:
    seed = b"seed"
    request = jsonmode.JsonRequest
    node = {"$ref": "#/$defs/Node"}
    recursive = {
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": node},
                },
                "required": ["name"],
            }
        },
        **node,
    }
    text = jsonmode.render(request(recursive), seed, "")
    assert len(text) < 100_000  # deep down only required properties are filled in

    def names(node: dict[str, Any]) -> int:
        assert isinstance(node["name"], str)
        return 1 + sum(names(child) for child in node.get("children", []))

    assert names(json.loads(text)) > 1
    merged = {
        "allOf": [{"properties": {"a": {"type": "integer"}}}, {"properties": {"b": {"const": 3}}}]
    }
    assert json.loads(jsonmode.render(request(merged), seed, ""))["b"] == 3
    pair = {
        "type": "array",
        "prefixItems": [{"type": "integer"}, {"type": "boolean"}],
        "maxItems": 2,
    }
    first, second = json.loads(jsonmode.render(request(pair), seed, ""))
    assert isinstance(first, int) and isinstance(second, bool)
    one = {"type": "array", "items": {"enum": [1, 2]}, "max_items": 1}
    assert json.loads(jsonmode.render(request(one), seed, "")) in ([1], [2])
    assert jsonmode.render(request(one), seed, "") == jsonmode.render(request(one), seed, "")
    assert jsonmode.json_request({"responseMimeType": "text/plain"}) is None
    assert jsonmode.json_request({"response_mime_type": "application/json"}) == request(None)


# Quotas ---------------------------------------------------------------------------------------


def test_quota_admits_exactly_the_limit(http: httpx.Client, sim: SimulatorControl) -> None:
    sim.set_quota(FLASH, requests_per_minute=3)
    statuses = [http.post(GENERATE, json=HELLO).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    rejected = http.post(GENERATE, json=HELLO)
    error = error_of(rejected)
    violation = (detail(error, "QuotaFailure") or {})["violations"][0]
    assert violation["quotaValue"] == "3"
    assert violation["quotaId"] == "GenerateRequestsPerMinutePerProjectPerModel"
    delay = (detail(error, "RetryInfo") or {})["retryDelay"]
    assert delay.endswith("s") and 0 < float(delay[:-1]) <= 60
    # Per API key and per model, like Google's per-project quota.
    assert http.post(GENERATE, headers={"x-goog-api-key": "other"}, json=HELLO).status_code == 200
    assert http.post(f"/v1beta/models/{PRO}:generateContent", json=HELLO).status_code == 200
    # countTokens is not a generate request, so the quota does not count it.
    assert http.post(f"/v1beta/models/{FLASH}:countTokens", json=HELLO).status_code == 200
    assert [a["fault"] for a in sim.attempts(model=FLASH)][:6] == [None] * 3 + ["quota"] * 3


def test_quota_retry_delay_is_enough(http: httpx.Client, sim: SimulatorControl) -> None:
    sim.set_quota(FLASH, requests_per_second=2)
    assert [http.post(GENERATE, json=HELLO).status_code for _ in range(2)] == [200, 200]
    rejected = http.post(GENERATE, json=HELLO)
    if rejected.status_code == 200:  # the machine was slow enough for the window to move
        return
    delay = float((detail(error_of(rejected), "RetryInfo") or {})["retryDelay"][:-1])
    assert 0 < delay <= 1
    time.sleep(delay)  # waiting what the server said is exactly the behaviour under test
    assert http.post(GENERATE, json=HELLO).status_code == 200


def test_sliding_window_is_exact() -> None:
    book = QuotaBook()
    book.set("m", QuotaSpec(requests_per_second=2))
    assert book.admit("k", "m", "generateContent", 10.0) is None
    assert book.admit("k", "m", "generateContent", 10.4) is None
    rejection = book.admit("k", "m", "generateContent", 10.9)
    assert rejection is not None and math.isclose(rejection.retry_delay, 0.1)
    assert book.admit("k", "m", "generateContent", 10.999) is not None
    assert book.admit("k", "m", "generateContent", 11.0) is None  # the 10.0 slot is free
    assert book.admit("k", "m", "generateContent", 11.3) is not None
    assert book.admit("k", "m", "generateContent", 11.4) is None
    assert book.admit("k", "m", "countTokens", 11.4) is None  # not a counted method


def test_format_duration() -> None:
    assert [format_duration(s) for s in (15, 2.5, 0.1, 0.001, 53.016342224)] == [
        "15s",
        "2.5s",
        "0.1s",
        "0.001s",
        "53.016342224s",
    ]


# Attempt log and control API ------------------------------------------------------------------


def test_attempts_record_bodies_byte_identical(http: httpx.Client, sim: SimulatorControl) -> None:
    raw = b'{ "contents" : [ {"parts": [{"text": "h\xc3\xa9llo"}]} ] }  \n'
    http.post(GENERATE, content=raw, params={"key": "in-query"})
    http.post(SSE, json=HELLO)
    attempts = sim.attempts(include_body=True)
    assert len(attempts) == 2
    first = attempts[0]
    assert base64.b64decode(first["body"]) == raw and first["body_size"] == len(raw)
    assert first["method"] == "POST" and first["path"] == GENERATE
    assert first["api_method"] == "generateContent" and first["api_version"] == "v1beta"
    assert first["query"] == "key=REDACTED"
    assert first["key_digest"] and KEY not in json.dumps(attempts)
    assert attempts[1]["stream"] and attempts[1]["seq"] > first["seq"]
    assert first["mono"] <= attempts[1]["mono"]
    assert "body" not in sim.attempts()[0]
    assert [a["seq"] for a in sim.attempts(since=first["seq"])] == [attempts[1]["seq"]]
    assert sim.attempts(model=PRO) == []
    sim.clear_attempts()
    assert sim.attempts() == []


def test_control_api_validates_fault_specs(sim: SimulatorControl) -> None:
    bad_specs: list[tuple[dict[str, Any], str]] = [
        ({"kind": "boom"}, "faults[0].kind"),
        ({"kind": "error", "status": 200}, "faults[0].status: must be at least 400"),
        ({"kind": "latency"}, "faults[0].seconds"),
        ({"kind": "latency", "seconds": 1, "status": 500}, "faults[0].status: not a field"),
        ({"kind": "hang", "probability": 2}, "faults[0].probability: must be at most 1"),
        ({"kind": "hang", "methods": ["explode"]}, "faults[0].methods"),
        ({"kind": "cut", "after_chunks": "2"}, "faults[0].after_chunks: expected int"),
        ({"kind": "json_drift", "mode": "subtle"}, "faults[0].mode: must be one of"),
        ({"kind": "empty_final_chunk", "after_chunks": 1}, "faults[0].after_chunks: not a"),
        ({"kind": "reject_continuation", "status": 400}, "faults[0].status: not a field"),
    ]
    for spec, message in bad_specs:
        with pytest.raises(SimulatorControlError) as caught:
            sim.set_faults(FLASH, [spec])
        assert caught.value.status == 400 and message in caught.value.message, spec
    with pytest.raises(SimulatorControlError):
        sim.add_fault(FLASH, kind="error", status="503")
    with pytest.raises(SimulatorControlError):
        sim.set_quota(FLASH, requests_per_second=1, requests_per_minute=1)
    assert sim.faults() == {}
    sim.add_fault(FLASH, kind="error", status=500, times=2)
    sim.add_fault(FLASH, {"kind": "latency", "seconds": 0.1})
    installed = sim.faults()[FLASH]
    assert [f["spec"]["kind"] for f in installed] == ["error", "latency"]
    assert installed[0]["spec"] == {"kind": "error", "status": 500, "times": 2}
    sim.clear_faults(FLASH)
    assert sim.faults() == {} and sim.healthz()


# Configuration --------------------------------------------------------------------------------


def test_yaml_config_file(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text(
        "models:\n"
        "  my-model: {input_token_limit: 1000, output_token_limit: 100}\n"
        "  gemini-2.5-pro: {display_name: Renamed}\n"
        "faults:\n"
        "  gemini-2.5-pro:\n"
        "    - {kind: error, status: 503, for_seconds: 30}\n"
        "quotas:\n"
        "  gemini-2.5-flash: {requests_per_second: 5}\n"
        "api_keys: [good-key]\n"
        "seed: 1\n"
    )
    config = load_simulator_config(str(path))
    assert config.models["my-model"].input_token_limit == 1000
    assert config.models["gemini-2.5-pro"].input_token_limit == 1_048_576
    assert config.faults["gemini-2.5-pro"][0].for_seconds == 30
    assert config.quotas[FLASH].requests_per_second == 5
    with serve(create_simulator_app(config)) as url, httpx.Client(base_url=url) as client:
        good = {"x-goog-api-key": "good-key"}
        model = client.get("/v1beta/models/my-model", headers=good).json()
        assert model["inputTokenLimit"] == 1000 and model["outputTokenLimit"] == 100
        renamed = client.get(f"/v1beta/models/{PRO}", headers=good).json()
        assert renamed["displayName"] == "Renamed"
        assert (
            client.post(f"/v1/models/{PRO}:generateContent", headers=good, json=HELLO).status_code
            == 503
        )
        assert client.post(GENERATE, headers=good, json=HELLO).status_code == 200
        invalid = client.post(GENERATE, headers={"x-goog-api-key": "bad"}, json=HELLO)
        assert invalid.status_code == 400
        assert error_of(invalid)["message"] == "API key not valid. Please pass a valid API key."
    assert load_simulator_config(None) == SimulatorConfig()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"fautls": {}}, "fautls: unknown key"),
        ({"faults": {FLASH: {"kind": "hang"}}}, f"faults.{FLASH}: expected a list"),
        ({"faults": {FLASH: [{"kind": "error", "status": 99}]}}, f"faults.{FLASH}[0].status"),
        ({"quotas": {FLASH: {}}}, f"quotas.{FLASH}: set exactly one"),
        ({"quotas": {FLASH: {"requests_per_second": 0}}}, "requests_per_second: must be at least"),
        ({"models": {"m": {"input_token_limit": "big"}}}, "models.m.input_token_limit"),
        ({"models": {"m": {"supports_prefill": "no"}}}, "models.m.supports_prefill: expected"),
        ({"models": {"bad/name": {}}}, "models: 'bad/name' is not a model name"),
        ({"seed": "x"}, "seed: expected int"),
        ({"api_keys": "k"}, "api_keys"),
    ],
)
def test_invalid_config_names_the_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_simulator_config(raw)
    assert message in str(caught.value)


def test_invalid_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("faults: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_simulator_config(str(path))
    with pytest.raises(ConfigError, match="cannot read"):
        load_simulator_config(str(tmp_path / "missing.yaml"))


VERTEX = f"/v1beta1/projects/p/locations/us-central1/publishers/google/models/{FLASH}"
VERTEX_AUTH = {"authorization": "Bearer vertex-token"}


@pytest.mark.parametrize(
    ("status", "message", "code"),
    [
        (
            429,
            "Resource exhausted. Please try again later. Please refer to "
            "https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more "
            "details.",
            "RESOURCE_EXHAUSTED",
        ),
        (500, "Internal error encountered.", "INTERNAL"),
        (503, "The service is currently unavailable.", "UNAVAILABLE"),
    ],
)
def test_vertex_paths_get_vertexs_error_bodies(
    base_url: str, sim: SimulatorControl, status: int, message: str, code: str
) -> None:
    sim.set_faults(FLASH, [{"kind": "error", "status": status}])
    answer = httpx.post(f"{base_url}{VERTEX}:generateContent", json=HELLO, headers=VERTEX_AUTH)
    assert answer.status_code == status
    assert answer.json() == {"error": {"code": status, "message": message, "status": code}}
    # A stream's in-band error is worded the same way.
    sim.set_faults(FLASH, [{"kind": "error", "status": status, "after_chunks": 1}])
    streamed = httpx.post(
        f"{base_url}{VERTEX}:streamGenerateContent?alt=sse", json=HELLO, headers=VERTEX_AUTH
    )
    assert message in streamed.text
    # The Developer API keeps its own wording.
    sim.set_faults(FLASH, [{"kind": "error", "status": status}])
    developer = httpx.post(f"{base_url}{GENERATE}", json=HELLO, headers={"x-goog-api-key": KEY})
    assert developer.json()["error"]["message"] != message


@pytest.mark.parametrize("per", ["minute", "day"])
def test_vertexs_project_quota_429_names_the_quota_in_the_message_only(
    base_url: str, sim: SimulatorControl, per: str
) -> None:
    sim.set_quota(FLASH, requests_per_minute=1, per=per)
    url = f"{base_url}{VERTEX}:generateContent"
    assert httpx.post(url, json=HELLO, headers=VERTEX_AUTH).status_code == 200
    over = httpx.post(url, json=HELLO, headers=VERTEX_AUTH)
    assert over.status_code == 429
    assert "retry-after" not in over.headers
    assert over.json() == {
        "error": {
            "code": 429,
            "message": "Quota exceeded for aiplatform.googleapis.com/generate_content_requests_"
            f"per_{per}_per_project_per_base_model with base model: {FLASH}. Please submit a "
            "quota increase request. "
            "https://cloud.google.com/vertex-ai/docs/generative-ai/quotas-genai.",
            "status": "RESOURCE_EXHAUSTED",
        }
    }
    # A rate_limited fault on a Vertex path is the same per-project 429.
    sim.clear_quotas()
    sim.set_faults(FLASH, [{"kind": "rate_limited", "per": per}])
    fault = httpx.post(url, json=HELLO, headers=VERTEX_AUTH)
    assert fault.json() == over.json()


VERTEX_PARENT = "/v1beta1/projects/p/locations/us-central1"


def test_vertex_compute_tokens_cuts_the_text_as_count_tokens_counts_it(base_url: str) -> None:
    text = "hello there, world"
    body = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    answer = httpx.post(f"{base_url}{VERTEX}:computeTokens", json=body, headers=VERTEX_AUTH)
    assert answer.status_code == 200, answer.text
    [info] = answer.json()["tokensInfo"]
    assert info["role"] == "user"
    assert b"".join(base64.b64decode(token) for token in info["tokens"]) == text.encode()
    assert len(info["tokenIds"]) == len(info["tokens"])
    counted = httpx.post(f"{base_url}{VERTEX}:countTokens", json=body, headers=VERTEX_AUTH)
    assert counted.json()["totalTokens"] == len(info["tokens"])
    # The Developer API has no such method.
    developer = httpx.post(
        f"{base_url}/v1beta/models/{FLASH}:computeTokens",
        json=body,
        headers={"x-goog-api-key": KEY},
    )
    assert developer.status_code == 404


def test_vertex_predict_embeds_each_instance_of_a_text_embedding_model(base_url: str) -> None:
    model = f"{VERTEX_PARENT}/publishers/google/models/text-embedding-004"
    body = {
        "instances": [{"content": "first"}, {"content": "second text"}],
        "parameters": {"outputDimensionality": 16},
    }
    answer = httpx.post(f"{base_url}{model}:predict", json=body, headers=VERTEX_AUTH)
    assert answer.status_code == 200, answer.text
    payload = answer.json()
    assert payload["metadata"] == {"billableCharacterCount": len("first") + len("second text")}
    first, second = (p["embeddings"] for p in payload["predictions"])
    assert len(first["values"]) == len(second["values"]) == 16
    assert first["values"] != second["values"]
    assert first["statistics"] == {"token_count": 2, "truncated": False}
    # A generative model has no predict.
    generative = httpx.post(f"{base_url}{VERTEX}:predict", json=body, headers=VERTEX_AUTH)
    assert generative.status_code == 404


def test_vertex_jobs_are_kept_per_location_and_unknown_ones_get_googles_404(
    base_url: str,
) -> None:
    created = httpx.post(
        f"{base_url}{VERTEX_PARENT}/batchPredictionJobs",
        json={"displayName": "nightly", "model": "publishers/google/models/gemini-2.5-flash"},
        headers=VERTEX_AUTH,
    )
    assert created.status_code == 200, created.text
    job = created.json()
    assert job["name"].startswith("projects/p/locations/us-central1/batchPredictionJobs/")
    assert (job["displayName"], job["state"]) == ("nightly", "JOB_STATE_PENDING")
    fetched = httpx.get(f"{base_url}/v1beta1/{job['name']}", headers=VERTEX_AUTH)
    assert fetched.json() == job
    listed = httpx.get(f"{base_url}{VERTEX_PARENT}/batchPredictionJobs", headers=VERTEX_AUTH)
    assert job in listed.json()["batchPredictionJobs"]
    elsewhere = httpx.get(
        f"{base_url}/v1beta1/projects/p/locations/europe-west4/batchPredictionJobs",
        headers=VERTEX_AUTH,
    )
    assert elsewhere.json() == {}
    for family, kind in [("tuningJobs", "TuningJob"), ("endpoints", "Endpoint")]:
        missing = httpx.get(f"{base_url}{VERTEX_PARENT}/{family}/404", headers=VERTEX_AUTH)
        assert missing.json() == {
            "error": {"code": 404, "message": f"The {kind} does not exist.", "status": "NOT_FOUND"}
        }
    # Express mode (no project) serves them too; the Developer API has no such collection.
    express = httpx.get(f"{base_url}/v1beta1/tuningJobs", headers={"x-goog-api-key": KEY})
    assert express.status_code == 200 and express.json() == {}
    developer = httpx.get(f"{base_url}/v1beta/tuningJobs", headers={"x-goog-api-key": KEY})
    assert developer.status_code == 404


@pytest.mark.parametrize(
    ("kind", "finishes", "done"),
    [
        (None, True, True),
        ("done_without_finish", False, True),
        ("finish_without_done", True, False),
    ],
)
def test_the_compatible_streams_faults_leave_out_the_finish_or_the_done(
    kind: str | None, finishes: bool, done: bool
) -> None:
    app = create_simulator_app()
    with serve(app) as url:
        if kind is not None:
            app.openai.add_stream_fault("gemini-2.5-flash", kind)
        body = {
            "model": "gemini-2.5-flash",
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
        raw = httpx.post(
            f"{url}/v1beta/openai/chat/completions",
            json=body,
            headers={"authorization": "Bearer k"},
        ).text
        again = httpx.post(
            f"{url}/v1beta/openai/chat/completions",
            json=body,
            headers={"authorization": "Bearer k"},
        ).text
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e]
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    assert len(chunks) > 1 and "".join(c["choices"][0]["delta"]["content"] for c in chunks)
    assert any(c["choices"][0]["finish_reason"] for c in chunks) is finishes
    assert (events[-1] == "[DONE]") is done and events.count("[DONE]") == int(done)
    assert again.endswith("data: [DONE]\n\n")  # used once
    with pytest.raises(ValueError, match="not a stream fault"):
        app.openai.add_stream_fault("gemini-2.5-flash", "cut")
