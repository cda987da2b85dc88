"""Client tokens: what counts as presenting one, and what is left of the request after."""

from __future__ import annotations

import pytest

from proxy import client_tokens as module
from proxy.client_tokens import INVALID, MISSING, ClientTokens, presented_key, without_credentials

TOKENS = ("first-client-token-0001", "second-client-token+02")


@pytest.mark.parametrize(
    ("headers", "query", "refusal"),
    [
        ([(b"x-goog-api-key", TOKENS[0].encode())], b"", None),
        ([(b"x-goog-api-key", b" " + TOKENS[1].encode() + b" ")], b"", None),
        ([], b"alt=sse&key=second-client-token%2B02", None),  # URL-encoded as the SDK would
        ([], b"", MISSING),
        ([(b"authorization", b"Bearer " + TOKENS[0].encode())], b"", MISSING),
        ([(b"x-goog-api-key", b"first-client-token-000")], b"", INVALID),
        ([(b"x-goog-api-key", b"AIza-a-real-looking-key")], b"", INVALID),
        ([], b"key=", MISSING),
    ],
)
def test_a_token_must_be_sent_where_the_api_key_goes(
    headers: list[tuple[bytes, bytes]], query: bytes, refusal: module.Refusal | None
) -> None:
    assert ClientTokens(TOKENS).check(headers, query) is refusal


def test_every_token_is_compared_whichever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[bytes] = []
    real = module.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(module.hmac, "compare_digest", spy)
    assert ClientTokens(TOKENS).check([(b"x-goog-api-key", TOKENS[0].encode())], b"") is None
    assert compared == [t.encode() for t in TOKENS]


def test_the_callers_credentials_are_taken_off_the_request() -> None:
    headers = [
        (b"x-goog-api-key", b"token"),
        (b"authorization", b"Bearer x"),
        (b"content-type", b"application/json"),
    ]
    kept, query = without_credentials(headers, b"alt=sse&key=token&keyword=1")
    assert kept == [(b"content-type", b"application/json")]
    assert query == b"alt=sse&keyword=1"
    assert presented_key(kept, query) is None
