"""The Vertex path's cost next to the Developer API path's, on the same proxy and upstream.

One canned upstream (bench/fast_upstream.py) serves both: the proxy's Developer API origin and
its ``us-central1`` Vertex origin point at it. Measured one after the other: the upstream
directly, the proxy on ``/v1beta/models/...`` (API key) and the proxy on
``/v1beta1/projects/.../locations/us-central1/publishers/google/models/...`` (bearer token):
unary latency at a steady offered rate (open loop), p50 and p99, and what the proxy adds.
Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import harness
import loadgen
import uvloop
from harness import BODY, HEADERS, UNARY, pct

VERTEX_UNARY = (
    "/v1beta1/projects/bench/locations/us-central1/publishers/google/models/gemini-2.5-flash"
    ":generateContent"
)
VERTEX_HEADERS = {"authorization": "Bearer bench-token", "content-type": "application/json"}


def measure(
    url: str, path: str, headers: dict[str, str], rate: float, seconds: float
) -> list[float]:
    """[p50 ms, p99 ms, errors] of an open-loop unary run."""
    payload = loadgen.request_bytes(url, path, BODY, headers)

    async def run() -> list[float]:
        await loadgen.closed_loop(url, payload, 8, 1.0)  # warm up connections and code paths
        result = await loadgen.open_loop(url, payload, rate, seconds)
        ok = [r for r in result.results if r.status == 200]
        latencies = [(r.done - r.started) * 1000 for r in ok]
        errors = result.errors + len(result.results) - len(ok)
        return [pct(latencies, 50), pct(latencies, 99), float(errors)]

    return uvloop.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=200.0, help="unary requests per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="each open-loop run")
    args = parser.parse_args()
    harness.pin_self()
    with tempfile.TemporaryDirectory() as tmp, harness.fast_upstream(Path(tmp)) as upstream:
        config = {"vertex": {"origins": {"us-central1": upstream}}}
        rows = []
        direct = measure(upstream, UNARY, HEADERS, args.rate, args.seconds)
        rows.append(["upstream directly", *direct])
        with harness.proxy(Path(tmp), upstream, config=config) as (url, _):
            gemini = measure(url, UNARY, HEADERS, args.rate, args.seconds)
            vertex = measure(url, VERTEX_UNARY, VERTEX_HEADERS, args.rate, args.seconds)
        rows.append(["proxy, Developer API path", *gemini])
        rows.append(["proxy, Vertex path", *vertex])
        harness.table(["target", "p50 ms", "p99 ms", "errors"], rows)
        print(
            f"proxy adds at p50: Developer API {gemini[0] - direct[0]:.3f} ms, "
            f"Vertex {vertex[0] - direct[0]:.3f} ms "
            f"(Vertex - Developer API: {vertex[0] - gemini[0]:+.3f} ms)"
        )


if __name__ == "__main__":
    main()
