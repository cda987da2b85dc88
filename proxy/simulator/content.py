"""Deterministic model behaviour: request checks, token counts, answers, stream chunks, vectors.

Nothing here is random: the same request to the same model always gets the same bytes back,
so tests can compare answers across retries, failover and replicas. The answer's text does not
depend on the model either (only ``modelVersion`` and ``responseId`` do), so a fallback model
says exactly what the primary would have said.

A request whose ``contents`` end with a ``model`` turn is a continuation (prefill): the text of
that turn is the start of the answer, already delivered, and the model answers with the rest of
the answer it would give without that turn.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from proxy.errors import SimulatorError
from proxy.simulator import jsonmode

# Google bills an image (inline or by file URI) as a fixed 258 tokens.
MEDIA_PART_TOKENS = 258
DEFAULT_EMBEDDING_DIMENSIONS = 768
MAX_EMBEDDING_DIMENSIONS = 3072
MAX_BATCH_EMBED_REQUESTS = 100
_ECHO_WORDS = 40
_WORD = re.compile(r"\S+\s*")
_VALID_ROLES = ("user", "model", "function", "system")
_MEDIA_KEYS = ("inlineData", "inline_data", "fileData", "file_data")


class RequestError(SimulatorError, ValueError):
    """The request body is invalid; the message is Google's ``INVALID_ARGUMENT`` text."""


POISON_MARKER = "[gemini-breaker-simulator:poison]"
"""Prompt text that makes every model answer 500 INTERNAL, every time: a deliberate stand-in
for the request-specific inputs Google fails on (the simulator has no such bugs of its own)."""


def poisoned(contents: Sequence[Any]) -> bool:
    """Whether a request's contents carry the poison marker."""
    return any(
        isinstance(text := part.get("text"), str) and POISON_MARKER in text
        for part in _parts(contents)
    )


def check_contents(value: Any, field: str) -> list[dict[str, Any]]:
    """The ``contents`` list of a request, checked the way Google rejects bad ones."""
    if value is None or value == []:
        raise RequestError(f"* {field}: contents is not specified\n")
    if not isinstance(value, list):
        raise RequestError(f"Invalid value at '{field.split('.', 1)[-1]}': expected a list.")
    for index, content in enumerate(value):
        check_content(content, f"{field}[{index}]")
    return value


def check_content(content: Any, field: str) -> dict[str, Any]:
    if not isinstance(content, dict):
        raise RequestError(f"Invalid value at '{field}': expected an object.")
    role = content.get("role")
    if role is not None and role not in _VALID_ROLES:
        raise RequestError("Please use a valid role: user, model.")
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        raise RequestError(f"* {field}.parts: contents.parts must not be empty.\n")
    if not all(isinstance(part, dict) for part in parts):
        raise RequestError(f"Invalid value at '{field}.parts': expected objects.")
    return content


def _parts(contents: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        part
        for content in contents
        if isinstance(content, dict)
        for part in content.get("parts") or ()
        if isinstance(part, dict)
    ]


def count_tokens(contents: Sequence[Any], system_instruction: Any = None) -> int:
    """About four characters per token over text, plus a flat count per media part."""
    everything = list(contents)
    if isinstance(system_instruction, dict):
        everything.append(system_instruction)
    chars = 0
    media = 0
    for part in _parts(everything):
        text = part.get("text")
        if isinstance(text, str):
            chars += len(text)
        elif any(key in part for key in _MEDIA_KEYS):
            media += 1
        else:
            # Function calls and responses: their JSON is what the model reads.
            chars += len(json.dumps(part, sort_keys=True))
    return math.ceil(chars / 4) + media * MEDIA_PART_TOKENS


def text_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def last_user_text(contents: Sequence[Any]) -> str:
    for content in reversed(contents):
        if isinstance(content, dict) and content.get("role", "user") == "user":
            texts = [p["text"] for p in _parts([content]) if isinstance(p.get("text"), str)]
            if texts:
                return " ".join(texts)
    return ""


