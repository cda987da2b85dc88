"""The API dialects the proxy speaks: how a request names its model, method and location, how
it is rewritten for another model of the chain, and how errors and streams are framed. The
Gemini Developer API and its OpenAI-compatible API are spoken; the seam (``base.Dialect``) is
shaped for Vertex AI next."""

from .base import Dialect, Framing, RequestRoute, StreamAccount
from .gemini import GEMINI, GeminiDialect
from .openai import OPENAI, OpenAIDialect

DIALECTS: tuple[Dialect, ...] = (OPENAI, GEMINI)
"""Tried in order: the first that parses a path speaks for it (the compatible API's paths are
also Gemini-shaped paths, so it comes first)."""

__all__ = [
    "DIALECTS",
    "GEMINI",
    "OPENAI",
    "Dialect",
    "Framing",
    "GeminiDialect",
    "OpenAIDialect",
    "RequestRoute",
    "StreamAccount",
]
