"""The failover policy as a table: outcome x breaker x deadline x retry budget -> decision.

Pure functions, no I/O: the whole table runs in milliseconds."""

from __future__ import annotations

from dataclasses import replace

import pytest

from proxy.gemini.quota import RateLimit
from proxy.pipeline.outcomes import (
    SERVED,
    AttemptOutcome,
    Failed,
    KeptAnswer,
    ProxyError,
    RateLimited,
    Rejected,
    Stopped,
    TooLong,
)
from proxy.pipeline.policy import (
    Answer,
    Decision,
    Done,
    LargerModel,
    NextModel,
    Retry,
    Situation,
    WaitOut,
    after_attempt,
    backoff_ceiling,
    continues_broken_stream,
    next_location_on_429,
    rate_limit_wait,
    when_chain_ends,
)

PRO = "gemini-2.5-pro"
ERROR_500 = KeptAnswer(PRO, 500, [], b'{"error": {"code": 500}}')
TIMEOUT = ProxyError(PRO, 504, "no answer")
BAD_REQUEST = KeptAnswer(PRO, 400, [], b'{"error": {"code": 400}}')
TOO_MANY = KeptAnswer(PRO, 429, [], b'{"error": {"code": 429}}')
PER_MINUTE = RateLimit(retry_delay=2.0, per_day=False, quota_id="PerMinute", quota_metric="m")
PER_DAY = RateLimit(retry_delay=2.0, per_day=True, quota_id="PerDay", quota_metric="m")
NO_DELAY = RateLimit(retry_delay=None, per_day=False, quota_id="PerMinute", quota_metric="m")

# A first failed try on a closed breaker, with budget and time to spare.
FRESH = Situation(
    tries=1, max_attempts=3, remaining=30.0, backoff=0.2, longest_wait=10.0, cooldown_left=0.0
)


def with_(**changes: object) -> Situation:
    return replace(FRESH, **changes)  # type: ignore[arg-type]


FAILED = Failed(ERROR_500)

TABLE: list[tuple[str, AttemptOutcome, Situation, Decision]] = [
    ("answered", SERVED, FRESH, Done()),
    # -- a model failure: retried here while everything allows it, else the next model
    ("5xx, first try", FAILED, FRESH, Retry(0.2)),
    ("5xx, last try", FAILED, with_(tries=3), NextModel(ERROR_500)),
    ("5xx, single attempt", FAILED, with_(max_attempts=1), NextModel(ERROR_500)),
    ("5xx on a half-open probe", FAILED, with_(probe=True), NextModel(ERROR_500)),
    ("5xx, breaker moved on", FAILED, with_(still_admits=False), NextModel(ERROR_500)),
    ("5xx, retry budget spent", FAILED, with_(budget_left=False), NextModel(ERROR_500)),
    ("5xx, backoff past deadline", FAILED, with_(remaining=0.1), NextModel(ERROR_500)),
    ("5xx, backoff equals deadline", FAILED, with_(remaining=0.2), NextModel(ERROR_500)),
    (
        "first-event deadline missed",
        Failed(TIMEOUT, deadline_missed=True),
        FRESH,
        NextModel(TIMEOUT),
    ),
    # -- the poison-request rule: a request that fails everywhere is answered, not spread
    ("known poison", Failed(ERROR_500, poison=True), FRESH, Answer(ERROR_500)),
    ("same failure on two models", FAILED, with_(request_fault=True), Answer(ERROR_500)),
    (
        "poison beats a missed deadline",
        Failed(TIMEOUT, deadline_missed=True, poison=True),
        FRESH,
        Answer(TIMEOUT),
    ),
    ("poison on the last try", Failed(ERROR_500, poison=True), with_(tries=3), Answer(ERROR_500)),
    # -- no further attempt possible
    ("deadline spent / pool full", Stopped(TIMEOUT), FRESH, Answer(TIMEOUT)),
    ("stopped even with budget", Stopped(TIMEOUT), with_(tries=1, probe=True), Answer(TIMEOUT)),
    # -- the request's own fault
    ("400 as is", Rejected(BAD_REQUEST), FRESH, Answer(BAD_REQUEST)),
    (
        "400 too long: larger model",
        TooLong(BAD_REQUEST, "big"),
        FRESH,
        LargerModel("big", BAD_REQUEST),
    ),
    ("400 too long again", TooLong(BAD_REQUEST, "big"), with_(jumped=True), NextModel(BAD_REQUEST)),
    # -- a 429: backpressure, waited out once or answered, never failed over
    ("429 with a short delay", RateLimited(TOO_MANY, PER_MINUTE, 2.0), FRESH, WaitOut(2.0, 10.0)),
    (
        "429, cluster cooldown longer",
        RateLimited(TOO_MANY, PER_MINUTE, 2.0),
        with_(cooldown_left=4.0),
        WaitOut(4.0, 10.0),
    ),
    (
        "429 waited out already",
        RateLimited(TOO_MANY, PER_MINUTE, 2.0),
        with_(waited_out_429=True),
        Answer(TOO_MANY),
    ),
    ("429 per day", RateLimited(TOO_MANY, PER_DAY, 2.0), FRESH, Answer(TOO_MANY)),
    ("429 without a delay", RateLimited(TOO_MANY, NO_DELAY, 0.0), FRESH, Answer(TOO_MANY)),
    (
        "429 past the longest wait",
        RateLimited(TOO_MANY, PER_MINUTE, 2.0),
        with_(longest_wait=1.0),
        Answer(TOO_MANY),
    ),
    (
        "429 past the deadline",
        RateLimited(TOO_MANY, PER_MINUTE, 2.0),
        with_(remaining=2.0),
        Answer(TOO_MANY),
    ),
    (
        "429 wait capped by the deadline",
        RateLimited(TOO_MANY, PER_MINUTE, 2.0),
        with_(remaining=3.05),
        WaitOut(2.0, pytest.approx(3.0)),  # type: ignore[arg-type]
    ),
    (
        "429, retry budget spent",
        RateLimited(TOO_MANY, PER_MINUTE, 2.0),
        with_(budget_left=False),
        Answer(TOO_MANY),
    ),
    (
        "429 on the last try",
        RateLimited(TOO_MANY, PER_MINUTE, 2.0),
        with_(tries=3),
        WaitOut(2.0, 10.0),
    ),
]


