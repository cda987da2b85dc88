"""Vertex AI through the proxy: the real google-genai SDK in Vertex mode, the real proxy, and
one simulator per location standing for that region's origin. Targets are ``model@location``:
a regional outage moves the route to the same model in the next region before a weaker model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google.genai import Client, errors, types
from google.oauth2.credentials import Credentials

from proxy.app import create_app
from proxy.simulator import SimulatorConfig, create_simulator_app
from proxy.simulator.attempts import key_digest
from proxy.simulator.client import SimulatorControl

from .conftest import calls, proxy_settings
from .support import serve

PRO, FLASH = "gemini-2.5-pro", "gemini-2.5-flash"
US, EU = "us-central1", "europe-west4"
PROJECT = "test-project"
DEVELOPER = "developer-api"  # the proxy's Developer API origin, which Vertex calls never reach
TOKEN = "client-oauth-token"
BREAKER = {
    "minimum_calls": 4,
    "failure_rate": 0.5,
    "burst_failures": 3,
    "burst_seconds": 5,
    "open_seconds": 30,
    "half_open_probes": 2,
}


@pytest.fixture(scope="module")
def regions() -> Iterator[dict[str, str]]:
    """One simulator per location (plus one for the global endpoint and one per
    multi-region)."""
    with (
        serve(create_simulator_app(SimulatorConfig())) as us,
        serve(create_simulator_app(SimulatorConfig())) as eu,
        serve(create_simulator_app(SimulatorConfig())) as world,
        serve(create_simulator_app(SimulatorConfig())) as developer,
        serve(create_simulator_app(SimulatorConfig())) as multi_us,
        serve(create_simulator_app(SimulatorConfig())) as multi_eu,
    ):
        yield {
            US: us,
            EU: eu,
            "global": world,
            DEVELOPER: developer,
            # The multi-regions, whose origins are Google's own unless configured.
            "us": multi_us,
            "eu": multi_eu,
        }


@pytest.fixture
def sims(regions: dict[str, str]) -> Iterator[dict[str, SimulatorControl]]:
    controls = {location: SimulatorControl(url) for location, url in regions.items()}
    for control in controls.values():
        control.clear_all()
    yield controls
    for control in controls.values():
        control.clear_faults()
        control.clear_quotas()
        control.close()


@pytest.fixture
def proxy(regions: dict[str, str]) -> Iterator[str]:
    """A fresh replica (fresh breakers) with a Vertex route over two regions, then a model."""
    with serve(create_app(vertex_settings(regions))) as url:
        yield url


@pytest.fixture
def proxy_moving_on_429(regions: dict[str, str]) -> Iterator[str]:
    """As ``proxy``, with a route whose 429s on shared capacity move to the next region."""
    chain = [f"{PRO}@{US}", f"{PRO}@{EU}", f"{FLASH}@{US}"]
    routes = {PRO: {"chain": chain, "on_429": "next_location"}}
    # Vertex's 429s state no delay: the cooldown is the default one, long enough here that
    # every request of a test meets it.
    quota = {"max_retry_wait": 0, "default_cooldown": 120}
    with serve(create_app(vertex_settings(regions, routes, quota=quota))) as url:
        yield url


def vertex_settings(
    regions: dict[str, str], routes: dict[str, Any] | None = None, **sections: Any
) -> Any:
    return proxy_settings(
        regions[DEVELOPER],
        vertex={"project": PROJECT, "location": EU, "origins": regions},
        routes=routes or {PRO: [f"{PRO}@{US}", f"{PRO}@{EU}", f"{FLASH}@{US}"]},
        model_defaults={
            "max_attempts": 2,
            "backoff_initial": 0.01,
            "backoff_max": 0.02,
            "first_event_timeout": 2.0,
            "unary_timeout": 2.0,
            "breaker": BREAKER,
        },
        redis={"flush_interval": 0.02},
        # The Developer API key is never sent with (nor in place of) a Vertex request's token.
        upstream={"api_key": "developer-api-key"},
        **sections,
    )


def vertex(proxy: str, location: str = US, **options: Any) -> Client:
    return Client(
        vertexai=True,
        project=PROJECT,
        location=location,
        credentials=Credentials(token=TOKEN),
        http_options=types.HttpOptions(base_url=proxy, **options),
    )


def served_by(response: Any) -> str:
    return str(response.sdk_http_response.headers["x-gemini-breaker-model"])


def test_full_form_is_served_in_the_requested_region_with_the_client_token(
    proxy: str, sims: dict[str, SimulatorControl]
) -> None:
    client = vertex(proxy)
    response = client.models.generate_content(model=PRO, contents="hello")
    assert response.model_version == PRO
    assert served_by(response) == f"{PRO}@{US}"
    [seen] = calls(sims[US])
    assert seen["path"] == (
        f"/v1beta1/projects/{PROJECT}/locations/{US}/publishers/google/models/{PRO}:generateContent"
    )
    assert seen["key_digest"] == key_digest(TOKEN)
    assert calls(sims[EU]) == []


def test_stream_and_async_calls_pass_through(proxy: str, sims: dict[str, SimulatorControl]) -> None:
    client = vertex(proxy)
    text = "".join(
        chunk.text or ""
        for chunk in client.models.generate_content_stream(model=PRO, contents="hi")
    )
    assert "simulated answer" in text

    async def unary() -> str:
        response = await client.aio.models.generate_content(model=PRO, contents="hi")
        return response.text or ""

    assert "simulated answer" in asyncio.run(unary())
    paths = [seen["path"] for seen in calls(sims[US])]
    assert paths[0].endswith(
        f"/locations/{US}/publishers/google/models/{PRO}:streamGenerateContent"
    )
    assert len(paths) == 2


def test_a_model_without_a_route_is_its_own_target_in_its_region(
    proxy: str, sims: dict[str, SimulatorControl]
) -> None:
    client = vertex(proxy, EU)
    response = client.models.generate_content(model=FLASH, contents="hello")
    assert served_by(response) == f"{FLASH}@{EU}"
    assert [seen["model"] for seen in calls(sims[EU])] == [FLASH]
    assert calls(sims[US]) == []


def test_a_regional_outage_fails_over_to_the_same_model_in_the_next_region(
    proxy: str, sims: dict[str, SimulatorControl]
) -> None:
    sims[US].set_faults(PRO, [{"kind": "error", "status": 503}])
    client = vertex(proxy)
    for _ in range(6):
        response = client.models.generate_content(model=PRO, contents="hello")
        assert response.model_version == PRO  # no quality drop
        assert served_by(response) == f"{PRO}@{EU}"
    [seen, *_] = calls(sims[EU])
    assert f"/locations/{EU}/publishers/google/models/{PRO}:" in seen["path"]
    assert seen["key_digest"] == key_digest(TOKEN)
    # The breaker of pro@us-central1 opened: the region is no longer tried at all.
    tried_us = len(calls(sims[US]))
    client.models.generate_content(model=PRO, contents="hello")
    assert len(calls(sims[US])) == tried_us
    breakers = httpx.get(f"{proxy}/admin/breakers").json()
    assert f"{PRO}@{US}" in str(breakers)
    metrics = httpx.get(f"{proxy}/metrics").text
    assert f'model="{PRO}@{EU}"' in metrics and f'model="{PRO}@{US}"' in metrics
    # Nothing of a Vertex request (its token included) reached the Developer API's origin,
    # not even a look-up of the chain's models' limits.
    assert sims[DEVELOPER].attempts() == []


def test_when_every_region_of_the_model_is_out_the_next_model_serves(
    proxy: str, sims: dict[str, SimulatorControl]
) -> None:
    for location in (US, EU):
        sims[location].set_faults(PRO, [{"kind": "error", "status": 500}])
    client = vertex(proxy)
    response = client.models.generate_content(model=PRO, contents="hello")
    assert response.model_version == FLASH
    assert served_by(response) == f"{FLASH}@{US}"


def test_short_form_gets_the_configured_project_and_location(
    proxy: str, sims: dict[str, SimulatorControl]
) -> None:
    client = Client(
        vertexai=True,
        credentials=Credentials(token=TOKEN),
        http_options=types.HttpOptions(
            base_url=proxy,
            base_url_resource_scope=types.ResourceScope.COLLECTION,
            # In this form the SDK sends no token of its own.
            headers={"Authorization": f"Bearer {TOKEN}"},
        ),
    )
    response = client.models.generate_content(model=FLASH, contents="hello")
    assert served_by(response) == f"{FLASH}@{EU}"
    [seen] = calls(sims[EU])
    assert seen["path"].startswith(f"/v1beta1/projects/{PROJECT}/locations/{EU}/publishers/")


def test_express_mode_goes_to_the_global_endpoint_with_the_key(
    proxy: str, sims: dict[str, SimulatorControl]
) -> None:
    client = Client(
        vertexai=True, api_key="express-key", http_options=types.HttpOptions(base_url=proxy)
    )
    response = client.models.generate_content(model=FLASH, contents="hello")
    assert served_by(response) == f"{FLASH}@global"
    [seen] = calls(sims["global"])
    assert seen["path"] == f"/v1beta1/publishers/google/models/{FLASH}:generateContent"
    assert seen["key_digest"] == key_digest("express-key")


def test_other_vertex_resources_pass_through_to_their_region(
    proxy: str, sims: dict[str, SimulatorControl]
) -> None:
    answer = httpx.get(
        f"{proxy}/v1beta1/projects/{PROJECT}/locations/{EU}/cachedContents",
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    assert answer.status_code == 200, answer.text
    [seen] = sims[EU].attempts()
    assert seen["path"] == f"/v1beta1/projects/{PROJECT}/locations/{EU}/cachedContents"


def test_a_429_is_backpressure_by_default(proxy: str, sims: dict[str, SimulatorControl]) -> None:
    sims[US].set_faults(PRO, [{"kind": "error", "status": 429}])
    client = vertex(proxy)
    with pytest.raises(errors.ClientError) as raised:
        client.models.generate_content(model=PRO, contents="hello")
    assert raised.value.code == 429
    assert calls(sims[EU]) == []


def test_a_shared_capacity_429_moves_to_the_next_region_when_the_route_allows(
    proxy_moving_on_429: str, sims: dict[str, SimulatorControl]
) -> None:
    sims[US].set_faults(PRO, [{"kind": "error", "status": 429, "times": 1}])
    client = vertex(proxy_moving_on_429)
    response = client.models.generate_content(model=PRO, contents="hello")
    assert served_by(response) == f"{PRO}@{EU}"
    assert response.model_version == PRO


def test_requests_during_a_shared_capacity_cooldown_go_to_the_next_region(
    proxy_moving_on_429: str, sims: dict[str, SimulatorControl]
) -> None:
    sims[US].set_faults(PRO, [{"kind": "error", "status": 429, "times": 1}])
    client = vertex(proxy_moving_on_429)
    for n in range(6):
        response = client.models.generate_content(model=PRO, contents=f"request {n}")
        assert served_by(response) == f"{PRO}@{EU}"
        assert response.model_version == PRO
    streamed = list(client.models.generate_content_stream(model=PRO, contents="a stream"))
    assert "simulated answer" in "".join(chunk.text or "" for chunk in streamed)
    # Only the first request met the 429 upstream; the others skipped the cooling region
    # instead of being shed, and none went to the weaker model.
    assert len(calls(sims[US])) == 1
    assert [seen["api_method"] for seen in calls(sims[EU], PRO)] == ["generateContent"] * 6 + [
        "streamGenerateContent"
    ]
    metrics = httpx.get(f"{proxy_moving_on_429}/metrics").text
    moved = [
        line
        for line in metrics.splitlines()
        if line.startswith("gemini_breaker_failover_events_total")
        and 'reason="rate_limited"' in line
        and f'from_model="{PRO}@{US}"' in line
        and f'route="{PRO}@{US}"' in line
        and f'to_model="{PRO}@{EU}"' in line
    ]
    assert [float(line.rsplit(" ", 1)[1]) for line in moved] == [7.0]
    # A 429 is no failure of the region: its breaker stays closed.
    breakers = httpx.get(f"{proxy_moving_on_429}/admin/breakers").json()["breakers"]
    assert breakers[f"{PRO}@{US}"]["state"] == "closed"


def test_a_shared_capacity_429_with_no_further_region_is_shed_not_sent_to_a_weaker_model(
    proxy_moving_on_429: str, sims: dict[str, SimulatorControl]
) -> None:
    for location in (US, EU):
        sims[location].set_faults(PRO, [{"kind": "error", "status": 429, "times": 1}])
    client = vertex(proxy_moving_on_429)
    for _ in range(3):
        with pytest.raises(errors.ClientError) as raised:
            client.models.generate_content(model=PRO, contents="hello")
        assert raised.value.code == 429
    # The first request met both 429s; the next ones were shed during both cooldowns.
    assert len(calls(sims[US], PRO)) == 1
    assert len(calls(sims[EU], PRO)) == 1
    assert calls(sims[US], FLASH) == []


def test_a_cooldown_never_moves_past_an_unavailable_region_to_a_weaker_model(
    proxy_moving_on_429: str, sims: dict[str, SimulatorControl]
) -> None:
    sims[US].set_faults(PRO, [{"kind": "error", "status": 429, "times": 1}])
    client = vertex(proxy_moving_on_429)
    assert served_by(client.models.generate_content(model=PRO, contents="one")) == f"{PRO}@{EU}"
    forced = httpx.post(
        f"{proxy_moving_on_429}/admin/breakers/{PRO}@{EU}/force_open", json={"reason": "drill"}
    )
    assert forced.status_code == 200, forced.text
    with pytest.raises(errors.ClientError) as raised:
        client.models.generate_content(model=PRO, contents="two")
    assert raised.value.code == 429  # the cooldown's answer, not the weaker model's
    assert calls(sims[US], FLASH) == []
    assert len(calls(sims[US], PRO)) == 1


def test_a_project_quota_429_stays_backpressure_even_when_the_route_allows_moving(
    proxy_moving_on_429: str, sims: dict[str, SimulatorControl]
) -> None:
    sims[US].set_quota(PRO, requests_per_minute=1)
    client = vertex(proxy_moving_on_429)
    client.models.generate_content(model=PRO, contents="within the quota")
    with pytest.raises(errors.ClientError) as raised:
        client.models.generate_content(model=PRO, contents="over the quota")
    assert raised.value.code == 429
    # During the quota's cooldown the proxy sheds the project's requests itself: they neither
    # reach the region nor move to another one.
    for _ in range(3):
        with pytest.raises(errors.ClientError) as raised:
            client.models.generate_content(model=PRO, contents="still over the quota")
        assert raised.value.code == 429
    assert len(calls(sims[US])) == 2
    assert calls(sims[EU]) == []


def test_a_stream_cut_in_one_region_is_continued_in_the_next(
    proxy: str, regions: dict[str, str], sims: dict[str, SimulatorControl]
) -> None:
    direct = Client(
        vertexai=True,
        project=PROJECT,
        location=EU,
        credentials=Credentials(token=TOKEN),
        http_options=types.HttpOptions(base_url=regions[EU]),
    )
    whole = direct.models.generate_content(model=PRO, contents="a long story").text
    sims[EU].clear_attempts()
    sims[US].set_faults(PRO, [{"kind": "cut", "after_chunks": 2}])
    client = vertex(proxy)
    chunks = list(client.models.generate_content_stream(model=PRO, contents="a long story"))
    # One whole answer: the first region's part, then the continuation from the next region.
    assert "".join(chunk.text or "" for chunk in chunks) == whole
    [continued] = calls(sims[EU])
    assert continued["path"].endswith(
        f"/locations/{EU}/publishers/google/models/{PRO}:streamGenerateContent"
    )


@pytest.mark.parametrize("version", ["v1beta1", "v1"])
@pytest.mark.parametrize("form", ["full", "short", "express"])
def test_every_form_serves_sync_async_and_stream_calls(
    proxy: str, sims: dict[str, SimulatorControl], form: str, version: str
) -> None:
    # The SDK's default version is v1beta1; naming it explicitly sends the same requests.
    options = {"api_version": version}
    if form == "full":
        client, location = vertex(proxy, EU, **options), EU
    elif form == "short":
        # A collection-scoped base URL carries the version itself (the SDK ignores
        # api_version there); without one the proxy sends v1beta1.
        base = proxy if version == "v1beta1" else f"{proxy}/{version}"
        client, location = short_form(base, **options), EU
    else:
        client = Client(
            vertexai=True,
            api_key="express-key",
            http_options=types.HttpOptions(base_url=proxy, **options),
        )
        location = "global"

    async def unary() -> str:
        return (await client.aio.models.generate_content(model=FLASH, contents="hi")).text or ""

    async def stream() -> str:
        chunks = await client.aio.models.generate_content_stream(model=FLASH, contents="hi")
        return "".join([chunk.text or "" async for chunk in chunks])

    assert "simulated answer" in (
        client.models.generate_content(model=FLASH, contents="hi").text or ""
    )
    assert "simulated answer" in asyncio.run(unary())
    streamed = client.models.generate_content_stream(model=FLASH, contents="hi")
    assert "simulated answer" in "".join(chunk.text or "" for chunk in streamed)
    assert "simulated answer" in asyncio.run(stream())
    seen = calls(sims[location])
    assert [call["api_method"] for call in seen] == [
        "generateContent",
        "generateContent",
        "streamGenerateContent",
        "streamGenerateContent",
    ]
    where = "" if form == "express" else f"projects/{PROJECT}/locations/{EU}/"
    for call in seen:
        assert call["path"].startswith(f"/{version}/{where}publishers/google/models/{FLASH}:")
    assert all(calls(sims[other]) == [] for other in (US, EU, "global") if other != location)


def short_form(proxy: str, **options: Any) -> Client:
    return Client(
        vertexai=True,
        credentials=Credentials(token=TOKEN),
        http_options=types.HttpOptions(
            base_url=proxy,
            base_url_resource_scope=types.ResourceScope.COLLECTION,
            # In this form the SDK sends no token of its own.
            headers={"Authorization": f"Bearer {TOKEN}"},
            **options,
        ),
    )


def test_an_unknown_model_gets_vertexs_404(proxy: str, sims: dict[str, SimulatorControl]) -> None:
    client = vertex(proxy)
    with pytest.raises(errors.ClientError) as raised:
        client.models.generate_content(model="gemini-0-nonexistent", contents="hello")
    assert raised.value.code == 404
    assert raised.value.message is not None
    assert raised.value.message.startswith(
        f"Publisher Model `projects/{PROJECT}/locations/{US}/publishers/google/models/"
        "gemini-0-nonexistent` was not found"
    )


EMBEDDING, OLD_EMBEDDING = "gemini-embedding-001", "text-embedding-004"
TEXT = "hello there, world"  # 18 characters: 5 tokens at the simulator's four a token


def check_count(client: Client) -> str:
    response = client.models.count_tokens(model=PRO, contents=TEXT)
    assert response.total_tokens == 5
    return f"{PRO}:countTokens"


def check_compute(client: Client) -> str:
    response = client.models.compute_tokens(model=PRO, contents=TEXT)
    [info] = response.tokens_info or []
    assert info.role == "user"
    assert b"".join(info.tokens or []) == TEXT.encode()
    assert info.token_ids is not None and len(info.token_ids) == 5
    return f"{PRO}:computeTokens"


def check_embed(client: Client) -> str:
    config = types.EmbedContentConfig(output_dimensionality=8)
    response = client.models.embed_content(model=EMBEDDING, contents=TEXT, config=config)
    [embedding] = response.embeddings or []
    assert embedding.values is not None and len(embedding.values) == 8
    return f"{EMBEDDING}:embedContent"


def check_predict(client: Client) -> str:
    response = client.models.embed_content(model=OLD_EMBEDDING, contents=[TEXT, "another"])
    first, second = response.embeddings or []
    assert first.values is not None and second.values is not None
    assert len(first.values) == 768 and first.values != second.values
    assert first.statistics is not None and first.statistics.token_count == 5
    assert response.metadata is not None
    assert response.metadata.billable_character_count == len(TEXT) + len("another")
    return f"{OLD_EMBEDDING}:predict"


@pytest.mark.parametrize("check", [check_count, check_compute, check_embed, check_predict])
def test_every_model_method_is_served_in_the_requested_region(
    proxy: str, sims: dict[str, SimulatorControl], check: Any
) -> None:
    model_and_method = check(vertex(proxy))
    [seen] = calls(sims[US])
    assert seen["path"] == (
        f"/v1beta1/projects/{PROJECT}/locations/{US}/publishers/google/models/{model_and_method}"
    )
    assert seen["status"] == 200 and seen["key_digest"] == key_digest(TOKEN)
    assert calls(sims[EU]) == [] and calls(sims["global"]) == []


def test_every_model_method_is_served_to_the_async_client(
    proxy: str, sims: dict[str, SimulatorControl]
) -> None:
    # Models without a route: each is its own target in the client's region.
    client = vertex(proxy, EU)

    async def run() -> None:
        counted = await client.aio.models.count_tokens(model=FLASH, contents=TEXT)
        assert counted.total_tokens == 5
        computed = await client.aio.models.compute_tokens(model=FLASH, contents=TEXT)
        assert b"".join((computed.tokens_info or [])[0].tokens or []) == TEXT.encode()
        embedded = await client.aio.models.embed_content(model=EMBEDDING, contents=TEXT)
        assert len((embedded.embeddings or [])[0].values or []) == 768
        predicted = await client.aio.models.embed_content(model=OLD_EMBEDDING, contents=TEXT)
        assert len((predicted.embeddings or [])[0].values or []) == 768

    asyncio.run(run())
    assert [seen["api_method"] for seen in calls(sims[EU])] == [
        "countTokens",
        "computeTokens",
        "embedContent",
        "predict",
    ]
    assert calls(sims[US]) == []


@pytest.fixture
def proxy_routing_embeddings(regions: dict[str, str]) -> Iterator[str]:
    """As ``proxy``, with routes over both regions for the embedding models too."""
    routes = {
        PRO: [f"{PRO}@{US}", f"{PRO}@{EU}", f"{FLASH}@{US}"],
        EMBEDDING: [f"{EMBEDDING}@{US}", f"{EMBEDDING}@{EU}"],
        OLD_EMBEDDING: [f"{OLD_EMBEDDING}@{US}", f"{OLD_EMBEDDING}@{EU}"],
    }
    with serve(create_app(vertex_settings(regions, routes))) as url:
        yield url


@pytest.mark.parametrize("check", [check_count, check_embed])
def test_count_and_embed_calls_fail_over_to_the_next_region(
    proxy_routing_embeddings: str, sims: dict[str, SimulatorControl], check: Any
) -> None:
    for model in (PRO, EMBEDDING):
        sims[US].set_faults(model, [{"kind": "error", "status": 503}])
    model_and_method = check(vertex(proxy_routing_embeddings))
    assert [seen["status"] for seen in calls(sims[US])] == [503, 503]  # max_attempts
    [seen] = calls(sims[EU])
    assert seen["path"].endswith(f"/locations/{EU}/publishers/google/models/{model_and_method}")
    assert seen["status"] == 200


@pytest.mark.parametrize("check", [check_compute, check_predict])
def test_compute_tokens_and_predict_go_once_to_the_named_region(
    proxy_routing_embeddings: str, sims: dict[str, SimulatorControl], check: Any
) -> None:
    # No route applies to them (as to any call other than generate, count and embed): an
    # outage of the region is the client's to see, the next region is never tried.
    for model in (PRO, OLD_EMBEDDING):
        sims[US].set_faults(model, [{"kind": "error", "status": 503}])
    with pytest.raises(errors.ServerError) as raised:
        check(vertex(proxy_routing_embeddings))
    assert raised.value.code == 503
    assert len(calls(sims[US])) == 1
    assert calls(sims[EU]) == []


def attempts_at(sims: dict[str, SimulatorControl]) -> dict[str, list[tuple[str, str]]]:
    """Every location's attempts, as (HTTP method, path), leaving out the empty ones."""
    seen = {
        location: [(attempt["method"], attempt["path"]) for attempt in control.attempts()]
        for location, control in sims.items()
    }
    return {location: paths for location, paths in seen.items() if paths}


