"""The Vertex AI dialect: ``/{version}/projects/{p}/locations/{l}/publishers/google/models/
{model}:{method}``, its short (gateway) form ``/publishers/google/models/...`` completed with
the configured project and location, and express mode ``/{version}/publishers/google/models/
...`` (an API key, served globally). The collections of cached contents, jobs and endpoints
have the same short and express forms. Errors are ``google.rpc.Status`` and streams SSE, as for
Gemini.

A request's *target* is ``model@location``: the pipeline keys breakers, the active target and
metrics on it, so each region of a model fails on its own and failover can stay on the same
model in another region before it moves to a weaker one. Each location has its own origin.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import VertexSettings
from ..gemini.paths import GENERATE_METHODS
from ..gemini.quota import RateLimit
from ..transport.headers import Headers
from .base import RequestRoute
from .gemini import GeminiDialect

VERSIONS = ("v1", "v1beta1")
_LOCATION = r"[a-z][a-z0-9-]{1,39}"
_FULL = re.compile(
    r"^(?P<prefix>(?:/[^/]+)*?)/(?P<version>v1|v1beta1)/projects/(?P<project>[^/]+)"
    rf"/locations/(?P<location>{_LOCATION})/(?P<rest>.+)$"
)
_SHORT = re.compile(
    r"^(?P<prefix>(?:/[^/]+)*?)(?:/(?P<version>v1|v1beta1))?/(?P<rest>publishers/google/.+)$"
)
# Collections served without a project in express mode and completed with the configured
# project and location in the short form. ``cachedContents`` under ``/v1`` is also the
# Developer API's, so only ``/v1beta1`` (or no version, in the short form) means Vertex's.
_COLLECTIONS = re.compile(
    r"^(?P<prefix>(?:/[^/]+)*?)(?:/(?P<version>v1|v1beta1))?"
    r"/(?P<rest>(?P<family>cachedContents|batchPredictionJobs|tuningJobs|endpoints)(?:[/:].*)?)$"
)
_DEVELOPER_VERSIONS = ("v1", "v1beta", "v1alpha")
_MODEL = re.compile(r"^publishers/google/models/(?P<model>[^/:@]+)(?::(?P<method>[A-Za-z]+))?$")

GLOBAL_ORIGIN = "https://aiplatform.googleapis.com"
MULTI_REGION_ORIGIN = "https://aiplatform.{location}.rep.googleapis.com"


def origin_for(location: str, settings: VertexSettings) -> str:
    """The origin serving a location: a configured one, Google's global and multi-region
    endpoints, else the regional template."""
    configured = settings.origins.get(location)
    if configured is not None:
        return configured
    if location == "global":
        return GLOBAL_ORIGIN
    if location in ("us", "eu"):
        return MULTI_REGION_ORIGIN.format(location=location)
    return settings.origin_template.format(location=location)


def split_target(target: str, location: str) -> tuple[str, str]:
    """``model@location`` as (model, location); a bare model is served in ``location``."""
    model, at, where = target.partition("@")
    return model, where if at else location


def shared_capacity(limit: RateLimit) -> bool:
    """A 429 on Vertex's dynamic shared quota (no quota of the project's was named): another
    location may have capacity. A per-project quota 429 names its quota and stays
    backpressure."""
    return not (limit.quota_id or limit.quota_metric or limit.per_day)


def model_of(target: str) -> str:
    """The model a target names (``model@location``, or a bare model)."""
    return target.partition("@")[0]


def same_model_elsewhere(target: str, following: str) -> bool:
    """``following`` is ``target``'s model in another location."""
    model, _, location = target.partition("@")
    other_model, _, other_location = following.partition("@")
    return model == other_model and location != other_location


