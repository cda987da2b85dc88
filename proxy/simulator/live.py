"""The Live API (BidiGenerateContent over WebSocket), as Google speaks it: ``setup`` then
``setupComplete``; ``clientContent`` / ``realtimeInput`` turns answered by ``serverContent``
(``modelTurn`` parts, ``generationComplete``, ``turnComplete`` with ``usageMetadata``); a tool
call round trip; ``sessionResumptionUpdate`` handles when the client asked for resumption;
``goAway``; errors as a 1011 close with the status in the reason. Frames are binary JSON.
Every frame a session receives after its setup is recorded as it came (``frames``), for tests
of the relay's byte-for-byte promise.
Vertex AI's path (``LlmBidiService``) takes a setup naming the model's full resource,
``projects/P/locations/L/publishers/google/models/M``; faults are keyed by ``M`` there too.

Faults (``LiveFault``) are queued per model and each used once, in order."""

from __future__ import annotations

import itertools
import json
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Receive, Scope, Send

from .attempts import key_digest

_VERTEX_MODEL = re.compile(
    r"^projects/[^/]+/locations/[^/]+/publishers/google/models/(?P<model>[^/]+)$"
)
LIVE_FAULT_KINDS = ("refuse", "close_at_setup", "quota", "drop", "drop_mid_turn", "go_away", "send")
Frame = str | bytes
FRAMES_KEPT = 10_000
RECORDS_KEPT = 10_000
"""Upgrades (paths, credentials), setups and resumable conversations a long-running simulator
keeps: the oldest go first."""


@dataclass(frozen=True, slots=True)
class LiveFault:
    """``refuse``: the upgrade answered with ``status``; ``close_at_setup``: closed (1011,
    UNAVAILABLE) instead of ``setupComplete``; ``quota``: closed (1011, RESOURCE_EXHAUSTED)
    at setup; ``drop``: closed (1011, INTERNAL) after ``after_turns`` turns (after the turn's
    resumption handle, if any); ``drop_mid_turn``: closed the same way after the first chunk
    of turn ``after_turns`` (before that turn's ``turnComplete`` and handle); ``go_away``:
    ``goAway`` then a close (1000, ``reason``) after ``after_turns`` turns; ``send``:
    ``frames`` sent as they are (text as text, bytes as binary) right after ``setupComplete``,
    each counted in ``LiveSimulator.frames_sent`` once its send returned (a send waits while
    the peer does not read: that is how a test sees back-pressure)."""

    kind: str
    after_turns: int = 0
    status: int = 503
    frames: tuple[Frame, ...] = ()
    reason: str = ""


@dataclass(slots=True)
class _Conversation:
    turns: int = 0
    history: list[str] = field(default_factory=list)


