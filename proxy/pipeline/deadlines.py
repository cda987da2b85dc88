"""How long an attempt may wait for an answer to start: configured ceilings, a first-event
deadline learned per model from its recent successes, and a unary answer's budget.

Everything here is a pure decision over plain values; the exchange does the waiting.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import ModelSettings, Settings

# Which limit ended a wait, as logs and the ``deadline_misses`` metric name it.
HEADERS = "headers"
"""A call that does not generate sent no response headers within ``headers_timeout``."""
FIRST_EVENT = "first_event"
"""A generate call's answer did not start within the configured ceiling (for a stream its
first event, for a unary call the whole answer)."""
LEARNED = "learned"
"""A stream's first event did not come within the deadline learned for the model."""
GAP = "gap"
"""A response went silent between two chunks for longer than ``stall_timeout``."""
DEADLINE_KINDS = (HEADERS, FIRST_EVENT, LEARNED, GAP)

# First-event ceilings when none is configured, by model family. The seeds' budgets for a
# silent upstream (from the request to the fallback's first byte) are 30 s with pro first,
# 20 s with flash first and 15 s with flash-lite first; each ceiling leaves 5 s of them to the
# fallback. A missed deadline is not retried on the same model, so the ceiling is the whole
# time a silent model holds a request.
FAMILY_FIRST_EVENT_TIMEOUTS = (("flash-lite", 10.0), ("flash", 15.0), ("pro", 25.0))
OTHER_FIRST_EVENT_TIMEOUT = 20.0
# Models learned per replica, at most (only models that answered are learned at all).
MAX_LEARNED_MODELS = 256
# The most consecutive misses that still widen a learned deadline (2**16 times: the ceiling).
MAX_WIDENINGS = 16

_MAX_OUTPUT_TOKENS = re.compile(rb'"(?:maxOutputTokens|max_output_tokens)"\s*:\s*"?(\d{1,9})')


@dataclass(frozen=True, slots=True)
class LearningParams:
    """The learned first-event deadline: ``percentile`` of the model's recent times to first
    event, times ``factor``, kept between ``floor`` and the configured ceiling."""

    enabled: bool = True
    percentile: float = field(default=0.99, metadata={"min": 0.5, "max": 1.0})
    factor: float = field(default=3.0, metadata={"min": 1.0})
    floor: float = field(default=2.0, metadata={"min": 0.001})
    """Seconds; never abandon a stream sooner than this."""
    min_samples: int = field(default=20, metadata={"min": 1})
    """Successes needed before the learned deadline replaces the ceiling."""
    samples: int = field(default=200, metadata={"min": 1, "max": 10_000})
    """How many recent successes are kept (older ones are forgotten)."""


def family_first_event_timeout(model: str) -> float:
    """The built-in first-event ceiling for a model name (see ``FAMILY_FIRST_EVENT_TIMEOUTS``)."""
    for family, seconds in FAMILY_FIRST_EVENT_TIMEOUTS:
        if family in model:
            return seconds
    return OTHER_FIRST_EVENT_TIMEOUT


def first_event_ceiling(model: str, configured: float | None) -> float:
    """The configured first-event ceiling, else the model family's."""
    return configured if configured is not None else family_first_event_timeout(model)


def unary_budget(
    ceiling: float, max_output_tokens: int | None, tokens_per_second: float, fallback: float
) -> float:
    """Seconds a unary generate answer may take (its headers come with the whole answer): the
    time to start plus the requested tokens at the slowest acceptable rate, or ``fallback``
    (``unary_timeout``) when the request sets no ``maxOutputTokens``."""
    if max_output_tokens is None:
        return fallback
    return ceiling + max_output_tokens / tokens_per_second


def max_output_tokens(body: bytes) -> int | None:
    """The request's ``generationConfig.maxOutputTokens`` (either spelling), found without
    parsing the body: the largest value when several objects carry the key, since a budget
    that is too generous only delays a failover while one too tight cuts an answer."""
    if b"axOutputTokens" not in body and b"ax_output_tokens" not in body:
        return None
    values = [int(match) for match in _MAX_OUTPUT_TOKENS.findall(body)]
    return max(values) if values else None


def worst_case_silent_failover(settings: Settings, model: str) -> float:
    """Longest a stream waits on ``model`` when it accepts the connection and never answers,
    before the next model of the chain is tried: one attempt up to the first-event ceiling
    (connecting and the headers included; a missed deadline is not retried on the same
    model), never past the request's deadline."""
    return min(settings.first_event_ceiling(model), settings.server.request_deadline)


