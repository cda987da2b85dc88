"""The Vertex dialect's pure parts: path parsing (full, short and express forms), the origin of
each location, targets and their chains."""

from __future__ import annotations

import pytest

from proxy.config import VertexSettings
from proxy.config_load import build_settings
from proxy.dialects import GEMINI
from proxy.dialects.vertex import (
    VertexDialect,
    origin_for,
    parse_vertex_path,
    shared_capacity,
)
from proxy.gemini.quota import RateLimit, parse_rate_limit
from proxy.validation import ConfigError

FULL = "/v1beta1/projects/p1/locations/us-central1/publishers/google/models/gemini-2.5-pro"
SETTINGS = VertexSettings(project="cfg", location="europe-west4")


def test_full_form_names_model_location_and_method() -> None:
    route = parse_vertex_path(FULL + ":streamGenerateContent", [], SETTINGS)
    assert route is not None
    assert (route.model, route.method, route.project) == (
        "gemini-2.5-pro@us-central1",
        "streamGenerateContent",
        "p1",
    )
    assert route.is_generate
    assert route.path_for(None) == FULL + ":streamGenerateContent"
    assert route.path_for("gemini-2.5-flash@europe-west4") == (
        "/v1beta1/projects/p1/locations/europe-west4/publishers/google/models/gemini-2.5-flash"
        ":streamGenerateContent"
    )
    assert route.template == (
        "/v1beta1/projects/{project}/locations/{location}/publishers/google/models/{model}"
        ":streamGenerateContent"
    )


def test_short_form_takes_the_configured_project_and_location() -> None:
    route = parse_vertex_path(
        "/publishers/google/models/gemini-2.5-flash:generateContent", [], SETTINGS
    )
    assert route is not None
    assert route.model == "gemini-2.5-flash@europe-west4"
    assert route.path_for(None) == (
        "/v1beta1/projects/cfg/locations/europe-west4/publishers/google/models/gemini-2.5-flash"
        ":generateContent"
    )
    # Without a configured project the short form cannot be completed: not a Vertex path.
    assert (
        parse_vertex_path("/publishers/google/models/m:generateContent", [], VertexSettings())
        is None
    )


def test_express_mode_is_global_and_keeps_its_path() -> None:
    path = "/v1/publishers/google/models/gemini-2.5-flash:generateContent"
    route = parse_vertex_path(path, [(b"x-goog-api-key", b"k")], VertexSettings())
    assert route is not None
    assert (route.model, route.project, route.path_for(None)) == (
        "gemini-2.5-flash@global",
        None,
        path,
    )


def test_other_resources_pass_through_and_developer_paths_are_not_vertex() -> None:
    path = "/v1/projects/p1/locations/asia-east1/cachedContents/abc"
    route = parse_vertex_path(path, [], SETTINGS)
    assert route is not None and route.model is None and route.path_for(None) == path
    assert parse_vertex_path("/v1beta/models/gemini-2.5-pro:generateContent", [], SETTINGS) is None
    assert GEMINI.origin(GEMINI.parse("/v1beta/models/m:generateContent", b"", []), "m") is None  # type: ignore[arg-type]


KEY = [(b"x-goog-api-key", b"k")]


@pytest.mark.parametrize(
    ("path", "headers", "upstream", "location"),
    [
        # Express mode: no project, the global endpoint.
        ("/v1beta1/cachedContents", KEY, "/v1beta1/cachedContents", "global"),
        ("/v1beta1/cachedContents/abc", KEY, "/v1beta1/cachedContents/abc", "global"),
        ("/v1/batchPredictionJobs", KEY, "/v1/batchPredictionJobs", "global"),
        ("/v1beta1/tuningJobs/7", KEY, "/v1beta1/tuningJobs/7", "global"),
        # The short form: the configured project and location.
        (
            "/cachedContents",
            [],
            "/v1beta1/projects/cfg/locations/europe-west4/cachedContents",
            None,
        ),
        (
            "/gw/batchPredictionJobs/12",
            [],
            "/v1beta1/projects/cfg/locations/europe-west4/batchPredictionJobs/12",
            None,
        ),
        (
            "/endpoints/5:predict",
            [],
            "/v1beta1/projects/cfg/locations/europe-west4/endpoints/5:predict",
            None,
        ),
        ("/v1/tuningJobs", [], "/v1/projects/cfg/locations/europe-west4/tuningJobs", None),
    ],
)
def test_collections_are_served_in_express_mode_and_in_the_short_form(
    path: str, headers: list[tuple[bytes, bytes]], upstream: str, location: str | None
) -> None:
    route = parse_vertex_path(path, headers, SETTINGS)
    assert route is not None and route.model is None
    assert route.path_for(None) == upstream
    assert route.location == (location or SETTINGS.location)
    assert route.project == (None if location else SETTINGS.project)


@pytest.mark.parametrize(
    "path",
    ["/v1beta/cachedContents", "/v1/cachedContents", "/v1alpha/cachedContents/abc"],
)
def test_developer_api_cached_contents_stay_the_developer_apis(path: str) -> None:
    assert parse_vertex_path(path, KEY, SETTINGS) is None
    assert GEMINI.parse(path, b"", KEY) is not None


def test_short_form_collections_need_a_configured_project() -> None:
    assert parse_vertex_path("/cachedContents", [], VertexSettings()) is None