class LiveSimulator:
    """The Live endpoint of one simulator; ``faults`` and ``setups`` are for tests."""

    def __init__(self) -> None:
        self.faults: dict[str, deque[LiveFault]] = {}
        self.setups: list[dict[str, Any]] = []
        """Every setup message received, in order."""
        self.paths: list[str] = []
        """The path of every upgrade accepted, in order."""
        self.credentials: list[str] = []
        """For every upgrade accepted, a digest of its API key or bearer token ("" if none)."""
        self.frames: deque[Frame] = deque(maxlen=FRAMES_KEPT)
        """The frames received after a setup, as they came (text as ``str``, binary as
        bytes), the last ``FRAMES_KEPT`` of them: a long-running simulator keeps no more."""
        self.frames_sent = 0
        """Frames of ``send`` faults whose send returned."""
        self._resumable: dict[str, _Conversation] = {}
        self._ids = itertools.count(1)

    def add_fault(self, model: str, fault: LiveFault) -> None:
        self.faults.setdefault(model, deque()).append(fault)

    def _next_fault(self, model: str, kinds: tuple[str, ...]) -> LiveFault | None:
        queue = self.faults.get(model)
        if queue and queue[0].kind in kinds:
            return queue.popleft()
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        path: str = scope["path"]
        if "/ws/" not in path or "BidiGenerateContent" not in path:
            await send({"type": "websocket.close", "code": 1008})
            return
        # The model is known only from the setup; a refusal fault applies to the next upgrade.
        refusal = next((m for m, q in self.faults.items() if q and q[0].kind == "refuse"), None)
        if refusal is not None:
            await _refuse(scope, send, self.faults[refusal].popleft().status)
            return
        await send({"type": "websocket.accept"})
        _record(self.paths, path)
        _record(self.credentials, _credential(scope))
        first = await receive()
        if first["type"] != "websocket.receive":
            return
        try:
            setup = json.loads(first.get("bytes") or first.get("text") or "")["setup"]
            name = str(setup["model"])
        except (ValueError, KeyError, TypeError):
            await _close(send, 1007, "INVALID_ARGUMENT: Invalid JSON payload received.")
            return
        vertex = _VERTEX_MODEL.match(name)
        if "aiplatform" in path and vertex is None:
            await _close(send, 1007, f"INVALID_ARGUMENT: model {name!r} is not a full resource.")
            return
        model = vertex["model"] if vertex is not None else name.removeprefix("models/")
        _record(self.setups, setup)
        at_setup = self._next_fault(model, ("close_at_setup", "quota"))
        if at_setup is not None:
            if at_setup.kind == "quota":
                reason = "RESOURCE_EXHAUSTED: You exceeded your current quota."
            else:
                reason = "UNAVAILABLE: The service is currently unavailable."
            await _close(send, 1011, reason)
            return
        resumption = setup.get("sessionResumption")
        handle = (resumption or {}).get("handle") if isinstance(resumption, dict) else None
        if handle is not None:
            conversation = self._resumable.get(handle)
            if conversation is None:
                await _close(send, 1008, "INVALID_ARGUMENT: unknown session resumption handle.")
                return
        else:
            conversation = _Conversation()
        session = next(self._ids)
        await _send(send, {"setupComplete": {}})
        scripted = self._next_fault(model, ("send",))
        for frame in scripted.frames if scripted is not None else ():
            key = "text" if isinstance(frame, str) else "bytes"
            await send({"type": "websocket.send", key: frame})
            self.frames_sent += 1
        tools = {
            declaration["name"]
            for tool in setup.get("tools") or ()
            for declaration in tool.get("functionDeclarations") or ()
        }
        pending_call: str | None = None
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            text_frame: str | None = message.get("text")
            self.frames.append(
                text_frame if text_frame is not None else message.get("bytes") or b""
            )
            try:
                body = json.loads(message.get("bytes") or message.get("text") or "")
            except ValueError:
                await _close(send, 1007, "INVALID_ARGUMENT: Invalid JSON payload received.")
                return
            text = _user_text(body)
            tool_response = _field(body, "toolResponse")
            if isinstance(tool_response, dict) and pending_call is not None:
                responses = _field(tool_response, "functionResponses") or []
                answer = json.dumps(responses[0].get("response") if responses else None)
                text_out = f"Tool {pending_call} answered {answer}."
                pending_call = None
            elif text is None:
                continue
            else:
                called = next((name for name in sorted(tools) if name in text), None)
                if called is not None:
                    pending_call = called
                    call = {"id": f"call-{session}", "name": called, "args": {}}
                    await _send(send, {"toolCall": {"functionCalls": [call]}})
                    continue
                conversation.history.append(text)
                text_out = f"Live reply {conversation.turns + 1} to: {text}"
            conversation.turns += 1
            mid_turn = self._next_fault(model, ("drop_mid_turn",))
            if mid_turn is not None and conversation.turns < mid_turn.after_turns:
                self.faults[model].appendleft(mid_turn)
                mid_turn = None
            for chunk in _chunks(text_out):
                await _send(send, {"serverContent": {"modelTurn": {"parts": [{"text": chunk}]}}})
                if mid_turn is not None:
                    await _close(send, 1011, "INTERNAL: Internal error encountered.")
                    return
            await _send(send, {"serverContent": {"generationComplete": True}})
            usage = {"promptTokenCount": 4, "responseTokenCount": len(text_out.split())}
            await _send(send, {"serverContent": {"turnComplete": True}, "usageMetadata": usage})
            if resumption is not None:
                new = f"handle-{session}-{conversation.turns}"
                self._resumable[new] = conversation
                if len(self._resumable) > RECORDS_KEPT:
                    del self._resumable[next(iter(self._resumable))]
                await _send(
                    send, {"sessionResumptionUpdate": {"newHandle": new, "resumable": True}}
                )
            fault = self._next_fault(model, ("drop", "go_away"))
            if fault is not None and conversation.turns >= fault.after_turns:
                if fault.kind == "go_away":
                    await _send(send, {"goAway": {"timeLeft": "0s"}})
                    await _close(send, 1000, fault.reason)
                else:
                    await _close(send, 1011, "INTERNAL: Internal error encountered.")
                return
            if fault is not None:
                self.faults[model].appendleft(fault)


def _credential(scope: Scope) -> str:
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    key = headers.get("x-goog-api-key")
    if key:
        return key_digest(key)
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return key_digest(token.strip()) if scheme.lower() == "bearer" and token.strip() else ""


def _field(body: dict[str, Any], name: str) -> Any:
    """A field by its proto-JSON name or its snake_case one (Google accepts both; the SDK
    sends ``client_content`` and ``tool_response``)."""
    if name in body:
        return body[name]
    return body.get("".join("_" + c.lower() if c.isupper() else c for c in name))


def _user_text(body: dict[str, Any]) -> str | None:
    content = _field(body, "clientContent")
    if isinstance(content, dict):
        texts = [
            part.get("text", "")
            for turn in content.get("turns") or ()
            for part in turn.get("parts") or ()
        ]
        return " ".join(t for t in texts if t) or None
    realtime = _field(body, "realtimeInput")
    if isinstance(realtime, dict) and isinstance(realtime.get("text"), str):
        return str(realtime["text"])
    return None


def _chunks(text: str) -> list[str]:
    words = text.split(" ")
    return [
        " ".join(words[i : i + 3]) + (" " if i + 3 < len(words) else "")
        for i in range(0, len(words), 3)
    ]


async def _send(send: Send, body: dict[str, Any]) -> None:
    await send({"type": "websocket.send", "bytes": json.dumps(body).encode()})


async def _close(send: Send, code: int, reason: str) -> None:
    await send({"type": "websocket.close", "code": code, "reason": reason})


async def _refuse(scope: Scope, send: Send, status: int) -> None:
    """An HTTP answer instead of the upgrade, when the server supports it (uvicorn does)."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1011})
        return
    body = json.dumps({"error": {"code": status, "status": "UNAVAILABLE"}}).encode()
    await send(
        {
            "type": "websocket.http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "websocket.http.response.body", "body": body})


def _record(records: list[Any], item: Any) -> None:
    """Append ``item``, keeping the last ``RECORDS_KEPT`` (a list, so tests compare it to one)."""
    records.append(item)
    if len(records) > RECORDS_KEPT:
        del records[: len(records) - RECORDS_KEPT]