def prefill(contents: Sequence[Any]) -> str | None:
    """The text of a trailing ``model`` turn (the answer so far, thoughts left out); None when
    the request does not end with one."""
    last = contents[-1] if contents else None
    if not isinstance(last, dict) or last.get("role") != "model":
        return None
    return "".join(
        part["text"]
        for part in _parts([last])
        if isinstance(part.get("text"), str) and not part.get("thought")
    )


def generation_config(body: dict[str, Any]) -> Any:
    return body.get("generationConfig", body.get("generation_config"))


def system_instruction(body: dict[str, Any]) -> Any:
    return body.get("systemInstruction", body.get("system_instruction"))


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_digest(model: str, body: Any) -> bytes:
    """A hash of the request's meaning (key order and whitespace do not matter)."""
    return hashlib.sha256(f"{model}\n{_canonical(body)}".encode()).digest()


def response_id(digest: bytes) -> str:
    """A 23-character id shaped like Google's (``LdGKaIu3NoKsmtkP0M27iQ8``)."""
    return base64.urlsafe_b64encode(digest[:17]).decode().rstrip("=")


@dataclass(frozen=True, slots=True)
class Answer:
    """What the model "says" to a generate request."""

    model: str
    text: str
    prompt_tokens: int
    response_id: str
    finish_reason: str = "STOP"
    continuation: bool = False
    """The request ended with a model turn: ``text`` is the rest of the answer."""
    json_mode: bool = False

    @property
    def candidate_tokens(self) -> int:
        return text_tokens(self.text)

    def usage(self, candidate_tokens: int | None = None) -> dict[str, Any]:
        candidates = self.candidate_tokens if candidate_tokens is None else candidate_tokens
        usage: dict[str, Any] = {"promptTokenCount": self.prompt_tokens}
        if candidates:
            usage["candidatesTokenCount"] = candidates
        usage["totalTokenCount"] = self.prompt_tokens + candidates
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": self.prompt_tokens}]
        return usage

    def response(self) -> dict[str, Any]:
        """The whole ``GenerateContentResponse`` of a unary call."""
        candidate = {
            "content": {"parts": [{"text": self.text}], "role": "model"},
            "finishReason": self.finish_reason,
            "index": 0,
        }
        return self._envelope([candidate], self.usage())

    def chunks(
        self, words_per_chunk: int, *, final_without_parts: bool = False
    ) -> list[dict[str, Any]]:
        """The stream: text in groups of words, cumulative usage, finishReason on the last.

        With ``final_without_parts`` every chunk carries text only, and one more event ends the
        stream with ``finishReason`` and the usage but no ``content``, as Gemini sometimes does.
        """
        words = _WORD.findall(self.text) or [self.text]
        pieces = [
            "".join(words[i : i + words_per_chunk]) for i in range(0, len(words), words_per_chunk)
        ]
        chunks = []
        sent = ""
        for index, piece in enumerate(pieces):
            sent += piece
            candidate: dict[str, Any] = {"content": {"parts": [{"text": piece}], "role": "model"}}
            if index == len(pieces) - 1 and not final_without_parts:
                candidate["finishReason"] = self.finish_reason
            candidate["index"] = 0
            chunks.append(self._envelope([candidate], self.usage(text_tokens(sent))))
        if final_without_parts:
            final = {"finishReason": self.finish_reason, "index": 0}
            chunks.append(self._envelope([final], self.usage()))
        return chunks

    def blocked(self, reason: str) -> dict[str, Any]:
        """A prompt refused by the safety filter: HTTP 200, no candidates."""
        return {
            "promptFeedback": {"blockReason": reason},
            "usageMetadata": self.usage(0),
            "modelVersion": self.model,
            "responseId": self.response_id,
        }

    def _envelope(self, candidates: list[dict[str, Any]], usage: dict[str, Any]) -> dict[str, Any]:
        return {
            "candidates": candidates,
            "usageMetadata": usage,
            "modelVersion": self.model,
            "responseId": self.response_id,
        }


