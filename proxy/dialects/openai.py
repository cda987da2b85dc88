"""Gemini's OpenAI-compatible API: ``{prefix}/v1beta/openai/chat/completions``, ``/embeddings``
and ``/models``. The model is named in the body (``model``, with or without ``models/``), so the
forwarder reads the body before routing; another model of the chain gets the same body with its
own ``model``. Auth is ``Authorization: Bearer <key>``. Errors are a JSON list holding Google's
error object; streams are ``data:`` events ended by ``data: [DONE]``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any

from ..gemini.errors import JSON_CONTENT_TYPE, error_payload
from ..gemini.features import NotContinuable, RequestNeeds
from ..gemini.sse import Delivered
from ..transport.headers import (
    API_KEY_HEADER,
    Headers,
    credential_scope,
    upstream_request_headers,
)
from .base import Framing, RequestRoute
from .openai_needs import needs_of_chat_body

_PATH = re.compile(
    r"^(?P<prefix>(?:/[^/?]+)*?)(?P<path>/v1beta/openai/"
    r"(?P<operation>chat/completions|embeddings|models(?:/[^/?]+)?))/?$"
)
_OPERATIONS = {"chat/completions": "chat", "embeddings": "embeddings"}
DONE_EVENT = b"data: [DONE]\n\n"
_AUTHORIZATION = b"authorization"


@dataclass(frozen=True, slots=True)
class OpenAIRoute:
    """A compatible-API request; ``model`` and ``stream`` come from the body."""

    operation: str
    """``chat``, ``embeddings`` or ``models``."""
    path: str
    """The path without the prefix, as sent upstream."""
    prefix: str
    model: str | None = None
    stream: bool = False

    @property
    def method(self) -> str | None:
        if self.operation == "chat":
            return "streamGenerateContent" if self.stream else "generateContent"
        return "embedContent" if self.operation == "embeddings" else None

    @property
    def upload(self) -> bool:
        return False

    @property
    def template(self) -> str:
        """``http.route``: the path with a model's name as a placeholder."""
        if self.operation == "models" and self.path.count("/") > 3:
            return "/v1beta/openai/models/{model}"
        return self.path.rstrip("/")

    @property
    def is_generate(self) -> bool:
        return self.operation == "chat"


