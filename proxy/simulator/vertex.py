"""Vertex AI paths, served by the same handlers as the Developer API: one simulator stands for
one location's origin (``/{version}/projects/{p}/locations/{l}/...``), and express mode
(``/{version}/publishers/google/...``) for the global one."""

from __future__ import annotations

import re

from proxy.gemini.paths import GeminiPath

_VERTEX = re.compile(
    r"^/(?P<version>v1|v1beta1)/(?:projects/[^/]+/locations/(?P<location>[^/]+)/)?"
    r"(?P<rest>.+)$"
)
_MODEL = re.compile(r"^publishers/google/models/(?P<model>[^/:]+)(?::(?P<method>[A-Za-z]+))?$")


def vertex_path(path: str) -> GeminiPath | None:
    """The Developer API path a Vertex path stands for; None when it is not a Vertex path."""
    match = _VERTEX.match(path)
    if match is None:
        return None
    rest = match["rest"]
    if match["location"] is None and not rest.startswith("publishers/"):
        return None
    model = _MODEL.match(rest)
    if model is not None:
        rest = f"models/{model['model']}" + (f":{model['method']}" if model["method"] else "")
    return GeminiPath(
        prefix="",
        upload=False,
        version="v1beta",
        resource=rest,
        model=model["model"] if model else None,
        method=model["method"] if model else None,
    )
