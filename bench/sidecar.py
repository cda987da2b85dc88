"""The proxy's cost side by side: direct, nginx, gemini-breaker, gemini-breaker with quotas.

One run, one canned upstream (bench/fast_upstream.py), four targets measured one after the
other with nothing else running: the upstream directly, Debian's nginx as a plain reverse
proxy (the floor for any proxy), gemini-breaker with its breakers closed (embedded store), and
gemini-breaker with the cluster quota limiter on (a model budget, so one Redis call per
request, on a private redis-server). The load generator, the upstream and Redis run on core 0,
the proxy under test (nginx or gemini-breaker, one process) on core 1.

For each target:
- unary latency at a steady offered rate (open loop, latency from the scheduled send time),
  p50 and p99, and what the proxy adds to the direct figures;
- stream time to first byte (open loop), p50, and what the proxy adds;
- closed-loop requests per second of the one proxy process (``wrk`` from Debian, else the
  raw asyncio client of bench/loadgen.py), and its CPU per request from /proc/<pid>/stat.

Prints tables, then each target next to its figure; asserts nothing. ``--source DIR``
runs the proxy from another checkout (to measure an older version the same way).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import harness
import loadgen
import redis
import uvloop
from harness import BODY, HEADERS, STREAM, UNARY, pct

# The OpenAI-compatible endpoint, measured the same way: the same prompt, path and model; the
# stream asked for in the body. Targets ending in ``:openai`` use it.
COMPATIBLE = "/v1beta/openai/chat/completions"
COMPATIBLE_BODY = (
    b'{"model":"gemini-2.5-flash","messages":'
    b'[{"role":"user","content":"Say something about circuit breakers"}]}'
)
COMPATIBLE_STREAM_BODY = COMPATIBLE_BODY[:-1] + b',"stream":true}'
COMPATIBLE_HEADERS = {"authorization": "Bearer bench-key", "content-type": "application/json"}


@dataclass
class Figures:
    name: str
    p50: float = float("nan")
    p99: float = float("nan")
    ttfb50: float = float("nan")
    errors: int = 0
    rps: float = float("nan")
    cpu_us: float = float("nan")
    client: str = ""


def measure_latency(url: str, args: argparse.Namespace, figures: Figures) -> None:
    if figures.name.endswith(":openai"):
        unary = loadgen.request_bytes(url, COMPATIBLE, COMPATIBLE_BODY, COMPATIBLE_HEADERS)
        stream = loadgen.request_bytes(url, COMPATIBLE, COMPATIBLE_STREAM_BODY, COMPATIBLE_HEADERS)
    else:
        unary = loadgen.request_bytes(url, UNARY, BODY, HEADERS)
        stream = loadgen.request_bytes(url, STREAM, BODY, HEADERS)

    async def run() -> None:
        await loadgen.closed_loop(url, unary, 8, 1.0)  # warm up connections and code paths
        await loadgen.closed_loop(url, stream, 8, 0.5)
        result = await loadgen.open_loop(url, unary, args.rate, args.seconds)
        ok = [r for r in result.results if r.status == 200]
        latencies = [(r.done - r.started) * 1000 for r in ok]
        figures.p50, figures.p99 = pct(latencies, 50), pct(latencies, 99)
        streams = await loadgen.open_loop(url, stream, args.stream_rate, args.stream_seconds)
        ok_streams = [r for r in streams.results if r.status == 200]
        figures.ttfb50 = pct([(r.first_byte - r.started) * 1000 for r in ok_streams], 50)
        figures.errors = (
            result.errors
            + streams.errors
            + len(result.results)
            - len(ok)
            + len(streams.results)
            - len(ok_streams)
        )

    uvloop.run(run())


WRK_SCRIPT = """wrk.method = "POST"
wrk.body = '{body}'
{headers}
"""


def measure_throughput(
    url: str, pids: Callable[[], list[int]], args: argparse.Namespace, figures: Figures, work: Path
) -> None:
    """Closed loop for ``args.closed_seconds``; CPU of ``pids`` per completed request."""
    wrk = shutil.which("wrk")
    before = harness.cpu_seconds(pids())
    if wrk:
        script = work / "post.lua"
        script.write_text(
            WRK_SCRIPT.format(
                body=BODY.decode(),
                headers="\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in HEADERS.items()),
            )
        )
        command = harness.pinned(
            [
                wrk,
                "-t1",
                f"-c{args.concurrency}",
                f"-d{args.closed_seconds:g}s",
                "-s",
                str(script),
                url + UNARY,
            ],
            harness.LOADGEN_CPU,
        )
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
        figures.rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
        figures.client = "wrk"
    else:
        payload = loadgen.request_bytes(url, UNARY, BODY, HEADERS)
        started = time.perf_counter()
        figures.rps = uvloop.run(
            loadgen.closed_loop(url, payload, args.concurrency, args.closed_seconds)
        )
        requests = int(figures.rps * (time.perf_counter() - started))
        figures.client = "asyncio"
    used = harness.cpu_seconds(pids()) - before
    if requests:
        figures.cpu_us = used / requests * 1e6


@contextlib.contextmanager
def target(
    name: str, work: Path, upstream: str, args: argparse.Namespace
) -> Iterator[tuple[str, Callable[[], list[int]], str | None]]:
    """Start one target; yield its URL, a function listing the processes to charge, and the
    URL of its Redis (None without one)."""
    if name in ("direct", "direct:openai"):
        yield upstream, list, None
    elif name == "nginx":
        with harness.nginx(work, upstream) as (url, proc):
            yield url, lambda: harness.process_tree(proc.pid), None
    elif name in ("gemini-breaker", "gemini-breaker:openai"):
        with harness.proxy(work, upstream, "proxy", source=args.source) as (url, proc):
            yield url, lambda: [proc.pid], None
    else:
        with harness.private_redis(work) as redis_url:
            config: dict[str, object] = {"redis": {"url": redis_url}}
            if name == "gemini-breaker+quota":
                # A budget far above the offered load: every request is checked, none refused.
                config["models"] = {"gemini-2.5-flash": {"requests_per_minute": 100_000_000}}
            with harness.proxy(work, upstream, name, config, source=args.source) as (url, proc):
                yield url, lambda: [proc.pid], redis_url


TARGETS = [
    "direct",
    "nginx",
    "gemini-breaker",
    "gemini-breaker+redis",
    "gemini-breaker+quota",
    "direct:openai",
    "gemini-breaker:openai",
]


@dataclass
class RedisCost:
    name: str
    rate: float
    requests: int
    commands: float
    sent: float
    idle_per_second: float
    seconds: float


def commandstats(redis_url: str) -> dict[str, int]:
    with redis.Redis.from_url(redis_url) as client:
        info = client.info("commandstats")
    return {key.removeprefix("cmdstat_"): value["calls"] for key, value in info.items()}


def measure_redis_cost(
    name: str, url: str, redis_url: str, rate: float, seconds: float
) -> RedisCost:
    """Redis commands per request at ``rate`` (open loop), from INFO commandstats deltas,
    with the idle background rate (reconcile, heartbeats) measured first."""

    def delta(before: dict[str, int]) -> tuple[float, float]:
        after = commandstats(redis_url)
        changed = {k: v - before.get(k, 0) for k, v in after.items() if k != "info"}
        return float(sum(changed.values())), float(
            sum(v for k, v in changed.items() if k in SENT_BY_CLIENTS)
        )

    before, started = commandstats(redis_url), time.monotonic()
    time.sleep(3.0)
    idle, _ = delta(before)
    idle_rate = idle / (time.monotonic() - started)
    payload = loadgen.request_bytes(url, UNARY, BODY, HEADERS)
    before, started = commandstats(redis_url), time.monotonic()
    result = uvloop.run(loadgen.open_loop(url, payload, rate, seconds))
    time.sleep(0.3)  # the last outcomes' flush
    total, sent = delta(before)
    elapsed = time.monotonic() - started
    ok = sum(1 for r in result.results if r.status == 200)
    return RedisCost(name, rate, ok, total, sent, idle_rate, elapsed)


# Commands a replica sends itself; everything else in INFO commandstats ran inside a script.
SENT_BY_CLIENTS = frozenset(
    {"evalsha", "eval", "script|load", "script|exists", "subscribe", "ping", "hello", "select"}
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="unary requests per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="unary open-loop run")
    parser.add_argument("--stream-rate", type=float, default=200.0)
    parser.add_argument("--stream-seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop connections")
    parser.add_argument("--closed-seconds", type=float, default=5.0)
    parser.add_argument("--source", type=Path, default=harness.ROOT, help="proxy checkout")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--redis-rate", type=float, default=500.0, help="req/s for Redis cost")
    parser.add_argument("--redis-seconds", type=float, default=10.0)
    args = parser.parse_args()
    harness.pin_self()
    harness.raise_open_files(16384)
    rows: list[Figures] = []
    costs: list[RedisCost] = []
    with tempfile.TemporaryDirectory(prefix="gb-bench-") as tmp:
        work = Path(tmp)
        with harness.fast_upstream(work) as upstream:
            for name in args.targets.split(","):
                print(f"measuring {name} ...", flush=True)
                figures = Figures(name)
                try:
                    with target(name, work, upstream, args) as (url, pids, redis_url):
                        measure_latency(url, args, figures)
                        if not name.startswith("direct") and not name.endswith(":openai"):
                            measure_throughput(url, pids, args, figures, work)
                        if redis_url is not None:
                            costs.append(
                                measure_redis_cost(
                                    name, url, redis_url, args.redis_rate, args.redis_seconds
                                )
                            )
                except (FileNotFoundError, RuntimeError) as exc:
                    print(f"{name}: not measured ({exc})")
                    continue
                rows.append(figures)
    report(rows, args)
    report_redis(costs)


def report(rows: list[Figures], args: argparse.Namespace) -> None:
    by_name = {r.name: r for r in rows}
    direct = by_name.get("direct")
    base = direct or Figures("none")

    def added(r: Figures, field: str) -> float:
        """Against the upstream's same endpoint (the compatible one for ``:openai``)."""
        if r.name.startswith("direct"):
            return float("nan")
        same = by_name.get("direct:openai" if r.name.endswith(":openai") else "direct")
        return float(getattr(r, field) - getattr(same or Figures("none"), field))

    print(
        f"\nUnary: {args.rate:g} req/s offered for {args.seconds:g} s (open loop, latency from "
        f"the scheduled send). Streams: {args.stream_rate:g}/s for {args.stream_seconds:g} s. "
        f"Closed loop: {args.concurrency} connections for {args.closed_seconds:g} s. "
        "Latencies in ms; CPU in us per request of the proxy process(es).\n"
    )
    harness.table(
        [
            "target",
            "p50",
            "p99",
            "added p50",
            "added p99",
            "TTFB p50",
            "added TTFB",
            "errors",
            "req/s",
            "CPU us/req",
            "client",
        ],
        [
            [
                r.name,
                r.p50,
                r.p99,
                added(r, "p50"),
                added(r, "p99"),
                r.ttfb50,
                added(r, "ttfb50"),
                r.errors,
                r.rps,
                r.cpu_us,
                r.client or "-",
            ]
            for r in rows
        ],
    )
    report_compatible(by_name)
    proxy, nginx_row = by_name.get("gemini-breaker"), by_name.get("nginx")
    if proxy is None:
        return
    ratio = proxy.cpu_us / nginx_row.cpu_us if nginx_row else float("nan")
    print("\nTargets (gemini-breaker, breakers closed):")
    checks = [
        ("added latency p50 at 200 req/s", proxy.p50 - base.p50, "<= 1 ms", 1.0),
        ("added latency p99 at 200 req/s", proxy.p99 - base.p99, "<= 3 ms", 3.0),
        ("stream TTFB overhead p50", proxy.ttfb50 - base.ttfb50, "<= 1 ms", 1.0),
    ]
    rows_out: list[list[object]] = [
        [what, value, goal, "met" if value <= limit else "NOT met"]
        for what, value, goal, limit in checks
    ]
    rows_out.append(
        [
            "closed-loop req/s, one process",
            proxy.rps,
            ">= 1500",
            "met" if proxy.rps >= 1500 else "NOT met",
        ]
    )
    rows_out.append(["CPU per request vs nginx (ratio)", ratio, "report", "-"])
    quota = by_name.get("gemini-breaker+quota")
    if quota is not None:
        rows_out.append(
            [
                "with quota limiter: added p50 / p99",
                f"{quota.p50 - base.p50:.2f} / {quota.p99 - base.p99:.2f}",
                "report",
                "-",
            ]
        )
    harness.table(["figure", "measured", "target", ""], rows_out)


