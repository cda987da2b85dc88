"""What a 429 says: how long to wait, which quota, per minute or per day; and the 429 the
proxy sends itself when it sheds.

Gemini puts the delay in the body (``RetryInfo.retryDelay``, a protobuf duration such as
``"15s"`` or ``"2.5s"``) and sends no ``Retry-After`` header; a header, when present, counts too.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any

from .errors import error_body

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)s\s*$")
# Vertex names a project's quota only in the message ("Quota exceeded for
# aiplatform.googleapis.com/generate_content_requests_per_minute_per_project_per_base_model
# with base model: ..."), with no QuotaFailure; its dynamic shared quota names none at all.
_VERTEX_QUOTA = re.compile(r"\bQuota exceeded for (?P<metric>[\w.-]+\.googleapis\.com/(?P<id>\w+))")
QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """The useful content of one 429."""

    retry_delay: float | None
    """Seconds to wait, from RetryInfo or Retry-After; None when neither says."""
    per_day: bool
    """A daily quota: it will not come back within minutes."""
    quota_id: str
    quota_metric: str


def parse_duration(text: str) -> float | None:
    """A protobuf duration (``"15s"``, ``"0.25s"``) in seconds; None if it is not one."""
    match = _DURATION.match(text)
    return float(match.group(1)) if match else None


def parse_retry_after(value: str, now: float | None = None) -> float | None:
    """An HTTP ``Retry-After`` value (seconds or an HTTP date) in seconds from now."""
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def parse_rate_limit(body: bytes, retry_after_header: str | None) -> RateLimit:
    """Read a 429's body (and header). Anything unreadable leaves the fields empty."""
    delay = parse_retry_after(retry_after_header) if retry_after_header else None
    quota_id = metric = ""
    error = _error(body)
    for detail in _details(error):
        kind = detail.get("@type")
        if kind == RETRY_INFO and isinstance(detail.get("retryDelay"), str):
            parsed = parse_duration(detail["retryDelay"])
            if parsed is not None:
                delay = parsed if delay is None else max(delay, parsed)
        elif kind == QUOTA_FAILURE:
            for violation in detail.get("violations") or []:
                if isinstance(violation, dict):
                    quota_id = quota_id or str(violation.get("quotaId", ""))
                    metric = metric or str(violation.get("quotaMetric", ""))
    if not (quota_id or metric) and isinstance(error.get("message"), str):
        quota_id, metric = _quota_named_in(error["message"])
    return _rate_limit(delay, quota_id, metric)


def rate_limit_of_close(reason: str) -> RateLimit:
    """What a Live session's quota close (``RESOURCE_EXHAUSTED``) says: its reason is the only
    text, and names the quota when a project's quota ran out."""
    return _rate_limit(None, *_quota_named_in(reason))


def _quota_named_in(message: str) -> tuple[str, str]:
    """(quota id, metric) that a Vertex message names (``Quota exceeded for ...``), else
    empty strings."""
    named = _VERTEX_QUOTA.search(message)
    return (named["id"], named["metric"]) if named is not None else ("", "")


def _rate_limit(delay: float | None, quota_id: str, metric: str) -> RateLimit:
    per_day = "perday" in quota_id.lower() or "per_day" in metric.lower()
    return RateLimit(delay, per_day, quota_id, metric)


def _error(body: bytes) -> dict[str, Any]:
    """The body's ``error`` object; empty when there is none."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return {}
    if isinstance(parsed, list) and len(parsed) == 1:  # the JSON-array stream form
        parsed = parsed[0]
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return error if isinstance(error, dict) else {}


def _details(error: dict[str, Any]) -> list[dict[str, Any]]:
    details = error.get("details")
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def shed_body(model: str, retry_after: float, reason: str, quota_id: str) -> bytes:
    """Google's RESOURCE_EXHAUSTED for a request the proxy answered itself."""
    seconds = max(1, math.ceil(retry_after))
    details: list[dict[str, Any]] = [
        {
            "@type": QUOTA_FAILURE,
            "violations": [
                {
                    "quotaId": quota_id or "gemini-breaker/shed",
                    "quotaDimensions": {"model": model},
                    "description": reason,
                }
            ],
        },
        {"@type": RETRY_INFO, "retryDelay": f"{seconds}s"},
    ]
    return error_body(
        429,
        f"Quota exceeded for {model}: {reason}. Please retry in {seconds}s.",
        "RESOURCE_EXHAUSTED",
        details,
    )
