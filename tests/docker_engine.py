"""A private Docker engine for the tests that build and run the image (``-m docker``).

No image registry is reachable where the tests run, so the engine is Debian's ``dockerd``
started in a directory of its own (its data, socket, pid file and mounts all under it, no
iptables, no bridge: containers use the host's network), and the base image is made locally:
``mmdebstrap`` builds a Debian root file system (cached outside the repository, in
``CACHE``), ``docker import`` makes it an image, and a small layer adds this machine's CA
bundle and pip configuration, through which the package index is reached.

Starting the engine needs root and the ``docker.io`` and ``mmdebstrap`` packages (``make
test`` installs them when root). Without them the tests skip, and fail under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from .tool_cache import cache_dir, unavailable

ROOT = Path(__file__).resolve().parent.parent
SUITE = "bookworm"  # the Debian release of the public base, python:3.11-slim-bookworm
MIRROR = "http://deb.debian.org/debian"
# What the project's image needs from its base: the interpreter, venv (pip, for the builder
# stage) and the CA certificates its upstream calls verify against.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_IMAGE = "gemini-breaker-base:local"
# The engine's own client: Debian's docker.io CLI matches the daemon's API and builds with the
# daemon's built-in BuildKit (a newer CLI elsewhere on PATH may want the buildx plugin).
DOCKER = "/usr/bin/docker"


def missing_requirement() -> str | None:
    if os.geteuid() != 0:
        return "starting a Docker engine needs root (make test installs it when run as root)"
    for command in ("dockerd", "mmdebstrap"):
        if shutil.which(command) is None and not Path("/usr/sbin", command).exists():
            return f"{command} missing (apt-get install docker.io mmdebstrap)"
    if not Path(DOCKER).exists():
        return f"{DOCKER} missing (apt-get install docker.io)"
    return None


def sbin(command: str) -> str:
    return shutil.which(command) or str(Path("/usr/sbin", command))


@dataclass(frozen=True)
class Engine:
    """A running dockerd, and a client bound to it."""

    root: Path

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DOCKER_HOST": f"unix://{self.root / 'sock'}",
            "DOCKER_BUILDKIT": "1",
            "DOCKER_CONFIG": str(self.root / "client"),
        }

    def docker(
        self, *args: str | Path, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [DOCKER, *map(str, args)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(map(str, args))}:\n{result.stderr[-4000:]}")
        return result

    def build(
        self,
        tag: str,
        context: Path,
        dockerfile: Path,
        build_args: dict[str, str] | None = None,
        timeout: float = 900,
    ) -> float:
        """Build ``tag``; return the seconds it took. Builds use the host's network (the
        engine has no bridge)."""
        args: list[str | Path] = ["build", "--network", "host", "-t", tag, "-f", dockerfile]
        for name, value in (build_args or {}).items():
            args += ["--build-arg", f"{name}={value}"]
        started = time.monotonic()
        self.docker(*args, context, timeout=timeout)
        return time.monotonic() - started


def mounts_under(root: Path) -> list[str]:
    """Mount points below ``root``, deepest first."""
    points = []
    with open("/proc/self/mountinfo") as table:
        for line in table:
            point = line.split()[4].replace("\\040", " ")
            if Path(point).is_relative_to(root):
                points.append(point)
    return sorted(points, key=len, reverse=True)


@contextlib.contextmanager
def running_engine(timeout: float = 60) -> Iterator[Engine]:
    """Start dockerd in a fresh private directory; stop it, unmount what it mounted and remove
    the directory at the end."""
    root = Path(tempfile.mkdtemp(prefix="gemini-breaker-dockerd-"))
    engine = Engine(root)
    log = (root / "dockerd.log").open("w")
    daemon = subprocess.Popen(
        [
            sbin("dockerd"),
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--storage-driver=overlay2",
            f"--data-root={root / 'data'}",
            f"--exec-root={root / 'exec'}",
            f"--pidfile={root / 'pid'}",
            f"--host=unix://{root / 'sock'}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while engine.docker("version", check=False, timeout=30).returncode != 0:
            if daemon.poll() is not None or time.monotonic() > deadline:
                tail = (root / "dockerd.log").read_text()[-3000:]
                unavailable(f"dockerd did not start (exit {daemon.poll()}):\n{tail}")
            time.sleep(0.2)  # poll-until with a deadline: dockerd signals readiness no other way
        yield engine
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired, AssertionError):
            ids = engine.docker("ps", "-aq", check=False, timeout=30).stdout.split()
            if ids:
                engine.docker("rm", "-f", *ids, check=False, timeout=120)
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(30)
        log.close()
        for point in mounts_under(root):
            subprocess.run(["umount", "--lazy", point], capture_output=True, timeout=30)
        leftover = mounts_under(root)
        shutil.rmtree(root, ignore_errors=True)
        assert not leftover, f"still mounted: {leftover}"


def debian_root_fs(packages: Sequence[str] = BASE_PACKAGES) -> Path:
    """A minimal Debian root file system with ``packages``, as a tarball: made once by
    mmdebstrap (about 35 s) and kept in the cache, under a name that changes with its input."""
    key = hashlib.sha256(f"{SUITE} {MIRROR} {sorted(packages)}".encode()).hexdigest()[:12]
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"debian-{SUITE}-{key}.tar"
    with (cache / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; others then find it made
        if not tarball.exists():
            partial = tarball.with_suffix(".partial.tar")
            result = subprocess.run(
                [
                    "mmdebstrap",
                    "--variant=minbase",
                    f"--include={','.join(packages)}",
                    "--quiet",
                    SUITE,
                    str(partial),
                    MIRROR,
                ],
                capture_output=True,
                text=True,
                timeout=900,
            )
            if result.returncode != 0:
                partial.unlink(missing_ok=True)
                unavailable(f"mmdebstrap failed:\n{result.stderr[-3000:]}")
            partial.rename(tarball)
    return tarball


def host_ca_bundle() -> Path:
    paths = ssl.get_default_verify_paths()
    for candidate in (os.environ.get("SSL_CERT_FILE"), paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise AssertionError("no CA bundle found on this machine")


def pip_configuration() -> list[Path]:
    """This machine's system-wide pip configuration files (and what they name beside them)."""
    found = [Path("/etc/pip.conf")] if Path("/etc/pip.conf").is_file() else []
    xdg = Path("/etc/xdg/pip")
    if xdg.is_dir():
        found += sorted(p for p in xdg.iterdir() if p.is_file())
    return found