def answer(model: str, body: dict[str, Any], output_limit: int, drift: str | None = None) -> Answer:
    """The deterministic answer to a checked ``GenerateContentRequest``.

    ``drift`` (``invalid`` or ``schema``) breaks a JSON-mode answer on purpose. A continuation
    answers what the whole answer has beyond its common prefix with the delivered text.
    """
    contents = body["contents"]
    done = prefill(contents)
    base = contents if done is None else contents[:-1]
    text, finish = whole_answer(base, body, output_limit, drift)
    if done is not None:
        text = text[_common_prefix(text, done) :]
    return Answer(
        model,
        text,
        count_tokens(contents, system_instruction(body)),
        response_id(request_digest(model, body)),
        finish,
        continuation=done is not None,
        json_mode=jsonmode.json_request(generation_config(body)) is not None,
    )


def _common_prefix(a: str, b: str) -> int:
    """How many leading characters ``a`` and ``b`` share."""
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return min(len(a), len(b))


def whole_answer(
    contents: Sequence[Any], body: dict[str, Any], output_limit: int, drift: str | None = None
) -> tuple[str, str]:
    """The text answering ``contents`` (under the body's settings) and its finish reason."""
    echo_words = " ".join(last_user_text(contents).split()).split(" ")
    echo = " ".join(echo_words[:_ECHO_WORDS]) + (" ..." if len(echo_words) > _ECHO_WORDS else "")
    text = f'The simulator says: you wrote "{echo}", and this is a simulated answer.'
    config = generation_config(body)
    wanted = jsonmode.json_request(config)
    if wanted is not None:
        # The prompt alone seeds the values, so settings a fallback may change do not matter.
        seed = hashlib.sha256(_canonical([contents, system_instruction(body)]).encode()).digest()
        text = jsonmode.render(wanted, seed, text, drift)
    finish = "STOP"
    limit = output_limit
    if isinstance(config, dict):
        requested = config.get("maxOutputTokens", config.get("max_output_tokens"))
        if isinstance(requested, int) and not isinstance(requested, bool) and requested > 0:
            limit = min(limit, requested)
    if text_tokens(text) > limit:
        text = text[: limit * 4]
        finish = "MAX_TOKENS"
    return text, finish


def embed_text(content: Any, field: str) -> str:
    """The text of an ``EmbedContentRequest.content``."""
    if content is None:
        raise RequestError(f"* {field}: content is not specified\n")
    check_content(content, field)
    return "\n".join(p["text"] for p in _parts([content]) if isinstance(p.get("text"), str))


def dimensions(request: dict[str, Any], field: str) -> int:
    value = request.get("outputDimensionality", request.get("output_dimensionality"))
    if value is None:
        return DEFAULT_EMBEDDING_DIMENSIONS
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"Invalid value at '{field}.output_dimensionality': expected an int.")
    if not 1 <= value <= MAX_EMBEDDING_DIMENSIONS:
        raise RequestError(
            f"* {field}.output_dimensionality: must be between 1 and {MAX_EMBEDDING_DIMENSIONS}\n"
        )
    return value


def embedding(text: str, dims: int) -> list[float]:
    """A unit vector from a hash of the text.

    A shorter vector is the longer one truncated and renormalised, as with Google's
    Matryoshka-trained embeddings, so similarity across dimensions stays meaningful.
    """
    raw: list[float] = []
    block = 0
    seed = text.encode()
    while len(raw) < dims:
        digest = hashlib.sha256(seed + block.to_bytes(4, "big")).digest()
        raw.extend(v / 2**31 for v in struct.unpack(">8i", digest))
        block += 1
    values = raw[:dims]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]
