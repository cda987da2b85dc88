"""The OpenAI-compatible dialect's pure parts: paths, the model from the body, rewrites for
another model, credentials, error shapes and stream accounting."""

from __future__ import annotations

import json

from proxy.dialects import GEMINI, OPENAI, Framing
from proxy.dialects.openai import DONE_CHUNK, OpenAIRoute
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


def test_a_continuation_carries_the_delivered_text_as_an_assistant_message() -> None:
    body = b'{"model": "a", "messages": [{"role": "user", "content": "hi"}]}'
    messages = json.loads(OPENAI.continuation_body(body, "Hel"))["messages"]
    assert messages[-1] == {"role": "assistant", "content": "Hel"}
