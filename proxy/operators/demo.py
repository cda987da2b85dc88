"""``gemini-breaker demo``: the simulator, the proxy and a traffic generator, walked through an
outage, a 429 storm and a recovery, with live numbers, while the status page shows it.

The simulator and the proxy run as subprocesses (``python -m proxy simulate`` / ``serve``), as
they would in real use; the traffic generator is a few threads in this process. Everything is
stopped at the end, on an error, or on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx

from ..errors import OperatorError
from ..simulator.client import SimulatorControl

PRO, FLASH, LITE = "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"
CHAIN = [PRO, FLASH, LITE]
BODY = {"contents": [{"parts": [{"text": "Tell me about circuit breakers."}]}]}
DEMO_KEY = "demo-key"  # the simulator accepts any key; this one is fake on purpose


@dataclass(frozen=True, slots=True)
class Timing:
    healthy: float
    outage: float
    storm: float
    recovery: float
    """The most the recovery phase waits for the primary to serve again."""
    tick: float
    """Seconds between two progress lines."""


NORMAL = Timing(healthy=10, outage=20, storm=20, recovery=30, tick=2)
QUICK = Timing(healthy=2, outage=3, storm=3, recovery=8, tick=1)


def add_parser(commands: Any) -> None:
    """The ``demo`` subcommand on the CLI's subparsers."""
    demo = commands.add_parser(
        "demo", help="run the simulator, the proxy and traffic through an outage and a 429 storm"
    )
    demo.add_argument("--quick", action="store_true", help="a short run (about 15 s)")
    demo.add_argument(
        "--port", type=int, default=8080, help="proxy port (default 8080; 0 or busy: any free)"
    )
    demo.add_argument(
        "--simulator-port",
        type=int,
        default=8090,
        help="simulator port (default 8090; 0 or busy: any free)",
    )
    demo.add_argument(
        "--rate", type=float, default=20.0, help="requests per second sent (default 20)"
    )


def run(args: argparse.Namespace) -> int:
    timing = QUICK if args.quick else NORMAL
    out = Narrator(sys.stdout)
    with (
        tempfile.TemporaryDirectory(prefix="gemini-breaker-demo-") as workdir,
        ExitStack() as stack,
    ):
        try:
            sim_url = stack.enter_context(
                _process(
                    [
                        "simulate",
                        "--port",
                        str(_port(args.simulator_port)),
                        "--log-level",
                        "warning",
                    ],
                    Path(workdir) / "simulator.log",
                    "/_sim/healthz",
                )
            )
            config = Path(workdir) / "proxy.yaml"
            config.write_text(json.dumps(_proxy_config(sim_url)))  # JSON is YAML
            proxy_url = stack.enter_context(
                _process(
                    ["serve", "--config", str(config), "--port", str(_port(args.port))],
                    Path(workdir) / "proxy.log",
                    "/readyz",
                )
            )
            simulator = stack.enter_context(SimulatorControl(sim_url))
            demo = Demo(proxy_url, simulator, timing, out)
            stack.callback(demo.close)
            traffic = stack.enter_context(Traffic(proxy_url, PRO, args.rate))
            return demo.walk_through(traffic, sim_url, args.rate)
        except KeyboardInterrupt:
            out.say("\ninterrupted: stopping the traffic, the proxy and the simulator")
            return 130
        except DemoError as exc:
            out.say(f"gemini-breaker demo: {exc}")
            return 1


class DemoError(OperatorError, RuntimeError):
    pass


def _proxy_config(upstream: str) -> dict[str, Any]:
    return {
        "server": {"log_level": "warning"},
        "upstream": {"base_url": upstream},
        # The status page and /admin/state without a token, from this machine only; chart
        # points of 2 s, as the demo lasts about a minute and a half.
        "admin": {"allow_unauthenticated_loopback": True, "series_resolution": 2},
        "routes": {PRO: CHAIN},
        "redis": {"flush_interval": 0.05},
        "quota": {"max_retry_wait": 0},  # a 429 goes straight back: the storm shows at once
        "model_defaults": {
            "max_attempts": 1,
            "breaker": {
                "minimum_calls": 5,
                "burst_failures": 3,
                "open_seconds": 1,
                "open_max_seconds": 4,
                "half_open_probes": 2,
            },
        },
    }


# -- the walk-through ---------------------------------------------------------------------------


