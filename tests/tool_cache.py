"""Where the tests keep tools and root file systems they fetch, outside any checkout, and how
they give up when something cannot be had."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def cache_dir() -> Path:
    """``$GEMINI_BREAKER_CACHE``, else /var/cache/gemini-breaker for root, else
    ~/.cache/gemini-breaker: kept between runs and between clones."""
    if os.environ.get("GEMINI_BREAKER_CACHE"):
        return Path(os.environ["GEMINI_BREAKER_CACHE"])
    if os.geteuid() == 0:
        return Path("/var/cache/gemini-breaker")
    return Path.home() / ".cache" / "gemini-breaker"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip, or fail under CI, where a skipped test would hide a broken machine set-up."""
    if in_ci():
        pytest.fail(reason)
    pytest.skip(reason)