def test_caches_and_batch_jobs_pass_through_to_the_origin_of_their_location(
    proxy: str, sims: dict[str, SimulatorControl]
) -> None:
    client = vertex(proxy, US)
    cache = client.caches.create(
        model=FLASH, config=types.CreateCachedContentConfig(contents=["a long document"] * 4)
    )
    assert cache.name is not None and cache.model is not None
    assert client.caches.get(name=cache.name).name == cache.name
    assert cache.name in [listed.name for listed in client.caches.list()]
    in_eu = vertex(proxy, EU)
    job = in_eu.batches.create(
        model=FLASH,
        src="gs://bucket/requests.jsonl",
        config=types.CreateBatchJobConfig(dest="gs://bucket/answers"),
    )
    assert job.name is not None and job.state == types.JobState.JOB_STATE_PENDING
    assert job.name.startswith(f"projects/{PROJECT}/locations/{EU}/batchPredictionJobs/")
    assert in_eu.batches.get(name=job.name).name == job.name
    us = f"/v1beta1/projects/{PROJECT}/locations/{US}"
    eu = f"/v1beta1/projects/{PROJECT}/locations/{EU}"
    cache_id = cache.name.rpartition("/")[2]
    assert attempts_at(sims) == {
        US: [
            ("POST", f"{us}/cachedContents"),
            ("GET", f"{us}/cachedContents/{cache_id}"),
            ("GET", f"{us}/cachedContents"),
        ],
        EU: [("POST", f"{eu}/batchPredictionJobs"), ("GET", f"/v1beta1/{job.name}")],
    }


