"""Live API relay figures: memory per idle session and per-frame overhead.

Runs the simulator and the proxy (plain ws, embedded store) in this process's threads, opens N
idle sessions through the proxy and reports the growth of the process's resident memory per
session (client, proxy and simulator sides all live here, so the figure is an upper bound for
the proxy), then times round trips of small frames through the proxy and directly to the
simulator; the difference is the relay's per-frame overhead.

    .venv/bin/python bench/live_sessions.py --sessions 1000 --frames 2000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from websockets.asyncio.client import ClientConnection, connect

from proxy.app import create_app
from proxy.config_load import build_settings
from proxy.simulator import create_simulator_app
from tests.support import serve

PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
SETUP = json.dumps({"setup": {"model": "models/gemini-2.0-flash"}})


def rss_mib() -> float:
    """Current resident set size (Linux /proc), in MiB."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


async def open_session(stack: contextlib.AsyncExitStack, url: str) -> ClientConnection:
    socket = await stack.enter_async_context(
        connect(url, additional_headers={"x-goog-api-key": "k"}, compression=None)
    )
    await socket.send(SETUP)
    await socket.recv()
    return socket


async def round_trips(socket: ClientConnection, frames: int) -> list[float]:
    """Times of whole small turns (one client frame, six answer frames)."""
    message = json.dumps({"clientContent": {"turns": [{"parts": [{"text": "x"}]}]}})
    times = []
    for _ in range(frames):
        started = time.perf_counter()
        await socket.send(message)
        while b"turnComplete" not in await socket.recv(decode=False):
            pass
        times.append(time.perf_counter() - started)
    return times


async def run(base: str, direct: str, sessions: int, frames: int) -> None:
    async with contextlib.AsyncExitStack() as stack:
        before = rss_mib()
        for start in range(0, sessions, 100):
            await asyncio.gather(
                *(open_session(stack, base + PATH) for _ in range(min(100, sessions - start)))
            )
        after = rss_mib()
        print(f"idle sessions: {sessions}; RSS {before:.1f} -> {after:.1f} MiB")
        per_session = (after - before) * 1024 / sessions
        print(f"memory per session (client+proxy+simulator): {per_session:.1f} KiB")
    async with contextlib.AsyncExitStack() as stack:
        via_proxy = await round_trips(await open_session(stack, base + PATH), frames)
        straight = await round_trips(await open_session(stack, direct + PATH), frames)
    # A turn is 6 upstream frames and 1 client frame through the relay.
    p50_proxy, p50_direct = statistics.median(via_proxy), statistics.median(straight)
    print(
        f"turn round trip p50: via proxy {p50_proxy * 1e3:.3f} ms, direct {p50_direct * 1e3:.3f} ms"
    )
    print(f"relay overhead per frame (p50 / 7 frames): {(p50_proxy - p50_direct) / 7 * 1e6:.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=2000)
    args = parser.parse_args()
    with serve(create_simulator_app()) as simulator:
        settings = build_settings({"upstream": {"base_url": simulator}, "routes": {}})
        with serve(create_app(settings)) as proxy:
            asyncio.run(
                run(
                    proxy.replace("http://", "ws://"),
                    simulator.replace("http://", "ws://"),
                    args.sessions,
                    args.frames,
                )
            )


if __name__ == "__main__":
    main()
