"""Request needs, answer schemas and model capabilities: pure functions, no servers."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any

import pytest

from proxy.errors import ConfigError
from proxy.gemini import features as f
from proxy.gemini.features import (
    FEATURES,
    MEDIA_PART_TOKENS,
    NotContinuable,
    RequestNeeds,
    ResponseSchema,
    continuation_body,
    get_field,
    needs_of_body,
    parse_request,
    request_needs,
)
from proxy.gemini.schema import MAX_DEPTH, check_json_answer, validate
from proxy.pipeline.capabilities import (
    CapabilityRegistry,
    InputTooLong,
    ModelCapabilities,
    is_input_too_long,
    parse_input_too_long,
)
from proxy.validation import build_dataclass

PRO, FLASH, LITE = "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"
CHAIN = (PRO, FLASH, LITE)

# The exact bodies google-genai 3.3.0 sent (gemini-wire.md section 4.1).
SDK_RICH = (
    b'{"contents": [{"parts": [{"text": "Hi"}, {"inlineData": {"data": "iVBORw==", '
    b'"mime_type": "image/png"}}], "role": "user"}], "systemInstruction": {"parts": [{"text": '
    b'"You are terse."}], "role": "user"}, "safetySettings": [{"category": '
    b'"HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_ONLY_HIGH"}], "cachedContent": '
    b'"cachedContents/abc", "generationConfig": {"temperature": 0.2, "topP": 0.9, "topK": 40.0, '
    b'"candidateCount": 1, "maxOutputTokens": 256, "stopSequences": ["END"], "seed": 7, '
    b'"responseMimeType": "application/json", "responseSchema": {"properties": {"name": '
    b'{"title": "Name", "type": "STRING"}, "minutes": {"title": "Minutes", "type": "INTEGER"}}, '
    b'"property_ordering": ["name", "minutes"], "required": ["name", "minutes"], "title": '
    b'"Recipe", "type": "OBJECT"}, "thinkingConfig": {"include_thoughts": true, '
    b'"thinking_budget": 1024}}}'
)
SDK_TOOLS = (
    b'{"contents": [{"parts": [{"text": "Weather in Paris?"}], "role": "user"}], "tools": '
    b'[{"googleSearch": {}}, {"codeExecution": {}}, {"functionDeclarations": [{"description": '
    b'"Get the weather for a city.", "name": "get_weather", "parameters_json_schema": {"type": '
    b'"object", "properties": {"city": {"type": "string"}}, "required": ["city"]}, '
    b'"response_json_schema": {"type": "string"}}]}], "toolConfig": {"functionCallingConfig": '
    b'{"allowedFunctionNames": ["get_weather"], "mode": "ANY"}}, "generationConfig": '
    b'{"responseMimeType": "application/json", "responseJsonSchema": {"type": "object", '
    b'"properties": {"a": {"type": "string"}}}, "thinkingConfig": {"thinking_level": "LOW"}}}'
)
SDK_ROUND_TRIP = (
    b'{"contents": [{"parts": [{"text": "Weather?"}], "role": "user"}, {"parts": '
    b'[{"functionCall": {"args": {"city": "Paris"}, "name": "get_weather"}}], "role": "model"}, '
    b'{"parts": [{"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}}], '
    b'"role": "user"}], "generationConfig": {}}'
)


def body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "parts": list(parts)}


def needs(**generation_config: Any) -> RequestNeeds:
    return request_needs({"contents": [user({"text": "x"})], "generationConfig": generation_config})


# --- parse_request ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"[1, 2]", b'"text"', b"null", b"{", b"\xff\xfe", b"42", b'{"a": 1} x'],
)
def test_parse_request_returns_none_for_anything_but_a_json_object(raw: bytes) -> None:
    assert parse_request(raw) is None


def test_parse_request_survives_absurd_nesting() -> None:
    assert parse_request(b"[" * 200_000 + b"]" * 200_000) is None
    assert parse_request(b'{"a":' * 200_000 + b"1" + b"}" * 200_000) is None


def test_parse_request_reads_utf8_objects() -> None:
    assert parse_request('{"contents": [], "x": "héllo"}'.encode()) == {
        "contents": [],
        "x": "héllo",
    }


def test_get_field_prefers_camel_case_and_falls_back_to_snake_case() -> None:
    assert get_field({"generation_config": 1}, "generationConfig") == 1
    assert get_field({"generationConfig": 2, "generation_config": 1}, "generationConfig") == 2
    assert get_field({"generationConfig": None}, "generationConfig") is None
    assert get_field({}, "responseJsonSchema") is None
    assert get_field({"response_json_schema": 3}, "responseJsonSchema") == 3


# --- request_needs: the SDK's own bodies -----------------------------------------------------


def test_sdk_rich_config_body() -> None:
    got = needs_of_body(SDK_RICH)
    assert got.features == {
        f.IMAGE_INPUT,
        f.SYSTEM_INSTRUCTION,
        f.CACHED_CONTENT,
        f.STRUCTURED_OUTPUT,
        f.THINKING_BUDGET,
    }
    # "Hi" + "You are terse." = 16 characters -> 4 tokens, plus one image.
    assert got.estimated_input_tokens == 4 + MEDIA_PART_TOKENS
    assert got.max_output_tokens == 256
    assert got.json_schema is not None and got.json_schema.dialect == "openapi"
    assert got.json_schema.schema["required"] == ["name", "minutes"]
    assert got.expects_json


def test_sdk_tools_body() -> None:
    got = needs_of_body(SDK_TOOLS)
    assert got.features == {
        f.GOOGLE_SEARCH,
        f.CODE_EXECUTION,
        f.FUNCTION_CALLING,
        f.STRUCTURED_OUTPUT,
        f.THINKING_LEVEL,
    }
    assert got.json_schema == ResponseSchema(
        "jsonschema", {"type": "object", "properties": {"a": {"type": "string"}}}
    )
    tools = json.loads(SDK_TOOLS)["tools"]
    chars = len("Weather in Paris?") + len(json.dumps(tools, separators=(",", ":")))
    assert got.estimated_input_tokens == math.ceil(chars / 4)
    assert got.max_output_tokens is None


def test_sdk_function_call_round_trip_body() -> None:
    got = needs_of_body(SDK_ROUND_TRIP)
    assert got.features == {f.FUNCTION_CALLING}
    assert got.json_schema is None and not got.expects_json
    assert got.estimated_input_tokens > math.ceil(len("Weather?") / 4)


def test_needs_of_a_body_that_is_not_json_is_nothing() -> None:
    assert needs_of_body(b"garbage") == RequestNeeds()
    assert needs_of_body(b"[]") == RequestNeeds()
    assert RequestNeeds().features == frozenset() and not RequestNeeds().expects_json


# --- request_needs: features -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "feature"),
    [
        ({"googleSearch": {}}, f.GOOGLE_SEARCH),
        ({"google_search": {}}, f.GOOGLE_SEARCH),
        ({"googleSearchRetrieval": {"dynamicRetrievalConfig": {}}}, f.GOOGLE_SEARCH),
        ({"codeExecution": {}}, f.CODE_EXECUTION),
        ({"code_execution": {}}, f.CODE_EXECUTION),
        ({"urlContext": {}}, f.URL_CONTEXT),
        ({"url_context": {}}, f.URL_CONTEXT),
        ({"googleMaps": {}}, f.GOOGLE_MAPS),
        ({"fileSearch": {"fileSearchStoreNames": ["x"]}}, f.FILE_SEARCH),
        ({"computer_use": {"environment": "ENVIRONMENT_BROWSER"}}, f.COMPUTER_USE),
        ({"functionDeclarations": [{"name": "f"}]}, f.FUNCTION_CALLING),
        ({"function_declarations": [{"name": "f"}]}, f.FUNCTION_CALLING),
    ],
)
def test_tools_map_to_features(tool: dict[str, Any], feature: str) -> None:
    got = request_needs({"contents": [], "tools": [tool]})
    assert got.features == {feature}


def test_empty_function_declarations_and_odd_tools_add_nothing() -> None:
    got = request_needs(
        {"contents": [], "tools": [{"functionDeclarations": []}, "junk", None, {"unknown": {}}]}
    )
    assert got.features == frozenset()


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"responseMimeType": "application/json"}, {f.JSON_MODE}),
        ({"response_mime_type": "Application/JSON; charset=utf-8"}, {f.JSON_MODE}),
        (
            {"responseMimeType": "application/json", "responseSchema": {"type": "STRING"}},
            {f.STRUCTURED_OUTPUT},
        ),
        (
            {"response_mime_type": "application/json", "response_json_schema": {}},
            {f.STRUCTURED_OUTPUT},
        ),
        ({"responseMimeType": "text/x.enum", "responseSchema": {"enum": ["a"]}}, {f.ENUM_OUTPUT}),
        ({"responseMimeType": "text/plain"}, set()),
        ({"thinkingConfig": {"thinkingBudget": 0}}, {f.THINKING_BUDGET}),
        ({"thinking_config": {"thinking_budget": -1}}, {f.THINKING_BUDGET}),
        ({"thinkingConfig": {"thinkingLevel": "HIGH"}}, {f.THINKING_LEVEL}),
        ({"thinkingConfig": {"include_thoughts": True}}, set()),
        ({"responseModalities": ["TEXT", "IMAGE"]}, {f.IMAGE_OUTPUT}),
        ({"response_modalities": ["audio"]}, {f.AUDIO_OUTPUT}),
        ({"speechConfig": {"voiceConfig": {}}}, {f.AUDIO_OUTPUT}),
        ({"responseModalities": ["TEXT"]}, set()),
        ({"responseModalities": "IMAGE"}, set()),
        ({"temperature": 0.1, "topK": 40.0}, set()),
    ],
)
def test_generation_config_features(config: dict[str, Any], expected: set[str]) -> None:
    assert needs(**config).features == expected


def test_schema_without_json_mime_is_kept_but_expects_no_json() -> None:
    got = needs(responseMimeType="text/x.enum", responseSchema={"type": "STRING", "enum": ["a"]})
    assert got.json_schema == ResponseSchema("openapi", {"type": "STRING", "enum": ["a"]})
    assert not got.expects_json


def test_json_schema_wins_over_openapi_schema_when_both_are_given() -> None:
    got = needs(
        responseMimeType="application/json",
        responseSchema={"type": "STRING"},
        responseJsonSchema={"type": "integer"},
    )
    assert got.json_schema == ResponseSchema("jsonschema", {"type": "integer"})


def test_generation_config_in_snake_case() -> None:
    got = request_needs(
        {
            "contents": [],
            "generation_config": {
                "response_mime_type": "application/json",
                "response_schema": {"type": "OBJECT"},
                "max_output_tokens": 99,
            },
        }
    )
    assert got.features == {f.STRUCTURED_OUTPUT}
    assert got.max_output_tokens == 99


@pytest.mark.parametrize("value", ["100", 1.5, True, None])
def test_max_output_tokens_only_when_an_integer(value: Any) -> None:
    assert needs(maxOutputTokens=value).max_output_tokens is None


@pytest.mark.parametrize(
    ("part", "feature"),
    [
        ({"inlineData": {"mimeType": "image/jpeg", "data": "AAAA"}}, f.IMAGE_INPUT),
        ({"inline_data": {"mime_type": "image/webp", "data": "AAAA"}}, f.IMAGE_INPUT),
        ({"inlineData": {"mime_type": "audio/wav", "data": "AAAA"}}, f.AUDIO_INPUT),
        ({"fileData": {"fileUri": "files/abc", "mimeType": "video/mp4"}}, f.VIDEO_INPUT),
        ({"file_data": {"file_uri": "files/abc", "mime_type": "application/pdf"}}, f.PDF_INPUT),
        ({"fileData": {"fileUri": "https://www.youtube.com/watch?v=x"}}, f.VIDEO_INPUT),
        ({"inlineData": {"mimeType": "AUDIO/MP3", "data": "AAAA"}}, f.AUDIO_INPUT),
    ],
)
def test_media_parts_map_to_input_features(part: dict[str, Any], feature: str) -> None:
    got = request_needs({"contents": [user(part)]})
    assert got.features == {feature}
    assert got.estimated_input_tokens == MEDIA_PART_TOKENS


def test_media_in_the_system_instruction_and_in_function_responses_counts() -> None:
    response_part = {
        "functionResponse": {
            "name": "snap",
            "response": {"ok": True},
            "parts": [{"inlineData": {"mimeType": "image/png", "data": "A" * 4000}}],
        }
    }
    got = request_needs(
        {
            "contents": [user(response_part)],
            "system_instruction": {"parts": [{"file_data": {"mime_type": "audio/ogg"}}]},
        }
    )
    assert got.features == {
        f.FUNCTION_CALLING,
        f.IMAGE_INPUT,
        f.AUDIO_INPUT,
        f.SYSTEM_INSTRUCTION,
    }
    # The base64 of the nested image is not counted as text.
    assert got.estimated_input_tokens < 2 * MEDIA_PART_TOKENS + 20


def test_inline_text_is_counted_by_its_size() -> None:
    data = "QUFB" * 1000  # 3000 bytes of text
    got = request_needs(
        {"contents": [user({"inlineData": {"mimeType": "text/plain", "data": data}})]}
    )
    assert got.features == frozenset()
    assert got.estimated_input_tokens == 750


def test_system_instruction_and_cached_content_need_a_value() -> None:
    empty = request_needs({"contents": [], "systemInstruction": None, "cachedContent": ""})
    assert empty.features == frozenset()
    snake = request_needs(
        {
            "contents": [],
            "system_instruction": {"parts": [{"text": "abcd"}]},
            "cached_content": "cachedContents/x",
        }
    )
    assert snake.features == {f.SYSTEM_INSTRUCTION, f.CACHED_CONTENT}
    assert snake.estimated_input_tokens == 1


def test_count_tokens_body_wrapping_a_generate_request() -> None:
    wrapped = {
        "generateContentRequest": {
            "model": "models/gemini-2.5-flash",
            "contents": [user({"text": "12345678"})],
            "tools": [{"googleSearch": {}}],
        }
    }
    got = request_needs(wrapped)
    assert f.GOOGLE_SEARCH in got.features
    assert got.estimated_input_tokens >= 2
    plain = request_needs({"contents": [user({"text": "12345678"})]})
    assert plain.estimated_input_tokens == 2


def test_every_reported_feature_is_in_the_vocabulary() -> None:
    everything = request_needs(
        {
            "contents": [
                user(
                    {"inlineData": {"mimeType": "image/png", "data": ""}},
                    {"inlineData": {"mimeType": "audio/mp3", "data": ""}},
                    {"fileData": {"mimeType": "video/mp4", "fileUri": "files/v"}},
                    {"fileData": {"mimeType": "application/pdf", "fileUri": "files/p"}},
                )
            ],
            "systemInstruction": {"parts": [{"text": "s"}]},
            "cachedContent": "cachedContents/c",
            "tools": [
                {"functionDeclarations": [{"name": "f"}]},
                {"googleSearch": {}},
                {"codeExecution": {}},
                {"urlContext": {}},
                {"googleMaps": {}},
                {"fileSearch": {}},
                {"computerUse": {}},
            ],
            "generationConfig": {
                "responseMimeType": "application/json",
                "responseSchema": {"type": "OBJECT"},
                "responseModalities": ["IMAGE", "AUDIO"],
                "thinkingConfig": {"thinkingBudget": 1, "thinkingLevel": "LOW"},
            },
        }
    )
    assert everything.features <= set(FEATURES)
    missing = set(FEATURES) - everything.features
    assert missing == {f.JSON_MODE, f.ENUM_OUTPUT}  # exclusive with structured_output
    assert len(set(FEATURES)) == len(FEATURES)


# --- request_needs: token estimate -----------------------------------------------------------


def test_token_estimate_rounds_up_over_all_text() -> None:
    got = request_needs(
        {
            "contents": [user({"text": "a" * 5}), {"role": "model", "parts": [{"text": "b" * 4}]}],
            "systemInstruction": {"parts": [{"text": "c" * 3}]},
        }
    )
    assert got.estimated_input_tokens == math.ceil(12 / 4)


def test_token_estimate_for_a_large_prompt_and_several_images() -> None:
    image = {"inlineData": {"mimeType": "image/png", "data": "A" * 100_000}}
    got = request_needs({"contents": [user({"text": "x" * 480_000}, image, image)]})
    assert got.estimated_input_tokens == 120_000 + 2 * MEDIA_PART_TOKENS


def test_token_estimate_counts_non_ascii_characters_not_escapes() -> None:
    tools = [{"functionDeclarations": [{"name": "f", "description": "日本語"}]}]
    got = request_needs({"contents": [], "tools": tools})
    compact = json.dumps(tools, ensure_ascii=False, separators=(",", ":"))
    assert got.estimated_input_tokens == math.ceil(len(compact) / 4)


def test_executable_code_and_results_count_as_text() -> None:
    code = {"executableCode": {"language": "PYTHON", "code": "print(1)" * 100}}
    result = {"code_execution_result": {"outcome": "OUTCOME_OK", "output": "1\n" * 100}}
    got = request_needs({"contents": [{"role": "model", "parts": [code, result]}]})
    assert got.estimated_input_tokens > 250
    assert got.features == frozenset()


@pytest.mark.parametrize(
    "request_body",
    [
        {},
        {"contents": None},
        {"contents": "text"},
        {"contents": [None, 1, "x", {"parts": None}, {"parts": [None, 3, {"text": 5}]}]},
        {"contents": [], "tools": "x", "generationConfig": [], "systemInstruction": 0},
        {"contents": [], "generationConfig": {"thinkingConfig": "x", "responseModalities": [1]}},
        {"contents": [user({"inlineData": "x"}, {"fileData": {"mimeType": 5}})]},
    ],
)
def test_malformed_shapes_are_skipped_not_raised(request_body: dict[str, Any]) -> None:
    got = request_needs(request_body)
    assert got.features <= set(FEATURES)
    assert got.estimated_input_tokens >= 0


def test_deeply_nested_tool_declarations_do_not_raise() -> None:
    nested: Any = {}
    for _ in range(100_000):
        nested = {"a": nested}
    got = request_needs({"contents": [], "tools": [{"functionDeclarations": [nested]}]})
    assert f.FUNCTION_CALLING in got.features


def test_with_input_tokens_only_raises_the_estimate() -> None:
    base = RequestNeeds(estimated_input_tokens=100, features=frozenset({f.JSON_MODE}))
    assert base.with_input_tokens(5000).estimated_input_tokens == 5000
    assert base.with_input_tokens(10).estimated_input_tokens == 100
    assert base.with_input_tokens(5000).features == base.features


# --- continuation_body -----------------------------------------------------------------------


def test_continuation_appends_the_delivered_text_as_a_model_turn() -> None:
    out = json.loads(continuation_body(SDK_RICH, "Once upon a"))
    original = json.loads(SDK_RICH)
    assert out["contents"] == [
        *original["contents"],
        {"role": "model", "parts": [{"text": "Once upon a"}]},
    ]
    # Every other key is kept exactly, snake_case spellings included.
    assert {k: v for k, v in out.items() if k != "contents"} == {
        k: v for k, v in original.items() if k != "contents"
    }
    assert out["generationConfig"]["thinkingConfig"] == {
        "include_thoughts": True,
        "thinking_budget": 1024,
    }
    assert list(out) == list(original)


def test_continuation_after_a_function_round_trip_and_with_unicode() -> None:
    out = continuation_body(SDK_ROUND_TRIP, 'Il fait "beau" à Paris ☀')
    parsed = json.loads(out)
    assert parsed["contents"][-1] == {
        "role": "model",
        "parts": [{"text": 'Il fait "beau" à Paris ☀'}],
    }
    assert len(parsed["contents"]) == 4
    assert "☀".encode() in out


def test_continuation_extends_a_trailing_model_turn() -> None:
    prefilled = body(
        {
            "contents": [user({"text": "Count"}), {"role": "model", "parts": [{"text": "1, 2"}]}],
            "generation_config": {"max_output_tokens": 5},
        }
    )
    out = json.loads(continuation_body(prefilled, ", 3"))
    assert out["contents"][-1] == {"role": "model", "parts": [{"text": "1, 2"}, {"text": ", 3"}]}
    assert len(out["contents"]) == 2
    assert out["generation_config"] == {"max_output_tokens": 5}


def test_continuation_with_nothing_delivered_is_the_original_body() -> None:
    assert continuation_body(SDK_TOOLS, "") == SDK_TOOLS


def test_continuation_of_empty_contents() -> None:
    out = json.loads(continuation_body(b'{"contents": []}', "x"))
    assert out == {"contents": [{"role": "model", "parts": [{"text": "x"}]}]}


@pytest.mark.parametrize("raw", [b"", b"nope", b"[]", b"{}", b'{"contents": {"parts": []}}'])
def test_continuation_refuses_what_is_not_a_request(raw: bytes) -> None:
    with pytest.raises(NotContinuable, match="contents"):
        continuation_body(raw, "x")


# --- schema: OpenAPI subset ------------------------------------------------------------------

RECIPE = json.loads(SDK_RICH)["generationConfig"]["responseSchema"]

OPENAPI_CASES: list[tuple[Any, Any, list[str]]] = [
    (RECIPE, {"name": "Soup", "minutes": 20}, []),
    (RECIPE, {"name": "Soup", "minutes": 20.0}, []),
    (RECIPE, {"name": "Soup", "minutes": 20, "extra": True}, []),
    (RECIPE, {"name": "Soup", "minutes": "20"}, ["$.minutes: expected integer, got string"]),
    (RECIPE, {"name": "Soup", "minutes": 2.5}, ["$.minutes: expected integer, got number"]),
    (RECIPE, {"name": "Soup"}, ["$: missing required property 'minutes'"]),
    (RECIPE, [], ["$: expected object, got array"]),
    (RECIPE, None, ["$: expected object, got null"]),
    ({"type": "string"}, "x", []),
    ({"type": "String"}, 1, ["$: expected string, got integer"]),
    ({"type": "NUMBER"}, 1, []),
    ({"type": "NUMBER"}, True, ["$: expected number, got boolean"]),
    ({"type": "INTEGER"}, False, ["$: expected integer, got boolean"]),
    ({"type": "BOOLEAN"}, 0, ["$: expected boolean, got integer"]),
    ({"type": "NULL"}, None, []),
    ({"type": "NULL"}, 0, ["$: expected null, got integer"]),
    ({"type": "TYPE_UNSPECIFIED"}, {"anything": 1}, []),
    ({"type": "STRING", "nullable": True}, None, []),
    ({"type": "STRING", "nullable": False}, None, ["$: expected string, got null"]),
    ({"type": "STRING", "enum": ["a", "b"]}, "b", []),
    ({"type": "STRING", "enum": ["a", "b"]}, "c", ['$: "c" is not one of the enum values']),
    ({"type": "INTEGER", "format": "enum", "enum": ["1", "2"]}, 2, []),
    ({"enum": ["1"]}, True, ["$: true is not one of the enum values"]),
    ({"type": "ARRAY", "items": {"type": "INTEGER"}}, [1, 2, 3], []),
    (
        {"type": "ARRAY", "items": {"type": "INTEGER"}},
        [1, "2"],
        ["$[1]: expected integer, got string"],
    ),
    ({"type": "ARRAY", "minItems": "2"}, [1], ["$: 1 items, fewer than minItems 2"]),
    (
        {"type": "ARRAY", "min_items": 1, "max_items": "2"},
        [1, 2, 3],
        ["$: 3 items, more than maxItems 2"],
    ),
    ({"type": "ARRAY", "maxItems": 2}, [1, 2], []),
    ({"type": "ARRAY", "minItems": "lots"}, [], []),
    (
        {"anyOf": [{"type": "STRING"}, {"type": "INTEGER"}]},
        1.5,
        ["$: matches none of the alternatives ($: expected string, got number)"],
    ),
    ({"any_of": [{"type": "STRING"}, {"type": "INTEGER"}]}, 3, []),
    (
        {"type": "OBJECT", "properties": {"a b": {"type": "STRING"}}},
        {"a b": 1},
        ['$["a b"]: expected string, got integer'],
    ),
    # additionalProperties and const are JSON Schema only: ignored here.
    ({"type": "OBJECT", "additionalProperties": False}, {"x": 1}, []),
    ({"const": 1}, 2, []),
    # Unknown keywords are ignored.
    ({"type": "STRING", "pattern": "^a$", "maxLength": 1, "format": "date-time"}, "bbb", []),
    ({"type": "INTEGER", "minimum": 10}, 1, []),
    ({}, {"x": [1, None]}, []),
]


@pytest.mark.parametrize(("schema", "value", "expected"), OPENAPI_CASES)
def test_openapi_schema(schema: Any, value: Any, expected: list[str]) -> None:
    assert validate(value, schema, "openapi") == expected


def test_openapi_nested_objects_report_full_paths() -> None:
    schema = {
        "type": "OBJECT",
        "properties": {
            "recipes": {
                "type": "ARRAY",
                "items": {
                    "type": "OBJECT",
                    "properties": {
                        "name": {"type": "STRING"},
                        "steps": {"type": "ARRAY", "items": {"type": "STRING"}},
                    },
                    "required": ["name"],
                },
            }
        },
    }
    value = {"recipes": [{"name": "a", "steps": ["x"]}, {"steps": ["y", 3]}]}
    assert validate(value, schema, "openapi") == [
        "$.recipes[1]: missing required property 'name'",
        "$.recipes[1].steps[1]: expected string, got integer",
    ]


# --- schema: JSON Schema subset --------------------------------------------------------------

DEFS_SCHEMA = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
            },
            "required": ["name"],
            "additionalProperties": False,
        }
    },
    "$ref": "#/$defs/node",
}

JSONSCHEMA_CASES: list[tuple[Any, Any, list[str]]] = [
    ({"type": "object", "properties": {"a": {"type": "string"}}}, {"a": "x"}, []),
    (
        {"type": "object", "properties": {"a": {"type": "string"}}},
        {"a": 1},
        ["$.a: expected string, got integer"],
    ),
    ({"type": ["string", "null"]}, None, []),
    ({"type": ["string", "null"]}, 1, ["$: expected string or null, got integer"]),
    ({"type": "integer"}, 3.0, []),
    ({"type": "number"}, 3, []),
    ({"type": "array"}, {}, ["$: expected array, got object"]),
    ({"enum": ["a", 1, None]}, None, []),
    ({"enum": [1]}, 1.0, []),
    ({"enum": [1]}, True, ["$: true is not one of the enum values"]),
    ({"enum": [[1, 2]]}, [1, 2], []),
    ({"enum": [{"a": 1}]}, {"a": True}, ['$: {"a": true} is not one of the enum values']),
    ({"enum": ["1"]}, 1, ["$: 1 is not one of the enum values"]),
    ({"const": "x"}, "x", []),
    ({"const": "x"}, "y", ['$: "y" is not the const value']),
    ({"const": False}, 0, ["$: 0 is not the const value"]),
    ({"const": None}, None, []),
    ({"type": "object", "additionalProperties": False, "properties": {"a": {}}}, {"a": 1}, []),
    (
        {"type": "object", "additionalProperties": False, "properties": {"a": {}}},
        {"a": 1, "b": 2, "c": 3},
        ["$: unexpected properties 'b', 'c'"],
    ),
    (
        {"type": "object", "additionalProperties": {"type": "integer"}},
        {"a": 1, "b": "2"},
        ["$.b: expected integer, got string"],
    ),
    ({"type": "object", "additionalProperties": True}, {"a": 1}, []),
    (
        {"type": "object", "additionalProperties": False, "patternProperties": {"^x": {}}},
        {"x1": 1},
        [],
    ),
    ({"type": "object", "required": ["a", "b"]}, {"a": 1}, ["$: missing required property 'b'"]),
    ({"required": ["a"]}, "not an object", []),
    ({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}, ["a"], []),
    (
        {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        [1],
        ["$: matches none of the alternatives ($: expected string, got array)"],
    ),
    ({"oneOf": [{"type": "string"}, {"type": "string", "enum": ["a"]}]}, "a", []),
    ({"anyOf": []}, 1, []),
    ({"type": "array", "minItems": 1, "maxItems": 2}, [], ["$: 0 items, fewer than minItems 1"]),
    (
        {"type": "array", "minItems": 1, "maxItems": 2},
        [1, 2, 3],
        ["$: 3 items, more than maxItems 2"],
    ),
    ({"type": "array", "items": [{"type": "string"}]}, [1], []),
    (
        {"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "integer"}},
        ["a", 1, 2],
        [],
    ),
    (
        {"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "integer"}},
        [1, "a"],
        ["$[0]: expected string, got integer", "$[1]: expected integer, got string"],
    ),
    (
        {"type": "array", "prefixItems": [{}], "items": False},
        [1, 2],
        ["$[1]: no value is allowed here"],
    ),
    (True, {"anything": 1}, []),
    (False, 1, ["$: no value is allowed here"]),
    ({"type": "object", "properties": {"a": False}}, {"a": 1}, ["$.a: no value is allowed here"]),
    (DEFS_SCHEMA, {"name": "root", "children": [{"name": "leaf", "children": []}]}, []),
    (
        DEFS_SCHEMA,
        {"name": "root", "children": [{"children": [], "x": 1}]},
        [
            "$.children[0]: missing required property 'name'",
            "$.children[0]: unexpected properties 'x'",
        ],
    ),
    (
        {
            "definitions": {"n": {"type": "integer"}},
            "type": "array",
            "items": {"$ref": "#/definitions/n"},
        },
        [1, "2"],
        ["$[1]: expected integer, got string"],
    ),
    (
        {"$defs": {"a/b": {"type": "string"}}, "$ref": "#/$defs/a~1b"},
        1,
        ["$: expected string, got integer"],
    ),
    (
        {"$defs": {"a b": {"type": "string"}}, "$ref": "#/$defs/a%20b"},
        1,
        ["$: expected string, got integer"],
    ),
    ({"$ref": "#/$defs/missing"}, 1, []),
    ({"$ref": "https://example.com/schema.json"}, 1, []),
    ({"type": "string", "minLength": 5, "format": "email", "x-custom": 1}, "a", []),
    ({"type": "number", "minimum": 10, "maximum": 20}, 5, []),
]


@pytest.mark.parametrize(("schema", "value", "expected"), JSONSCHEMA_CASES)
def test_json_schema(schema: Any, value: Any, expected: list[str]) -> None:
    assert validate(value, schema, "jsonschema") == expected


def test_self_referencing_schemas_terminate() -> None:
    started = time.monotonic()
    assert validate(1, {"$ref": "#"}, "jsonschema") == []
    looping = {"anyOf": [{"$ref": "#"}, {"$ref": "#"}]}
    assert validate(1, looping, "jsonschema") == []
    assert time.monotonic() - started < 2


def test_deep_values_are_accepted_beyond_the_depth_bound() -> None:
    schema: dict[str, Any] = {"type": "array", "items": {"$ref": "#"}}
    shallow: Any = "leaf"
    for _ in range(5):
        shallow = [shallow]
    assert validate(shallow, schema, "jsonschema") == [
        "$[0][0][0][0][0]: expected array, got string"
    ]
    deep: Any = "leaf"
    for _ in range(MAX_DEPTH + 10):
        deep = [deep]
    assert validate(deep, schema, "jsonschema") == []


def test_problems_are_capped() -> None:
    problems = validate(list(range(1000)), {"items": {"type": "string"}}, "jsonschema")
    assert 0 < len(problems) <= 20


def test_wide_nested_any_of_stays_fast() -> None:
    schema: Any = {"type": "string"}
    for _ in range(30):
        schema = {"anyOf": [schema, schema, {"type": "boolean"}]}
    started = time.monotonic()
    validate(1, schema, "jsonschema")
    assert time.monotonic() - started < 2


# --- check_json_answer -----------------------------------------------------------------------

RECIPE_NEEDS = needs_of_body(SDK_RICH)
TOOLS_NEEDS = needs_of_body(SDK_TOOLS)


@pytest.mark.parametrize(
    ("text", "needs_", "reason"),
    [
        ('{"name": "Soup", "minutes": 20}', RECIPE_NEEDS, None),
        ('  {"name": "Soup", "minutes": 20}\n', RECIPE_NEEDS, None),
        (
            '{"name": "Soup", "minutes": "twenty"}',
            RECIPE_NEEDS,
            "the answer does not match the response schema: "
            "$.minutes: expected integer, got string",
        ),
        ('{"name": "Soup", "minut', RECIPE_NEEDS, "the answer is not valid JSON: "),
        ('```json\n{"a": "x"}\n```', TOOLS_NEEDS, "the answer is not valid JSON: "),
        ("", TOOLS_NEEDS, "the answer is not valid JSON: "),
        ('{"a": "x"}', TOOLS_NEEDS, None),
        ('{"a": 1}', TOOLS_NEEDS, "the answer does not match the response schema: "),
        ('{"anything": [1, 2]}', needs(responseMimeType="application/json"), None),
        ("[1, 2", needs(responseMimeType="application/json"), "the answer is not valid JSON: "),
        ("plain prose, not JSON", needs(), None),
        ("plain prose", needs(responseMimeType="text/x.enum", responseSchema={}), None),
    ],
)
def test_check_json_answer(text: str, needs_: RequestNeeds, reason: str | None) -> None:
    got = check_json_answer(text, needs_)
    if reason is None:
        assert got is None
    else:
        assert got is not None and got.startswith(reason)


def test_check_json_answer_names_at_most_three_problems() -> None:
    schema = {"type": "object", "required": ["a", "b", "c", "d", "e"]}
    got = check_json_answer(
        "{}",
        RequestNeeds(
            features=frozenset({f.STRUCTURED_OUTPUT}),
            json_schema=ResponseSchema("jsonschema", schema),
        ),
    )
    assert got is not None and got.count("missing required property") == 3


def test_check_json_answer_accepts_valid_but_absurdly_deep_json() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    assert check_json_answer(deep, needs(responseMimeType="application/json")) is None


# --- is_input_too_long -----------------------------------------------------------------------


def error(code: int, message: str, status: str = "INVALID_ARGUMENT") -> bytes:
    return body({"error": {"code": code, "message": message, "status": status}})


TOO_LONG = error(
    400, "The input token count (1048577) exceeds the maximum number of tokens allowed (1048576)."
)


def test_recognises_geminis_input_too_long_400() -> None:
    assert is_input_too_long(400, TOO_LONG)
    assert parse_input_too_long(400, TOO_LONG) == InputTooLong(1_048_577, 1_048_576)


@pytest.mark.parametrize(
    ("status", "raw", "expected"),
    [
        (400, error(400, "Request exceeds the maximum number of tokens for this model"), True),
        (400, b"[" + TOO_LONG + b"]", True),
        (
            400,
            error(
                400, "the INPUT TOKEN COUNT (10) EXCEEDS THE MAXIMUM NUMBER OF TOKENS ALLOWED (5)"
            ),
            True,
        ),
        (500, TOO_LONG, False),
        (429, TOO_LONG, False),
        (400, error(400, "API key not valid. Please pass a valid API key."), False),
        (400, error(400, "Request payload size exceeds the limit: 20971520 bytes."), False),
        (400, b"exceeds the maximum number of tokens", False),
        (400, b"", False),
        (400, b'{"error": "exceeds the maximum number of tokens"}', False),
        (400, b'{"error": {"message": 5}}', False),
    ],
)
def test_input_too_long_variants(status: int, raw: bytes, expected: bool) -> None:
    assert is_input_too_long(status, raw) is expected


def test_input_too_long_without_numbers() -> None:
    raw = error(400, "Request exceeds the maximum number of tokens for this model")
    assert parse_input_too_long(400, raw) == InputTooLong(None, None)


# --- ModelCapabilities configuration ---------------------------------------------------------


def test_capabilities_from_configuration() -> None:
    caps = build_dataclass(
        ModelCapabilities,
        {
            "input_token_limit": 32768,
            "output_token_limit": 8192,
            "unsupported": ["google_maps", "thinking_level"],
            "supports_prefill": False,
        },
        "models.gemini-2.5-flash-lite.capabilities",
    )
    assert caps == ModelCapabilities(32768, 8192, ("google_maps", "thinking_level"), False)
    assert build_dataclass(ModelCapabilities, None, "x") == ModelCapabilities()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"unsupported": ["telepathy"]}, "x.unsupported: 'telepathy' is not one of"),
        ({"unsupported": "google_search"}, "x.unsupported: expected a list of strings"),
        ({"input_token_limit": 0}, "x.input_token_limit: must be at least 1"),
        ({"output_token_limit": "big"}, "x.output_token_limit: expected int"),
        ({"supports_prefill": "yes"}, "x.supports_prefill: expected bool"),
        ({"input_limit": 5}, "x.input_limit: unknown key"),
    ],
)
def test_capabilities_configuration_errors(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build_dataclass(ModelCapabilities, raw, "x")


def test_capabilities_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ModelCapabilities().input_token_limit = 5  # type: ignore[misc]


# --- CapabilityRegistry ----------------------------------------------------------------------


def big(tokens: int, *features: str, max_output: int | None = None) -> RequestNeeds:
    return RequestNeeds(tokens, frozenset(features), None, max_output)


def test_unknown_limits_never_block() -> None:
    registry = CapabilityRegistry()
    assert registry.input_limit(LITE) is None and registry.output_limit(LITE) is None
    assert registry.can_serve(LITE, big(10**9, *FEATURES, max_output=10**9)) is None


def test_configured_input_limit_refuses_with_a_reason() -> None:
    registry = CapabilityRegistry({LITE: ModelCapabilities(input_token_limit=32768)})
    assert registry.can_serve(LITE, big(32768)) is None
    assert registry.can_serve(LITE, big(120_000)) == (
        "input of ~120000 tokens exceeds gemini-2.5-flash-lite's limit of 32768"
    )
    assert registry.can_serve(FLASH, big(120_000)) is None


def test_unsupported_features_refuse() -> None:
    caps = ModelCapabilities(unsupported=("thinking_level", "google_maps"))
    registry = CapabilityRegistry({FLASH: caps})
    assert registry.can_serve(FLASH, needs_of_body(SDK_RICH)) is None
    assert registry.can_serve(FLASH, needs_of_body(SDK_TOOLS)) == (
        "gemini-2.5-flash does not support thinking_level"
    )
    both = big(1, f.GOOGLE_MAPS, f.THINKING_LEVEL, f.GOOGLE_SEARCH)
    assert registry.can_serve(FLASH, both) == (
        "gemini-2.5-flash does not support google_maps, thinking_level"
    )


def test_output_limit_refuses_a_larger_max_output_tokens() -> None:
    registry = CapabilityRegistry({LITE: ModelCapabilities(output_token_limit=8192)})
    assert registry.can_serve(LITE, big(1, max_output=8192)) is None
    assert registry.can_serve(LITE, big(1)) is None
    assert registry.can_serve(LITE, big(1, max_output=65536)) == (
        "maxOutputTokens 65536 exceeds gemini-2.5-flash-lite's output limit of 8192"
    )


def test_default_capabilities_apply_to_unlisted_models() -> None:
    registry = CapabilityRegistry(
        {PRO: ModelCapabilities()}, default=ModelCapabilities(unsupported=("audio_output",))
    )
    assert registry.can_serve(PRO, big(1, f.AUDIO_OUTPUT)) is None
    assert registry.can_serve(FLASH, big(1, f.AUDIO_OUTPUT)) is not None


def test_learns_limits_from_models_get() -> None:
    registry = CapabilityRegistry()
    answer = {
        "name": "models/gemini-2.5-flash-lite",
        "version": "001",
        "inputTokenLimit": 1_048_576,
        "outputTokenLimit": 65_536,
        "supportedGenerationMethods": ["generateContent", "countTokens"],
    }
    assert registry.learn(LITE, answer)
    assert registry.input_limit(LITE) == 1_048_576 and registry.output_limit(LITE) == 65_536
    assert registry.can_serve(LITE, big(2_000_000)) is not None
    assert registry.input_limit(FLASH) is None


@pytest.mark.parametrize(
    "answer",
    [
        {},
        {"inputTokenLimit": 0},
        {"inputTokenLimit": -5},
        {"inputTokenLimit": True},
        {"inputTokenLimit": "lots"},
        {"inputTokenLimit": 1.5},
        {"inputTokenLimit": "²"},
        {"error": {"code": 404}},
    ],
)
def test_learn_ignores_unusable_answers(answer: dict[str, Any]) -> None:
    registry = CapabilityRegistry()
    assert not registry.learn(FLASH, answer)
    assert registry.input_limit(FLASH) is None


def test_learn_accepts_int64_strings_and_partial_answers() -> None:
    registry = CapabilityRegistry()
    assert registry.learn(FLASH, {"inputTokenLimit": "4096"})
    assert registry.input_limit(FLASH) == 4096 and registry.output_limit(FLASH) is None


def test_configuration_outranks_what_was_learned() -> None:
    registry = CapabilityRegistry({LITE: ModelCapabilities(input_token_limit=32768)})
    registry.learn(LITE, {"inputTokenLimit": 1_048_576, "outputTokenLimit": 65_536})
    assert registry.input_limit(LITE) == 32768
    assert registry.output_limit(LITE) == 65_536


def test_learns_the_limit_an_input_too_long_error_names() -> None:
    registry = CapabilityRegistry()
    registry.learn(FLASH, {"inputTokenLimit": 1_048_576})
    raw = error(
        400, "The input token count (40000) exceeds the maximum number of tokens allowed (32768)."
    )
    assert registry.learn_from_error(FLASH, 400, raw) == InputTooLong(40000, 32768)
    assert registry.input_limit(FLASH) == 32768
    assert registry.learn_from_error(FLASH, 503, raw) is None
    vague = error(400, "Request exceeds the maximum number of tokens")
    assert registry.learn_from_error(PRO, 400, vague) == InputTooLong(None, None)
    assert registry.input_limit(PRO) is None


def test_lookups_are_claimed_once_per_model() -> None:
    registry = CapabilityRegistry(
        {
            PRO: ModelCapabilities(input_token_limit=1, output_token_limit=1),
            LITE: ModelCapabilities(input_token_limit=1),
        }
    )
    assert not registry.claim_lookup(PRO)  # nothing left to learn
    assert registry.claim_lookup(LITE)  # the output limit is still unknown
    assert registry.claim_lookup(FLASH)
    assert not registry.claim_lookup(FLASH)
    registry.release_lookup(FLASH)
    assert registry.claim_lookup(FLASH)
    registry.release_lookup("never-claimed")


def test_can_continue_needs_prefill() -> None:
    registry = CapabilityRegistry({LITE: ModelCapabilities(supports_prefill=False)})
    assert registry.can_continue(LITE, big(1)) == (
        "gemini-2.5-flash-lite does not accept a prefilled model turn"
    )
    assert registry.can_continue(FLASH, big(1)) is None
    limited = CapabilityRegistry({FLASH: ModelCapabilities(input_token_limit=10)})
    assert limited.can_continue(FLASH, big(11)) is not None


def limits(**by_model: int | None) -> CapabilityRegistry:
    names = {"pro": PRO, "flash": FLASH, "lite": LITE, "big": "gemini-big", "huge": "gemini-huge"}
    return CapabilityRegistry(
        {names[k]: ModelCapabilities(input_token_limit=v) for k, v in by_model.items()}
    )


def test_larger_context_picks_the_next_model_with_a_larger_limit_that_fits() -> None:
    chain = (LITE, FLASH, "gemini-big", "gemini-huge")
    registry = limits(lite=32768, flash=32768, big=200_000, huge=2_000_000)
    assert registry.larger_context(chain, LITE, big(40_000)) == "gemini-big"
    assert registry.larger_context(chain, LITE, big(500_000)) == "gemini-huge"
    assert registry.larger_context(chain, LITE, big(5_000_000)) is None
    assert registry.larger_context(chain, "gemini-huge", big(40_000)) is None


def test_larger_context_only_looks_after_the_model() -> None:
    registry = limits(pro=1_048_576, flash=32768, lite=65536)
    assert registry.larger_context(CHAIN, FLASH, big(40_000)) == LITE
    assert registry.larger_context(CHAIN, LITE, big(40_000)) is None


def test_larger_context_passes_over_unknown_limits_and_unsupported_features() -> None:
    registry = CapabilityRegistry(
        {
            PRO: ModelCapabilities(input_token_limit=32768),
            LITE: ModelCapabilities(input_token_limit=1_048_576, unsupported=("google_search",)),
        }
    )
    assert registry.larger_context(CHAIN, PRO, big(40_000)) == LITE  # flash: unknown
    assert registry.larger_context(CHAIN, PRO, big(40_000, f.GOOGLE_SEARCH)) is None


def test_larger_context_when_the_failing_models_limit_is_unknown() -> None:
    registry = limits(lite=65536)
    assert registry.larger_context(CHAIN, PRO, big(40_000)) == LITE
    assert registry.larger_context(CHAIN, PRO, big(70_000)) is None


def test_larger_context_for_a_model_outside_the_chain_considers_the_whole_chain() -> None:
    registry = limits(pro=1_048_576, flash=32768)
    assert registry.larger_context(CHAIN, "gemini-tiny", big(40_000)) == PRO


def test_larger_context_after_an_error_raises_the_estimate() -> None:
    registry = limits(pro=1_048_576, flash=1_048_576, lite=1_048_576)
    raw = error(
        400, "The input token count (40000) exceeds the maximum number of tokens allowed (32768)."
    )
    too_long = registry.learn_from_error(PRO, 400, raw)
    assert too_long is not None and too_long.token_count == 40000
    # The configured limit still wins over the error's for the model itself...
    assert registry.input_limit(PRO) == 1_048_576
    # ...and the estimate grows to the count Google reported.
    request = big(100).with_input_tokens(too_long.token_count)
    assert registry.can_serve(FLASH, request) is None
    assert registry.larger_context(CHAIN, PRO, request) is None  # nothing larger than pro


def test_sdk_request_against_a_small_model() -> None:
    request = needs_of_body(
        body({"contents": [user({"text": "x" * 480_000})], "generationConfig": {}})
    )
    registry = limits(lite=32768)
    assert registry.can_serve(LITE, request) == (
        "input of ~120000 tokens exceeds gemini-2.5-flash-lite's limit of 32768"
    )
    assert [m for m in CHAIN if registry.can_serve(m, request) is None] == [PRO, FLASH]