class FirstEventLearner:
    """One model's recent times to first event, in a fixed ring, and the deadline they give.

    Too few samples: the ceiling. Otherwise ``percentile * factor`` between ``floor`` and the
    ceiling, doubled for each miss at the learned deadline until a success fits within the
    learned value again, so a model that got slower is waited for within a few requests.
    """

    __slots__ = ("_count", "_deadline", "_misses", "_next", "_ring", "ceiling", "params")

    def __init__(self, params: LearningParams, ceiling: float) -> None:
        self.params = params
        self.ceiling = ceiling
        self._ring = [0.0] * params.samples
        self._next = 0
        self._count = 0
        self._misses = 0
        self._deadline = ceiling
        """The learned value before widening, recomputed as samples arrive."""

    @property
    def samples(self) -> int:
        return self._count

    def deadline(self) -> float:
        """Seconds to wait for the first event now."""
        if self._misses:
            return min(self.ceiling, self._deadline * 2.0**self._misses)
        return self._deadline

    @property
    def learned(self) -> bool:
        """Whether the deadline is below the ceiling (a miss then says ``learned``)."""
        return self.deadline() < self.ceiling

    def succeeded(self, seconds: float) -> None:
        """A first event arrived ``seconds`` after the attempt was sent."""
        ring = self._ring
        ring[self._next] = seconds
        self._next = (self._next + 1) % len(ring)
        self._count = min(self._count + 1, len(ring))
        # Sorting a few hundred floats costs microseconds: do it for the first successes, for
        # one that could raise the deadline or follows misses, and every 8th otherwise.
        if (
            self._count <= self.params.min_samples
            or self._misses
            or seconds * self.params.factor > self._deadline
            or self._next % 8 == 0
        ):
            self._deadline = self._compute()
        # Widening ends once the learned value covers the model's new times.
        if seconds <= self._deadline:
            self._misses = 0

    def missed(self) -> None:
        """An attempt waited the whole current deadline for its first event."""
        if self._deadline < self.ceiling:
            self._misses = min(self._misses + 1, MAX_WIDENINGS)

    def _compute(self) -> float:
        params = self.params
        if self._count < params.min_samples:
            return self.ceiling
        recent = sorted(self._ring[: self._count])
        rank = max(1, math.ceil(params.percentile * len(recent)))
        learned = recent[rank - 1] * params.factor
        return min(self.ceiling, max(params.floor, learned))


class DeadlineBook:
    """Every model's learner on this replica. A learner is made at a model's first success,
    so names that never succeed (typos, scanners) take no memory."""

    __slots__ = ("_learners",)

    def __init__(self) -> None:
        self._learners: dict[str, FirstEventLearner] = {}

    def first_event(self, model: str, params: LearningParams, ceiling: float) -> float:
        """Seconds this model's next stream may wait for its first event."""
        learner = self._learners.get(model)
        if learner is None or not params.enabled:
            return ceiling
        return min(ceiling, learner.deadline())

    def succeeded(self, model: str, params: LearningParams, ceiling: float, seconds: float) -> None:
        learner = self._learners.get(model)
        if learner is None:
            if not params.enabled or len(self._learners) >= MAX_LEARNED_MODELS:
                return
            learner = self._learners[model] = FirstEventLearner(params, ceiling)
        learner.succeeded(seconds)

    def missed(self, model: str) -> None:
        learner = self._learners.get(model)
        if learner is not None:
            learner.missed()

    def learner(self, model: str) -> FirstEventLearner | None:
        return self._learners.get(model)


def start_wait(
    settings: Settings,
    book: DeadlineBook,
    model: str,
    limits: ModelSettings,
    method: str | None,
    max_tokens: int | None,
) -> tuple[float, str]:
    """How long an attempt on ``model`` may wait for its answer to start, and the name of that
    limit: a stream's first event (learned, else the ceiling), a unary answer's budget
    (headers and body come together), or other calls' response headers."""
    if method not in ("generateContent", "streamGenerateContent"):
        return limits.headers_timeout, HEADERS
    ceiling = settings.first_event_ceiling(model)
    if method == "streamGenerateContent":
        wait = book.first_event(model, limits.first_event_learning, ceiling)
        return wait, LEARNED if wait < ceiling else FIRST_EVENT
    budget = unary_budget(ceiling, max_tokens, limits.min_tokens_per_second, limits.unary_timeout)
    return budget, FIRST_EVENT


def stream_first_event_wait(settings: Settings, book: DeadlineBook, model: str) -> float:
    """A stream's first-event wait on ``model`` (a continuation's, too)."""
    limits: ModelSettings = settings.model_settings(model)
    return book.first_event(model, limits.first_event_learning, settings.first_event_ceiling(model))