def report_compatible(by_name: dict[str, Figures]) -> None:
    """The OpenAI-compatible endpoint's added latency, against the upstream's same endpoint."""
    direct, proxy = by_name.get("direct:openai"), by_name.get("gemini-breaker:openai")
    if direct is None or proxy is None:
        return
    print("\nOpenAI-compatible endpoint (gemini-breaker vs the upstream directly):")
    harness.table(
        ["figure", "measured", "native path"],
        [
            [
                "added latency p50",
                proxy.p50 - direct.p50,
                _added(by_name, "p50"),
            ],
            ["added latency p99", proxy.p99 - direct.p99, _added(by_name, "p99")],
            ["stream TTFB overhead p50", proxy.ttfb50 - direct.ttfb50, _added(by_name, "ttfb50")],
        ],
    )


def _added(by_name: dict[str, Figures], field: str) -> float:
    direct, proxy = by_name.get("direct"), by_name.get("gemini-breaker")
    if direct is None or proxy is None:
        return float("nan")
    return float(getattr(proxy, field) - getattr(direct, field))


def report_redis(costs: list[RedisCost]) -> None:
    if not costs:
        return
    print(
        "\nRedis cost (one replica, private redis-server; INFO commandstats deltas: 'sent' are"
        " the replica's own calls, the rest ran inside its Lua scripts; 'net' subtracts the"
        " idle background rate):\n"
    )
    harness.table(
        ["target", "offered req/s", "requests", "cmds/req", "sent/req", "net cmds/req"],
        [
            [
                c.name,
                c.rate,
                c.requests,
                c.commands / c.requests if c.requests else float("nan"),
                c.sent / c.requests if c.requests else float("nan"),
                (c.commands - c.idle_per_second * c.seconds) / c.requests
                if c.requests
                else float("nan"),
            ]
            for c in costs
        ],
    )
    closed = next((c for c in costs if c.name == "gemini-breaker+redis"), None)
    if closed is not None and closed.requests:
        per_request = closed.commands / closed.requests
        print(
            f"\nTarget: amortised Redis commands per request on closed breakers at "
            f"{closed.rate:g} req/s: {per_request:.3f} (target <= 0.1: "
            f"{'met' if per_request <= 0.1 else 'NOT met'}); synchronous round trips per "
            f"request: {closed.sent / closed.requests:.3f} calls in all, from the background "
            "flush and reconcile (target 0 on the request path)"
        )


if __name__ == "__main__":
    main()
