"""The dialect seam: what the pipeline needs to know of an API's wire format.

A dialect turns a request (path, query, headers) into a ``RequestRoute`` (the model, the
method, the location, the stream framing) and back into an upstream request for another model
of the chain. The pipeline never looks at paths or bodies itself.

How the next dialects fit (not implemented):

Vertex AI, ``/v1/projects/{project}/locations/{location}/publishers/google/models/{model}
:streamGenerateContent``: ``parse`` takes ``model``, ``method`` and ``location`` from the path
(the project stays in it); ``upstream_path`` replaces the model segment, and ``origin`` answers
``https://{location}-aiplatform.googleapis.com`` so each location has its own origin (and
``global`` the global one). Errors are ``google.rpc.Status`` and streams SSE, as for Gemini.

The OpenAI-compatible API (``openai.py``) names its model in the body: ``model_in_body`` makes
the forwarder read the body and call ``with_body`` before routing; ``body_for`` rewrites the
body's ``model``; its streams (``Framing.OPENAI_SSE``) end with ``data: [DONE]``.
"""

from __future__ import annotations

import enum
from typing import Any, Protocol

from ..gemini.features import RequestNeeds
from ..gemini.sse import Delivered
from ..transport.headers import Headers


class Framing(enum.Enum):
    """How an answer streams back."""

    NONE = "none"
    """One body (a unary answer, or a stream relayed as it comes without event checks)."""
    SSE = "sse"
    """Server-sent events, one JSON chunk per ``data:`` line; the end of the body ends it."""
    OPENAI_SSE = "openai_sse"
    """SSE ended by a ``data: [DONE]`` event."""


class RequestRoute(Protocol):
    """What the pipeline reads of a parsed request."""

    @property
    def model(self) -> str | None:
        """The model the client named; None for calls that name none (files, operations)."""

    @property
    def method(self) -> str | None:
        """The operation, in Gemini's names (``generateContent``, ``streamGenerateContent``,
        ``countTokens``, ...): the pipeline's decisions speak these."""

    @property
    def prefix(self) -> str:
        """A client-side path prefix the proxy is mounted under (dropped upstream)."""

    @property
    def upload(self) -> bool:
        """A media upload: the body streams through and is never held."""

    @property
    def is_generate(self) -> bool:
        """The model generates the answer (the calls whose answers are checked)."""


class StreamAccount(Protocol):
    """Reads a stream's chunks (in the dialect's shape) into what it ``delivered``."""

    @property
    def delivered(self) -> Delivered: ...

    def take(self, chunk: dict[str, Any]) -> None:
        """Account for one chunk about to be forwarded."""

    def restitched(self, chunk: dict[str, Any], usage_before: dict[str, Any] | None) -> bytes:
        """A continuation's chunk, accounted for and made part of the original stream."""
        ...


class Dialect(Protocol):
    """One API's wire format."""

    name: str
    model_in_body: bool
    """The model is named in the body, so routing needs the body read first."""
    error_content_type: bytes
    """The content type of ``error_body``."""

    def parse(self, path: str, query: bytes, headers: Headers) -> RequestRoute | None:
        """The request's route; None when the path is not one of this API's."""

    def with_body(self, route: RequestRoute, body: bytes) -> RequestRoute:
        """The route once the body is read (only called when ``model_in_body``)."""

    def upstream_headers(self, headers: Headers, query: bytes, api_key: str | None) -> Headers:
        """The client's headers as sent upstream, with ``api_key`` injected the dialect's
        way when the client sent no key."""

    def native_headers(self, upstream_headers: Headers) -> Headers:
        """``upstream_headers`` for a call of Gemini's native API (the proxy's model look-ups),
        the credential carried the native way."""

    def credential(self, headers: Headers, query: bytes, api_key: str | None) -> str:
        """A digest of the credential the upstream will see (quotas are per credential)."""

    def framing(self, route: RequestRoute, query: bytes) -> Framing:
        """How the answer to this request streams (checked event by event unless NONE)."""

    def upstream_path(self, route: RequestRoute, model: str | None) -> str:
        """The upstream path for the request sent to ``model`` (None: as the client named)."""

    def origin(self, route: RequestRoute, model: str | None) -> str | None:
        """The origin serving ``model`` for this request; None: the configured upstream."""

    def body_for(self, route: RequestRoute, body: bytes, model: str) -> bytes:
        """The body for the request sent to ``model`` (the same bytes when the model is not in
        the body: never re-serialised)."""

    def error_body(self, code: int, message: str) -> bytes:
        """The error the client's SDK understands, for an HTTP status and message."""

    def status_body(self, body: bytes) -> bytes:
        """A ``google.rpc.Status`` body (the proxy's own 429s) as the dialect carries it."""

    def stream_error(self, code: int, message: str) -> bytes:
        """An in-band error event ending a stream that broke after it started."""

    def stream_end(self, framing: Framing) -> bytes:
        """What ends a whole stream (an SSE terminator; empty when the body's end does)."""

    def continuation_body(self, body: bytes, delivered_text: str) -> bytes:
        """The request with the delivered text as the model's turn (``NotContinuable`` if the
        body cannot carry one)."""

    def request_needs(self, body: bytes) -> RequestNeeds:
        """What a model must offer to serve this request body (features, input size, output
        limit), in the capability table's vocabulary; a body it cannot read needs nothing."""

    def usage_in_tail(self, tail: bytes) -> dict[str, int] | None:
        """A unary answer's token usage, in ``usageMetadata``'s names (which the token metrics
        read), from the last bytes of its body; None when it is not there."""

    def stream_account(self, delivered: Delivered) -> StreamAccount:
        """A reader of this dialect's stream chunks into ``delivered``."""
