"""The quota gate says whether the 429 behind a shed was on shared capacity: a route with
``on_429: next_location`` moves such requests to the same model in another location, and sheds
the others (a per-project or per-day quota is backpressure)."""

from __future__ import annotations

import pytest

from proxy.cluster.mirror import Mirror
from proxy.cluster.quota_gate import QuotaGate
from proxy.cluster.state import QuotaState
from proxy.config_load import build_settings

NOW = 1_000_000.0
TARGET = "gemini-2.5-pro@us-central1"


def gate_holding(quota_id: str, per_day: bool, cooling: bool) -> QuotaGate:
    mirror = Mirror(clock=lambda: NOW)
    now_ms = round(NOW * 1000)
    until = now_ms + 60_000 if cooling else now_ms - 1
    # Past the cooldown with nothing let through yet: every request is paced.
    mirror.hold_quota(QuotaState("key", TARGET, until, 0.0, now_ms + 60_000, per_day, quota_id, 0))
    settings = build_settings({"upstream": {"base_url": "http://127.0.0.1:9"}})
    return QuotaGate(settings, mirror, link=None, tasks=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("cooling", "reason"), [(True, "cooldown"), (False, "pacing")])
@pytest.mark.parametrize(
    ("quota_id", "per_day", "shared"),
    [
        ("", False, True),  # Vertex's dynamic shared quota names no quota
        ("generate_content_requests_per_minute_per_project_per_base_model", False, False),
        ("", True, False),
    ],
)
def test_a_shed_says_whether_its_429_was_on_shared_capacity(
    quota_id: str, per_day: bool, shared: bool, cooling: bool, reason: str
) -> None:
    shed = gate_holding(quota_id, per_day, cooling).check("key", TARGET)
    assert shed is not None
    assert shed.reason == reason
    assert shed.shared_capacity is shared


def test_another_credential_or_target_is_not_held() -> None:
    gate = gate_holding("", False, True)
    assert gate.check("other-key", TARGET) is None
    assert gate.check("key", "gemini-2.5-pro@europe-west4") is None
