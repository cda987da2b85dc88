"""The Gemini Developer API dialect: the model and method in the path
(``/{version}/models/{model}:{method}``, optionally after a prefix), errors as
``google.rpc.Status``, streams as SSE when ``alt=sse`` is asked for (else a JSON array)."""

from __future__ import annotations

from ..gemini.errors import JSON_CONTENT_TYPE, error_body, sse_error_event
from ..gemini.paths import GeminiPath, parse_path
from ..transport.headers import Headers
from .base import Framing, RequestRoute


class GeminiDialect:
    """``generativelanguage.googleapis.com``."""

    name = "gemini"
    model_in_body = False
    error_content_type = JSON_CONTENT_TYPE.encode()

    def parse(self, path: str, query: bytes, headers: Headers) -> GeminiPath | None:
        return parse_path(path)

    def framing(self, route: RequestRoute, query: bytes) -> Framing:
        if route.method == "streamGenerateContent" and b"alt=sse" in query:
            return Framing.SSE
        return Framing.NONE

    def upstream_path(self, route: RequestRoute, model: str | None) -> str:
        assert isinstance(route, GeminiPath)
        return route.path_for(model)

    def body_for(self, route: RequestRoute, body: bytes, model: str) -> bytes:
        return body

    def error_body(self, code: int, message: str) -> bytes:
        return error_body(code, message)

    def stream_error(self, code: int, message: str) -> bytes:
        return sse_error_event(code, message)

    def stream_end(self, framing: Framing) -> bytes:
        return b""


GEMINI = GeminiDialect()
"""The dialect has no state: one instance serves every request."""
