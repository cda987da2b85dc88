"""Vertex AI Live sessions: the setup's model names a resource,
``projects/P/locations/L/publishers/google/models/M``. As for Vertex HTTP calls, the session's
target is ``M@L``, each chain target is served by its location's origin (``origin_for``), and
the resource in the setup is rewritten for the target that serves. Pure functions."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import VertexSettings
from ..dialects.vertex import origin_for, split_target
from .wire import BadSetup

VERTEX_MARK = "/ws/google.cloud.aiplatform."
_RESOURCE = re.compile(
    r"^(?:projects/(?P<project>[^/]+)/locations/(?P<location>[a-z][a-z0-9-]{1,39})/)?"
    r"publishers/google/models/(?P<model>[^/:@]+)$"
)


def is_vertex(path: str) -> bool:
    return path.startswith(VERTEX_MARK)


@dataclass(frozen=True, slots=True)
class VertexModel:
    """The model a Vertex setup names, split; ``project`` None in express mode (an API key,
    served globally)."""

    project: str | None
    location: str
    model: str

    @property
    def target(self) -> str:
        return f"{self.model}@{self.location}"

    def resource_for(self, target: str) -> str:
        """The setup's model field for ``target`` (``model@location``; a bare model stays in
        the session's location)."""
        model, location = split_target(target, self.location)
        name = f"publishers/google/models/{model}"
        if self.project is None:
            return name
        return f"projects/{self.project}/locations/{location}/{name}"

    def origin_for(self, target: str, settings: VertexSettings) -> str:
        """The origin of ``target``'s location: the one the HTTP Vertex dialect uses."""
        return origin_for(split_target(target, self.location)[1], settings)


def parse_vertex_model(name: str, settings: VertexSettings, express: bool) -> VertexModel:
    """The setup's model field: a full resource name, or ``publishers/google/models/M`` (or
    ``M``) completed with the configured project and location (express mode: global)."""
    match = _RESOURCE.match(name if "/" in name else f"publishers/google/models/{name}")
    if match is None:
        raise BadSetup(
            "the setup's model must be projects/{project}/locations/{location}/publishers/"
            "google/models/{model}"
        )
    if match["project"] is not None:
        return VertexModel(match["project"], match["location"], match["model"])
    if express:
        return VertexModel(None, "global", match["model"])
    if settings.project is None:
        raise BadSetup("the setup's model names no project (and vertex.project is not set)")
    return VertexModel(settings.project, settings.location, match["model"])
