"""The pure decisions on whether a failure is evidence about the model, and the ledger."""

from __future__ import annotations

import pytest

from proxy.pipeline.evidence import (
    MAX_REMEMBERED,
    FailureLedger,
    FailureView,
    HeldFailure,
    counts_against_model,
    fingerprint,
    is_request_fault,
    shared_sign,
)

PRO, FLASH, LITE = "pro", "flash", "lite"


def view(**fields: object) -> FailureView:
    base: dict[str, object] = {
        "model_serving": True,
        "other_keys_served": True,
        "already_counted": False,
        "key_counted": 0,
        "all_counted": 0,
    }
    base.update(fields)
    return FailureView(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("case", "the_view", "share", "counts"),
    [
        (
            "a model failing everything: every failure counts",
            view(model_serving=False, other_keys_served=False, already_counted=True, key_counted=9),
            0.5,
            True,
        ),
        ("identical request while the model serves others", view(already_counted=True), 0.5, False),
        (
            "identical request, no other key around",
            view(other_keys_served=False, already_counted=True),
            0.5,
            False,
        ),
        ("a key's first failure while others are served", view(), 0.5, True),
        (
            "a key alone, once counted, while others are served",
            view(key_counted=1, all_counted=1),
            0.5,
            False,
        ),
        ("a key with half of many counted failures", view(key_counted=3, all_counted=6), 0.5, True),
        ("a key over its share", view(key_counted=4, all_counted=6), 0.5, False),
        (
            "no other key is served: the sidecar's one key",
            view(other_keys_served=False, key_counted=50, all_counted=50),
            0.5,
            True,
        ),
        ("share 1 turns the cap off", view(key_counted=50, all_counted=50), 1.0, True),
        ("share 0 still lets one failure of a key count", view(), 0.0, True),
    ],
)
def test_counts_against_model(case: str, the_view: FailureView, share: float, counts: bool) -> None:
    assert counts_against_model(the_view, share) is counts, case


@pytest.mark.parametrize(
    ("failures", "sign"),
    [
        ([], None),
        ([(PRO, "500"), (PRO, "500")], None),  # retries of one model prove nothing
        ([(PRO, "500"), (FLASH, "500")], "500"),
        ([(PRO, "500"), (PRO, "500"), (FLASH, "503")], None),  # a different failure
        ([(PRO, "503"), (PRO, "500"), (FLASH, "503")], "503"),
        ([(PRO, "UpstreamTimeout"), (FLASH, "UpstreamTimeout")], "UpstreamTimeout"),
        ([(PRO, "500"), (FLASH, "502"), (LITE, "500")], "500"),
    ],
)
def test_shared_sign(failures: list[tuple[str, str]], sign: str | None) -> None:
    assert shared_sign([HeldFailure(m, s) for m, s in failures]) == sign


@pytest.mark.parametrize(
    ("serving", "failed_before", "fault"),
    [
        (True, False, True),  # other requests are answered: this one is the problem
        (False, True, True),  # nothing answered, but this very request keeps failing
        (False, False, False),  # a new request while everything fails: an outage
        (True, True, True),
    ],
)
def test_is_request_fault(serving: bool, failed_before: bool, fault: bool) -> None:
    same = [HeldFailure(PRO, "500"), HeldFailure(FLASH, "500")]
    different = [HeldFailure(PRO, "500"), HeldFailure(FLASH, "503")]
    assert is_request_fault(same, serving, failed_before) is fault
    assert is_request_fault(different, serving, failed_before) is False


def test_fingerprint_separates_method_key_and_body() -> None:
    base = fingerprint("generateContent", "key-a", b'{"contents": []}')
    assert base == fingerprint("generateContent", "key-a", b'{"contents": []}')
    assert base != fingerprint("streamGenerateContent", "key-a", b'{"contents": []}')
    assert base != fingerprint("generateContent", "key-b", b'{"contents": []}')
    assert base != fingerprint("generateContent", "key-a", b'{"contents": [1]}')


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ledger_remembers_poison_for_a_while() -> None:
    clock = Clock()
    ledger = FailureLedger(30, clock)
    ledger.remember_poison(b"x", 300)
    assert ledger.is_poison(b"x") and not ledger.is_poison(b"y")
    clock.now += 301
    assert not ledger.is_poison(b"x")


def test_ledger_counts_identical_requests_once_per_window() -> None:
    clock = Clock()
    ledger = FailureLedger(30, clock)
    ledger.counted(PRO, "key", b"x", 30)
    assert ledger.view(PRO, "key", b"x", True, []).already_counted
    assert not ledger.view(FLASH, "key", b"x", True, []).already_counted
    assert not ledger.view(PRO, "key", b"y", True, []).already_counted
    clock.now += 31
    assert not ledger.view(PRO, "key", b"x", True, []).already_counted


def test_ledger_sees_other_keys_served_from_their_attempts_minus_failures() -> None:
    ledger = FailureLedger(30, Clock())
    ledger.failed(PRO, "other")
    # The other key sent one attempt, and it failed: nobody else was served.
    assert not ledger.view(PRO, "mine", None, True, [("other", 1)]).other_keys_served
    assert ledger.view(PRO, "mine", None, True, [("other", 2)]).other_keys_served
    assert not ledger.view(PRO, "mine", None, True, [("mine", 5)]).other_keys_served
    assert not ledger.view(PRO, "mine", None, False, [("other", 2)]).other_keys_served


def test_ledger_per_key_counts_slide_out_of_the_window() -> None:
    clock = Clock()
    ledger = FailureLedger(30, clock)
    for _ in range(3):
        ledger.counted(PRO, "a", None, 30)
    ledger.counted(PRO, "b", None, 30)
    seen = ledger.view(PRO, "a", None, True, [])
    assert (seen.key_counted, seen.all_counted) == (3, 4)
    clock.now += 31
    seen = ledger.view(PRO, "a", None, True, [])
    assert (seen.key_counted, seen.all_counted) == (0, 0)


def test_ledger_memory_is_bounded() -> None:
    ledger = FailureLedger(30, Clock())
    for n in range(MAX_REMEMBERED + 10):
        ledger.remember_poison(n.to_bytes(4, "big"), 300)
        ledger.failed(PRO, str(n))
    assert not ledger.is_poison((0).to_bytes(4, "big"))
    assert ledger.is_poison((MAX_REMEMBERED + 9).to_bytes(4, "big"))
    assert len(ledger._keys) <= MAX_REMEMBERED
