"""Gemini's OpenAI-compatible API (``/v1beta/openai/...``), spoken over the simulator's own
Gemini API: a request is translated into a ``generateContent`` (or SSE stream, or batch embed)
call to the same models, quotas and faults, and the answer translated back. A cut, stalled or
corrupt Gemini stream stays as broken in its compatible form: ``data: [DONE]`` follows only a
chunk with a ``finish_reason``. Errors are Google's error object in a JSON list.

Tool calls: the simulated model calls the request's first tool (arguments ``{}``) when
``tool_choice`` is ``"required"`` and the last message is not a tool's result.

Stream faults of the compatible framing itself (``STREAM_FAULT_KINDS``), queued per model by
``add_stream_fault`` (in process) and each used once by the model's next stream:
``done_without_finish``, every chunk's ``finish_reason`` (and ``usage``) left out but
``data: [DONE]`` sent at the end; ``finish_without_done``, the answer whole with its
``finish_reason`` but the body ending without ``data: [DONE]``.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.simulator import replies
from proxy.simulator.gemini import COMPATIBLE_BODY
from proxy.simulator.wire import SSE_CONTENT_TYPE, Reply

MAX_BODY_BYTES = 20 * 1024 * 1024
_PATH = re.compile(r"^/v1beta/openai/(chat/completions|embeddings|models)/?$")
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n")
_FINISH = {"STOP": "stop", "MAX_TOKENS": "length"}
DONE = b"data: [DONE]\n\n"
STREAM_FAULT_KINDS = ("done_without_finish", "finish_without_done")


class OpenAICompatApi:
    """ASGI endpoint for ``/v1beta/openai/{chat/completions,embeddings,models}``; ``gemini`` is
    the simulator's Gemini API it translates to."""

    def __init__(self, gemini: ASGIApp) -> None:
        self.gemini = gemini
        self.stream_faults: dict[str, deque[str]] = {}

    def add_stream_fault(self, model: str, kind: str) -> None:
        """Queue a fault of ``STREAM_FAULT_KINDS`` for ``model``'s next stream."""
        if kind not in STREAM_FAULT_KINDS:
            raise ValueError(f"not a stream fault of the compatible API: {kind!r}")
        self.stream_faults.setdefault(model, deque()).append(kind)

    def _stream_fault(self, model: str) -> str | None:
        queue = self.stream_faults.get(model)
        return queue.popleft() if queue else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _PATH.match(scope["path"])
        operation = match.group(1) if match else ""
        body = await _read(receive)
        if body is None:
            return
        if operation == "models" and scope["method"] == "GET":
            await self._inner(scope, receive, send, "GET", "/v1beta/models", b"", _Models(), body)
            return
        if scope["method"] != "POST" or operation == "models":
            await _reply(send, replies.not_found())
            return
        try:
            request = json.loads(body)
        except ValueError:
            await _reply(send, replies.invalid_json())
            return
        model = request.get("model") if isinstance(request, dict) else None
        if not isinstance(model, str) or not model:
            await _reply(send, replies.invalid_argument("model is not specified"))
            return
        model = model.removeprefix("models/")
        if operation == "embeddings":
            inner_body = _embed_request(model, request.get("input"))
            path = f"/v1beta/models/{model}:batchEmbedContents"
            await self._inner(
                scope, receive, send, "POST", path, inner_body, _Embeddings(model), body
            )
            return
        stream = request.get("stream") is True
        method = "streamGenerateContent" if stream else "generateContent"
        path = f"/v1beta/models/{model}:{method}"
        translator: _Translator = (
            _Stream(model, self._stream_fault(model)) if stream else _Completion(model, request)
        )
        inner_body = _generate_request(request)
        await self._inner(scope, receive, send, "POST", path, inner_body, translator, body)

    async def _inner(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        method: str,
        path: str,
        body: bytes,
        translator: _Translator,
        original: bytes,
    ) -> None:
        headers = [(n, v) for n, v in scope["headers"] if n != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        inner = {
            **scope,
            "method": method,
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"alt=sse" if isinstance(translator, _Stream) else b"",
            "headers": headers,
            COMPATIBLE_BODY: original,
        }
        sent_body = False

        async def inner_receive() -> Message:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def translated(message: Message) -> None:
            for out in translator.translate(message):
                await send(out)

        await self.gemini(inner, inner_receive, translated)


class _Translator:
    """Turns the inner Gemini answer's messages into the compatible API's."""

    def __init__(self) -> None:
        self.status = 200
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()

    def translate(self, message: Message) -> list[Message]:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = [
                (n, v)
                for n, v in message.get("headers", ())
                if n.lower() not in (b"content-length", b"content-type")
            ]
            return []
        self.body += message.get("body", b"")
        if message.get("more_body", False):
            return []
        if self.status != 200:
            out = b"[" + bytes(self.body).strip() + b"]\n"
        else:
            out = json.dumps(self.answer(json.loads(self.body)), indent=2).encode() + b"\n"
        headers = [
            *self.headers,
            (b"content-type", b"application/json; charset=UTF-8"),
            (b"content-length", str(len(out)).encode()),
        ]
        return [
            {"type": "http.response.start", "status": self.status, "headers": headers},
            {"type": "http.response.body", "body": out},
        ]

    def answer(self, value: Any) -> Any:
        raise NotImplementedError


class _Models(_Translator):
    def answer(self, value: Any) -> Any:
        data = [
            {"id": model["name"], "object": "model", "owned_by": "google"}
            for model in value.get("models", [])
        ]
        return {"object": "list", "data": data}


class _Embeddings(_Translator):
    def __init__(self, model: str) -> None:
        super().__init__()
        self.model = model

    def answer(self, value: Any) -> Any:
        data = [
            {"object": "embedding", "index": index, "embedding": item["values"]}
            for index, item in enumerate(value.get("embeddings", []))
        ]
        usage = {"prompt_tokens": 0, "total_tokens": 0}
        return {"object": "list", "data": data, "model": self.model, "usage": usage}


class _Completion(_Translator):
    def __init__(self, model: str, request: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.request = request

    def answer(self, value: Any) -> Any:
        candidate = (value.get("candidates") or [{}])[0]
        text = "".join(
            part.get("text", "") for part in (candidate.get("content") or {}).get("parts", [])
        )
        message: dict[str, Any] = {"role": "assistant", "content": text}
        finish = _FINISH.get(candidate.get("finishReason", ""), "content_filter")
        tool = _called_tool(self.request)
        if tool is not None:
            arguments = "{}"
            call = {
                "id": "call_0",
                "type": "function",
                "function": {"name": tool, "arguments": arguments},
            }
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            finish = "tool_calls"
        return {
            "id": value.get("responseId", ""),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": value.get("modelVersion", self.model),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": _usage(value.get("usageMetadata") or {}),
        }


class _Stream(_Translator):
    """Event by event: a chunk that is not JSON goes through as it is (corrupt); ``[DONE]``
    only after a chunk that finished the answer (unless ``fault`` says otherwise)."""

    def __init__(self, model: str, fault: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.pending = b""
        self.finished = False
        self.fault = fault

    def translate(self, message: Message) -> list[Message]:
        if message["type"] == "http.response.start":
            if message["status"] != 200:
                return super().translate(message)
            headers = [
                (n, v)
                for n, v in message.get("headers", ())
                if n.lower() not in (b"content-length", b"content-type")
            ]
            headers.append((b"content-type", SSE_CONTENT_TYPE.encode()))
            self.status = 200
            return [{**message, "headers": headers}]
        if self.status != 200:
            return super().translate(message)
        data = self.pending + message.get("body", b"")
        out = []
        start = 0
        for match in _EVENT_END.finditer(data):
            out.append(self._event(data[start : match.start()]))
            start = match.end()
        self.pending = data[start:]
        more = message.get("more_body", False)
        if not more:
            if self.pending:
                out.append(self.pending)
            done = self.finished and self.fault != "finish_without_done"
            if done or self.fault == "done_without_finish":
                out.append(DONE)
        return [{"type": "http.response.body", "body": b"".join(out), "more_body": more}]

    def _event(self, event: bytes) -> bytes:
        try:
            value = json.loads(event.removeprefix(b"data: "))
        except ValueError:
            return event + b"\n\n"
        if "error" in value:
            return b"data: " + json.dumps(value).encode() + b"\n\n"
        candidate = (value.get("candidates") or [{}])[0]
        text = "".join(
            part.get("text", "") for part in (candidate.get("content") or {}).get("parts", [])
        )
        reason = candidate.get("finishReason")
        if self.fault == "done_without_finish":
            reason = None
        finish = _FINISH.get(reason, "content_filter") if reason else None
        self.finished = self.finished or finish is not None
        chunk: dict[str, Any] = {
            "id": value.get("responseId", ""),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": value.get("modelVersion", self.model),
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                }
            ],
        }
        if finish is not None:
            chunk["usage"] = _usage(value.get("usageMetadata") or {})
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def _usage(metadata: dict[str, Any]) -> dict[str, int]:
    prompt = int(metadata.get("promptTokenCount", 0))
    completion = int(metadata.get("candidatesTokenCount", 0))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _generate_request(request: dict[str, Any]) -> bytes:
    """The ``GenerateContentRequest`` a chat completion request stands for."""
    contents: list[dict[str, Any]] = []
    system: list[dict[str, str]] = []
    messages = request.get("messages")
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict):
            continue
        role, text = message.get("role"), _text(message.get("content"))
        if role in ("system", "developer"):
            system.append({"text": text})
        elif role == "assistant":
            parts: list[dict[str, Any]] = [{"text": text}] if text else []
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                arguments = json.loads(function.get("arguments") or "{}")
                parts.append({"functionCall": {"name": function.get("name"), "args": arguments}})
            contents.append({"role": "model", "parts": parts or [{"text": ""}]})
        elif role == "tool":
            response = {"name": message.get("name") or "tool", "response": {"content": text}}
            contents.append({"role": "user", "parts": [{"functionResponse": response}]})
        else:
            contents.append({"role": "user", "parts": [{"text": text}]})
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    config: dict[str, Any] = {}
    if isinstance(request.get("max_tokens"), int):
        config["maxOutputTokens"] = request["max_tokens"]
    if isinstance(request.get("temperature"), (int, float)):
        config["temperature"] = request["temperature"]
    if config:
        body["generationConfig"] = config
    return json.dumps(body).encode()


def _embed_request(model: str, value: Any) -> bytes:
    inputs = value if isinstance(value, list) else [value]
    requests = [
        {"model": f"models/{model}", "content": {"parts": [{"text": str(text)}]}} for text in inputs
    ]
    return json.dumps({"requests": requests}).encode()


def _called_tool(request: dict[str, Any]) -> str | None:
    """The tool the simulated model calls, if it calls one."""
    tools = request.get("tools")
    if request.get("tool_choice") != "required" or not isinstance(tools, list) or not tools:
        return None
    messages = request.get("messages") or [{}]
    if isinstance(messages[-1], dict) and messages[-1].get("role") == "tool":
        return None
    function = tools[0].get("function") if isinstance(tools[0], dict) else None
    return str(function.get("name")) if isinstance(function, dict) else None


async def _read(receive: Receive) -> bytes | None:
    """The request body (None if the client left, or sent more than the limit)."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if len(body) > MAX_BODY_BYTES:
            return None
        if not message.get("more_body", False):
            return bytes(body)


async def _reply(send: Send, reply: Reply) -> None:
    body = b"[" + reply.body.strip() + b"]\n"
    headers = [
        (b"content-type", (reply.content_type or "application/json").encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
