"""The cluster gauges (active model per route, breaker state, store degraded), observed at each
collection from a snapshot the proxy supplies, so they can never drift from the mirror."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from . import names
from .names import label

if TYPE_CHECKING:
    from ..cluster.coordinator import Coordinator

log = logging.getLogger("gemini_breaker.telemetry")


@dataclass(frozen=True, slots=True)
class RouteView:
    chain: tuple[str, ...]
    active: str | None
    """The model serving the route; None when no model of the chain admits."""


@dataclass(frozen=True, slots=True)
class ClusterView:
    """What the gauges report, as one replica sees it."""

    routes: Mapping[str, RouteView] = field(default_factory=dict)
    breakers: Mapping[str, str] = field(default_factory=dict)
    """Breaker state name by model (``closed``, ``half_open``, ``open``, ...)."""
    store_degraded: bool = False


ClusterSource = Callable[[], ClusterView | None]
"""Returns the current view, or None while there is none (the proxy is starting)."""


def view_of(coordinator: Coordinator | None) -> ClusterView | None:
    """The view of a running coordinator: its mirror and its store's health. A route the
    mirror has no active model for yet (before registration) is left out."""
    if coordinator is None:
        return None
    mirror = coordinator.mirror
    # Copies first: an OTLP export observes from its own thread while the loop updates these.
    active = dict(mirror.active)
    known = dict(mirror.breakers)
    chains = coordinator.settings.routes
    models = coordinator.settings.routed_models | set(known)
    return ClusterView(
        routes={
            route: RouteView(tuple(chain), active[route].model)
            for route, chain in chains.items()
            if route in active
        },
        breakers={model: mirror.breaker(model).state for model in models},
        store_degraded=coordinator.degraded,
    )


class ClusterGauges:
    """Registers the observable gauges on ``meter``; each reads ``source`` when collected."""

    def __init__(self, meter: Meter, source: ClusterSource) -> None:
        self._source = source
        meter.create_observable_gauge(
            names.ACTIVE_MODEL,
            [self._active_model],
            unit="1",
            description="1 for the model serving each route, 0 for the other models of its "
            "chain; position is the model's index in the chain (0 = primary).",
        )
        meter.create_observable_gauge(
            names.BREAKER_STATE,
            [self._breaker_state],
            unit="1",
            description="Circuit breaker state per model: 0 closed, 1 half_open, 2 open, "
            "3 forced_open, 4 disabled, -1 unknown.",
        )
        meter.create_observable_gauge(
            names.BREAKER_IN_STATE,
            [self._breaker_in_state],
            unit="1",
            description="1 for the state each model's breaker is in, 0 for the other states.",
        )
        meter.create_observable_gauge(
            names.STORE_DEGRADED,
            [self._store_degraded],
            unit="1",
            description="1 while Redis is unreachable and this replica runs fail-static.",
        )

    def _view(self) -> ClusterView | None:
        try:
            return self._source()
        except Exception:  # a gauge must never break a scrape or an export
            log.warning("the cluster view for the gauges failed", exc_info=True)
            return None

    def _active_model(self, options: CallbackOptions) -> Iterable[Observation]:
        view = self._view()
        if view is None:
            return
        for route, seen in view.routes.items():
            for position, model in enumerate(dict.fromkeys(seen.chain)):
                yield Observation(
                    1 if model == seen.active else 0,
                    {
                        names.ROUTE: label(route),
                        names.MODEL: label(model),
                        names.POSITION: str(position),
                    },
                )

    def _breaker_state(self, options: CallbackOptions) -> Iterable[Observation]:
        view = self._view()
        if view is None:
            return
        for model, state in view.breakers.items():
            code = names.BREAKER_STATE_CODES.get(state, -1)
            yield Observation(code, {names.MODEL: label(model)})

    def _breaker_in_state(self, options: CallbackOptions) -> Iterable[Observation]:
        view = self._view()
        if view is None:
            return
        for model, current in view.breakers.items():
            for state in dict.fromkeys([*names.BREAKER_STATE_CODES, current]):
                yield Observation(
                    1 if state == current else 0, {names.MODEL: label(model), names.STATE: state}
                )

    def _store_degraded(self, options: CallbackOptions) -> Iterable[Observation]:
        view = self._view()
        if view is not None:
            yield Observation(1 if view.store_degraded else 0)