@pytest.mark.parametrize(
    ("location", "origin"),
    [
        ("us-central1", "https://us-central1-aiplatform.googleapis.com"),
        ("global", "https://aiplatform.googleapis.com"),
        ("us", "https://aiplatform.us.rep.googleapis.com"),
        ("eu", "https://aiplatform.eu.rep.googleapis.com"),
        ("europe-west4", "http://127.0.0.1:1234"),
    ],
)
def test_each_location_has_its_origin(location: str, origin: str) -> None:
    settings = VertexSettings(origins={"europe-west4": "http://127.0.0.1:1234"})
    assert origin_for(location, settings) == origin


def test_a_request_goes_to_the_origin_of_its_target() -> None:
    dialect = VertexDialect(VertexSettings())
    route = dialect.parse(FULL + ":generateContent", b"", [])
    assert route is not None
    assert dialect.origin(route, None) == "https://us-central1-aiplatform.googleapis.com"
    assert dialect.origin(route, "m@asia-east1") == "https://asia-east1-aiplatform.googleapis.com"


def test_targets_take_their_models_route_in_the_requests_location() -> None:
    settings = build_settings(
        {
            "routes": {
                "gemini-2.5-pro": ["gemini-2.5-pro", "gemini-2.5-pro@eu", "gemini-2.5-flash"],
                "gemini-2.5-flash@us": ["gemini-2.5-flash@us", "gemini-2.5-flash@eu"],
            },
            "models": {"gemini-2.5-pro": {"max_attempts": 5}},
        }
    )
    assert settings.chain_for("gemini-2.5-pro@us-east5") == (
        "gemini-2.5-pro@us-east5",
        "gemini-2.5-pro@eu",
        "gemini-2.5-flash@us-east5",
    )
    assert settings.chain_for("gemini-2.5-flash@us") == (
        "gemini-2.5-flash@us",
        "gemini-2.5-flash@eu",
    )
    assert settings.chain_for("gemini-2.0-flash@us") == ("gemini-2.0-flash@us",)
    assert settings.model_settings("gemini-2.5-pro@us-east5").max_attempts == 5


@pytest.mark.parametrize(
    "vertex",
    [
        {"origin_template": "https://aiplatform.googleapis.com"},
        {"origins": {"us-central1": "ftp://x"}},
        {"locaton": "us-central1"},
    ],
)
def test_bad_vertex_settings_are_refused(vertex: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="vertex"):
        build_settings({"vertex": vertex})


def test_on_429_is_a_route_option() -> None:
    chain = ["gemini-2.5-pro@us-central1", "gemini-2.5-pro@europe-west4"]
    settings = build_settings(
        {"routes": {"gemini-2.5-pro": {"chain": chain, "on_429": "next_location"}}}
    )
    assert settings.moves_location_on_429("gemini-2.5-pro@us-central1")
    assert not build_settings({"routes": {"gemini-2.5-pro": chain}}).moves_location_on_429(
        "gemini-2.5-pro@us-central1"
    )
    with pytest.raises(ConfigError, match="on_429"):
        build_settings({"routes": {"gemini-2.5-pro": {"chain": chain, "on_429": "spill"}}})


# Vertex's 429 bodies, verbatim: the dynamic shared quota names no quota; a per-project quota
# is named in the message only (no QuotaFailure, no RetryInfo).
SHARED_QUOTA_429 = (
    b'{"error": {"code": 429, "message": "Resource exhausted. Please try again later. Please '
    b"refer to https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more "
    b'details.", "status": "RESOURCE_EXHAUSTED"}}'
)
PROJECT_QUOTA_429 = (
    b'{"error": {"code": 429, "message": "Quota exceeded for aiplatform.googleapis.com/'
    b"generate_content_requests_per_minute_per_project_per_base_model with base model: "
    b"gemini-2.5-pro. Please submit a quota increase request. "
    b'https://cloud.google.com/vertex-ai/docs/generative-ai/quotas-genai.", '
    b'"status": "RESOURCE_EXHAUSTED"}}'
)


def test_vertexs_shared_quota_429_is_shared_capacity() -> None:
    limit = parse_rate_limit(SHARED_QUOTA_429, None)
    assert shared_capacity(limit)
    assert limit == RateLimit(None, False, "", "")
    # The JSON-array stream form carries the same body.
    assert shared_capacity(parse_rate_limit(b"[" + SHARED_QUOTA_429 + b"]", None))


def test_vertexs_project_quota_429_names_its_quota_and_is_backpressure() -> None:
    limit = parse_rate_limit(PROJECT_QUOTA_429, None)
    assert not shared_capacity(limit)
    assert limit.quota_id == "generate_content_requests_per_minute_per_project_per_base_model"
    assert limit.quota_metric == (
        "aiplatform.googleapis.com/generate_content_requests_per_minute_per_project_per_base_model"
    )
    assert not limit.per_day
    assert not shared_capacity(parse_rate_limit(b"[" + PROJECT_QUOTA_429 + b"]", None))


def test_a_per_day_vertex_quota_is_per_day() -> None:
    body = PROJECT_QUOTA_429.replace(b"per_minute", b"per_day")
    assert parse_rate_limit(body, None).per_day


def test_the_developer_apis_quota_failure_still_names_the_quota() -> None:
    body = (
        b'{"error": {"code": 429, "message": "You exceeded your current quota.", "status": '
        b'"RESOURCE_EXHAUSTED", "details": [{"@type": "type.googleapis.com/google.rpc.'
        b'QuotaFailure", "violations": [{"quotaMetric": "generativelanguage.googleapis.com/'
        b'generate_content_requests", "quotaId": "GenerateRequestsPerMinutePerProjectPerModel"}]}'
        b', {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "15s"}]}}'
    )
    limit = parse_rate_limit(body, None)
    assert limit.quota_id == "GenerateRequestsPerMinutePerProjectPerModel"
    assert limit.retry_delay == 15.0
    assert not shared_capacity(limit)
