"""The Gemini Developer API dialect: what the pipeline learns of a request, and how it is
rewritten for another model of the chain."""

from __future__ import annotations

import json

import pytest

from proxy.dialects import GEMINI, Dialect, Framing

STREAM = "/gemini/v1beta/models/gemini-2.5-pro:streamGenerateContent"


def test_gemini_is_a_dialect() -> None:
    dialect: Dialect = GEMINI
    assert dialect.name == "gemini" and not dialect.model_in_body


def test_a_request_is_routed_on_its_path() -> None:
    route = GEMINI.parse(STREAM, b"alt=sse", [])
    assert route is not None
    assert (route.model, route.method, route.prefix) == (
        "gemini-2.5-pro",
        "streamGenerateContent",
        "/gemini",
    )
    assert route.is_generate and not route.upload


@pytest.mark.parametrize(
    ("path", "query", "framing"),
    [
        (STREAM, b"alt=sse", Framing.SSE),
        (STREAM, b"", Framing.NONE),  # a JSON array, relayed as it comes
        ("/v1beta/models/gemini-2.5-pro:generateContent", b"alt=sse", Framing.NONE),
    ],
)
def test_stream_framing(path: str, query: bytes, framing: Framing) -> None:
    route = GEMINI.parse(path, query, [])
    assert route is not None
    assert GEMINI.framing(route, query) is framing


def test_another_model_is_named_in_the_path_and_the_body_is_untouched() -> None:
    route = GEMINI.parse(STREAM, b"alt=sse", [])
    assert route is not None
    assert GEMINI.upstream_path(route, None) == (
        "/v1beta/models/gemini-2.5-pro:streamGenerateContent"
    )
    assert GEMINI.upstream_path(route, "gemini-2.5-flash") == (
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    )
    body = b'{"contents": [], "model": "x"}'
    assert GEMINI.body_for(route, body, "gemini-2.5-flash") is body
    assert GEMINI.stream_end(Framing.SSE) == b""


def test_a_path_of_another_api_is_not_gemini() -> None:
    assert GEMINI.parse("/chat/completions", b"", []) is None


def test_errors_are_google_rpc_status() -> None:
    assert GEMINI.error_content_type.startswith(b"application/json")
    error = json.loads(GEMINI.error_body(503, "busy"))["error"]
    assert (error["code"], error["message"], error["status"]) == (503, "busy", "UNAVAILABLE")
    event = GEMINI.stream_error(502, "cut")
    assert event.startswith(b"data: ") and event.endswith(b"\r\n\r\n")
    assert json.loads(event[6:])["error"]["code"] == 502