@pytest.mark.parametrize(
    ("outcome", "situation", "expected"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_after_attempt(outcome: AttemptOutcome, situation: Situation, expected: Decision) -> None:
    assert after_attempt(outcome, situation) == expected


def test_a_429_is_never_a_failover() -> None:
    """Whatever the facts, a 429 is waited out or answered: never the next model."""
    limits = (PER_MINUTE, PER_DAY, NO_DELAY)
    for limit in limits:
        for situation in (FRESH, with_(budget_left=False), with_(remaining=0.0), with_(tries=9)):
            decision = after_attempt(RateLimited(TOO_MANY, limit, 1.0), situation)
            assert isinstance(decision, (WaitOut, Answer))


def test_a_4xx_never_reaches_another_model() -> None:
    for situation in (FRESH, with_(tries=3), with_(probe=True), with_(request_fault=True)):
        assert after_attempt(Rejected(BAD_REQUEST), situation) == Answer(BAD_REQUEST)


def test_rate_limit_wait_is_the_longer_of_the_delay_and_the_cooldown() -> None:
    assert rate_limit_wait(PER_MINUTE, FRESH) == 2.0
    assert rate_limit_wait(PER_MINUTE, with_(cooldown_left=3.5)) == 3.5
    assert rate_limit_wait(PER_MINUTE, with_(cooldown_left=11.0)) is None


@pytest.mark.parametrize(
    ("tries", "ceiling"), [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 5.0), (9, 5.0)]
)
def test_backoff_doubles_up_to_its_cap(tries: int, ceiling: float) -> None:
    assert backoff_ceiling(tries, initial=0.5, most=5.0) == ceiling


@pytest.mark.parametrize(
    ("last", "remaining", "end"),
    [
        (ERROR_500, 5.0, "last_failure"),
        (ERROR_500, -1.0, "last_failure"),
        (None, 0.0, "deadline"),
        (None, -0.5, "deadline"),
        (None, 5.0, "unavailable"),
    ],
)
def test_when_chain_ends(last: KeptAnswer | None, remaining: float, end: str) -> None:
    assert when_chain_ends(last, remaining) == end


@pytest.mark.parametrize(
    ("setting", "body_in_hand", "continues"),
    [("continue", True, True), ("continue", False, False), ("error", True, False)],
)
def test_a_broken_stream_continues_only_when_asked_and_replayable(
    setting: str, body_in_hand: bool, continues: bool
) -> None:
    assert continues_broken_stream(setting, body_in_hand) is continues


CHAIN = ("pro@us-central1", "pro@europe-west4", "pro@asia-east1", "flash@us-central1")


@pytest.mark.parametrize(
    ("position", "moves", "shared", "expected"),
    [
        (0, True, True, True),  # the same model in the next location
        (1, True, True, True),
        (2, True, True, False),  # the next entry is a weaker model: a 429 never goes there
        (3, True, True, False),  # the end of the chain
        (0, True, False, False),  # a per-project quota is backpressure
        (0, False, True, False),  # the route did not ask (on_429: backoff)
    ],
)
def test_a_shared_capacity_429_moves_only_to_the_same_model_elsewhere(
    position: int, moves: bool, shared: bool, expected: bool
) -> None:
    assert next_location_on_429(CHAIN, position, moves, shared) is expected


def test_the_same_location_twice_is_not_another_location() -> None:
    assert not next_location_on_429(("pro@us-central1", "pro@us-central1"), 0, True, True)