@pytest.mark.parametrize(
    ("family", "kind"), [("tuningJobs", "TuningJob"), ("endpoints", "Endpoint")]
)
def test_tuning_jobs_and_endpoints_pass_through_unchanged(
    proxy: str, sims: dict[str, SimulatorControl], family: str, kind: str
) -> None:
    auth = {"authorization": f"Bearer {TOKEN}"}
    collection = f"/v1/projects/{PROJECT}/locations/{EU}/{family}"
    listed = httpx.get(f"{proxy}{collection}?pageSize=5", headers=auth)
    assert listed.status_code == 200, listed.text
    assert listed.json() == {}
    # An unknown id is the origin's own 404, not the proxy's.
    missing = httpx.get(f"{proxy}{collection}/4242", headers=auth)
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == f"The {kind} does not exist."
    assert attempts_at(sims) == {EU: [("GET", collection), ("GET", f"{collection}/4242")]}
    [first, _] = sims[EU].attempts()
    assert first["query"] == "pageSize=5" and first["key_digest"] == key_digest(TOKEN)


def test_express_mode_collections_go_to_the_global_endpoint(
    proxy: str, sims: dict[str, SimulatorControl]
) -> None:
    key = {"x-goog-api-key": "express-key"}
    cached = httpx.get(f"{proxy}/v1beta1/cachedContents", headers=key)
    assert cached.status_code == 200, cached.text
    job = httpx.post(
        f"{proxy}/v1beta1/batchPredictionJobs",
        json={"displayName": "nightly", "model": f"publishers/google/models/{FLASH}"},
        headers=key,
    )
    assert job.status_code == 200, job.text
    name = job.json()["name"]
    assert name.startswith("batchPredictionJobs/")
    fetched = httpx.get(f"{proxy}/v1/{name}", headers=key)
    assert fetched.status_code == 200 and fetched.json()["displayName"] == "nightly"
    assert attempts_at(sims) == {
        "global": [
            ("GET", "/v1beta1/cachedContents"),
            ("POST", "/v1beta1/batchPredictionJobs"),
            ("GET", f"/v1/{name}"),
        ]
    }
    assert all(
        attempt["key_digest"] == key_digest("express-key") for attempt in sims["global"].attempts()
    )
    # The Developer API's own collection is still the Developer API's.
    developer = httpx.get(f"{proxy}/v1beta/cachedContents", headers=key)
    assert developer.status_code == 200, developer.text
    assert [a["path"] for a in sims[DEVELOPER].attempts()] == ["/v1beta/cachedContents"]


