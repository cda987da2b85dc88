"""Server-sent events as Gemini streams them: framing, parsing, and what a stream delivered.

A stream is whole only when a chunk carries ``finishReason``. Chunks are checked before they are
forwarded, so a corrupt one never reaches the client; the text already delivered is kept, so a
broken stream can be continued on another model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from json.scanner import make_scanner
from typing import Any

from ..errors import PipelineError

# An event ends at a blank line; Google uses CRLF, other servers LF.
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
MAX_EVENT_BYTES = 32 * 1024 * 1024
"""A single event larger than this is treated as corrupt (an image answer is a few MiB)."""


class CorruptEvent(PipelineError):
    """An event that is not ``data: <JSON object>``, or one far too large."""


@dataclass(slots=True)
class EventSplitter:
    """Cuts a byte stream into complete events (each with its terminating blank line)."""

    _buffer: bytearray = field(default_factory=bytearray)

    def feed(self, chunk: bytes) -> list[bytes]:
        if not self._buffer and chunk.endswith(b"\r\n\r\n") and _one_crlf_event(chunk):
            return [chunk]  # the usual case: one whole event per chunk, nothing to cut
        self._buffer += chunk
        events: list[bytes] = []
        start = 0
        for match in _EVENT_END.finditer(self._buffer):
            events.append(bytes(self._buffer[start : match.end()]))
            start = match.end()
        del self._buffer[:start]
        if len(self._buffer) > MAX_EVENT_BYTES:
            raise CorruptEvent(f"an event grew past {MAX_EVENT_BYTES} bytes without ending")
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet terminated (a stream that ends here was cut)."""
        return bytes(self._buffer)


def _one_crlf_event(chunk: bytes) -> bool:
    """Whether ``chunk`` (ending in CRLF CRLF) is one single-line event: its first CR and LF
    are those of the end (two scans; an event of several lines takes the general path)."""
    end = len(chunk) - 4
    return chunk.find(b"\r") == end and chunk.find(b"\n") == end + 1


# The JSON module's own C scanner, called directly: ``json.loads`` adds an encoding guess and
# two whitespace matches in Python around it, about 4 us of an event's 10 us of parsing.
# (typeshed asks for a scanner as the context; the decoder has the attributes it reads.)
_scan_value = make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def parse_event(event: bytes) -> dict[str, Any]:
    """The JSON object an event carries (several ``data:`` lines are joined, as the SDK does)."""
    if (
        event.startswith(b"data: {")
        and event.endswith(b"}\r\n\r\n")
        and event.count(b"\n") == 2
        and event.count(b"\r") == 2
    ):
        # The usual event, one ``data:`` line of a JSON object in Google's framing: scanned
        # whole, and refused unless the object ends where the line does.
        try:
            text = event[6:-4].decode("utf-8", "surrogatepass")
            value, end = _scan_value(text, 0)
        except (ValueError, StopIteration):
            raise CorruptEvent("an event whose data is not JSON") from None
        if end != len(text):
            raise CorruptEvent("an event whose data is not JSON")
        return value  # type: ignore[no-any-return]  # an object, as its first byte says
    data = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            data.append(line[6:] if line.startswith(b"data: ") else line[5:])
        elif line.strip():
            raise CorruptEvent("an event line that is not 'data:'")
    if not data:
        raise CorruptEvent("an event without data")
    try:
        value = json.loads(data[0] if len(data) == 1 else b"\n".join(data))
    except ValueError:
        raise CorruptEvent("an event whose data is not JSON") from None
    if not isinstance(value, dict):
        raise CorruptEvent("an event whose data is not a JSON object")
    return value


def encode_event(value: dict[str, Any]) -> bytes:
    """An event in Google's framing: one ``data:`` line, CRLF CRLF."""
    return b"data: " + json.dumps(value, separators=(",", ": ")).encode() + b"\r\n\r\n"


@dataclass(slots=True)
class Delivered:
    """What a stream has delivered to the client so far."""

    response_id: str | None = None
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    events: int = 0
    _parts: list[str] = field(default_factory=list)
    """The text in pieces: adding to one string would copy it whole at every chunk."""

    @property
    def text(self) -> str:
        """The answer's text delivered so far (thought summaries left out)."""
        if len(self._parts) > 1:
            self._parts[:] = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def add_text(self, text: str) -> None:
        """Add to the answer's text (a chunk of another API's shape)."""
        self._parts.append(text)

    def take(self, chunk: dict[str, Any]) -> None:
        """Account for one chunk about to be forwarded."""
        self.events += 1
        if self.response_id is None and isinstance(chunk.get("responseId"), str):
            self.response_id = chunk["responseId"]
        if isinstance(chunk.get("usageMetadata"), dict):
            self.usage = chunk["usageMetadata"]
        feedback = chunk.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            # A blocked prompt is a whole answer: there will be no candidates to finish.
            self.finish_reason = f"BLOCKED_{feedback['blockReason']}"
        for candidate in chunk.get("candidates") or []:
            if not isinstance(candidate, dict) or candidate.get("index", 0) != 0:
                continue
            content = candidate.get("content")
            parts = content.get("parts") if isinstance(content, dict) else None
            for part in parts if isinstance(parts, list) else []:
                # Thought summaries are not part of the answer a continuation builds on.
                if (
                    isinstance(part, dict)
                    and isinstance(part.get("text"), str)
                    and not part.get("thought")
                ):
                    self._parts.append(part["text"])
            if candidate.get("finishReason"):
                self.finish_reason = candidate["finishReason"]


def error_in(chunk: dict[str, Any]) -> dict[str, Any] | None:
    """The ``error`` object of an in-band error event, if this is one."""
    error = chunk.get("error")
    return error if isinstance(error, dict) else None


def stitch(
    chunk: dict[str, Any], delivered: Delivered, usage_before: dict[str, Any] | None
) -> dict[str, Any]:
    """A continuation's chunk made part of the original stream: the original ``responseId``,
    usage summed with what the broken stream had used; ``modelVersion`` stays the model
    that is finishing the answer."""
    stitched = dict(chunk)
    if delivered.response_id is not None:
        stitched["responseId"] = delivered.response_id
    usage = chunk.get("usageMetadata")
    if isinstance(usage, dict) and usage_before:
        stitched["usageMetadata"] = {
            key: value + usage_before[key]
            if isinstance(value, int) and isinstance(usage_before.get(key), int)
            else value
            for key, value in usage.items()
        }
    return stitched
