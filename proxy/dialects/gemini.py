"""The Gemini Developer API dialect: the model and method in the path
(``/{version}/models/{model}:{method}``, optionally after a prefix), errors as
``google.rpc.Status``, streams as SSE when ``alt=sse`` is asked for (else a JSON array)."""

from __future__ import annotations

from typing import Any

from ..gemini.errors import JSON_CONTENT_TYPE, error_body, sse_error_event
from ..gemini.features import RequestNeeds, continuation_body, needs_of_body
from ..gemini.paths import GeminiPath, parse_path
from ..gemini.sse import Delivered, encode_event, stitch
from ..gemini.usage import usage_from_tail
from ..transport.headers import Headers, credential_scope, upstream_request_headers
from .base import Framing, RequestRoute


class GeminiDialect:
    """``generativelanguage.googleapis.com``."""

    name = "gemini"
    model_in_body = False
    error_content_type = JSON_CONTENT_TYPE.encode()

    def parse(self, path: str, query: bytes, headers: Headers) -> GeminiPath | None:
        return parse_path(path)

    def with_body(self, route: RequestRoute, body: bytes) -> RequestRoute:
        return route

    def framing(self, route: RequestRoute, query: bytes) -> Framing:
        if route.method == "streamGenerateContent" and b"alt=sse" in query:
            return Framing.SSE
        return Framing.NONE

    def upstream_path(self, route: RequestRoute, model: str | None) -> str:
        assert isinstance(route, GeminiPath)
        return route.path_for(model)

    def origin(self, route: RequestRoute, model: str | None) -> str | None:
        return None

    def body_for(self, route: RequestRoute, body: bytes, model: str) -> bytes:
        return body

    def upstream_headers(self, headers: Headers, query: bytes, api_key: str | None) -> Headers:
        return upstream_request_headers(headers, query, api_key)

    def native_headers(self, upstream_headers: Headers) -> Headers:
        return upstream_headers

    def credential(self, headers: Headers, query: bytes, api_key: str | None) -> str:
        return credential_scope(headers, query, api_key)

    def error_body(self, code: int, message: str) -> bytes:
        return error_body(code, message)

    def status_body(self, body: bytes) -> bytes:
        return body

    def stream_error(self, code: int, message: str) -> bytes:
        return sse_error_event(code, message)

    def stream_end(self, framing: Framing) -> bytes:
        return b""

    def continuation_body(self, body: bytes, delivered_text: str) -> bytes:
        return continuation_body(body, delivered_text)

    def request_needs(self, body: bytes) -> RequestNeeds:
        return needs_of_body(body)

    def usage_in_tail(self, tail: bytes) -> dict[str, int] | None:
        return usage_from_tail(tail)

    def stream_account(self, delivered: Delivered) -> GeminiStreamAccount:
        return GeminiStreamAccount(delivered)


class GeminiStreamAccount:
    """What a Gemini stream delivered (``Delivered`` reads Gemini's chunks itself)."""

    __slots__ = ("delivered", "take")

    def __init__(self, delivered: Delivered) -> None:
        self.delivered = delivered
        self.take = delivered.take

    def restitched(self, chunk: dict[str, Any], usage_before: dict[str, Any] | None) -> bytes:
        """A continuation's chunk as part of the original stream (``sse.stitch``)."""
        stitched = stitch(chunk, self.delivered, usage_before)
        self.delivered.take(stitched)
        return encode_event(stitched)


GEMINI = GeminiDialect()
"""The dialect has no state: one instance serves every request."""
