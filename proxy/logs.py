"""Logging set-up for the command line. Nothing here runs at import time."""

from __future__ import annotations

import logging
import sys

from .redaction import KEY_IN_URL
from .telemetry import JsonFormatter


class RedactingFormatter(logging.Formatter):
    """Formats as usual, then blanks API keys that appear in URLs (httpx logs full URLs)."""

    def format(self, record: logging.LogRecord) -> str:
        return KEY_IN_URL.sub(r"\1REDACTED", super().format(record))


def configure_logging(level: str, log_format: str = "text") -> None:
    """One line per record on stderr (plain text or JSON), keys redacted."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            RedactingFormatter(
                "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every upstream request at INFO; the proxy's own request line says more.
    quiet = logging.DEBUG if level == "debug" else logging.WARNING
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(quiet)
