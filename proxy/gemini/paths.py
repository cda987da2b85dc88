"""Parse Gemini Developer API paths: optional prefix, API version, resource, model and method.

The model always comes from the path, never from the body. The path is kept as the client sent
it (percent-encoding included) so that forwarding is byte-for-byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

API_VERSIONS = ("v1", "v1beta", "v1alpha")

# Calls whose answer a model generates; these are the ones a route's chain applies to.
GENERATE_METHODS = frozenset({"generateContent", "streamGenerateContent"})

_PATH = re.compile(
    r"^(?P<prefix>(?:/[^/]+)*?)(?P<upload>/upload)?/(?P<version>v1|v1beta|v1alpha)/(?P<rest>.+)$"
)
_MODEL_RESOURCE = re.compile(r"^models/(?P<model>[^/:]+)(?::(?P<method>[A-Za-z]+))?$")


@dataclass(frozen=True, slots=True)
class GeminiPath:
    """A request path split into the parts the proxy routes on."""

    prefix: str
    """Anything before the version (or ``/upload``), e.g. ``/gemini``; empty for none."""
    upload: bool
    """True for the media upload endpoint, ``/upload/{version}/...``."""
    version: str
    resource: str
    """Everything after the version, e.g. ``models/gemini-2.5-pro:generateContent``."""
    model: str | None
    """The model of a ``models/{model}[:method]`` resource."""
    method: str | None
    """The custom method after the colon, e.g. ``streamGenerateContent``."""

    @property
    def upstream_path(self) -> str:
        """The path to send upstream: the same request without the client-side prefix."""
        return self.path_for(self.model)

    def path_for(self, model: str | None) -> str:
        """The upstream path with the model segment replaced (for failover)."""
        resource = self.resource
        if model is not None and model != self.model:
            resource = f"models/{model}" + (f":{self.method}" if self.method else "")
        return ("/upload/" if self.upload else "/") + self.version + "/" + resource

    @property
    def is_generate(self) -> bool:
        return self.method in GENERATE_METHODS


def parse_path(raw_path: str) -> GeminiPath | None:
    """Split a request path; ``None`` when it is not a Gemini Developer API path."""
    match = _PATH.match(raw_path)
    if match is None:
        return None
    rest = match["rest"]
    model_match = _MODEL_RESOURCE.match(rest)
    return GeminiPath(
        prefix=match["prefix"],
        upload=match["upload"] is not None,
        version=match["version"],
        resource=rest,
        model=model_match["model"] if model_match else None,
        method=model_match["method"] if model_match else None,
    )
