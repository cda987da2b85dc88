"""Failover time for a silent upstream: with the default deadlines, and with a learned one.

The simulator and the proxy (default configuration plus the standard route pro -> flash ->
flash-lite) run as processes. gemini-2.5-pro goes silent for one streamed request, either
after its response headers (no first event) or before them (no answer at all), and the
figure is the time from sending the request to the first byte of the fallback's answer.

- defaults: nothing learned yet, so the wait is the family ceiling of the model
  (docs/decisions/deadlines.md); the arithmetic's worst case for each model is printed first.
- learned: after ``--warmup`` streams that started at once, the wait is the model's learned
  first-event deadline.

About 30 s with defaults (the pro ceiling is waited out once). Run: ``python
bench/silent_upstream.py`` (``make bench`` runs it too).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx
from harness import ROOT, clean_env, free_port, proxy, started, table

from proxy.config_load import build_settings
from proxy.pipeline.deadlines import worst_case_silent_failover
from proxy.simulator.client import SimulatorControl

PRO, FLASH, LITE = "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"
ROUTES = {PRO: [PRO, FLASH, LITE], FLASH: [FLASH, LITE]}
BODY = {"contents": [{"parts": [{"text": "Say something about circuit breakers"}]}]}
STREAM = f"/v1beta/models/{PRO}:streamGenerateContent?alt=sse"
SILENCES = {
    "no first event": {"kind": "stall", "after_chunks": 0},
    "no headers": {"kind": "hang"},
}


def first_byte(client: httpx.Client) -> tuple[float, str]:
    """Seconds from sending a stream to its first body byte, and the model that served it."""
    started_at = time.perf_counter()
    with client.stream("POST", STREAM, json=BODY) as response:
        for _ in response.iter_bytes():
            elapsed = time.perf_counter() - started_at
            break
        else:
            raise SystemExit(f"the stream ended without a byte ({response.status_code})")
        return elapsed, response.headers.get("x-gemini-breaker-model", "?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=50, help="streams before the learned run")
    args = parser.parse_args()

    defaults = build_settings({"routes": ROUTES})
    print("worst case with defaults (silent model -> next model tried):")
    table(
        ["first model", "seconds"],
        [[m, f"{worst_case_silent_failover(defaults, m):g}"] for m in (PRO, FLASH, LITE)],
    )

    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="silent-upstream-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        command = [sys.executable, "-m", "proxy", "simulate", "--port", str(port)]
        env = {**clean_env(), "PYTHONPATH": str(ROOT)}
        with started(command, port, "simulator", workdir, env=env):
            upstream = f"http://127.0.0.1:{port}"
            config = {"routes": ROUTES, "server": {"request_deadline": 120}}
            with (
                proxy(workdir, upstream, config=config) as (url, _),
                SimulatorControl(upstream) as simulator,
                httpx.Client(
                    base_url=url, headers={"x-goog-api-key": "bench-key"}, timeout=120
                ) as client,
            ):
                simulator.set_faults(PRO, [{**SILENCES["no first event"], "times": 1}])
                seconds, model = first_byte(client)
                rows.append(["defaults", "no first event", model, f"{seconds:.2f}"])
                for _ in range(args.warmup):
                    first_byte(client)
                for name, silence in SILENCES.items():
                    first_byte(client)  # a success: any widening after a miss ends
                    simulator.set_faults(PRO, [{**silence, "times": 1}])
                    seconds, model = first_byte(client)
                    rows.append([f"learned ({args.warmup} warm-up)", name, model, f"{seconds:.2f}"])
    print("\nsilent gemini-2.5-pro, one streamed request: time to the first byte")
    table(["deadline", "silence", "served by", "seconds"], rows)


if __name__ == "__main__":
    main()
