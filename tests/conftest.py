"""Shared fixtures: the simulator as upstream and the proxy in front of it, both on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from proxy.app import create_app
from proxy.config_load import build_settings
from proxy.simulator import SimulatorConfig, create_simulator_app
from proxy.simulator.client import SimulatorControl

from .docker_engine import base_image, docker_engine, project_image
from .support import serve

# Session fixtures of the docker tests, registered here so that one engine serves them all.
__all__ = ["base_image", "docker_engine", "project_image"]

ROUTES = {"gemini-2.5-pro": ["gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"]}


FIGURES = pytest.StashKey[dict[str, str]]()


@pytest.fixture(scope="session")
def figures(pytestconfig: pytest.Config) -> dict[str, str]:
    """Measurements a test reports (not asserts): printed at the end of the run."""
    return pytestconfig.stash.setdefault(FIGURES, {})


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    measured = config.stash.get(FIGURES, {})
    if measured:
        terminalreporter.section("figures")
        for name, value in measured.items():
            terminalreporter.write_line(f"{name}: {value}")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def simulator_url() -> Iterator[str]:
    with serve(create_simulator_app(SimulatorConfig())) as url:
        yield url


@pytest.fixture
def simulator(simulator_url: str) -> Iterator[SimulatorControl]:
    """The shared simulator, with no faults and an empty attempt log for each test."""
    with SimulatorControl(simulator_url) as control:
        control.clear_all()
        yield control
        control.clear_faults()
        control.clear_quotas()


# For tests of plain forwarding: one attempt per model and breakers that never trip, so what
# reaches the client is exactly what the upstream said.
PASS_THROUGH = {
    "max_attempts": 1,
    "breaker": {"minimum_calls": 1_000_000, "burst_failures": 1_000_000},
}


def proxy_settings(upstream_url: str, **sections: Any) -> Any:
    """Settings for a proxy in front of ``upstream_url``; ``sections`` are merged in."""
    raw: dict[str, Any] = {
        "upstream": {"base_url": upstream_url},
        "routes": ROUTES,
        "model_defaults": PASS_THROUGH,
        "quota": {"max_retry_wait": 0},  # a 429 goes straight back to the client
        # Tests read /admin/* from loopback without a token (the default disables the API).
        "admin": {"allow_unauthenticated_loopback": True},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return build_settings(raw)


@pytest.fixture(scope="session")
def proxy_url(simulator_url: str) -> Iterator[str]:
    """The proxy in front of the simulator, with short deadlines so hangs fail fast."""
    settings = proxy_settings(
        simulator_url,
        server={"max_body_bytes": 256 * 1024},
        model_defaults={
            "connect_timeout": 2,
            "headers_timeout": 3,
            "first_event_timeout": 3,
            "unary_timeout": 3,
            "stall_timeout": 2,
        },
    )
    with serve(create_app(settings)) as url:
        yield url


def calls(
    simulator: SimulatorControl, model: str | None = None, include_body: bool = False
) -> list[dict[str, Any]]:
    """The model calls the simulator saw (POSTs), leaving out the proxy's own background
    ``GET models/{m}`` look-ups of token limits."""
    return [
        attempt
        for attempt in simulator.attempts(model=model, include_body=include_body)
        if attempt["method"] == "POST"
    ]
