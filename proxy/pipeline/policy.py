"""The failover policy: after each attempt, what the request does next.

Pure functions over typed values (``outcomes``): no I/O, no clock, no randomness. The exchange
reads the facts (``Situation``), asks, and carries the decision out:

========================  ==================================================================
outcome                   decision
========================  ==================================================================
``Served``                ``Done``
``RateLimited``           ``WaitOut`` once, when the delay is short and the budget allows;
                          else ``Answer`` the 429 (never a failover)
``Rejected``              ``Answer`` it as it is (a 4xx is the request's own fault)
``Stopped``               ``Answer`` (deadline spent, own pool full, origin unreachable)
``TooLong``               ``LargerModel`` once; after that, ``NextModel``
``Failed``                ``Answer`` if the request is poison (or failed the same way on two
                          models); ``NextModel`` after a deadline miss, a probe, the model's
                          last try, a breaker that moved on, a spent budget or a backoff past
                          the deadline; else ``Retry`` after the backoff
========================  ==================================================================

On a route with ``on_429: next_location``, a 429 on shared capacity (met upstream, or the
cooldown, pacing or throttle that follows one) moves to the same model in the next location of
the chain instead (``next_location_on_429``): never to another model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ..dialects.vertex import same_model_elsewhere
from ..gemini.quota import RateLimit
from .outcomes import (
    AttemptOutcome,
    Failed,
    RateLimited,
    Rejected,
    Reply,
    Served,
    Stopped,
    TooLong,
)

# A 429 is waited out only if the retry still has this long before the request's deadline.
DEADLINE_MARGIN = 0.05


@dataclass(frozen=True, slots=True)
class Situation:
    """What the policy weighs beside the outcome, read when the outcome is known."""

    tries: int
    """Attempts on this model so far (a 429 waited out is not a try)."""
    max_attempts: int
    remaining: float
    """Seconds until the request's deadline."""
    backoff: float = 0.0
    """The (jittered) delay a retry on this model would wait first."""
    probe: bool = False
    """The attempt was a half-open breaker's probe: its result is the breaker's question."""
    still_admits: bool = True
    """The model's breaker has not moved on since the request was admitted."""
    budget_left: bool = True
    """The replica's retry budget has a retry to spend."""
    request_fault: bool = False
    """The same failure happened on two models: the request's fault, no model's."""
    waited_out_429: bool = False
    jumped: bool = False
    """The request already moved once to a larger-context model."""
    cooldown_left: float = 0.0
    """Seconds the cluster's 429 cooldown for this credential and model still runs."""
    longest_wait: float = 0.0
    """The configured longest wait for a 429 (``quota.max_retry_wait``)."""


@dataclass(frozen=True, slots=True)
class Done:
    """The client has its answer."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Try the same model again after ``delay`` seconds."""

    delay: float


@dataclass(frozen=True, slots=True)
class WaitOut:
    """Wait out a 429 (``seconds``), then try the same model once more."""

    seconds: float
    longest: float
    """The longest the wait may grow to if the cluster's cooldown is extended meanwhile."""


@dataclass(frozen=True, slots=True)
class NextModel:
    """Leave this model; ``reply`` is answered if no later model does."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class LargerModel:
    """The input is too long here: move once to ``model``, a larger-context one."""

    model: str
    reply: Reply


@dataclass(frozen=True, slots=True)
class Answer:
    """Answer the client with ``reply`` now; no further attempt."""

    reply: Reply


DONE = Done()

Decision = Done | Retry | WaitOut | NextModel | LargerModel | Answer


def after_attempt(outcome: AttemptOutcome, now: Situation) -> Decision:
    """The next step after an attempt ended with ``outcome``."""
    if isinstance(outcome, Served):
        return DONE
    if isinstance(outcome, RateLimited):
        if now.waited_out_429:
            return Answer(outcome.reply)
        wait = rate_limit_wait(outcome.limit, now)
        return Answer(outcome.reply) if wait is None else WaitOut(wait, _longest_wait(now))
    if isinstance(outcome, TooLong):
        if now.jumped:
            return NextModel(outcome.reply)
        return LargerModel(outcome.larger, outcome.reply)
    if isinstance(outcome, (Rejected, Stopped)):
        return Answer(outcome.reply)
    return _after_failure(outcome, now)


def _after_failure(failed: Failed, now: Situation) -> Decision:
    if failed.poison or now.request_fault:
        return Answer(failed.reply)
    if (
        failed.deadline_missed
        or now.probe
        or now.tries >= now.max_attempts
        or not now.still_admits
        or not now.budget_left
        or now.backoff >= now.remaining
    ):
        return NextModel(failed.reply)
    return Retry(now.backoff)


def rate_limit_wait(limit: RateLimit, now: Situation) -> float | None:
    """Seconds to wait out a 429 before the one retry; None to answer it now (a daily quota,
    no stated delay, a wait past the longest allowed or the deadline, or no retry budget)."""
    if limit.per_day or limit.retry_delay is None:
        return None
    longest = _longest_wait(now)
    wait = max(limit.retry_delay, now.cooldown_left)
    if wait > longest or not now.budget_left:
        return None
    return wait


def next_location_on_429(
    chain: Sequence[str], position: int, moves_on_429: bool, shared_capacity: bool
) -> bool:
    """Whether a 429 for ``chain[position]`` moves the request to the next entry of the chain:
    only on a route that asks for it (``on_429: next_location``), only for a 429 on shared
    capacity (a per-project quota is backpressure), and only when the next entry is the same
    model in another location (a 429 never moves to a weaker model)."""
    if not (moves_on_429 and shared_capacity) or position + 1 >= len(chain):
        return False
    return same_model_elsewhere(chain[position], chain[position + 1])


def _longest_wait(now: Situation) -> float:
    return min(now.longest_wait, now.remaining - DEADLINE_MARGIN)


def backoff_ceiling(tries: int, initial: float, most: float) -> float:
    """The longest backoff before try ``tries + 1`` (exponential, capped); the exchange draws
    the actual delay uniformly below it (full jitter)."""
    return min(most, initial * 2.0 ** (tries - 1))


ChainEnd = Literal["last_failure", "deadline", "unavailable"]


def when_chain_ends(last: Reply | None, remaining: float) -> ChainEnd:
    """The answer once no model of the chain is left: the last failure, else the deadline if
    it passed, else "unavailable" (no model admitted the request: the proxy says so)."""
    if last is not None:
        return "last_failure"
    return "deadline" if remaining <= 0 else "unavailable"


def continues_broken_stream(on_stream_break: str, body_in_hand: bool) -> bool:
    """Whether a stream that broke after it started is continued on another model (the
    route's setting; a streamed-through body cannot be sent again)."""
    return on_stream_break == "continue" and body_in_hand
