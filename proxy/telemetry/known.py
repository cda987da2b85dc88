"""The counter series a configuration determines, exported at 0 from start-up: an alert on
``increase()`` of a series that appears only with its first event misses that event."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from . import names
from .names import label

Labels = tuple[tuple[str, str | bool], ...]

#: Why a request leaves its route's first model (``failover``'s reasons on the request path).
FAILOVER_REASONS = ("failure", "breaker_open", "input_too_long", "spillover", "rate_limited")
#: Why the proxy answers for a model itself (``shed``'s reasons).
SHED_REASONS = ("cooldown", "pacing", "throttle", "budget", "breakers_open")
#: Statuses the proxy itself answers with when no model served (shed, all breakers open,
#: upstream unreadable, deadline passed); 200 is declared for every model of a chain.
PROXY_STATUSES = ("429", "502", "503", "504")
#: The operation the declared request series count (the Gemini API's main one).
OPERATION = "generate_content"


@dataclass(frozen=True, slots=True)
class KnownSeries:
    requests: tuple[Labels, ...]
    failovers: tuple[Labels, ...]
    transitions: tuple[Labels, ...]
    sheds: tuple[Labels, ...]


def breaker_edges() -> tuple[tuple[str, str], ...]:
    """Every (from, to) state change a breaker can make: any state to any other, except that
    only an open breaker turns half-open (its wait over)."""
    states = tuple(names.BREAKER_STATE_CODES)
    return tuple(
        (a, b) for a in states for b in states if a != b and (b != "half_open" or a == "open")
    )


def known_series(routes: Mapping[str, Sequence[str]]) -> KnownSeries:
    """The label sets, in the order the recorder builds them, for ``routes``
    (route -> chain of models)."""
    models = sorted({m for chain in routes.values() for m in chain})
    requests: list[Labels] = []
    failovers: list[Labels] = []
    for route, chain in sorted(routes.items()):
        served = [*dict.fromkeys(chain)]
        statuses = [(m, "200") for m in served] + [("", s) for s in PROXY_STATUSES]
        for model, status in statuses:
            requests.append(
                (
                    (names.MODEL, label(model)),
                    (names.STATUS_CODE, status),
                    (names.ROUTE, label(route)),
                    (names.GEN_AI_OPERATION_NAME, OPERATION),
                )
            )
        # From any model to a later one: the chain a request walks may start further on
        # (models unable to serve it are left out, a pin puts its model first).
        for i, from_model in enumerate(served):
            for to_model in served[i + 1 :]:
                for reason in FAILOVER_REASONS:
                    failovers.append(
                        (
                            (names.ROUTE, label(route)),
                            (names.FROM_MODEL, label(from_model)),
                            (names.TO_MODEL, label(to_model)),
                            (names.REASON, reason),
                        )
                    )
    transitions = [
        ((names.MODEL, label(m)), (names.FROM_STATE, a), (names.TO_STATE, b))
        for m in models
        for a, b in breaker_edges()
    ]
    shed_models = sorted({*models, *routes})
    sheds = [
        ((names.MODEL, label(m)), (names.REASON, r)) for m in shed_models for r in SHED_REASONS
    ]
    return KnownSeries(tuple(requests), tuple(failovers), tuple(transitions), tuple(sheds))
