"""Events that arrive together are relayed together, and checked one by one all the same: an
upstream that writes a whole stream at once, healthy or with a corrupt event inside."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from proxy.app import create_app

from .conftest import proxy_settings
from .support import serve

MODEL = "gemini-solo"  # in no route: no fallback, so a broken stream ends with an error
PATH = f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"


def event(text: str, finish: bool = False) -> bytes:
    candidate: dict[str, object] = {"content": {"parts": [{"text": text}], "role": "model"}}
    if finish:
        candidate["finishReason"] = "STOP"
    chunk = {"candidates": [candidate], "responseId": "r-1"}
    return b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n"


FIRST, SECOND, LAST = event("Hello, "), event("circuit "), event("breakers.", finish=True)
CORRUPT = b'data: {"candidates": [{"content": \r\n\r\n'


class WholeStreamUpstream:
    """A real HTTP upstream (under uvicorn) that sends every stream's body in one write."""

    def __init__(self) -> None:
        self.body = b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if ":streamGenerateContent" not in scope["path"]:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, WholeStreamUpstream]]:
    app = WholeStreamUpstream()
    with serve(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def proxy(upstream: tuple[str, WholeStreamUpstream]) -> Iterator[str]:
    with serve(create_app(proxy_settings(upstream[0]))) as url:
        yield url


def post_stream(proxy: str) -> httpx.Response:
    body = {"contents": [{"parts": [{"text": "hi"}], "role": "user"}]}
    return httpx.post(proxy + PATH, json=body, headers={"x-goog-api-key": "k"}, timeout=10)


def test_events_that_arrive_together_pass_unchanged(
    proxy: str, upstream: tuple[str, WholeStreamUpstream]
) -> None:
    upstream[1].body = FIRST + SECOND + LAST
    response = post_stream(proxy)
    assert response.status_code == 200
    assert response.content == FIRST + SECOND + LAST


def test_a_corrupt_event_among_them_is_held_back_and_the_stream_ends_with_an_error(
    proxy: str, upstream: tuple[str, WholeStreamUpstream]
) -> None:
    upstream[1].body = FIRST + SECOND + CORRUPT + LAST
    response = post_stream(proxy)
    assert response.status_code == 200  # the stream had started
    content = response.content
    assert content.startswith(FIRST + SECOND)
    assert CORRUPT not in content and LAST not in content
    tail = content[len(FIRST + SECOND) :]
    error = json.loads(tail.removeprefix(b"data: "))["error"]
    assert error["code"] == 502
    assert "corrupt" in error["message"]


def test_a_corrupt_first_event_fails_the_call_before_anything_is_sent(
    proxy: str, upstream: tuple[str, WholeStreamUpstream]
) -> None:
    upstream[1].body = CORRUPT + FIRST + LAST
    response = post_stream(proxy)
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("application/json")
    assert "corrupt" in response.json()["error"]["message"]
