"""A private redis-server per test (or module), on a free loopback port.

Never touches a Redis already running on the machine: each server gets its own port and a
temporary directory, persists nothing, and is stopped by the context manager that started it.
``stop()``/``start()`` restart it on the same port and ``kill()`` simulates a crash, so tests can
take Redis away in the middle of traffic.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from .support import free_port

READY_SECONDS = 10.0
PortArgs = Callable[[int], list[str]] | None


def redis_binary() -> str | None:
    return shutil.which("redis-server")


def ping(port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis on 127.0.0.1:``port`` answers PING (raw RESP, no client library); a
    server whose default user is off answers NOAUTH, which shows it is up as well."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """One redis-server process; restartable on the same port."""

    def __init__(
        self,
        binary: str,
        port: int,
        directory: Path,
        args: Sequence[str] = (),
        config: Path | None = None,
    ) -> None:
        self.binary = binary
        self.config = config
        """A config file (first on the command line; a sentinel needs one it can rewrite)."""
        self.port = port
        self.directory = directory
        self.args = list(args)
        """Further command-line options (cluster mode, TLS, ACL users...)."""
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.directory / f"redis-{self.port}.log"

    def start(self) -> None:
        """Start (again) on this server's port and wait until it answers PING."""
        deadline = time.monotonic() + READY_SECONDS
        # A restart may race the kernel releasing the port of the previous process: retry.
        while not self.try_start(deadline):
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"redis-server did not start on port {self.port}: {self._log_tail()}"
                )
            time.sleep(0.05)

    def try_start(self, deadline: float) -> bool:
        """Spawn once; True when it answers PING, False when it exited (port taken)."""
        if self.running:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        self._spawn()
        return self._wait_ready(deadline)

    def stop(self) -> None:
        """Graceful stop (SIGTERM; ``--save ""`` means nothing is written), waiting for exit."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Crash it (SIGKILL), waiting for the process to be gone."""
        self._end(signal.SIGKILL)

    def pause(self) -> None:
        """Hang it (SIGSTOP): connections stay open but nothing answers."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def _spawn(self) -> None:
        args = [
            self.binary,
            *([str(self.config)] if self.config else []),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--logfile", str(self.log_path),
            *self.args,
        ]  # fmt: skip
        self._process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def _wait_ready(self, deadline: float) -> bool:
        """True once it answers PING; False if the process exited first."""
        assert self._process is not None
        while self._process.poll() is None:
            if ping(self.port):
                return True
            if time.monotonic() >= deadline:
                self.kill()
                raise RuntimeError(f"redis-server on port {self.port} never answered PING")
            time.sleep(0.01)
        self._process = None
        return False

    def _end(self, sig: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)  # a paused server would ignore SIGTERM
        process.send_signal(sig)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def start_redis(
    directory: Path | None = None,
    args: Sequence[str] = (),
    *,
    port_args: PortArgs = None,
    config: Path | None = None,
) -> Iterator[RedisServer]:
    """Run a private redis-server on a free port; stopped (whatever state it is in) on exit.

    ``args`` are further options; ``port_args`` makes options from the chosen port (a config
    file or a cluster bus port that must differ per server)."""
    binary = redis_binary()
    if binary is None:
        raise RuntimeError("redis-server is not on PATH")
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="redis-")))
        # Another process may take the free port between our probe and redis's bind: move on.
        for _ in range(5):
            port = free_port()
            extra = [*args, *(port_args(port) if port_args else [])]
            server = RedisServer(binary, port, directory, extra, config)
            if server.try_start(time.monotonic() + READY_SECONDS):
                break
        else:
            raise RuntimeError(f"redis-server did not start: {server._log_tail()}")
        try:
            yield server
        finally:
            server.kill()


def require_redis() -> None:
    """Skip the calling test when the redis-server binary is missing (fail instead in CI,
    where a skipped integration test would hide a broken machine set-up)."""
    if redis_binary() is None:
        reason = "redis-server binary not on PATH (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for one test; skips the test when the binary is missing."""
    require_redis()
    with start_redis(tmp_path) as server:
        yield server
