"""Vertex targets on the cluster as users run it: three proxy processes sharing one real
redis-server, one simulator per region, the real SDK in Vertex mode spread over the replicas.
A regional outage moves every replica to the same model in the next region, then to the next
model when all its regions are out, and half-open probes bring the first region back."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.genai import Client, types
from google.oauth2.credentials import Credentials

from proxy.simulator import SimulatorConfig, create_simulator_app
from proxy.simulator.client import SimulatorControl

from .conftest import calls
from .redis_support import RedisServer
from .redis_support import redis_server as redis_server  # the fixture
from .support import QUICK_ATTEMPTS, QUICK_REDIS, serve, serve_replicas
from .test_cluster_e2e import BREAKER, state, wait_all

PRO, FLASH = "gemini-2.5-pro", "gemini-2.5-flash"
US, EU, PROJECT = "us-central1", "europe-west4", "test-project"
PRO_US, PRO_EU, FLASH_US = f"{PRO}@{US}", f"{PRO}@{EU}", f"{FLASH}@{US}"


@pytest.fixture
def origins() -> Iterator[dict[str, str]]:
    """One simulator per region."""
    with (
        serve(create_simulator_app(SimulatorConfig())) as us,
        serve(create_simulator_app(SimulatorConfig())) as eu,
    ):
        yield {US: us, EU: eu}


@pytest.fixture
def regions(origins: dict[str, str]) -> Iterator[dict[str, SimulatorControl]]:
    with SimulatorControl(origins[US]) as us, SimulatorControl(origins[EU]) as eu:
        yield {US: us, EU: eu}


@pytest.fixture
def replicas(
    redis_server: RedisServer, origins: dict[str, str], tmp_path: Path
) -> Iterator[list[str]]:
    config = {
        "upstream": {"base_url": "http://127.0.0.1:9"},
        "vertex": {
            "project": PROJECT,
            "origins": origins,
        },
        "redis": {"url": redis_server.url, **QUICK_REDIS},
        "model_defaults": {
            **QUICK_ATTEMPTS,
            "breaker": {**BREAKER, "open_seconds": 1.0, "open_max_seconds": 2.0},
        },
        "routes": {PRO: [PRO_US, PRO_EU, FLASH_US]},
        "admin": {"allow_unauthenticated_loopback": True},
    }
    with contextlib.ExitStack() as stack:
        yield serve_replicas(stack, config, tmp_path / "vertex.yaml", 3)


def clients(replicas: list[str]) -> list[Client]:
    return [
        Client(
            vertexai=True,
            project=PROJECT,
            location=US,
            credentials=Credentials(token="client-token"),
            http_options=types.HttpOptions(base_url=url),
        )
        for url in replicas
    ]


def spread(sdks: list[Client], count: int) -> set[tuple[str, str]]:
    """(model that answered, target header) of ``count`` calls over the replicas."""
    served: set[tuple[str, str]] = set()
    for i, client in zip(range(count), itertools.cycle(sdks)):
        response = client.models.generate_content(model=PRO, contents=f"request {i}")
        headers: Any = response.sdk_http_response.headers  # type: ignore[union-attr]
        served.add((response.model_version or "", headers["x-gemini-breaker-model"]))
    return served


def active(target: str) -> Any:
    return lambda s: s["routes"][PRO]["active"] == target


def test_regional_outage_then_model_outage_then_recovery_on_three_replicas(
    replicas: list[str], regions: dict[str, SimulatorControl], figures: dict[str, str]
) -> None:
    sdks = clients(replicas)
    assert spread(sdks, 6) == {(PRO, PRO_US)}

    regions[US].set_faults(PRO, [{"kind": "error", "status": 503}])
    started = time.monotonic()
    # Every request still succeeds, on the same model in the next region: no quality drop.
    assert spread(sdks, 6) == {(PRO, PRO_EU)}
    states = wait_all(replicas, active(PRO_EU))
    figures["vertex regional failover, 3 replicas (outage to agreed target)"] = (
        f"{(time.monotonic() - started) * 1000:.0f} ms"
    )
    assert {s["breakers"][PRO_US]["state"] for s in states} == {"open"}
    assert len({s["breakers"][PRO_US]["epoch"] for s in states}) == 1

    regions[EU].set_faults(PRO, [{"kind": "error", "status": 500}])
    assert (FLASH, FLASH_US) in spread(sdks, 6)
    wait_all(replicas, active(FLASH_US))
    assert spread(sdks, 3) == {(FLASH, FLASH_US)}

    # Recovery: half-open probes bring the first region of the model back on every replica.
    for sim in regions.values():
        sim.clear_faults()
    deadline = time.monotonic() + 30
    while not all(s["routes"][PRO]["active"] == PRO_US for s in map(state, replicas)):
        assert time.monotonic() < deadline, "the first region never came back"
        spread(sdks, 3)
    closed = wait_all(replicas, lambda s: s["breakers"][PRO_US]["state"] == "closed")
    # ... through half-open probes, not a plain close: the first region's breaker went
    # open -> half_open -> closed, each its own epoch, as the replicas saw it. (A replica that
    # learns a later epoch by resync may miss a step: the steps are asked of the cluster.)
    steps: set[tuple[str, str]] = set()
    for replica in closed:
        changes = [
            (t["epoch"], t["from"], t["to"])
            for t in reversed(replica["transitions"])  # the document lists the newest first
            if t["model"] == PRO_US
        ]
        assert [epoch for epoch, _, _ in changes] == sorted(epoch for epoch, _, _ in changes)
        assert changes[-1][2] == "closed", changes
        steps.update((before, after) for _, before, after in changes)
    assert {("closed", "open"), ("open", "half_open"), ("half_open", "closed")} <= steps, steps
    regions[US].clear_attempts()
    assert spread(sdks, 6) == {(PRO, PRO_US)}
    assert [a["model"] for a in calls(regions[US])] == [PRO] * 6
