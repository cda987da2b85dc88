"""A faithful fake Gemini API upstream with scriptable per-model faults and quotas.

Used as the upstream by the proxy's end-to-end tests, the demo and the benchmarks, and by
users to rehearse outages (``gemini-breaker simulate``).
"""

from proxy.simulator.app import SimulatorApp, create_simulator_app
from proxy.simulator.config import (
    FaultSpec,
    QuotaSpec,
    SimulatorConfig,
    build_simulator_config,
    load_simulator_config,
)
from proxy.simulator.exchange import TransportUnavailableError

__all__ = [
    "FaultSpec",
    "QuotaSpec",
    "SimulatorApp",
    "SimulatorConfig",
    "TransportUnavailableError",
    "build_simulator_config",
    "create_simulator_app",
    "load_simulator_config",
]
