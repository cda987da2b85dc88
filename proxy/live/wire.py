"""What the proxy knows of the Live protocol: its paths, the setup message, and what an
upstream close means. Pure functions over bytes and numbers; the relay does the I/O."""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Any

from ..errors import PipelineError

# Developer API (plain and ephemeral-token "Constrained") and Vertex AI.
_LIVE_PATH = re.compile(
    r"^(?:/[^/]+)*?/ws/(?:"
    r"google\.ai\.generativelanguage\.v1(?:beta|alpha)\.GenerativeService\."
    r"BidiGenerateContent(?:Constrained)?"
    r"|google\.cloud\.aiplatform\.v1(?:beta1)?\.LlmBidiService/BidiGenerateContent)$"
)
_PREFIX = re.compile(r"^(.*?)/ws/")


def live_path(path: str) -> str | None:
    """The upstream path of a Live API WebSocket path (any prefix before ``/ws/`` dropped),
    or None when the path is not one."""
    if not _LIVE_PATH.match(path):
        return None
    prefix = _PREFIX.match(path)
    return path[len(prefix.group(1)) :] if prefix else path


@dataclass(frozen=True, slots=True)
class Setup:
    """The client's first message, parsed once."""

    raw: bytes
    body: dict[str, Any]
    model: str
    """The model without ``models/`` (the route); Vertex's full resource name is kept."""
    resumable: bool
    """The client asked for session resumption (``setup.sessionResumption`` present)."""


class BadSetup(PipelineError, ValueError):
    """The first message is not a Live API ``setup``."""


def parse_setup(raw: bytes) -> Setup:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadSetup("the first message must be a JSON setup message") from exc
    setup = body.get("setup") if isinstance(body, dict) else None
    model = setup.get("model") if isinstance(setup, dict) else None
    if not isinstance(model, str) or not model:
        raise BadSetup("the first message must be {'setup': {'model': ...}}")
    assert isinstance(setup, dict)
    route = model.removeprefix("models/")
    return Setup(raw, body, route, "sessionResumption" in setup)


def setup_for(
    setup: Setup, model: str, handle: str | None = None, name: str | None = None
) -> bytes:
    """The setup message to send for ``model``: the client's bytes untouched when nothing
    changes, else rewritten with the model (``name``, the model field to send, when the
    caller knows it: a Vertex resource name) and the resumption handle to resume with."""
    inner = dict(setup.body["setup"])
    original: str = inner["model"]
    if name is None:
        name = original if model == setup.model else original.replace(setup.model, model)
    if name == original and handle is None:
        return setup.raw
    inner["model"] = name
    if handle is not None:
        inner["sessionResumption"] = {**(inner.get("sessionResumption") or {}), "handle": handle}
    return json.dumps({**setup.body, "setup": inner}).encode()


def is_setup_complete(message: bytes) -> bool:
    return b'"setupComplete"' in message[:64]


def new_handle(message: bytes) -> str | None:
    """The resumption handle a ``sessionResumptionUpdate`` carries, if resumable. Only frames
    naming that key are parsed (audio frames never are)."""
    if b"sessionResumptionUpdate" not in message:
        return None
    try:
        update = json.loads(message).get("sessionResumptionUpdate") or {}
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    handle = update.get("newHandle")
    return handle if isinstance(handle, str) and handle and update.get("resumable") else None


def is_go_away(message: bytes) -> bool:
    return b'"goAway"' in message[:64]


class CloseKind(enum.Enum):
    FAILURE = "failure"
    """Counts against the model; at setup, the next model is tried."""
    RATE_LIMITED = "rate_limited"
    """Backpressure: a cooldown for the credential and model, never a breaker failure."""
    CLIENT_ERROR = "client_error"
    """The session's own fault (bad setup, key): passed to the client, not counted."""


_CLIENT_STATUSES = (
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "FAILED_PRECONDITION",
)


def classify_close(code: int | None, reason: str) -> CloseKind:
    """What an upstream close means. Google closes with 1011 and the status in the reason;
    1007/1008 are the protocol's own refusals of a message."""
    upper = reason.upper()
    if "RESOURCE_EXHAUSTED" in upper or "QUOTA" in upper or code == 1013:
        return CloseKind.RATE_LIMITED
    if code in (1007, 1008) or any(status in upper for status in _CLIENT_STATUSES):
        return CloseKind.CLIENT_ERROR
    return CloseKind.FAILURE


def classify_upgrade_status(status: int) -> CloseKind:
    """What a refused upgrade (an HTTP answer instead of 101) means."""
    if status == 429:
        return CloseKind.RATE_LIMITED
    if status >= 500:
        return CloseKind.FAILURE
    return CloseKind.CLIENT_ERROR


def upstream_url(base_url: str, path: str, query_string: bytes) -> str:
    """``ws(s)://`` of the upstream base URL, the Live path and the client's query."""
    url = base_url.rstrip("/")
    if url.startswith("https://"):
        url = "wss://" + url[len("https://") :]
    elif url.startswith("http://"):
        url = "ws://" + url[len("http://") :]
    query = query_string.decode("latin-1")
    return f"{url}{path}{'?' + query if query else ''}"
