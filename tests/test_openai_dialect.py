"""The OpenAI-compatible dialect's pure parts: paths, the model from the body, rewrites for
another model, credentials, error shapes and stream accounting."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.dialects import GEMINI, OPENAI, Framing
from proxy.dialects.openai import DONE_CHUNK, OpenAIRoute
from proxy.gemini.features import (
    AUDIO_INPUT,
    AUDIO_OUTPUT,
    CACHED_CONTENT,
    FEATURES,
    FUNCTION_CALLING,
    IMAGE_INPUT,
    JSON_MODE,
    PDF_INPUT,
    STRUCTURED_OUTPUT,
    SYSTEM_INSTRUCTION,
    THINKING_BUDGET,
    THINKING_LEVEL,
    VIDEO_INPUT,
    NotContinuable,
    RequestNeeds,
    ResponseSchema,
)
from proxy.gemini.sse import Delivered
from proxy.transport.headers import credential_scope


def route(path: str, body: bytes) -> OpenAIRoute:
    parsed = OPENAI.parse(path, b"", [])
    assert parsed is not None
    return OPENAI.with_body(parsed, body)


def test_paths_with_a_prefix_and_the_model_from_the_body() -> None:
    chat = route("/gw/v1beta/openai/chat/completions", b'{"model": "models/m", "stream": true}')
    assert (chat.model, chat.method, chat.prefix, chat.path) == (
        "m",
        "streamGenerateContent",
        "/gw",
        "/v1beta/openai/chat/completions",
    )
    assert OPENAI.framing(chat, b"") is Framing.OPENAI_SSE
    assert route("/v1beta/openai/embeddings", b'{"model": "e"}').method == "embedContent"
    models = route("/v1beta/openai/models", b"")
    assert (models.model, models.method) == (None, None)
    assert route("/v1beta/openai/chat/completions", b"[1]").model is None  # refused upstream
    assert OPENAI.parse("/v1beta/models/m:generateContent", b"", []) is None


def test_another_model_gets_the_same_body_with_its_own_model() -> None:
    chat = route("/v1beta/openai/chat/completions", b'{"model": "a", "messages": [], "n": 1}')
    rewritten = json.loads(OPENAI.body_for(chat, b'{"model": "a", "messages": [], "n": 1}', "b"))
    assert rewritten == {"model": "b", "messages": [], "n": 1}


def test_the_bearer_key_is_the_credential_and_is_injected_as_one() -> None:
    sent = [(b"authorization", b"Bearer client-key")]
    assert OPENAI.upstream_headers(sent, b"", "configured") == sent
    assert OPENAI.credential(sent, b"", "configured") == credential_scope(
        [(b"x-goog-api-key", b"client-key")], b"", None
    )  # the same scope as the native API's for the same key
    injected = OPENAI.upstream_headers([], b"", "configured")
    assert injected == [(b"authorization", b"Bearer configured")]
    assert OPENAI.native_headers(injected) == [(b"x-goog-api-key", b"configured")]
    assert GEMINI.native_headers(injected) == injected


def test_errors_are_googles_error_object_in_a_list() -> None:
    body = json.loads(OPENAI.error_body(429, "slow down"))
    assert body == [
        {"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}}
    ]
    # The statuses Google's front end pairs with each code (wire reference, section 6).
    for code, status in (
        (400, "INVALID_ARGUMENT"),
        (401, "UNAUTHENTICATED"),
        (404, "NOT_FOUND"),
        (500, "INTERNAL"),
        (503, "UNAVAILABLE"),
    ):
        assert json.loads(OPENAI.error_body(code, "m")) == [
            {"error": {"code": code, "message": "m", "status": status}}
        ]
    event = OPENAI.stream_error(502, "cut")
    assert event.startswith(b"data: {") and event.endswith(b"\n\n")
    assert json.loads(event[6:])["error"]["code"] == 502


def test_a_stream_is_whole_only_with_a_finish_reason_and_done() -> None:
    delivered = Delivered()
    account = OPENAI.stream_account(delivered)
    account.take({"id": "x", "choices": [{"index": 0, "delta": {"content": "Hel"}}]})
    account.take(DONE_CHUNK)
    assert delivered.finish_reason is None  # [DONE] without a finish_reason
    account.take(
        {
            "id": "x",
            "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
    )
    assert delivered.usage == {
        "promptTokenCount": 3,
        "candidatesTokenCount": 2,
        "totalTokenCount": 5,
    }  # in the names the token metrics read
    assert delivered.finish_reason is None  # a finish_reason, no [DONE] yet
    account.take(DONE_CHUNK)
    assert (delivered.text, delivered.finish_reason, delivered.response_id) == (
        "Hello",
        "stop",
        "x",
    )
    restitched = account.restitched({"id": "y", "choices": []}, None)
    assert json.loads(restitched[6:])["id"] == "x"


def test_a_continuations_done_goes_to_the_client_only_after_a_finish_reason() -> None:
    account = OPENAI.stream_account(Delivered())
    account.take({"id": "x", "choices": [{"index": 0, "delta": {"content": "Hel"}}]})
    assert account.restitched(DONE_CHUNK, None) == b""  # it would end the SDK's stream short
    finish = {"id": "y", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    assert json.loads(account.restitched(finish, None)[6:])["id"] == "x"
    assert account.restitched(DONE_CHUNK, None) == b"data: [DONE]\n\n"


def test_a_continuation_carries_the_delivered_text_as_an_assistant_message() -> None:
    body = b'{"model": "a", "messages": [{"role": "user", "content": "hi"}]}'
    messages = json.loads(OPENAI.continuation_body(body, "Hel"))["messages"]
    assert messages[-1] == {"role": "assistant", "content": "Hel"}


def test_a_body_without_messages_cannot_be_continued() -> None:
    for body in (b'{"model": "a", "prompt": "hi"}', b"[1]", b"not json"):
        with pytest.raises(NotContinuable):
            OPENAI.continuation_body(body, "Hel")
    with pytest.raises(NotContinuable):
        GEMINI.continuation_body(b'{"contents": "hi"}', "Hel")


def test_a_completions_usage_is_read_from_its_end_in_gemini_names() -> None:
    answer = {
        "id": "x",
        "choices": [{"index": 0, "message": {"content": 'say "usage": 99 ' * 1000}}],
        "usage": {
            "prompt_tokens": 7,
            "completion_tokens": 12,
            "total_tokens": 19,
            "completion_tokens_details": {"reasoning_tokens": 3},
        },
    }
    whole = json.dumps(answer, indent=2).encode()
    # What the relay keeps: the answer's last 4 KiB (the escaped "usage" in the text is not it).
    assert OPENAI.usage_in_tail(whole[-4096:]) == {
        "promptTokenCount": 7,
        "candidatesTokenCount": 12,
        "totalTokenCount": 19,
    }
    assert OPENAI.usage_in_tail(b'{"choices": []}') is None
    # The native dialect reads Gemini's own usageMetadata, and not the compatible usage.
    assert GEMINI.usage_in_tail(whole) is None
    native = b'{"usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4}}'
    assert GEMINI.usage_in_tail(native) == {"promptTokenCount": 3, "candidatesTokenCount": 4}


def needs(**body: Any) -> RequestNeeds:
    return OPENAI.request_needs(json.dumps({"model": "m", **body}).encode())


USER = [{"role": "user", "content": "hello there"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def test_the_needs_of_a_plain_chat_are_its_size_and_nothing_else() -> None:
    plain = needs(messages=[{"role": "user", "content": "x" * 400}], max_tokens=50)
    assert plain.features == frozenset()
    assert plain.estimated_input_tokens == 100
    assert plain.max_output_tokens == 50
    assert needs(messages=USER, max_completion_tokens=9, max_tokens=50).max_output_tokens == 9
    assert OPENAI.request_needs(b"not json") == RequestNeeds()
    assert OPENAI.request_needs(b'{"messages": "hi", "tools": {}}') == RequestNeeds()


def test_tools_and_tool_turns_need_function_calling() -> None:
    assert needs(messages=USER, tools=[TOOL]).features == {FUNCTION_CALLING}
    assert needs(messages=USER, functions=[{"name": "f"}]).features == {FUNCTION_CALLING}
    assert needs(messages=USER, tools=[]).features == frozenset()
    turns = [
        *USER,
        {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "42"},
    ]
    assert needs(messages=turns).features == {FUNCTION_CALLING}


def test_response_formats_need_json_output_with_the_schema_kept() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    structured = needs(
        messages=USER,
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
    )
    assert structured.features == {STRUCTURED_OUTPUT}
    assert structured.json_schema == ResponseSchema("jsonschema", schema)
    json_mode = needs(messages=USER, response_format={"type": "json_object"})
    assert (json_mode.features, json_mode.json_schema) == ({JSON_MODE}, None)
    assert needs(messages=USER, response_format={"type": "text"}).features == frozenset()


def test_media_parts_need_their_input_kind() -> None:
    def parts(*content: dict[str, Any]) -> frozenset[str]:
        return needs(messages=[{"role": "user", "content": list(content)}]).features

    text = {"type": "text", "text": "what is this?"}
    assert parts(text) == frozenset()
    image = {"type": "image_url", "image_url": {"url": "https://x.test/cat.png"}}
    assert parts(text, image) == {IMAGE_INPUT}
    pdf_url = {"type": "image_url", "image_url": {"url": "data:application/pdf;base64,AAAA"}}
    assert parts(pdf_url) == {PDF_INPUT}
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    assert parts(audio) == {AUDIO_INPUT}
    assert needs(messages=[{"role": "user", "content": [image]}]).estimated_input_tokens > 0


def test_thinking_system_messages_audio_output_and_cached_content() -> None:
    assert needs(messages=USER, reasoning_effort="low").features == {THINKING_BUDGET}
    assert needs(messages=USER, reasoning_effort="none").features == frozenset()
    system = [{"role": "system", "content": "be brief"}, *USER]
    assert needs(messages=system).features == {SYSTEM_INSTRUCTION}
    assert needs(messages=USER, modalities=["text", "audio"]).features == {AUDIO_OUTPUT}
    google = {"cached_content": "cachedContents/c", "thinking_config": {"thinking_level": "low"}}
    # Google documents extra_body={"extra_body": {"google": ...}}: the SDK sends the inner one.
    assert needs(messages=USER, extra_body={"google": google}).features == {
        CACHED_CONTENT,
        THINKING_LEVEL,
    }


def test_every_feature_the_dialect_reports_is_in_the_capability_vocabulary() -> None:
    every = needs(
        messages=[
            {"role": "developer", "content": "x"},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "data:video/mp4;base64,AA"}},
                    {"type": "input_audio", "input_audio": {"data": "AA"}},
                    {"type": "file", "file": {"file_data": "data:application/pdf;base64,AA"}},
                ],
            },
        ],
        tools=[TOOL],
        response_format={"type": "json_schema", "json_schema": {"schema": {}}},
        reasoning_effort="high",
        audio={"voice": "x"},
        extra_body={"google": {"cached_content": "c", "thinking_config": {"thinking_budget": 1}}},
    )
    assert every.features <= set(FEATURES)
    assert {VIDEO_INPUT, PDF_INPUT, AUDIO_INPUT, AUDIO_OUTPUT} <= every.features


def test_the_route_template_names_the_operation() -> None:
    assert route("/gw/v1beta/openai/chat/completions", b"{}").template == (
        "/v1beta/openai/chat/completions"
    )
    assert route("/v1beta/openai/models/gemini-x", b"").template == "/v1beta/openai/models/{model}"
    assert route("/v1beta/openai/models", b"").template == "/v1beta/openai/models"