def make_base_image(engine: Engine, workdir: Path) -> str:
    """The local stand-in for python:3.11-slim-bookworm: the cached Debian root file system,
    with this machine's CA bundle and pip configuration, so pip in a build reaches the
    package index the way pip on this machine does."""
    engine.docker("import", debian_root_fs(), f"{BASE_IMAGE}-rootfs", timeout=300)
    context = workdir / "base-context"
    context.mkdir()
    lines = [f"FROM {BASE_IMAGE}-rootfs"]
    shutil.copyfile(host_ca_bundle(), context / "ca-certificates.crt")
    lines.append("COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt")
    copied = {"/etc/ssl/certs/ca-certificates.crt"}
    for index, path in enumerate(pip_configuration()):
        shutil.copyfile(path, context / f"pip-{index}")
        lines.append(f"COPY pip-{index} {path}")
        copied.add(str(path))
    # PIP_* settings from the environment, except those naming files the image lacks.
    for name, value in sorted(os.environ.items()):
        if name.startswith("PIP_") and (not value.startswith("/") or value in copied):
            lines.append(f"ENV {name}={value}")
    (context / "Dockerfile").write_text("\n".join(lines) + "\n")
    engine.build(BASE_IMAGE, context, context / "Dockerfile")
    return BASE_IMAGE


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    size_bytes: int
    cold_seconds: float
    cached_seconds: float


def build_project_image(engine: Engine, base: str, tag: str = "gemini-breaker:local") -> BuiltImage:
    """deploy/Dockerfile on ``base``, built twice: from nothing, then again from the cache."""
    dockerfile = ROOT / "deploy" / "Dockerfile"
    args = {"PYTHON_IMAGE": base}
    cold = engine.build(tag, ROOT, dockerfile, args)
    cached = engine.build(tag, ROOT, dockerfile, args)
    size = int(engine.docker("image", "inspect", "-f", "{{.Size}}", tag).stdout)
    return BuiltImage(tag, size, cold, cached)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Engine]:
    """The engine, started once for the session's docker tests."""
    reason = missing_requirement()
    if reason is not None:
        unavailable(reason)
    with running_engine() as engine:
        yield engine


@pytest.fixture(scope="session")
def base_image(docker_engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_base_image(docker_engine, tmp_path_factory.mktemp("docker"))


@pytest.fixture(scope="session")
def project_image(docker_engine: Engine, base_image: str) -> BuiltImage:
    return build_project_image(docker_engine, base_image)
