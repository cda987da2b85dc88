"""Unit tests of the wire helpers: path parsing, header filtering, upload URL rewriting."""

from __future__ import annotations

import pytest

from proxy.gemini.paths import parse_path
from proxy.transport.headers import (
    client_response_headers,
    client_sent_key,
    redact_query,
    rewrite_upload_url,
    upstream_request_headers,
)


@pytest.mark.parametrize(
    ("path", "prefix", "upload", "version", "model", "method"),
    [
        (
            "/v1/models/gemini-2.5-pro:generateContent",
            "",
            False,
            "v1",
            "gemini-2.5-pro",
            "generateContent",
        ),
        (
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            "",
            False,
            "v1beta",
            "gemini-2.5-flash",
            "streamGenerateContent",
        ),
        (
            "/gw/team/v1alpha/models/x.y-z:countTokens",
            "/gw/team",
            False,
            "v1alpha",
            "x.y-z",
            "countTokens",
        ),
        ("/v1beta/models/gemini-2.5-flash", "", False, "v1beta", "gemini-2.5-flash", None),
        ("/v1beta/models", "", False, "v1beta", None, None),
        ("/upload/v1beta/files", "", True, "v1beta", None, None),
        ("/p/upload/v1/files", "/p", True, "v1", None, None),
        ("/v1beta/cachedContents/abc", "", False, "v1beta", None, None),
        ("/v1beta/tunedModels/t1:generateContent", "", False, "v1beta", None, None),
    ],
)
def test_parse_path(
    path: str, prefix: str, upload: bool, version: str, model: str | None, method: str | None
) -> None:
    parsed = parse_path(path)
    assert parsed is not None
    assert (parsed.prefix, parsed.upload, parsed.version) == (prefix, upload, version)
    assert (parsed.model, parsed.method) == (model, method)
    assert parsed.upstream_path == path[len(prefix) :]


@pytest.mark.parametrize("path", ["/", "/v1", "/v1/", "/v2/models/x", "/healthz", "/models/x"])
def test_non_gemini_paths(path: str) -> None:
    assert parse_path(path) is None


def test_model_segment_is_replaced_for_another_model() -> None:
    parsed = parse_path("/pre/v1beta/models/gemini-2.5-pro:streamGenerateContent")
    assert parsed is not None
    assert parsed.path_for("gemini-2.5-flash") == (
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    )


def test_hop_by_hop_and_connection_listed_headers_are_dropped() -> None:
    headers = [
        (b"host", b"proxy:8080"),
        (b"connection", b"keep-alive, x-private"),
        (b"x-private", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"te", b"trailers"),
        (b"transfer-encoding", b"chunked"),
        (b"content-length", b"10"),
        (b"x-goog-api-key", b"client-key"),
        (b"content-type", b"application/json"),
    ]
    out = upstream_request_headers(headers, b"", api_key="configured")
    assert out == [(b"x-goog-api-key", b"client-key"), (b"content-type", b"application/json")]


def test_configured_key_is_injected_only_without_a_client_key() -> None:
    bare = [(b"authorization", b"Bearer app-token"), (b"accept", b"*/*")]
    assert upstream_request_headers(bare, b"", api_key="configured") == [
        (b"accept", b"*/*"),
        (b"x-goog-api-key", b"configured"),
    ]
    # A key in the query string counts as the client's own key.
    assert upstream_request_headers(bare, b"alt=sse&key=abc", api_key="configured") == bare
    assert upstream_request_headers(bare, b"", api_key=None) == bare
    assert not client_sent_key([(b"x-goog-api-key", b"  ")], b"key=")
    assert client_sent_key([], b"monkey=1&key=k")
    assert not client_sent_key([], b"monkey=1")


def test_response_hop_by_hop_headers_are_dropped() -> None:
    raw = [
        (b"Content-Type", b"text/event-stream"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Connection", b"close"),
        (b"X-Goog-Upload-Status", b"active"),
    ]
    assert client_response_headers(raw) == [
        (b"content-type", b"text/event-stream"),
        (b"x-goog-upload-status", b"active"),
    ]


def test_upload_url_points_back_at_the_proxy() -> None:
    google = "https://generativelanguage.googleapis.com"
    issued = f"{google}/upload/v1beta/files?upload_id=XYZ&upload_protocol=resumable"
    assert rewrite_upload_url(issued, google, "http://127.0.0.1:8080", "") == (
        "http://127.0.0.1:8080/upload/v1beta/files?upload_id=XYZ&upload_protocol=resumable"
    )
    # An upstream behind a path, and a client behind a prefix.
    assert (
        rewrite_upload_url(
            "http://sim:9/base/upload/v1/files?upload_id=1",
            "http://sim:9/base",
            "http://p:1",
            "/gw",
        )
        == "http://p:1/gw/upload/v1/files?upload_id=1"
    )
    # Another origin is not ours to rewrite.
    elsewhere = "https://uploads.example.com/upload/v1/files?upload_id=1"
    assert rewrite_upload_url(elsewhere, google, "http://p:1", "") == elsewhere


def test_keys_are_redacted_from_logged_queries() -> None:
    assert redact_query(b"alt=sse&key=SECRET") == "?alt=sse&key=REDACTED"
    assert redact_query(b"KEY=SECRET") == "?KEY=REDACTED"
    assert redact_query(b"") == ""
