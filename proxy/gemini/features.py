"""What a generateContent request needs from a model: input size, features, response schema.

The SDK mixes camelCase and snake_case keys (``inlineData: {"mime_type": ...}``) and Google's
proto-JSON parser accepts both, so every key is looked up in both spellings.

The feature vocabulary (``FEATURES``), each set when the request uses it:

- ``function_calling``: ``tools[].functionDeclarations``, or function calls / responses in
  ``contents``
- ``google_search`` (``googleSearch`` or ``googleSearchRetrieval``), ``code_execution``,
  ``url_context``, ``google_maps``, ``file_search``, ``computer_use``: the matching tool
- ``structured_output``: ``responseMimeType: application/json`` with ``responseSchema`` or
  ``responseJsonSchema``; ``json_mode``: the same mime type without a schema;
  ``enum_output``: ``responseMimeType: text/x.enum``
- ``thinking_budget``, ``thinking_level``: ``thinkingConfig.thinkingBudget`` / ``thinkingLevel``
- ``image_input``, ``audio_input``, ``video_input``, ``pdf_input``: from the mime types of inline
  and file parts (a ``fileData`` YouTube URL without a mime type is video)
- ``image_output``, ``audio_output``: ``responseModalities`` (``speechConfig`` implies audio)
- ``system_instruction``, ``cached_content``: those top-level fields
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import PipelineError

FUNCTION_CALLING = "function_calling"
GOOGLE_SEARCH = "google_search"
CODE_EXECUTION = "code_execution"
URL_CONTEXT = "url_context"
GOOGLE_MAPS = "google_maps"
FILE_SEARCH = "file_search"
COMPUTER_USE = "computer_use"
STRUCTURED_OUTPUT = "structured_output"
JSON_MODE = "json_mode"
ENUM_OUTPUT = "enum_output"
THINKING_BUDGET = "thinking_budget"
THINKING_LEVEL = "thinking_level"
IMAGE_INPUT = "image_input"
AUDIO_INPUT = "audio_input"
VIDEO_INPUT = "video_input"
PDF_INPUT = "pdf_input"
IMAGE_OUTPUT = "image_output"
AUDIO_OUTPUT = "audio_output"
SYSTEM_INSTRUCTION = "system_instruction"
CACHED_CONTENT = "cached_content"

FEATURES: tuple[str, ...] = (
    FUNCTION_CALLING,
    GOOGLE_SEARCH,
    CODE_EXECUTION,
    URL_CONTEXT,
    GOOGLE_MAPS,
    FILE_SEARCH,
    COMPUTER_USE,
    STRUCTURED_OUTPUT,
    JSON_MODE,
    ENUM_OUTPUT,
    THINKING_BUDGET,
    THINKING_LEVEL,
    IMAGE_INPUT,
    AUDIO_INPUT,
    VIDEO_INPUT,
    PDF_INPUT,
    IMAGE_OUTPUT,
    AUDIO_OUTPUT,
    SYSTEM_INSTRUCTION,
    CACHED_CONTENT,
)
"""Every feature name ``request_needs`` may report; configuration is validated against it."""

# Tool key (camelCase) -> feature. functionDeclarations is handled apart: an empty list is no use.
_TOOL_FEATURES: tuple[tuple[str, str], ...] = (
    ("googleSearch", GOOGLE_SEARCH),
    ("googleSearchRetrieval", GOOGLE_SEARCH),
    ("codeExecution", CODE_EXECUTION),
    ("urlContext", URL_CONTEXT),
    ("googleMaps", GOOGLE_MAPS),
    ("fileSearch", FILE_SEARCH),
    ("computerUse", COMPUTER_USE),
)
_MEDIA_FEATURES: tuple[tuple[str, str], ...] = (
    ("image/", IMAGE_INPUT),
    ("audio/", AUDIO_INPUT),
    ("video/", VIDEO_INPUT),
    ("application/pdf", PDF_INPUT),
)
_MODALITY_FEATURES: tuple[tuple[str, str], ...] = (("IMAGE", IMAGE_OUTPUT), ("AUDIO", AUDIO_OUTPUT))

CHARS_PER_TOKEN = 4
MEDIA_PART_TOKENS = 258
"""What Gemini charges for one image of up to 384x384 pixels (one tile); larger images, audio
and video cost more, so the estimate stays on the low side and refuses a model only when the
request is clearly too large for it."""

_CAMEL_HUMP = re.compile(r"(?<!^)(?=[A-Z])")

Dialect = Literal["openapi", "jsonschema"]
"""``openapi``: the OpenAPI-subset ``responseSchema``; ``jsonschema``: ``responseJsonSchema``."""


class NotContinuable(PipelineError):
    """A request body that cannot carry the text already delivered as the model's turn, so a
    broken stream of it cannot be continued on another model."""


@dataclass(frozen=True, slots=True)
class ResponseSchema:
    """The schema a request asked the answer to follow, as given."""

    dialect: Dialect
    schema: Any


@dataclass(frozen=True, slots=True)
class RequestNeeds:
    """What a model must offer to serve one request. The empty value needs nothing."""

    estimated_input_tokens: int = 0
    features: frozenset[str] = frozenset()
    json_schema: ResponseSchema | None = None
    max_output_tokens: int | None = None
    """``generationConfig.maxOutputTokens`` when the request sets it."""

    @property
    def expects_json(self) -> bool:
        """The answer must be JSON (JSON mode or structured output)."""
        return STRUCTURED_OUTPUT in self.features or JSON_MODE in self.features

    def with_input_tokens(self, tokens: int) -> RequestNeeds:
        """These needs with the estimate raised to ``tokens`` (e.g. the count an upstream
        "input too long" error reported), never lowered."""
        return dataclasses.replace(
            self, estimated_input_tokens=max(self.estimated_input_tokens, tokens)
        )


def get_field(obj: Mapping[str, Any], camel: str) -> Any:
    """``obj[camel]``, else its snake_case spelling, else None."""
    if camel in obj:
        return obj[camel]
    return obj.get(_CAMEL_HUMP.sub("_", camel).lower())


def parse_request(body: bytes) -> dict[str, Any] | None:
    """The request body as a JSON object; None when it is not one (malformed bodies are the
    upstream's to reject, with its own 400)."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return parsed if isinstance(parsed, dict) else None


def needs_of_body(body: bytes) -> RequestNeeds:
    """``request_needs`` of a raw body; a body that is not a JSON object needs nothing."""
    request = parse_request(body)
    return RequestNeeds() if request is None else request_needs(request)


def request_needs(request: Mapping[str, Any]) -> RequestNeeds:
    """What a parsed GenerateContentRequest needs (a countTokens body wrapping one in
    ``generateContentRequest`` too). Fields of the wrong shape are skipped, never raised on."""
    wrapped = get_field(request, "generateContentRequest")
    if isinstance(wrapped, Mapping) and "contents" not in request:
        request = wrapped
    tally = ContentTally()
    contents = request.get("contents")
    if isinstance(contents, list):
        for content in contents:
            tally.content(content)
    system = get_field(request, "systemInstruction")
    if system:
        tally.features.add(SYSTEM_INSTRUCTION)
        tally.content(system)
    tools = request.get("tools")
    if isinstance(tools, list):
        tally.chars += _json_size(tools)
        for tool in tools:
            if isinstance(tool, Mapping):
                tally.features.update(_tool_features(tool))
    cached = get_field(request, "cachedContent")
    if isinstance(cached, str) and cached:
        tally.features.add(CACHED_CONTENT)
    config = get_field(request, "generationConfig")
    schema: ResponseSchema | None = None
    max_output: int | None = None
    if isinstance(config, Mapping):
        schema = _response_schema(config)
        tally.features.update(_config_features(config, schema))
        limit = get_field(config, "maxOutputTokens")
        if isinstance(limit, int) and not isinstance(limit, bool):
            max_output = limit
    tokens = math.ceil(tally.chars / CHARS_PER_TOKEN) + tally.media_tokens
    return RequestNeeds(tokens, frozenset(tally.features), schema, max_output)


def continuation_body(body: bytes, delivered_text: str) -> bytes:
    """The same request with the text already delivered appended as the model's turn, so a
    fallback model continues the answer instead of starting over. Every other key is kept as
    given; a trailing model turn (the client's own prefill) is extended rather than followed by
    a second one, since Gemini expects the roles to alternate.

    Raises ``NotContinuable`` when the body is not a request with a ``contents`` list.
    """
    request = parse_request(body)
    if request is None or not isinstance(request.get("contents"), list):
        raise NotContinuable("not a generateContent request with a contents list")
    if not delivered_text:
        return body
    contents: list[Any] = list(request["contents"])
    last = contents[-1] if contents else None
    if (
        isinstance(last, dict)
        and last.get("role") == "model"
        and isinstance(last.get("parts"), list)
    ):
        contents[-1] = {**last, "parts": [*last["parts"], {"text": delivered_text}]}
    else:
        contents.append({"role": "model", "parts": [{"text": delivered_text}]})
    request["contents"] = contents
    return json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class Tally:
    """Running totals of a request's size and features, whatever API shaped it."""

    __slots__ = ("chars", "features", "media_tokens")

    def __init__(self) -> None:
        self.chars = 0
        self.media_tokens = 0
        self.features: set[str] = set()


class ContentTally(Tally):
    """The totals while walking a Gemini request's contents."""

    __slots__ = ()

    def content(self, content: Any) -> None:
        if isinstance(content, Mapping) and isinstance(content.get("parts"), list):
            self.parts(content["parts"])

    def parts(self, parts: Iterable[Any]) -> None:
        for part in parts:
            if isinstance(part, Mapping):
                self.part(part)

    def part(self, part: Mapping[str, Any]) -> None:
        text = part.get("text")
        if isinstance(text, str):
            self.chars += len(text)
        for key in ("inlineData", "fileData"):
            media = get_field(part, key)
            if isinstance(media, Mapping):
                self.media(media, inline=key == "inlineData")
        call = get_field(part, "functionCall")
        if isinstance(call, Mapping):
            self.features.add(FUNCTION_CALLING)
            self.chars += _json_size(call)
        response = get_field(part, "functionResponse")
        if isinstance(response, Mapping):
            self.features.add(FUNCTION_CALLING)
            self.chars += _json_size({k: v for k, v in response.items() if k != "parts"})
            nested = response.get("parts")  # multimodal function responses carry parts
            if isinstance(nested, list):
                self.parts(nested)
        for key in ("executableCode", "codeExecutionResult"):
            value = get_field(part, key)
            if isinstance(value, Mapping):
                self.chars += _json_size(value)

    def media(self, media: Mapping[str, Any], inline: bool) -> None:
        mime = _mime(get_field(media, "mimeType"))
        if not mime and not inline and "youtube.com/" in str(get_field(media, "fileUri") or ""):
            mime = "video/*"
        for prefix, feature in _MEDIA_FEATURES:
            if mime.startswith(prefix):
                self.features.add(feature)
        data = media.get("data")
        if inline and isinstance(data, str) and _is_text_mime(mime):
            # Inline text is tokenised like text: base64 carries 3 bytes per 4 characters.
            self.chars += len(data) * 3 // 4
        else:
            self.media_tokens += MEDIA_PART_TOKENS


def _tool_features(tool: Mapping[str, Any]) -> set[str]:
    found = {feature for key, feature in _TOOL_FEATURES if get_field(tool, key) is not None}
    declarations = get_field(tool, "functionDeclarations")
    if isinstance(declarations, list) and declarations:
        found.add(FUNCTION_CALLING)
    return found


def _response_schema(config: Mapping[str, Any]) -> ResponseSchema | None:
    json_schema = get_field(config, "responseJsonSchema")
    if isinstance(json_schema, Mapping | bool):
        return ResponseSchema("jsonschema", json_schema)
    schema = get_field(config, "responseSchema")
    if isinstance(schema, Mapping):
        return ResponseSchema("openapi", schema)
    return None


def _config_features(config: Mapping[str, Any], schema: ResponseSchema | None) -> set[str]:
    found: set[str] = set()
    mime = _mime(get_field(config, "responseMimeType"))
    if mime == "application/json":
        found.add(STRUCTURED_OUTPUT if schema is not None else JSON_MODE)
    elif mime == "text/x.enum":
        found.add(ENUM_OUTPUT)
    thinking = get_field(config, "thinkingConfig")
    if isinstance(thinking, Mapping):
        if get_field(thinking, "thinkingBudget") is not None:
            found.add(THINKING_BUDGET)
        if get_field(thinking, "thinkingLevel") is not None:
            found.add(THINKING_LEVEL)
    modalities = get_field(config, "responseModalities")
    if isinstance(modalities, list):
        named = {m.upper() for m in modalities if isinstance(m, str)}
        found.update(feature for name, feature in _MODALITY_FEATURES if name in named)
    if get_field(config, "speechConfig") is not None:
        found.add(AUDIO_OUTPUT)
    return found


def _mime(value: Any) -> str:
    """A mime type without parameters, lower case; empty when absent."""
    return value.split(";", 1)[0].strip().lower() if isinstance(value, str) else ""


def _is_text_mime(mime: str) -> bool:
    return mime.startswith("text/") or mime in ("application/json", "application/xml")


def _json_size(value: Any) -> int:
    """Characters of ``value`` as compact JSON; 0 when too deeply nested to serialise (the
    estimate errs low rather than refuse a model)."""
    try:
        return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
    except (RecursionError, TypeError, ValueError):
        return 0