@dataclass(frozen=True, slots=True)
class VertexPath:
    """A Vertex request path split into the parts the proxy routes on."""

    prefix: str
    version: str
    project: str | None
    """None in express mode (the API key names the project)."""
    location: str
    resource: str
    """Everything after the location (or the version, in express mode)."""
    base_model: str | None
    method: str | None

    upload = False

    @property
    def model(self) -> str | None:
        """The target the client asked for: ``model@location``."""
        return None if self.base_model is None else f"{self.base_model}@{self.location}"

    @property
    def is_generate(self) -> bool:
        return self.method in GENERATE_METHODS

    def path_for(self, target: str | None) -> str:
        """The upstream path, for ``target`` (``model@location``) instead of the request's."""
        resource, location = self.resource, self.location
        if target is not None and self.base_model is not None:
            model, location = split_target(target, self.location)
            resource = f"publishers/google/models/{model}" + (
                f":{self.method}" if self.method else ""
            )
        if self.project is None:
            return f"/{self.version}/{resource}"
        return f"/{self.version}/projects/{self.project}/locations/{location}/{resource}"

    @property
    def template(self) -> str:
        """``http.route``: the path with its project, location and model as placeholders."""
        where = "" if self.project is None else "projects/{project}/locations/{location}/"
        if self.base_model is None:
            return f"/{self.version}/{where}{self.resource.partition('/')[0]}"
        method = f":{self.method}" if self.method else ""
        return f"/{self.version}/{where}publishers/google/models/{{model}}{method}"

    def location_for(self, target: str | None) -> str:
        return self.location if target is None else split_target(target, self.location)[1]


def parse_vertex_path(path: str, headers: Headers, settings: VertexSettings) -> VertexPath | None:
    """Split a Vertex path; None when it is not one (or a short form with no project set)."""
    full = _FULL.match(path)
    if full is not None:
        prefix, version, rest = full["prefix"], full["version"], full["rest"]
        project: str | None = full["project"]
        location = full["location"]
    else:
        short = _SHORT.match(path) or _collection(path)
        if short is None:
            return None
        prefix, rest = short["prefix"], short["rest"]
        if short["version"] is not None and _has_api_key(headers):
            version, project, location = short["version"], None, "global"  # express mode
        elif settings.project is None:
            return None
        else:
            version = short["version"] or "v1beta1"
            project, location = settings.project, settings.location
    model = _MODEL.match(rest)
    return VertexPath(
        prefix=prefix,
        version=version,
        project=project,
        location=location,
        resource=rest,
        base_model=model["model"] if model else None,
        method=model["method"] if model else None,
    )


def _collection(path: str) -> re.Match[str] | None:
    """A Vertex collection (cached contents, jobs, endpoints) in the short or express form;
    None for what is the Developer API's own path."""
    match = _COLLECTIONS.match(path)
    if match is None:
        return None
    if match["prefix"].rpartition("/")[2] in _DEVELOPER_VERSIONS:
        return None  # /v1beta/cachedContents and the like
    if match["version"] == "v1" and match["family"] == "cachedContents":
        return None
    return match


def _has_api_key(headers: Headers) -> bool:
    return any(name == b"x-goog-api-key" for name, _ in headers)


class VertexDialect(GeminiDialect):
    """``{location}-aiplatform.googleapis.com``: Gemini's bodies, errors and streams, with
    Vertex's paths, an origin per location, and its own credentials (never the Developer
    API's key)."""

    name = "vertex"

    def __init__(self, settings: VertexSettings) -> None:
        self.settings = settings

    def parse(self, path: str, query: bytes, headers: Headers) -> VertexPath | None:  # type: ignore[override]
        return parse_vertex_path(path, headers, self.settings)

    def upstream_path(self, route: RequestRoute, model: str | None) -> str:
        assert isinstance(route, VertexPath)
        return route.path_for(model)

    def origin(self, route: RequestRoute, model: str | None) -> str | None:
        assert isinstance(route, VertexPath)
        return origin_for(route.location_for(model), self.settings)

    def upstream_headers(self, headers: Headers, query: bytes, api_key: str | None) -> Headers:
        return super().upstream_headers(headers, query, None)

    def credential(self, headers: Headers, query: bytes, api_key: str | None) -> str:
        return super().credential(headers, query, None)
