"""Installed faults per model, their schedules, and which of them a request gets."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.simulator.config import (
    CONTINUATION_ONLY_KINDS,
    GENERATE_METHODS,
    GENERATE_ONLY_KINDS,
    JSON_ONLY_KINDS,
    STREAM_ONLY_KINDS,
    FaultSpec,
)


@dataclass(frozen=True, slots=True)
class RequestTraits:
    """What about a request decides which faults can apply to it."""

    stream: bool = False
    continuation: bool = False
    """It ends with a ``model`` turn."""
    json_mode: bool = False


@dataclass(slots=True)
class InstalledFault:
    """A fault spec plus the state its schedule needs."""

    spec: FaultSpec
    installed_at: float
    remaining: int | None = None
    """Requests it still applies to, when the spec has ``times``."""

    @property
    def starts_at(self) -> float:
        return self.installed_at + self.spec.after_seconds

    @property
    def ends_at(self) -> float | None:
        if self.spec.for_seconds is None:
            return None
        return self.starts_at + self.spec.for_seconds

    def expired(self, now: float) -> bool:
        ends_at = self.ends_at
        return self.remaining == 0 or (ends_at is not None and now >= ends_at)

    def active(self, now: float) -> bool:
        return now >= self.starts_at and not self.expired(now)

    def matches(self, method: str, request: RequestTraits) -> bool:
        spec = self.spec
        if spec.methods is not None and method not in spec.methods:
            return False
        if spec.kind in STREAM_ONLY_KINDS and not request.stream:
            return False
        if spec.kind in CONTINUATION_ONLY_KINDS and not request.continuation:
            return False
        if spec.kind in JSON_ONLY_KINDS and not request.json_mode:
            return False
        return not (spec.kind in GENERATE_ONLY_KINDS and method not in GENERATE_METHODS)

    def to_json(self, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {"spec": self.spec.to_json(), "active": self.active(now)}
        if self.remaining is not None:
            out["remaining"] = self.remaining
        if now < self.starts_at:
            out["starts_in"] = round(self.starts_at - now, 3)
        ends_at = self.ends_at
        if ends_at is not None:
            out["ends_in"] = round(max(0.0, ends_at - now), 3)
        return out


@dataclass(frozen=True, slots=True)
class Selection:
    """The faults one request gets: stacked delays plus at most one answer-changing fault."""

    latency: float = 0.0
    first_chunk_delay: float = 0.0
    terminal: FaultSpec | None = None
    applied: tuple[str, ...] = ()

    @property
    def name(self) -> str | None:
        """What the attempt log calls it: the answer-changing fault, else the first delay."""
        if self.terminal is not None:
            return self.terminal.kind
        return self.applied[0] if self.applied else None


NO_FAULT = Selection()


@dataclass(slots=True)
class FaultBook:
    """Every model's fault list. All access happens on the event loop, so no locking."""

    rng: random.Random
    _faults: dict[str, list[InstalledFault]] = field(default_factory=dict)

    def replace(self, model: str, specs: Iterable[FaultSpec], now: float) -> None:
        self._set(model, [InstalledFault(spec, now, spec.times) for spec in specs])

    def replace_all(self, faults: Mapping[str, Iterable[FaultSpec]], now: float) -> None:
        self._faults.clear()
        for model, specs in faults.items():
            self.replace(model, specs, now)

    def add(self, model: str, spec: FaultSpec, now: float) -> None:
        self._faults.setdefault(model, []).append(InstalledFault(spec, now, spec.times))

    def clear(self, model: str | None = None) -> None:
        if model is None:
            self._faults.clear()
        else:
            self._faults.pop(model, None)

    def snapshot(self, now: float, model: str | None = None) -> dict[str, list[dict[str, Any]]]:
        self._forget_expired(now)
        return {
            name: [fault.to_json(now) for fault in faults]
            for name, faults in sorted(self._faults.items())
            if model is None or name == model
        }

    def select(self, model: str, method: str, request: RequestTraits, now: float) -> Selection:
        """Draw this request's faults: every matching delay, and the first matching other fault.

        A fault that does not apply (inactive, another method, a request of another sort such
        as a unary call for a stream-only kind, lost the probability draw) does not use up one
        of its ``times``.
        """
        faults = self._faults.get(model)
        if not faults:
            return NO_FAULT
        latency = 0.0
        first_chunk = 0.0
        terminal: FaultSpec | None = None
        applied: list[str] = []
        for fault in faults:
            spec = fault.spec
            if terminal is not None and not spec.is_modifier:
                continue
            if not fault.active(now) or not fault.matches(method, request):
                continue
            if spec.probability < 1.0 and self.rng.random() >= spec.probability:
                continue
            if fault.remaining is not None:
                fault.remaining -= 1
            applied.append(spec.kind)
            if spec.kind == "latency":
                latency += spec.seconds or 0.0
            elif spec.kind == "slow_first_chunk":
                first_chunk += spec.seconds or 0.0
            else:
                terminal = spec
        live = [fault for fault in faults if not fault.expired(now)]
        if len(live) != len(faults):
            self._set(model, live)
        return Selection(latency, first_chunk, terminal, tuple(applied))

    def _forget_expired(self, now: float) -> None:
        for model, faults in list(self._faults.items()):
            self._set(model, [fault for fault in faults if not fault.expired(now)])

    def _set(self, model: str, faults: list[InstalledFault]) -> None:
        if faults:
            self._faults[model] = faults
        else:
            self._faults.pop(model, None)
