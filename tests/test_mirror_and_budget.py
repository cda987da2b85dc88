"""Unit tests of the replica-local pieces: the mirror's epoch fencing and the retry budget."""

from __future__ import annotations

import dataclasses

from proxy.cluster.mirror import Mirror
from proxy.cluster.state import ActiveModel, BreakerState, Change, Snapshot
from proxy.pipeline.outcomes import Verdict, classify_status
from proxy.pipeline.retry_budget import RetryBudget


def breaker(state: str, epoch: int, calls: int = 0) -> BreakerState:
    return dataclasses.replace(BreakerState.initial("m"), state=state, epoch=epoch, calls=calls)


def change(b: BreakerState, now_ms: int, active: str | None = None) -> Change:
    routes = {"r": ActiveModel("r", active, b.epoch)} if active else {}
    return Change(now_ms=now_ms, breaker=b, active=routes, changed=True)


def test_older_epochs_never_overwrite_newer_ones() -> None:
    mirror = Mirror(clock=lambda: 1000.0)
    mirror.apply(change(breaker("open", 5), 1_000_000, active="fallback"))
    mirror.apply(change(breaker("closed", 4), 1_000_100, active="m"))  # late, stale
    assert mirror.breaker("m").state == "open"
    assert mirror.active["r"].model == "fallback"
    mirror.apply(change(breaker("closed", 6), 1_000_050, active="m"))
    assert (mirror.breaker("m").state, mirror.active["r"].model) == ("closed", "m")


def test_same_epoch_takes_the_fresher_counts() -> None:
    mirror = Mirror(clock=lambda: 1000.0)
    mirror.apply(change(breaker("closed", 3, calls=10), 2_000))
    mirror.apply(change(breaker("closed", 3, calls=4), 1_000))  # older answer, same epoch
    assert mirror.breaker("m").calls == 10
    mirror.apply(change(breaker("closed", 3, calls=12), 3_000))
    assert mirror.breaker("m").calls == 12


def test_unknown_models_are_closed_and_the_store_clock_is_tracked() -> None:
    mirror = Mirror(clock=lambda: 100.0)
    assert mirror.breaker("never-seen").state == "closed"
    mirror.apply(change(breaker("closed", 1), now_ms=100_250))
    assert mirror.store_now_ms() == 100_250.0  # offset of +250 ms from the local clock


def test_adopt_replaces_everything_merge_is_fenced() -> None:
    mirror = Mirror(clock=lambda: 1.0)
    mirror.apply(change(breaker("open", 9), 1_000, active="fallback"))
    empty = Snapshot(now_ms=2_000, epoch=1, breakers={}, active={}, routes={}, digests={})
    mirror.merge(empty)
    assert mirror.breaker("m").state == "open"
    mirror.adopt(empty)  # the store lost its state: it is still the truth
    assert mirror.breaker("m").state == "closed" and mirror.active == {}
    # ... but the epochs this replica saw are not forgotten: new ones are taken above them.
    assert mirror.highest_epoch == 1 and mirror.epoch_floor == 9
    mirror.apply(change(breaker("open", 12), 3_000))
    assert mirror.epoch_floor == 12


def test_retry_budget_allows_a_ratio_of_requests_over_a_floor() -> None:
    now = [0.0]
    budget = RetryBudget(ratio=0.1, min_per_second=0.2, window_seconds=10, clock=lambda: now[0])
    assert [budget.try_spend() for _ in range(3)] == [True, True, False]  # floor: 2 per window
    for _ in range(100):
        budget.record_request()
    spent = sum(budget.try_spend() for _ in range(20))
    assert spent == 8  # 10% of 100 requests = 10 retries in all, 2 already taken
    now[0] = 11.0  # the window slid past all of it
    assert [budget.try_spend() for _ in range(3)] == [True, True, False]


def test_the_classification_table() -> None:
    assert classify_status(200) is Verdict.SUCCESS
    assert all(classify_status(s) is Verdict.FAILURE for s in (500, 502, 503, 504))
    assert classify_status(429) is Verdict.RATE_LIMITED
    assert classify_status(401) is classify_status(403) is Verdict.CREDENTIAL
    assert classify_status(400) is classify_status(404) is Verdict.CLIENT_ERROR
    assert not Verdict.RATE_LIMITED.counts_for_breaker
    assert Verdict.SUCCESS.counts_for_breaker and not Verdict.SUCCESS.counts_as_failure
