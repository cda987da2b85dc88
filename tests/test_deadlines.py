"""Deadline decisions as pure functions: the learner, unary budgets, the defaults' worst case."""

from __future__ import annotations

import pytest

from proxy.config import Settings
from proxy.config_load import build_settings
from proxy.pipeline.deadlines import (
    DeadlineBook,
    FirstEventLearner,
    LearningParams,
    family_first_event_timeout,
    max_output_tokens,
    unary_budget,
    worst_case_silent_failover,
)

PARAMS = LearningParams(percentile=0.99, factor=3.0, floor=2.0, min_samples=20, samples=100)


def learned(samples: list[float], params: LearningParams = PARAMS, ceiling: float = 60.0) -> float:
    learner = FirstEventLearner(params, ceiling)
    for seconds in samples:
        learner.succeeded(seconds)
    return learner.deadline()


@pytest.mark.parametrize(
    ("samples", "expected", "why"),
    [
        ([], 60.0, "nothing learned: the ceiling"),
        ([1.0] * 19, 60.0, "too few samples: the ceiling"),
        ([1.0] * 20, 3.0, "enough samples: p99 times the factor"),
        ([0.1] * 50, 2.0, "a very fast model: the floor"),
        ([30.0] * 50, 60.0, "a slow model: never above the ceiling"),
        ([1.0] * 98 + [4.0] * 2, 12.0, "p99 of 100 samples is the 99th smallest"),
        ([1.0] * 99 + [4.0], 3.0, "one outlier in 100 stays above p99"),
        ([4.0] * 100 + [1.0] * 100, 3.0, "older samples than the ring holds are forgotten"),
    ],
)
def test_learned_first_event_deadline(samples: list[float], expected: float, why: str) -> None:
    assert learned(samples) == pytest.approx(expected), why


def test_the_percentile_and_factor_are_the_configured_ones() -> None:
    median = LearningParams(percentile=0.5, factor=2.0, floor=0.1, min_samples=4, samples=8)
    assert learned([1.0, 2.0, 3.0, 4.0], median) == pytest.approx(4.0)  # 2nd of 4, times 2


def test_misses_at_the_learned_deadline_widen_it_until_a_success() -> None:
    learner = FirstEventLearner(PARAMS, 60.0)
    for _ in range(20):
        learner.succeeded(1.0)
    assert (learner.deadline(), learner.learned) == (3.0, True)
    learner.missed()
    assert learner.deadline() == 6.0
    learner.missed()
    assert learner.deadline() == 12.0
    for _ in range(5):
        learner.missed()
    assert (learner.deadline(), learner.learned) == (60.0, False)  # never past the ceiling
    learner.succeeded(5.0)  # the model got slower: its new time is learned at once
    assert learner.deadline() == 15.0


def test_a_slower_model_keeps_a_widened_deadline_until_the_percentile_covers_it() -> None:
    learner = FirstEventLearner(PARAMS, 60.0)
    for _ in range(100):
        learner.succeeded(1.0)
    learner.missed()
    assert learner.deadline() == 6.0
    learner.succeeded(5.0)  # one slow success out of 100 is not yet the 99th percentile
    assert learner.deadline() == 6.0  # so the widened deadline stays
    learner.succeeded(5.0)
    assert learner.deadline() == 15.0


def test_a_miss_at_the_ceiling_changes_nothing() -> None:
    learner = FirstEventLearner(PARAMS, 60.0)
    learner.missed()
    assert learner.deadline() == 60.0


def test_the_book_learns_only_models_that_answered() -> None:
    book = DeadlineBook()
    assert book.first_event("typo-model", PARAMS, 25.0) == 25.0
    book.missed("typo-model")
    assert book.learner("typo-model") is None
    for _ in range(20):
        book.succeeded("m", PARAMS, 25.0, 0.5)
    assert book.first_event("m", PARAMS, 25.0) == 2.0
    assert book.first_event("m", PARAMS, 1.5) == 1.5  # a lower ceiling still bounds it
    off = LearningParams(enabled=False)
    assert book.first_event("m", off, 25.0) == 25.0


@pytest.mark.parametrize(
    ("body", "tokens"),
    [
        (b'{"contents": []}', None),
        (b'{"generationConfig": {"maxOutputTokens": 2048}}', 2048),
        (b'{"generation_config": {"max_output_tokens": 300}}', 300),
        (b'{"generationConfig": {"maxOutputTokens" : "64"}}', 64),
        (b'{"a": {"maxOutputTokens": 10}, "generationConfig": {"maxOutputTokens": 900}}', 900),
        (b'{"contents": [{"parts": [{"text": "set maxOutputTokens to 5"}]}]}', None),
    ],
)
def test_max_output_tokens_from_the_body(body: bytes, tokens: int | None) -> None:
    assert max_output_tokens(body) == tokens


def test_unary_budget_grows_with_the_requested_tokens() -> None:
    assert unary_budget(25.0, None, 20.0, 120.0) == 120.0  # no maxOutputTokens: the ceiling
    assert unary_budget(25.0, 100, 20.0, 120.0) == 30.0
    assert unary_budget(25.0, 8192, 20.0, 120.0) == pytest.approx(25.0 + 409.6)


@pytest.mark.parametrize(
    ("model", "seconds"),
    [
        ("gemini-2.5-pro", 25.0),
        ("gemini-3-pro-preview", 25.0),
        ("gemini-2.5-flash", 15.0),
        ("gemini-flash-latest", 15.0),
        ("gemini-2.5-flash-lite", 10.0),
        ("gemini-embedding-001", 20.0),
    ],
)
def test_family_ceilings(model: str, seconds: float) -> None:
    assert family_first_event_timeout(model) == seconds


@pytest.mark.parametrize("settings", [Settings(), build_settings({})], ids=["class", "file"])
@pytest.mark.parametrize(
    ("first", "budget"),
    [
        ("gemini-2.5-pro", 30.0),
        ("gemini-2.5-flash", 20.0),
        ("gemini-2.5-flash-lite", 15.0),
        ("any-other-model", 30.0),
    ],
)
def test_defaults_fail_a_silent_stream_over_within_the_budget(
    settings: Settings, first: str, budget: float
) -> None:
    # The fallback's own first event must fit in what is left: at least 5 s of each budget.
    assert worst_case_silent_failover(settings, first) <= budget - 5.0


def test_the_worst_case_follows_the_configuration() -> None:
    settings = build_settings(
        {
            "model_defaults": {"first_event_timeout": 90},
            "models": {"gemini-2.5-flash": {"first_event_timeout": 12}},
            "server": {"request_deadline": 60},
        }
    )
    assert worst_case_silent_failover(settings, "gemini-2.5-pro") == 60.0
    assert worst_case_silent_failover(settings, "gemini-2.5-flash") == 12.0
