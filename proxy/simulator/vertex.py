"""Vertex AI paths, served by the same handlers as the Developer API: one simulator stands for
one location's origin (``/{version}/projects/{p}/locations/{l}/...``), and express mode
(``/{version}/publishers/google/...``) for the global one."""

from __future__ import annotations

import re

from proxy.gemini.paths import GeminiPath
from proxy.simulator.wire import Reply, error_reply

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


def vertex_model_not_found(path: str) -> Reply | None:
    """Vertex's 404 for a model it does not serve; None for a Developer API path."""
    match = _VERTEX.match(path)
    if match is None or vertex_path(path) is None:
        return None
    name = match["rest"].partition(":")[0]
    if match["location"] is not None:
        name = path.split("/", 2)[2].partition(":")[0]
    return error_reply(
        404,
        f"Publisher Model `{name}` was not found or your project does not have access to it. "
        "Please ensure you are using a valid model version. For more information, see: "
        "https://cloud.google.com/vertex-ai/generative-ai/docs/learn/model-versions",
    )