def test_the_short_form_serves_collections_in_the_configured_location(
    proxy: str, sims: dict[str, SimulatorControl]
) -> None:
    client = short_form(proxy)
    cache = client.caches.create(
        model=FLASH, config=types.CreateCachedContentConfig(contents=["a long document"] * 4)
    )
    assert cache.name is not None
    assert cache.name in [listed.name for listed in client.caches.list()]
    jobs = httpx.get(f"{proxy}/batchPredictionJobs", headers={"authorization": f"Bearer {TOKEN}"})
    assert jobs.status_code == 200, jobs.text
    # The simulators outlive a test: jobs of others may be listed, all of this location.
    parent = f"projects/{PROJECT}/locations/{EU}/"
    assert all(job["name"].startswith(parent) for job in jobs.json().get("batchPredictionJobs", []))
    eu = f"/v1beta1/projects/{PROJECT}/locations/{EU}"
    assert attempts_at(sims) == {
        EU: [
            ("POST", f"{eu}/cachedContents"),
            ("GET", f"{eu}/cachedContents"),
            ("GET", f"{eu}/batchPredictionJobs"),
        ]
    }


@pytest.mark.parametrize("location", ["global", "us", "eu"])
def test_the_global_and_multi_region_endpoints_serve_their_locations(
    proxy: str, sims: dict[str, SimulatorControl], location: str
) -> None:
    client = vertex(proxy, location)
    response = client.models.generate_content(model=FLASH, contents="hello")
    assert served_by(response) == f"{FLASH}@{location}"
    assert [listed.name for listed in client.caches.list()] == []
    where = f"/v1beta1/projects/{PROJECT}/locations/{location}"
    assert attempts_at(sims) == {
        location: [
            ("POST", f"{where}/publishers/google/models/{FLASH}:generateContent"),
            ("GET", f"{where}/cachedContents"),
        ]
    }
