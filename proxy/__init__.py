"""gemini-breaker: a sidecar proxy for the Google Gemini API with cluster-wide circuit breakers."""

__version__ = "0.1.0"
