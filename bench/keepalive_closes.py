"""Requests lost to keep-alive connections the upstream closes: 10,000 generate requests
through the proxy to an upstream that closes every Nth connection right after its answer.

The upstream is bench/fast_upstream.py with ``--close-every N`` (no ``connection: close``
announces the close, as when Google's front ends recycle connections). The proxy runs in this
process (uvicorn on uvloop, in a thread) so its count of requests sent once more on a new
connection can be read; the client is bench/loadgen.py's raw keep-alive connections,
``--concurrency`` requests in flight.

Two passes: the upstream closes right after the answer (the proxy usually sees the close
before it reuses the connection), then as the next request arrives on it (the close crossed
that request: every one must be resent). Prints the requests lost (anything but a 200; must
be 0), the connections the upstream closed, and the requests the proxy resent on a new
connection. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from pathlib import Path

import harness
import loadgen
import uvicorn

from proxy.app import ProxyApp, create_app
from proxy.config_load import build_settings


def serve_in_thread(app: ProxyApp, port: int) -> uvicorn.Server:
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="proxy", daemon=True)
    thread.start()
    while not server.started:  # start-up: nothing to wait on but the flag
        if not thread.is_alive():
            raise RuntimeError("the proxy did not start")
        thread.join(0.01)
    return server


async def load(url: str, requests: int, concurrency: int) -> tuple[int, int]:
    """Send ``requests`` over ``concurrency`` connections; (answered 200, lost)."""
    payload = loadgen.request_bytes(url, harness.UNARY, harness.BODY, harness.HEADERS)
    left = requests
    ok = lost = 0

    async def worker() -> None:
        nonlocal left, ok, lost
        conn = await loadgen.connect(url)
        while left > 0:
            left -= 1
            if conn.transport is None:
                conn = await loadgen.connect(url)
            try:
                result = await conn.send(payload, loadgen.Result(time.perf_counter()))
            except ConnectionError:
                lost += 1
                continue
            if result.status == 200:
                ok += 1
            else:
                lost += 1
        if conn.transport is not None:
            conn.transport.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok, lost


def run(close_every: int, racing: bool, requests: int, concurrency: int) -> list[object]:
    """One pass; its row of the table."""
    flags = ["--close-every", str(close_every), *(["--racing"] if racing else [])]
    with (
        tempfile.TemporaryDirectory() as tmp,
        harness.fast_upstream(Path(tmp), *flags) as upstream,
    ):
        settings = build_settings(
            {
                "upstream": {"base_url": upstream, "trust_env": False},
                "server": {"log_level": "warning"},
                "routes": {},
            }
        )
        app = create_app(settings)
        port = harness.free_port()
        server = serve_in_thread(app, port)
        try:
            started = time.perf_counter()
            ok, lost = asyncio.run(load(f"http://127.0.0.1:{port}", requests, concurrency))
            elapsed = time.perf_counter() - started
            upstream_client = app.forwarder.upstream
            resent = upstream_client.stale_retries if upstream_client else "?"
        finally:
            server.should_exit = True
    how = "as the next request arrives" if racing else "right after the answer"
    return [how, requests, ok, lost, requests // close_every, resent, f"{elapsed:.1f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--close-every", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    rows = [
        run(args.close_every, racing, args.requests, args.concurrency) for racing in (False, True)
    ]
    harness.table(
        ["upstream closes", "requests", "answered 200", "lost", "closes", "resent", "seconds"],
        rows,
    )


if __name__ == "__main__":
    main()
