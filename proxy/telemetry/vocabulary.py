"""The bounded sets metric labels take their values from.

Model and route names arrive in request paths, so any caller could otherwise mint a new series
per request (and Prometheus keeps every one). A name is a label value only when the
configuration names it or the upstream served it (Google's catalogue is finite); anything else
is counted as ``other``. Status codes likewise: those the proxy and Google answer with.
"""

from __future__ import annotations

from collections.abc import Iterable

from .names import label

OTHER = "other"
MAX_LEARNED_MODELS = 256
"""Models learned from the upstream's answers, at most (a catalogue holds a few dozen)."""

STATUS_CODES = frozenset(
    {200, 204, 400, 401, 403, 404, 405, 408, 409, 411, 413, 429, 499, 500, 501, 502, 503, 504}
)
"""The statuses the proxy writes or relays from Google; any other is labelled ``other``."""


class LabelVocabulary:
    """Which model names may be label values: the configured ones, and those the upstream
    answered a call for with a success (it lists them)."""

    __slots__ = ("_known", "_learned")

    def __init__(self, models: Iterable[str] = ()) -> None:
        self._known: set[str] = set()
        self._learned = 0
        self.know(models)

    def know(self, models: Iterable[str]) -> None:
        """Names the configuration holds (routes, their chains, per-model settings)."""
        self._known.update(label(model) for model in models if model)

    def learn(self, model: str) -> None:
        """The upstream served ``model``: a name of its catalogue."""
        if model and model not in self._known and self._learned < MAX_LEARNED_MODELS:
            self._known.add(label(model))
            self._learned += 1

    def model(self, value: str | None) -> str:
        """The label of a model or route name: empty for none, ``other`` when unknown."""
        if not value:
            return ""
        return value if value in self._known else OTHER

    def status(self, code: int) -> str:
        return str(code) if code in STATUS_CODES else OTHER
