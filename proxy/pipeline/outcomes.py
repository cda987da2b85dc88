"""The one classification of upstream outcomes that every part of the proxy agrees on, and
the typed values an attempt comes to.

``Verdict`` is the outcome table of docs/decisions/failover.md: what counts against a breaker,
what is retried on the same model, what fails over, and what goes back to the client as is. The
attempt outcomes below are what ``policy`` decides on.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..gemini.quota import RateLimit
from ..transport.headers import Headers


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


# -- what one attempt came to -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeptAnswer:
    """An upstream answer held whole, to be sent as it is (an error, or a checked answer)."""

    model: str
    status: int
    headers: Headers
    body: bytes


@dataclass(frozen=True, slots=True)
class ProxyError:
    """An error the proxy states itself, in Google's shape (no upstream answer to relay)."""

    model: str
    status: int
    message: str


Reply = KeptAnswer | ProxyError
"""What goes to the client when the proxy, not a relayed answer, has the last word."""


@dataclass(frozen=True, slots=True)
class Served:
    """The attempt's answer went to the client (in full, or as far as the upstream sent it)."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The model failed (5xx, a timeout, a cut or corrupt stream, a broken JSON answer)."""

    reply: Reply
    deadline_missed: bool = False
    """The model did not start answering in time: a retry would hold the request as long
    again, so the chain moves on."""
    poison: bool = False
    """The request is known to fail everywhere: answer it now."""


@dataclass(frozen=True, slots=True)
class RateLimited:
    """A 429: backpressure, answered (or waited out once), never failed over."""

    reply: KeptAnswer
    limit: RateLimit
    retry_after: float
    """Seconds until the scope may be tried again."""


@dataclass(frozen=True, slots=True)
class TooLong:
    """A 400 "input too long" for a model, with a larger-context model of the chain."""

    reply: KeptAnswer
    larger: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """An answer that goes to the client as it is (a 4xx): the request's own fault."""

    reply: KeptAnswer


@dataclass(frozen=True, slots=True)
class Stopped:
    """No further attempt may follow: the deadline is spent, the proxy's own pool is full, or
    the origin cannot be reached (no model of it could help)."""

    reply: ProxyError


SERVED = Served()
"""The one ``Served`` value (an answered attempt allocates nothing)."""

AttemptOutcome = Served | Failed | RateLimited | TooLong | Rejected | Stopped
