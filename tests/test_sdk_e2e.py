"""End to end: the official google-genai SDK -> the proxy -> the simulator, over loopback HTTP.

Every call is also made directly against the simulator, so each test asserts that the proxy
changes nothing an application can see.
"""

from __future__ import annotations

import functools
import io

import pytest
from google import genai
from google.genai import types

from proxy.simulator.client import SimulatorControl

VERSIONS = ["v1", "v1beta"]


@functools.cache
def sdk(base_url: str, version: str = "v1beta", key: str = "test-key") -> genai.Client:
    """A client per address, kept for the session: the SDK closes its connection pool when
    the ``Client`` object is collected, so a throwaway one cannot be chained from."""
    return genai.Client(
        api_key=key, http_options=types.HttpOptions(base_url=base_url, api_version=version)
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_generate_content_is_unchanged_by_the_proxy(
    proxy_url: str, simulator_url: str, simulator: SimulatorControl, version: str
) -> None:
    via_proxy = sdk(proxy_url, version).models.generate_content(
        model="gemini-2.5-flash", contents="Tell me about circuit breakers"
    )
    direct = sdk(simulator_url, version).models.generate_content(
        model="gemini-2.5-flash", contents="Tell me about circuit breakers"
    )
    assert via_proxy.text and via_proxy.text == direct.text
    assert via_proxy.response_id == direct.response_id
    assert via_proxy.model_dump(exclude={"sdk_http_response"}) == direct.model_dump(
        exclude={"sdk_http_response"}
    )
    assert via_proxy.sdk_http_response is not None
    assert via_proxy.sdk_http_response.headers is not None
    assert via_proxy.sdk_http_response.headers["x-gemini-breaker-model"] == "gemini-2.5-flash"
    seen = simulator.attempts()
    assert [(a["model"], a["api_version"]) for a in seen] == [("gemini-2.5-flash", version)] * 2


@pytest.mark.parametrize("version", VERSIONS)
def test_stream_arrives_whole_and_in_order(
    proxy_url: str, simulator_url: str, simulator: SimulatorControl, version: str
) -> None:
    prompt = "Write a few words about failover chains please"
    chunks = list(
        sdk(proxy_url, version).models.generate_content_stream(
            model="gemini-2.5-flash", contents=prompt
        )
    )
    direct = list(
        sdk(simulator_url, version).models.generate_content_stream(
            model="gemini-2.5-flash", contents=prompt
        )
    )
    assert len(chunks) > 1
    assert [c.text for c in chunks] == [c.text for c in direct]
    assert chunks[-1].candidates is not None
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    unary = sdk(proxy_url, version).models.generate_content(
        model="gemini-2.5-flash", contents=prompt
    )
    assert "".join(c.text or "" for c in chunks) == unary.text


def test_requested_model_is_served_by_the_first_model_of_its_route(
    proxy_url: str, simulator: SimulatorControl
) -> None:
    response = sdk(proxy_url).models.generate_content(model="gemini-2.5-pro", contents="hi")
    assert response.model_version == "gemini-2.5-pro"
    assert response.sdk_http_response is not None
    assert response.sdk_http_response.headers is not None
    assert response.sdk_http_response.headers["x-gemini-breaker-model"] == "gemini-2.5-pro"


@pytest.mark.anyio
async def test_async_client_generate_stream_and_count(
    proxy_url: str, simulator: SimulatorControl
) -> None:
    owner = genai.Client(
        api_key="k", http_options=types.HttpOptions(base_url=proxy_url, api_version="v1beta")
    )
    client = owner.aio
    response = await client.models.generate_content(
        model="gemini-2.5-flash-lite", contents="async hello"
    )
    assert response.text
    pieces = [
        chunk.text or ""
        async for chunk in await client.models.generate_content_stream(
            model="gemini-2.5-flash-lite", contents="async hello"
        )
    ]
    assert "".join(pieces) == response.text
    tokens = await client.models.count_tokens(model="gemini-2.5-flash-lite", contents="async hello")
    assert tokens.total_tokens == response.usage_metadata.prompt_token_count  # type: ignore[union-attr]
    await client.aclose()


@pytest.mark.parametrize("version", VERSIONS)
def test_count_tokens_and_embeddings(
    proxy_url: str, simulator_url: str, simulator: SimulatorControl, version: str
) -> None:
    client, direct = sdk(proxy_url, version), sdk(simulator_url, version)
    count = client.models.count_tokens(model="gemini-2.5-flash", contents="count these tokens")
    assert count.total_tokens and count.total_tokens > 0
    assert (
        count.total_tokens
        == direct.models.count_tokens(
            model="gemini-2.5-flash", contents="count these tokens"
        ).total_tokens
    )
    embedded = client.models.embed_content(
        model="gemini-embedding-001",
        contents=["first text", "second text", "third"],
        config=types.EmbedContentConfig(output_dimensionality=16),
    )
    assert embedded.embeddings is not None and len(embedded.embeddings) == 3
    assert all(len(e.values or []) == 16 for e in embedded.embeddings)
    again = direct.models.embed_content(
        model="gemini-embedding-001",
        contents=["first text", "second text", "third"],
        config=types.EmbedContentConfig(output_dimensionality=16),
    )
    assert again.embeddings is not None
    assert [e.values for e in embedded.embeddings] == [e.values for e in again.embeddings]


@pytest.mark.parametrize("version", VERSIONS)
def test_models_list_and_get(proxy_url: str, simulator: SimulatorControl, version: str) -> None:
    client = sdk(proxy_url, version)
    names = [m.name for m in client.models.list(config={"page_size": 2})]
    assert "models/gemini-2.5-pro" in names and "models/gemini-2.5-flash" in names
    assert len(names) == len(set(names)) > 2  # several pages, nothing repeated
    model = client.models.get(model="gemini-2.5-flash")
    assert model.name == "models/gemini-2.5-flash"
    assert model.input_token_limit == 1_048_576


def test_unknown_model_is_googles_404(proxy_url: str, simulator: SimulatorControl) -> None:
    from google.genai import errors

    with pytest.raises(errors.ClientError) as caught:
        sdk(proxy_url).models.generate_content(model="gemini-0-nonexistent", contents="hi")
    assert caught.value.code == 404
    assert caught.value.status == "NOT_FOUND"
    assert "gemini-0-nonexistent" in (caught.value.message or "")


@pytest.mark.parametrize("version", VERSIONS)
def test_file_upload_goes_through_the_proxy(
    proxy_url: str, simulator: SimulatorControl, version: str
) -> None:
    client = sdk(proxy_url, version)
    data = b"hello from the sidecar\n" * 100
    uploaded = client.files.upload(
        file=io.BytesIO(data), config=types.UploadFileConfig(mime_type="text/plain")
    )
    assert uploaded.size_bytes == len(data)
    assert uploaded.name is not None
    fetched = client.files.get(name=uploaded.name)
    assert fetched.name == uploaded.name
    assert uploaded.name in [f.name for f in client.files.list()]
    client.files.delete(name=uploaded.name)
    uploads = [a for a in simulator.attempts(include_body=True) if "upload_id=" in a["query"]]
    assert len(uploads) == 1
    assert simulator.body_of(uploads[0]) == data


def test_mixed_key_spellings_and_urlsafe_base64_arrive_byte_identical(
    proxy_url: str, simulator_url: str, simulator: SimulatorControl
) -> None:
    config = types.GenerateContentConfig(
        response_mime_type="application/json",
        response_schema={
            "type": "OBJECT",
            "properties": {"a": {"type": "STRING"}, "b": {"type": "INTEGER"}},
            "property_ordering": ["a", "b"],
        },
        thinking_config=types.ThinkingConfig(thinking_budget=0),
    )
    contents = [
        types.Part.from_bytes(data=b"\xfb\xff\xfe\x00binary", mime_type="image/png"),
        types.Part.from_uri(file_uri="https://example.com/f.pdf", mime_type="application/pdf"),
        "describe both",
    ]
    sdk(proxy_url).models.generate_content(
        model="gemini-2.5-flash", contents=contents, config=config
    )
    sdk(simulator_url).models.generate_content(
        model="gemini-2.5-flash", contents=contents, config=config
    )
    via_proxy, direct = (simulator.body_of(a) for a in simulator.attempts(include_body=True))
    assert via_proxy == direct
    for spelling in (b'"mime_type"', b'"file_uri"', b'"thinking_budget"', b'"property_ordering"'):
        assert spelling in via_proxy
    assert b'"-__-' in via_proxy  # URL-safe base64 of fb ff fe, untouched


def test_other_resources_pass_through(proxy_url: str, simulator: SimulatorControl) -> None:
    client = sdk(proxy_url)
    cache = client.caches.create(
        model="gemini-2.5-flash",
        config=types.CreateCachedContentConfig(
            contents=["a long document " * 50], ttl="300s", display_name="doc"
        ),
    )
    assert cache.name is not None
    assert client.caches.get(name=cache.name).display_name == "doc"
    client.caches.delete(name=cache.name)
    assert list(client.models.list(config={"query_base": False})) == []  # tunedModels
    paths = [a["path"] for a in simulator.attempts()]
    assert paths[0] == "/v1beta/cachedContents" and paths[-1] == "/v1beta/tunedModels"
