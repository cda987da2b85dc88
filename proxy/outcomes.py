"""The one classification of upstream outcomes that every part of the proxy agrees on.

What counts against a breaker, what is retried on the same model, what fails over to the next
model, and what goes back to the client as is (the table in docs/decisions/failover.md).
"""

from __future__ import annotations

import enum


class Verdict(enum.Enum):
    SUCCESS = "success"
    """2xx: counts as a success for the breaker (a blocked prompt included)."""
    FAILURE = "failure"
    """5xx, connect errors, resets, first-byte timeouts: counts against the breaker, retried
    with backoff on the same model, then failed over."""
    RATE_LIMITED = "rate_limited"
    """429: backpressure, never a breaker failure and never a failover."""
    CREDENTIAL = "credential"
    """401/403: passed through, not counted, logged as a credential alert."""
    CLIENT_ERROR = "client_error"
    """400, 404, other 4xx: the request's own fault; passed through, not counted."""

    @property
    def counts_as_failure(self) -> bool:
        return self is Verdict.FAILURE

    @property
    def counts_for_breaker(self) -> bool:
        """Whether the outcome enters the breaker's window at all (as success or failure)."""
        return self in (Verdict.SUCCESS, Verdict.FAILURE)


def classify_status(status: int) -> Verdict:
    """The verdict for an upstream HTTP status."""
    if status < 400:
        return Verdict.SUCCESS
    if status >= 500:
        return Verdict.FAILURE
    if status == 429:
        return Verdict.RATE_LIMITED
    if status in (401, 403):
        return Verdict.CREDENTIAL
    return Verdict.CLIENT_ERROR
