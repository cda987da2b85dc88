"""Stream integrity end to end: the real SDK streaming through the proxy from the simulator,
with streams that break mid-answer, stall, start slowly, carry corrupt chunks, or end oddly."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google.genai import errors, types

from proxy.app import create_app
from proxy.simulator.client import SimulatorControl

from .conftest import PASS_THROUGH, calls, proxy_settings
from .support import serve
from .test_sdk_e2e import sdk

PRO, FLASH, LITE = "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"
PROMPT = "Explain in many words how a circuit breaker protects a service from overload"


def proxy_with(simulator_url: str, **routes: Any) -> Any:
    return serve(
        create_app(
            proxy_settings(
                simulator_url,
                model_defaults={
                    **PASS_THROUGH,
                    "headers_timeout": 1.0,
                    "first_event_timeout": 1.0,
                    "unary_timeout": 1.0,
                    "stall_timeout": 0.5,
                },
                **({"routes": routes} if routes else {}),
            )
        )
    )


@pytest.fixture
def proxy(simulator_url: str) -> Iterator[str]:
    with proxy_with(simulator_url) as url:
        yield url


def stream(url: str) -> list[types.GenerateContentResponse]:
    return list(sdk(url).models.generate_content_stream(model=PRO, contents=PROMPT))


def whole_answer(simulator_url: str) -> str:
    text = sdk(simulator_url).models.generate_content(model=FLASH, contents=PROMPT).text
    assert text
    return text


def text_of(chunks: list[types.GenerateContentResponse]) -> str:
    return "".join(c.text or "" for c in chunks)


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "cut", "after_chunks": 2},
        {"kind": "cut", "after_chunks": 2, "abrupt": True},
        {"kind": "stall", "after_chunks": 2},
        {"kind": "malformed", "after_chunks": 2},
        {"kind": "error", "status": 503, "after_chunks": 2},
    ],
    ids=["cut", "reset", "stall", "corrupt", "in-band-error"],
)
def test_a_broken_stream_is_completed_by_the_fallback(
    proxy: str, simulator_url: str, simulator: SimulatorControl, fault: dict[str, Any]
) -> None:
    simulator.set_faults(PRO, [fault])
    chunks = stream(proxy)
    # One coherent answer: nothing repeated, nothing missing, one response id.
    assert text_of(chunks) == whole_answer(simulator_url)
    assert len({c.response_id for c in chunks}) == 1
    assert chunks[-1].candidates is not None
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert chunks[-1].model_version == FLASH  # the model that finished it
    assert chunks[-1].usage_metadata is not None
    continuation = [
        a
        for a in calls(simulator, model=FLASH, include_body=True)
        if a["api_method"] == "streamGenerateContent"
    ]
    assert len(continuation) == 1
    contents = json.loads(simulator.body_of(continuation[0]))["contents"]
    assert contents[-1]["role"] == "model"  # the delivered text, as a model turn
    assert whole_answer(simulator_url).startswith(contents[-1]["parts"][0]["text"])
    simulator.clear_faults()
    assert text_of(stream(proxy)) == whole_answer(simulator_url)  # and the proxy is healthy


def test_a_slow_first_chunk_fails_over_before_anything_is_sent(
    proxy: str, simulator_url: str, simulator: SimulatorControl
) -> None:
    simulator.set_faults(PRO, [{"kind": "slow_first_chunk", "seconds": 3}])
    chunks = stream(proxy)
    assert {c.model_version for c in chunks} == {FLASH}  # all of it from the fallback
    assert text_of(chunks) == whole_answer(simulator_url)
    streams = [a for a in calls(simulator) if a["api_method"] == "streamGenerateContent"]
    assert [a["model"] for a in streams] == [PRO, FLASH]


def test_when_no_fallback_can_continue_the_client_sees_the_original_failure(
    simulator_url: str, simulator: SimulatorControl
) -> None:
    simulator.set_faults(PRO, [{"kind": "cut", "after_chunks": 2}])
    for model in (FLASH, LITE):
        simulator.set_faults(model, [{"kind": "reject_continuation"}])
    with proxy_with(simulator_url) as proxy:
        received: list[str] = []
        with pytest.raises(errors.ServerError) as caught:
            for chunk in sdk(proxy).models.generate_content_stream(model=PRO, contents=PROMPT):
                received.append(chunk.text or "")
    assert len(received) == 2  # what was delivered stays delivered
    assert caught.value.code == 502
    assert "finishReason" in (caught.value.message or "")  # the original failure, not a 400


def test_a_route_can_choose_to_end_broken_streams_with_an_error(
    simulator_url: str, simulator: SimulatorControl
) -> None:
    simulator.set_faults(PRO, [{"kind": "stall", "after_chunks": 1}])
    route = {"chain": [PRO, FLASH], "on_stream_break": "error"}
    with (
        proxy_with(simulator_url, **{PRO: route}) as proxy,
        pytest.raises(errors.ServerError) as caught,
    ):
        stream(proxy)
    assert "stalled" in (caught.value.message or "")
    assert calls(simulator, model=FLASH) == []


def test_a_final_chunk_without_parts_completes_the_stream(
    proxy: str, simulator_url: str, simulator: SimulatorControl
) -> None:
    simulator.set_faults(PRO, [{"kind": "empty_final_chunk"}])
    chunks = stream(proxy)
    assert text_of(chunks) == whole_answer(simulator_url)
    assert chunks[-1].candidates is not None
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert chunks[-1].usage_metadata is not None
    streams = [a for a in calls(simulator) if a["api_method"] == "streamGenerateContent"]
    assert [a["model"] for a in streams] == [PRO]  # nothing was continued


def test_a_blocked_prompt_streams_through_and_is_not_retried(
    proxy: str, simulator: SimulatorControl
) -> None:
    simulator.set_faults(PRO, [{"kind": "blocked"}])
    chunks = stream(proxy)
    assert chunks[0].prompt_feedback is not None
    assert chunks[0].prompt_feedback.block_reason is not None
    assert [a["model"] for a in calls(simulator)] == [PRO]


def test_sse_passes_through_unchanged_when_healthy(
    proxy: str, simulator_url: str, simulator: SimulatorControl
) -> None:
    path = f"/v1beta/models/{PRO}:streamGenerateContent?alt=sse"
    body = {"contents": [{"parts": [{"text": PROMPT}], "role": "user"}]}
    via_proxy = httpx.post(proxy + path, json=body, headers={"x-goog-api-key": "k"})
    direct = httpx.post(simulator_url + path, json=body, headers={"x-goog-api-key": "k"})
    assert via_proxy.content == direct.content
    assert b": keep" not in via_proxy.content and b"[DONE]" not in via_proxy.content


def test_a_fallback_configured_without_prefill_is_not_asked_to_continue(
    simulator_url: str, simulator: SimulatorControl
) -> None:
    simulator.set_faults(PRO, [{"kind": "cut", "after_chunks": 1}])
    settings = proxy_settings(
        simulator_url,
        model_defaults={**PASS_THROUGH, "first_event_timeout": 1.0, "stall_timeout": 0.5},
        models={FLASH: {"capabilities": {"supports_prefill": False}}},
    )
    with serve(create_app(settings)) as proxy:
        chunks = stream(proxy)
    assert chunks[-1].model_version == LITE  # flash was passed over
    streams = [a["model"] for a in calls(simulator) if a["api_method"] == "streamGenerateContent"]
    assert streams == [PRO, LITE]
