"""Processes for the benchmarks: the canned upstream, the proxy, nginx and a private Redis, each
pinned to a core, plus CPU and memory readings from /proc.

Everything listens on 127.0.0.1 on a free port (never 6379, the shared Redis), and every
process started here is stopped when its block ends.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SHARED_REDIS_PORT = 6379  # never ours
LOADGEN_CPU, SERVER_CPU = 0, 1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BODY = (
    b'{"contents": [{"parts": [{"text": "Say something about circuit breakers"}], "role": "user"}]}'
)
UNARY = "/v1beta/models/gemini-2.5-flash:generateContent"
STREAM = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
HEADERS = {"x-goog-api-key": "bench-key", "content-type": "application/json"}


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port != SHARED_REDIS_PORT:
            return port


def pin_self(cpu: int = LOADGEN_CPU) -> None:
    """Run this process (the load generator) on ``cpu`` only, when the machine has two."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > cpu:
        os.sched_setaffinity(0, {cpu})


def raise_open_files(wanted: int) -> int:
    """Raise this process's open-file limit (inherited by what it starts); the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return max(soft, target)


def pinned(command: list[str], cpu: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > cpu:
        return ["taskset", "-c", str(cpu), *command]
    return command


def wait_until_listening(port: int, proc: subprocess.Popen[bytes], name: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not start: {log.read_text(errors='replace')[-2000:]}")


@contextlib.contextmanager
def started(
    command: list[str],
    port: int,
    name: str,
    workdir: Path,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    **popen: Any,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``command``, wait until ``port`` accepts, yield the process, stop it."""
    log = workdir / f"{name}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            **popen,
        )
    try:
        wait_until_listening(port, proc, name, log)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def clean_env() -> dict[str, str]:
    """The environment without any gemini-breaker setting that could leak into the children."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GEMINI_BREAKER_") and k != "GEMINI_API_KEY"
    }
    env["GEMINI_BREAKER_CONFIG"] = ""
    return env


@contextlib.contextmanager
def fast_upstream(workdir: Path, *args: str) -> Iterator[str]:
    """The canned Gemini upstream (bench/fast_upstream.py, given ``args``) on the load
    generator's core."""
    port = free_port()
    command = pinned(
        [sys.executable, str(BENCH / "fast_upstream.py"), str(port), *args], LOADGEN_CPU
    )
    with started(command, port, "upstream", workdir):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def proxy(
    workdir: Path,
    upstream: str,
    name: str = "proxy",
    config: dict[str, Any] | None = None,
    source: Path = ROOT,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``gemini-breaker serve`` (one process) on the server core; ``source``: the checkout
    whose ``proxy`` package runs (another one measures an older version)."""
    port = free_port()
    settings: dict[str, Any] = dict(config or {})
    # The forwarding path of one model, as before the default chains existed (a chain makes
    # the proxy look its models' limits up, which the canned upstream answers with 404).
    settings.setdefault("routes", {})
    settings["upstream"] = {**settings.get("upstream", {}), "base_url": upstream}
    settings["server"] = {"port": port, "log_level": "warning", **settings.get("server", {})}
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(settings))
    command = pinned([sys.executable, "-m", "proxy", "serve", "--config", str(path)], SERVER_CPU)
    env = {**clean_env(), "PYTHONPATH": str(source)}
    with started(command, port, name, workdir, env=env, cwd=source) as proc:
        yield f"http://127.0.0.1:{port}", proc


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy_temp;
    fastcgi_temp_path {dir}/fastcgi_temp;
    uwsgi_temp_path {dir}/uwsgi_temp;
    scgi_temp_path {dir}/scgi_temp;
    upstream gemini {{
        server 127.0.0.1:{upstream_port};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=8192;
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://gemini;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx(workdir: Path, upstream: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Debian's nginx as a plain reverse proxy (one worker, upstream keep-alive, no
    buffering so streams pass as they come), unprivileged, from a config in ``workdir``."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        raise FileNotFoundError("nginx is not installed (make bench installs it as root)")
    port = free_port()
    home = workdir / "nginx"
    home.mkdir(exist_ok=True)
    conf = home / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            dir=home, port=port, upstream_port=upstream.rsplit(":", 1)[1], connections=8192
        )
    )
    popen: dict[str, Any] = {}
    if os.geteuid() == 0:  # never run it as root: as nobody, in a directory it may write to
        nobody = pwd.getpwnam("nobody")
        for path in (workdir, home):
            path.chmod(0o777)
        popen = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
    command = pinned([binary, "-e", str(home / "error.log"), "-c", str(conf), "-p", str(home)], 1)
    with started(command, port, "nginx", workdir, **popen) as proc:
        yield f"http://127.0.0.1:{port}", proc


@contextlib.contextmanager
def private_redis(workdir: Path) -> Iterator[str]:
    """A redis-server of our own on a free loopback port, persisting nothing; its URL."""
    port = free_port()
    command = pinned(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        LOADGEN_CPU,
    )
    with started(command, port, "redis", workdir):
        yield f"redis://127.0.0.1:{port}/0"


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (nginx's workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of ``pids`` so far, from /proc/<pid>/stat."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLOCK_TICKS


def resident_bytes(pids: list[int]) -> int:
    """VmRSS of ``pids`` added up."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def pct(values: list[float], q: float) -> float:
    """Percentile ``q`` (0-100), nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def table(headers: list[str], rows: list[list[object]]) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
