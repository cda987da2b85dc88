"""Telemetry: OpenTelemetry metrics (scraped at ``/metrics``, or pushed over OTLP), a span per
client request with a child per upstream attempt, and JSON logs with a request id.

Nothing is created at import: everything lives on a ``Telemetry`` instance.
"""

from __future__ import annotations

from .cluster import ClusterSource, ClusterView, RouteView, view_of
from .exporters import Exposition
from .facade import Telemetry
from .jsonlog import (
    REQUEST_ID,
    JsonFormatter,
    bound_request_id,
    current_request_id,
    request_id_from,
)
from .names import BREAKER_STATE_CODES
from .tracing import AttemptSpan, RequestSpan, route_template

__all__ = [
    "BREAKER_STATE_CODES",
    "REQUEST_ID",
    "AttemptSpan",
    "ClusterSource",
    "ClusterView",
    "Exposition",
    "JsonFormatter",
    "RequestSpan",
    "RouteView",
    "Telemetry",
    "bound_request_id",
    "current_request_id",
    "request_id_from",
    "route_template",
    "view_of",
]