class Narrator:
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def say(self, text: str = "") -> None:
        print(text, file=self._stream, flush=True)


class Demo:
    def __init__(
        self, proxy: str, simulator: SimulatorControl, timing: Timing, out: Narrator
    ) -> None:
        self.proxy = proxy
        self.simulator = simulator
        self.timing = timing
        self.out = out
        self._http = httpx.Client(timeout=5)

    def close(self) -> None:
        self._http.close()

    def walk_through(self, traffic: Traffic, sim_url: str, rate: float) -> int:
        say = self.out.say
        say(
            f"gemini-breaker demo: the proxy on {self.proxy}, "
            f"in front of the simulator on {sim_url}"
        )
        say(f"  status page   {self.proxy}/admin/status")
        say(f"  state (JSON)  {self.proxy}/admin/state")
        say(f"  metrics       {self.proxy}/metrics")
        say(f"  route {PRO}: {' -> '.join(CHAIN)}; traffic: {rate:g} requests/s")
        t = self.timing

        say(f"\n[1/4] healthy traffic ({t.healthy:g} s): the primary serves everything")
        self.phase(traffic, t.healthy)

        say(f"\n[2/4] outage ({t.outage:g} s): the simulator answers 503 for {PRO}")
        self.simulator.set_faults(PRO, [{"kind": "error", "status": 503}])
        outage = self.phase(traffic, t.outage)
        failed_over = sum(n for k, n in outage.items() if k.startswith("served ") and PRO not in k)
        state = self.state()
        say(
            f"  failover: {failed_over} requests for {PRO} were served by a fallback; "
            f"{PRO}'s breaker is {self.breaker(state, PRO)} (requests skip it without an "
            "upstream call)"
        )

        say(
            f"\n[3/4] 429 storm ({t.storm:g} s): {FLASH}, now serving, gets a quota of "
            f"{max(1, int(rate / 4))} requests/s"
        )
        self.simulator.set_quota(FLASH, requests_per_second=max(1, int(rate / 4)))
        storm = self.phase(traffic, t.storm)
        shed = {k.removeprefix("shed "): n for k, n in storm.items() if k.startswith("shed ")}
        say(
            f"  shedding: the proxy answered {sum(shed.values())} requests with 429 itself "
            f"({_counts(shed)}), with no upstream call; a 429 never fails over, so "
            f"{LITE} was not stampeded"
        )

        say(f"\n[4/4] recovery (up to {t.recovery:g} s): faults and quotas cleared")
        self.simulator.clear_faults()
        self.simulator.clear_quotas()
        started = time.monotonic()
        self.phase(traffic, t.recovery, until=self.primary_serves)
        took = time.monotonic() - started
        state = self.state()
        if self.primary_serves():
            say(
                f"  recovered in {took:.1f} s: {PRO}'s breaker went half-open, its probes "
                f"succeeded, it is {self.breaker(state, PRO)} and active again"
            )
        else:
            say(f"  {PRO} is not back yet after {took:.1f} s (breaker {self.breaker(state, PRO)})")

        metrics = self.metrics()
        say(
            "\nsummary: "
            f"requests={sum(traffic.total.values())} "
            f"failovers={int(metrics.get('gemini_breaker_failover_events_total', 0))} "
            f"sheds={int(metrics.get('gemini_breaker_sheds_total', 0))} "
            f"recovered={'yes' if self.primary_serves() else 'no'}"
        )
        say(f"  served by model: {_counts(_served(traffic.total))}")
        if failed_over == 0 or not shed:
            say("the demo did not show a failover and shedding; see the logs above")
            return 1
        return 0

    def phase(
        self, traffic: Traffic, seconds: float, until: Callable[[], bool] | None = None
    ) -> Counter[str]:
        """Let traffic run for ``seconds`` (or until ``until()``), printing a line per tick;
        returns what the phase's requests got."""
        traffic.start_phase()
        started = time.monotonic()
        end = started + seconds
        while (now := time.monotonic()) < end:
            time.sleep(min(self.timing.tick, end - now))
            seen = traffic.phase_counts()
            state = self.state()
            breakers = ", ".join(
                f"{m.removeprefix('gemini-2.5-')} {self.breaker(state, m)}" for m in CHAIN
            )
            self.out.say(
                f"  t+{time.monotonic() - started:4.1f}s  {_counts(seen) or 'no answers yet'}"
                f"  | breakers: {breakers} | active: {self.active(state)}"
            )
            if until is not None and until():
                break
        return traffic.phase_counts()

    def state(self) -> dict[str, Any]:
        try:
            found: dict[str, Any] = self._http.get(self.proxy + "/admin/state").json()
        except (httpx.HTTPError, ValueError):
            return {}
        return found

    def breaker(self, state: dict[str, Any], model: str) -> str:
        return str(state.get("breakers", {}).get(model, {}).get("state", "?"))

    def active(self, state: dict[str, Any]) -> str:
        return str(state.get("routes", {}).get(PRO, {}).get("active") or "none")

    def primary_serves(self) -> bool:
        state = self.state()
        return self.breaker(state, PRO) == "closed" and self.active(state) == PRO

    def metrics(self) -> dict[str, float]:
        """Totals per sample name (labels summed) from the proxy's /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        totals: Counter[str] = Counter()
        try:
            text = self._http.get(self.proxy + "/metrics").text
        except httpx.HTTPError:
            return {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                totals[sample.name] += sample.value  # type: ignore[assignment]
        return dict(totals)


def _served(counts: Counter[str]) -> dict[str, int]:
    return {k.removeprefix("served "): n for k, n in counts.items() if k.startswith("served ")}


def _counts(counts: Any) -> str:
    return ", ".join(f"{key} {count}" for key, count in sorted(counts.items()))


# -- traffic -------------------------------------------------------------------------------------


class Traffic:
    """Threads sending ``generateContent`` for ``route`` at ``rate`` requests/s in total;
    each answer is counted as ``served MODEL``, ``shed REASON``, ``upstream 429`` or
    ``error STATUS``."""

    WORKERS = 4

    def __init__(self, proxy: str, route: str, rate: float) -> None:
        self._url = f"{proxy}/v1beta/models/{route}:generateContent"
        self._interval = self.WORKERS / max(rate, 0.1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.total: Counter[str] = Counter()
        self._phase: Counter[str] = Counter()

    def __enter__(self) -> Traffic:
        for n in range(self.WORKERS):
            thread = threading.Thread(target=self._loop, args=(n,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def start_phase(self) -> None:
        with self._lock:
            self._phase = Counter()

    def phase_counts(self) -> Counter[str]:
        with self._lock:
            return Counter(self._phase)

    def _loop(self, n: int) -> None:
        with httpx.Client(timeout=10, headers={"x-goog-api-key": DEMO_KEY}) as client:
            self._stop.wait(self._interval * n / self.WORKERS)  # spread the workers out
            while not self._stop.is_set():
                started = time.monotonic()
                outcome = self._one(client)
                with self._lock:
                    self.total[outcome] += 1
                    self._phase[outcome] += 1
                self._stop.wait(max(0.0, self._interval - (time.monotonic() - started)))

    def _one(self, client: httpx.Client) -> str:
        try:
            response = client.post(self._url, json=BODY)
        except httpx.HTTPError as exc:
            return f"error {type(exc).__name__}"
        if response.status_code == 200:
            return f"served {response.headers.get('x-gemini-breaker-model', '?')}"
        shed = response.headers.get("x-gemini-breaker-shed")
        if shed:
            return f"shed {shed}"
        if response.status_code == 429:
            return "upstream 429"  # the upstream's own 429, passed back untouched
        return f"error {response.status_code}"


# -- processes ------------------------------------------------------------------------------------


def _port(wanted: int) -> int:
    """``wanted`` if it is free, else any free port (0 means any)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", wanted))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def _process(args: list[str], log: Path, ready_path: str) -> Iterator[str]:
    """Run ``python -m proxy ARGS`` (its output to ``log``) until it answers ``ready_path``;
    yield its base URL; stop it on the way out."""
    port = args[args.index("--port") + 1]
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEMINI_BREAKER_")}
    env.pop("GEMINI_API_KEY", None)
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", *args], stdout=sink, stderr=subprocess.STDOUT, env=env
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    raise DemoError(f"`{' '.join(args[:1])}` exited: {log.read_text()[-2000:]}")
                try:
                    if httpx.get(url + ready_path, timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise DemoError(f"`{args[0]}` did not start: {log.read_text()[-2000:]}")
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
