"""Real servers on loopback for the tests (uvicorn in a background thread, on a free port; proxy
processes), and ``eventually``: polling, with a deadline, for a moment nothing signals."""

from __future__ import annotations

import contextlib
import io
import os
import selectors
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import uvicorn
import yaml
from starlette.types import ASGIApp

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serve(
    app: ASGIApp,
    port: int | None = None,
    tls: tuple[str, str] | None = None,
    client_ca: str | None = None,
) -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1 in a thread; yield its base URL. As the
    ``serve`` and ``simulate`` commands do, uvicorn adds no ``server`` or ``date`` header.
    ``tls``: (certificate file, key file) to serve HTTPS with; ``client_ca``: require a client
    certificate issued by this CA."""
    port = port or free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        server_header=False,
        date_header=False,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
        ssl_ca_certs=client_ca,
        ssl_cert_reqs=ssl.CERT_REQUIRED if client_ca else ssl.CERT_NONE,
    )
    server = uvicorn.Server(config)
    # uvicorn installs signal handlers only in the main thread, so this is safe in a thread.
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"server on port {port} failed to start")
            thread.join(0.01)
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


# Redis timings that let replicas of a test agree within a fraction of a second.
QUICK_REDIS = {
    "flush_interval": 0.02,
    "reconcile_interval": 0.2,
    "retry_seconds": 0.3,
    "operation_timeout": 0.2,
}
# Attempt limits that keep a failing model from holding a test for long.
QUICK_ATTEMPTS = {
    "max_attempts": 2,
    "backoff_initial": 0.01,
    "backoff_max": 0.02,
    "headers_timeout": 5,
    "first_event_timeout": 5,
    "unary_timeout": 5,
}


def serve_replicas(stack: ExitStack, config: dict[str, Any], path: Path, count: int) -> list[str]:
    """``count`` proxy processes with ``config`` (written to ``path``), each on a port of its
    own, stopped when ``stack`` closes; their URLs."""
    path.write_text(yaml.safe_dump(config))
    urls = []
    for _ in range(count):
        port = free_port()
        stack.enter_context(running(["serve", "--config", str(path), "--port", str(port)], {}))
        urls.append(f"http://127.0.0.1:{port}")
    return urls


@contextmanager
def running(args: list[str], env: dict[str, str]) -> Iterator[list[str]]:
    """Start ``python -m proxy ARGS``, wait for uvicorn's start-up line on stderr, and yield
    the stderr lines (kept being collected, so the pipe never fills and blocks the process)."""
    # Unbuffered bytes: a buffered reader could take several lines off the pipe at once and
    # leave select() waiting for data that was already read.
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", *args],
        env={**os.environ, "GEMINI_BREAKER_CONFIG": "", **env},
        stderr=subprocess.PIPE,
        bufsize=0,
    )
    assert proc.stderr is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stderr, selectors.EVENT_READ)
    seen = []
    deadline = time.monotonic() + 60
    try:
        while True:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                raise AssertionError(f"no start-up line within 60 s: {seen}")
            line = proc.stderr.readline().decode(errors="replace")
            if not line:
                raise AssertionError(f"exited with {proc.wait()}: {''.join(seen)}")
            seen.append(line)
            if "Uvicorn running on" in line:
                break
        # Nothing past the start-up line was read yet, so buffering may start here.
        rest = io.BufferedReader(proc.stderr)  # type: ignore[arg-type]
        drain = threading.Thread(
            target=lambda: seen.extend(raw.decode(errors="replace") for raw in rest), daemon=True
        )
        drain.start()
        yield seen
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise AssertionError(
                f"{args[0]} did not stop within 10 s of SIGTERM; its log ends:\n"
                + "".join(seen[-30:])
            ) from None
    drain.join(10)


def eventually(
    predicate: Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str | Callable[[], str] = "the condition",
    ignoring: tuple[type[Exception], ...] = (),
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns a true value, and return
    that value; after ``timeout`` seconds fail with an AssertionError naming ``what`` (a text,
    or a function giving one from the last attempt). Exceptions of the ``ignoring`` types count
    as "not yet" (a server still starting). Only for moments nothing signals: where there is an
    event, wait on the event."""
    deadline = time.monotonic() + timeout
    while True:
        value: T | None = None
        with contextlib.suppress(*ignoring):
            value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_not_within(what, timeout))
        time.sleep(interval)


async def eventually_async(
    predicate: Callable[[], T],
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 (the same call as ``eventually``)
    interval: float = 0.01,
    what: str | Callable[[], str] = "the condition",
) -> T:
    """``eventually`` for a test on the event loop: it sleeps without blocking the loop, so the
    tasks that make ``predicate`` true keep running."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() >= deadline:
            raise AssertionError(_not_within(what, timeout))
        await anyio.sleep(interval)
    return value


def _not_within(what: str | Callable[[], str], timeout: float) -> str:
    return f"not within {timeout:g} s: {what if isinstance(what, str) else what()}"
