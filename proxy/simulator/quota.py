"""Request-rate quotas: an exact sliding window per (API key, model)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from proxy.simulator.config import QuotaSpec


@dataclass(frozen=True, slots=True)
class QuotaRejection:
    """A request over quota, and how long until the window frees a slot."""

    spec: QuotaSpec
    retry_delay: float


@dataclass(slots=True)
class QuotaBook:
    """Quota specs per model and the admitted-request times per (identity, model)."""

    _specs: dict[str, QuotaSpec] = field(default_factory=dict)
    _windows: dict[tuple[str, str], deque[float]] = field(default_factory=dict)

    def set(self, model: str, spec: QuotaSpec) -> None:
        """Install or replace a model's quota; its count starts again from zero."""
        self._specs[model] = spec
        self._drop_windows(model)

    def set_all(self, quotas: Mapping[str, QuotaSpec]) -> None:
        self.clear()
        for model, spec in quotas.items():
            self.set(model, spec)

    def clear(self, model: str | None = None) -> None:
        if model is None:
            self._specs.clear()
            self._windows.clear()
        else:
            self._specs.pop(model, None)
            self._drop_windows(model)

    def snapshot(self) -> dict[str, QuotaSpec]:
        return dict(sorted(self._specs.items()))

    def admit(self, identity: str, model: str, method: str, now: float) -> QuotaRejection | None:
        """Count the request if the window has room; otherwise say when it will.

        Only admitted requests take a slot, so a client that waits ``retry_delay`` and
        retries is admitted.
        """
        spec = self._specs.get(model)
        if spec is None or method not in spec.methods:
            return None
        key = (identity, model)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = deque()
        horizon = now - spec.window
        while window and window[0] <= horizon:
            window.popleft()
        if len(window) < spec.limit:
            window.append(now)
            return None
        # Round up to the millisecond so that waiting exactly this long is always enough.
        delay = math.ceil((window[0] + spec.window - now) * 1000) / 1000
        return QuotaRejection(spec, max(delay, 0.001))

    def _drop_windows(self, model: str) -> None:
        for key in [key for key in self._windows if key[1] == model]:
            del self._windows[key]
