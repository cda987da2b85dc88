"""The API dialects the proxy speaks: how a request names its model, method and location, how
it is rewritten for another model of the chain, and how errors and streams are framed. The
Gemini Developer API is the first; the seam (``base.Dialect``) is shaped for Vertex AI and the
OpenAI-compatible API next."""

from .base import Dialect, Framing, RequestRoute
from .gemini import GEMINI, GeminiDialect

__all__ = ["GEMINI", "Dialect", "Framing", "GeminiDialect", "RequestRoute"]
