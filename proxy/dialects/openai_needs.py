"""What a chat completion request of the compatible API needs from a model, in the capability
table's vocabulary (``proxy.gemini.features``), so failover skips the models a native request
with the same content would skip.

Read from the body:

- ``function_calling``: ``tools`` with a ``function`` tool, ``functions``, or a tool call /
  tool result among the messages
- ``structured_output``: ``response_format: {type: json_schema}`` (its schema kept);
  ``json_mode``: ``{type: json_object}``
- ``thinking_budget``: ``reasoning_effort`` other than ``none`` (Google maps it to a thinking
  budget), or ``extra_body.google.thinking_config.thinking_budget``; ``thinking_level``:
  ``thinking_config.thinking_level``
- ``image_input``, ``audio_input``, ``pdf_input``, ``video_input``: ``image_url``,
  ``input_audio`` and ``file`` content parts (a ``data:`` URL's mime type decides)
- ``audio_output``: ``modalities`` naming ``audio``, or ``audio``
- ``system_instruction``: a ``system`` or ``developer`` message
- ``cached_content``: ``extra_body.google.cached_content``

A ``reasoning_effort`` of ``none`` turns thinking off, so it needs nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from ..gemini.features import (
    AUDIO_INPUT,
    AUDIO_OUTPUT,
    CACHED_CONTENT,
    CHARS_PER_TOKEN,
    FUNCTION_CALLING,
    IMAGE_INPUT,
    JSON_MODE,
    MEDIA_PART_TOKENS,
    PDF_INPUT,
    STRUCTURED_OUTPUT,
    SYSTEM_INSTRUCTION,
    THINKING_BUDGET,
    THINKING_LEVEL,
    VIDEO_INPUT,
    RequestNeeds,
    ResponseSchema,
    Tally,
    parse_request,
)

_DATA_URL_MEDIA: tuple[tuple[str, str], ...] = (
    ("image/", IMAGE_INPUT),
    ("audio/", AUDIO_INPUT),
    ("video/", VIDEO_INPUT),
    ("application/pdf", PDF_INPUT),
)


def needs_of_chat_body(body: bytes) -> RequestNeeds:
    """``chat_request_needs`` of a raw body; a body that is not a JSON object needs nothing."""
    request = parse_request(body)
    return RequestNeeds() if request is None else chat_request_needs(request)


def chat_request_needs(request: Mapping[str, Any]) -> RequestNeeds:
    """What a parsed chat completion request needs. Fields of the wrong shape are skipped,
    never raised on."""
    tally = _MessageTally()
    messages = request.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, Mapping):
                tally.message(message)
    for key in ("tools", "functions"):
        tools = request.get(key)
        if isinstance(tools, list) and tools:
            tally.chars += _size(tools)
            if key == "functions" or any(_is_function_tool(tool) for tool in tools):
                tally.features.add(FUNCTION_CALLING)
    schema = _response_format(request.get("response_format"), tally.features)
    effort = request.get("reasoning_effort")
    if isinstance(effort, str) and effort != "none":
        tally.features.add(THINKING_BUDGET)
    modalities = request.get("modalities")
    if request.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
        tally.features.add(AUDIO_OUTPUT)
    _google_extras(request, tally.features)
    tokens = math.ceil(tally.chars / CHARS_PER_TOKEN) + tally.media_tokens
    return RequestNeeds(tokens, frozenset(tally.features), schema, _max_output(request))


class _MessageTally(Tally):
    """The totals while walking a chat completion's messages."""

    __slots__ = ()

    def message(self, message: Mapping[str, Any]) -> None:
        role = message.get("role")
        if role in ("system", "developer"):
            self.features.add(SYSTEM_INSTRUCTION)
        elif role in ("tool", "function"):
            self.features.add(FUNCTION_CALLING)
        calls = message.get("tool_calls")
        if (isinstance(calls, list) and calls) or isinstance(message.get("function_call"), dict):
            self.features.add(FUNCTION_CALLING)
            self.chars += _size(calls or message.get("function_call"))
        content = message.get("content")
        if isinstance(content, str):
            self.chars += len(content)
        elif isinstance(content, list):
            self.parts(content)

    def parts(self, parts: Iterable[Any]) -> None:
        for part in parts:
            if not isinstance(part, Mapping):
                continue
            kind = part.get("type")
            if kind == "text" and isinstance(part.get("text"), str):
                self.chars += len(part["text"])
            elif kind == "image_url":
                image = part.get("image_url")
                url = image.get("url") if isinstance(image, Mapping) else image
                self.media(url, IMAGE_INPUT)
            elif kind == "input_audio":
                self.media(None, AUDIO_INPUT)
            elif kind == "file":
                file = part.get("file")
                data = file.get("file_data") if isinstance(file, Mapping) else None
                self.media(data, PDF_INPUT)

    def media(self, url: object, default: str) -> None:
        """One media part: its feature from a ``data:`` URL's mime type, else ``default``."""
        feature = default
        if isinstance(url, str) and url.startswith("data:"):
            mime = url[5:].partition(";")[0].partition(",")[0].strip().lower()
            feature = next((f for prefix, f in _DATA_URL_MEDIA if mime.startswith(prefix)), default)
        self.features.add(feature)
        self.media_tokens += MEDIA_PART_TOKENS


def _is_function_tool(tool: object) -> bool:
    return isinstance(tool, Mapping) and (
        tool.get("type") == "function" or isinstance(tool.get("function"), Mapping)
    )


def _response_format(value: object, features: set[str]) -> ResponseSchema | None:
    if not isinstance(value, Mapping):
        return None
    kind = value.get("type")
    if kind == "json_object":
        features.add(JSON_MODE)
    elif kind == "json_schema":
        features.add(STRUCTURED_OUTPUT)
        wrapper = value.get("json_schema")
        schema = wrapper.get("schema") if isinstance(wrapper, Mapping) else None
        if isinstance(schema, Mapping | bool):
            return ResponseSchema("jsonschema", schema)
    return None


def _google_extras(request: Mapping[str, Any], features: set[str]) -> None:
    """Gemini's own options: Google documents them as ``extra_body={"extra_body": {"google":
    {...}}}`` (the SDK merges the outer ``extra_body`` into the body), so they arrive under
    ``extra_body.google``; a top-level ``google`` is read the same way."""
    extra = request.get("extra_body")
    for google in (
        request.get("google"),
        extra.get("google") if isinstance(extra, Mapping) else None,
    ):
        if isinstance(google, Mapping):
            _google_features(google, features)


def _google_features(google: Mapping[str, Any], features: set[str]) -> None:
    cached = google.get("cached_content")
    if isinstance(cached, str) and cached:
        features.add(CACHED_CONTENT)
    thinking = google.get("thinking_config")
    if isinstance(thinking, Mapping):
        if thinking.get("thinking_budget") is not None:
            features.add(THINKING_BUDGET)
        if thinking.get("thinking_level") is not None:
            features.add(THINKING_LEVEL)


def _max_output(request: Mapping[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = request.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _size(value: Any) -> int:
    """Characters of ``value`` as compact JSON (0 when it cannot be serialised)."""
    try:
        return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
    except (RecursionError, TypeError, ValueError):
        return 0
