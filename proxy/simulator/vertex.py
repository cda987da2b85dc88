"""Vertex AI paths, served by the same handlers as the Developer API: one simulator stands for
one location's origin (``/{version}/projects/{p}/locations/{l}/...``), and express mode
(``/{version}/publishers/google/...``) for the global one. Errors on these paths have Vertex's
wording: a 429 of the dynamic shared quota names no quota, a per-project quota's 429 names it
in the message only (no ``QuotaFailure``, no ``RetryInfo``)."""

from __future__ import annotations

import math
import re

from proxy.gemini.paths import GeminiPath
from proxy.simulator.replies import error_message
from proxy.simulator.wire import Reply, error_reply

SHARED_QUOTA_MESSAGE = (
    "Resource exhausted. Please try again later. Please refer to "
    "https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details."
)
VERTEX_MESSAGES: dict[int, str] = {
    429: SHARED_QUOTA_MESSAGE,
    500: "Internal error encountered.",
    503: "The service is currently unavailable.",
}
QUOTAS_URL = "https://cloud.google.com/vertex-ai/docs/generative-ai/quotas-genai"

_VERTEX = re.compile(
    r"^/(?P<version>v1|v1beta1)/(?:projects/[^/]+/locations/(?P<location>[^/]+)/)?"
    r"(?P<rest>.+)$"
)
# Collections express mode serves without a project (the API key names it).
EXPRESS_COLLECTIONS = (
    "publishers",
    "cachedContents",
    "batchPredictionJobs",
    "tuningJobs",
    "endpoints",
)
_MODEL = re.compile(r"^publishers/google/models/(?P<model>[^/:]+)(?::(?P<method>[A-Za-z]+))?$")


def vertex_path(path: str) -> GeminiPath | None:
    """The Developer API path a Vertex path stands for; None when it is not a Vertex path."""
    match = _VERTEX.match(path)
    if match is None:
        return None
    rest = match["rest"]
    if match["location"] is None and rest.split("/")[0].split(":")[0] not in EXPRESS_COLLECTIONS:
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


def vertex_parent(path: str) -> str:
    """``projects/P/locations/L/`` of a Vertex path; empty in express mode."""
    match = _VERTEX.match(path)
    if match is None or match["location"] is None:
        return ""
    return path.split("/", 2)[2].removesuffix(match["rest"])


def is_vertex(path: str) -> bool:
    return vertex_path(path) is not None


def vertex_error_message(status: int, message: str | None = None) -> str:
    """``message``, else Vertex's usual message for that status."""
    return message or VERTEX_MESSAGES.get(status) or error_message(status)


def vertex_quota_exceeded(
    model: str, per: str, message: str | None = None, retry_after: float | None = None
) -> Reply:
    """Vertex's 429 for a per-project quota: the quota is named in the message only."""
    period = "minute" if per == "minute" else "day"
    text = message or (
        "Quota exceeded for aiplatform.googleapis.com/generate_content_requests_per_"
        f"{period}_per_project_per_base_model with base model: {model}. Please submit a quota "
        f"increase request. {QUOTAS_URL}."
    )
    headers: tuple[tuple[str, str], ...] = ()
    if retry_after is not None:
        headers = (("retry-after", str(math.ceil(retry_after))),)
    return error_reply(429, text, headers=headers)
