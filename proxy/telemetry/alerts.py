"""Alert counts since start, per model, as ``/admin/state`` shows them (the metrics carry the
same events): keyed by the model's label, so an unknown name counts as ``other`` and no caller
can grow them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class AlertCounts:
    """Per-model counts of the events that point at something other than a model's health."""

    credential: Counter[str] = field(default_factory=Counter)
    """401/403 answers (a credential problem, not a model one)."""
    quota: Counter[str] = field(default_factory=Counter)
    """Per-day quota 429s."""
    schema_drift: Counter[str] = field(default_factory=Counter)
    """JSON-mode answers that were not the JSON asked for."""