def _model_name(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return value.removeprefix("models/")


class OpenAIDialect:
    """``generativelanguage.googleapis.com/v1beta/openai``."""

    name = "openai"
    model_in_body = True
    error_content_type = JSON_CONTENT_TYPE.encode()

    def parse(self, path: str, query: bytes, headers: Headers) -> OpenAIRoute | None:
        if "/openai/" not in path:  # every native request asks: a substring test, no regex
            return None
        match = _PATH.match(path.partition("?")[0])
        if match is None:
            return None
        operation = _OPERATIONS.get(match["operation"], "models")
        return OpenAIRoute(operation, match["path"], match["prefix"])

    def with_body(self, route: RequestRoute, body: bytes) -> OpenAIRoute:
        """The route once the body is read: its model and whether it streams. A body that is
        not a JSON object names no model: it goes upstream as it is, to be refused there."""
        assert isinstance(route, OpenAIRoute)
        if route.operation == "models" or not body:
            return route
        try:
            request = json.loads(body)
        except ValueError:
            return route
        if not isinstance(request, dict):
            return route
        return replace(
            route, model=_model_name(request.get("model")), stream=request.get("stream") is True
        )

    def framing(self, route: RequestRoute, query: bytes) -> Framing:
        assert isinstance(route, OpenAIRoute)
        return Framing.OPENAI_SSE if route.stream else Framing.NONE

    def upstream_path(self, route: RequestRoute, model: str | None) -> str:
        assert isinstance(route, OpenAIRoute)
        return route.path

    def origin(self, route: RequestRoute, model: str | None) -> str | None:
        return None

    def body_for(self, route: RequestRoute, body: bytes, model: str) -> bytes:
        request = json.loads(body)
        request["model"] = model
        return json.dumps(request, separators=(",", ":")).encode()

    def upstream_headers(self, headers: Headers, query: bytes, api_key: str | None) -> Headers:
        """The client's bearer key goes upstream as it is; without one, the configured key
        is sent the same way."""
        if _bearer(headers):
            return upstream_request_headers(headers, query, None)
        out = upstream_request_headers(headers, query, None)
        out = [(name, value) for name, value in out if name != _AUTHORIZATION]
        if api_key is not None:
            out.append((_AUTHORIZATION, b"Bearer " + api_key.encode("latin-1")))
        return out

    def native_headers(self, upstream_headers: Headers) -> Headers:
        """The bearer key as ``x-goog-api-key``: the native API takes a bearer for an OAuth
        token, not a key."""
        key = _bearer(upstream_headers)
        out = [(name, value) for name, value in upstream_headers if name != _AUTHORIZATION]
        if key is not None:
            out.append((API_KEY_HEADER, key))
        return out

    def credential(self, headers: Headers, query: bytes, api_key: str | None) -> str:
        """The digest of the key the upstream will see (429s are that key's own)."""
        bearer = _bearer(headers)
        return credential_scope([], b"", bearer.decode("latin-1") if bearer else api_key)

    def error_body(self, code: int, message: str) -> bytes:
        return self.status_body(json.dumps(error_payload(code, message), indent=2).encode())

    def status_body(self, body: bytes) -> bytes:
        """A ``google.rpc.Status`` error body as the compatible API sends it: in a list."""
        return b"[" + body.strip() + b"]\n"

    def stream_error(self, code: int, message: str) -> bytes:
        """An error chunk: the OpenAI SDK raises ``APIError`` on a chunk with ``error``."""
        payload = json.dumps(error_payload(code, message), separators=(",", ":"))
        return b"data: " + payload.encode() + b"\n\n"

    def stream_end(self, framing: Framing) -> bytes:
        return DONE_EVENT if framing is Framing.OPENAI_SSE else b""

    def continuation_body(self, body: bytes, delivered_text: str) -> bytes:
        """The request with the text already delivered as an assistant message, so the next
        model finishes the answer. Raises ``NotContinuable`` for a body without messages."""
        try:
            request = json.loads(body)
        except (ValueError, RecursionError):
            request = None
        if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
            raise NotContinuable("not a chat completion request with a messages list")
        if delivered_text:
            assistant = {"role": "assistant", "content": delivered_text}
            request["messages"] = [*request["messages"], assistant]
        return json.dumps(request, separators=(",", ":")).encode()

    def request_needs(self, body: bytes) -> RequestNeeds:
        return needs_of_chat_body(body)

    def usage_in_tail(self, tail: bytes) -> dict[str, int] | None:
        """A chat completion's ``usage`` (``prompt_tokens``, ``completion_tokens``), which
        ends the answer, in ``usageMetadata``'s names."""
        start = tail.rfind(b'"usage"')
        if start < 0:
            return None
        found = {
            _GEMINI_NAMES[name]: int(value) for name, value in _USAGE_FIELD.findall(tail[start:])
        }
        return found or None

    def stream_account(self, delivered: Delivered) -> OpenAIStreamAccount:
        return OpenAIStreamAccount(delivered)


def _bearer(headers: Headers) -> bytes | None:
    for name, value in headers:
        if name == _AUTHORIZATION:
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


_USAGE_NAMES = (
    ("prompt_tokens", "promptTokenCount"),
    ("completion_tokens", "candidatesTokenCount"),
    ("total_tokens", "totalTokenCount"),
)
_GEMINI_NAMES = {openai.encode(): gemini for openai, gemini in _USAGE_NAMES}
_USAGE_FIELD = re.compile(rb'"(prompt_tokens|completion_tokens|total_tokens)"\s*:\s*(\d+)')
DONE_CHUNK: dict[str, Any] = {}
"""What the relay's event check gives for ``data: [DONE]`` (the same object every time)."""


class OpenAIStreamAccount:
    """What a compatible stream delivered: its text, id, usage, and whether it ended whole (a
    ``finish_reason`` and then ``[DONE]``; ``delivered.finish_reason`` is set only then)."""

    __slots__ = ("delivered", "reason")

    def __init__(self, delivered: Delivered) -> None:
        self.delivered = delivered
        self.reason: str | None = None

    def take(self, chunk: dict[str, Any]) -> None:
        delivered = self.delivered
        delivered.events += 1
        if chunk is DONE_CHUNK:
            if self.reason is not None:
                delivered.finish_reason = self.reason
            return
        if delivered.response_id is None and isinstance(chunk.get("id"), str):
            delivered.response_id = chunk["id"]
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            # In Gemini's names, which the token metrics read.
            delivered.usage = {
                gemini: usage[openai]
                for openai, gemini in _USAGE_NAMES
                if isinstance(usage.get(openai), int)
            }
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(text, str):
                delivered.add_text(text)
            if choice.get("finish_reason"):
                self.reason = str(choice["finish_reason"])

    def restitched(self, chunk: dict[str, Any], usage_before: dict[str, Any] | None) -> bytes:
        """A continuation's event as part of the original stream: the original ``id``; its
        ``[DONE]`` only after a ``finish_reason`` (an earlier one would end the client's stream
        as if whole)."""
        self.take(chunk)
        if chunk is DONE_CHUNK:
            return DONE_EVENT if self.delivered.finish_reason is not None else b""
        response_id = self.delivered.response_id
        if response_id is not None and chunk.get("id") != response_id:
            chunk = {**chunk, "id": response_id}
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


OPENAI = OpenAIDialect()
"""The dialect has no state: one instance serves every request."""
