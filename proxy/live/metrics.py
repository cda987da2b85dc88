"""Live sessions in ``/metrics``: open sessions per model (a gauge), setup failures and
resumptions per model (counters), read from ``LiveSessions`` at each scrape."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from opentelemetry.metrics import Meter, Observation

from ..telemetry import names
from .sessions import LiveSessions

OPEN = "gemini_breaker_live_sessions_open"
SETUP_FAILURES = "gemini_breaker_live_setup_failures"
RESUMPTIONS = "gemini_breaker_live_resumptions"


def watch_sessions(meter: Meter, sessions: LiveSessions) -> None:
    def observe(counts: Counter[str]) -> Iterable[Observation]:
        return [Observation(n, {names.MODEL: model}) for model, n in list(counts.items())]

    meter.create_observable_gauge(
        OPEN,
        [lambda _: observe(sessions.open)],
        unit="{session}",
        description="Live API sessions open on this replica, by serving model.",
    )
    meter.create_observable_counter(
        SETUP_FAILURES,
        [lambda _: observe(sessions.setup_failures)],
        description="Live API setups that failed on a model (and moved to the next).",
    )
    meter.create_observable_counter(
        RESUMPTIONS,
        [lambda _: observe(sessions.resumptions)],
        description="Live API sessions resumed with their last handle after the upstream left.",
    )
