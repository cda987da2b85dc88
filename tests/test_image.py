"""The image, built from deploy/Dockerfile and run as users run it: read-only, as its own
unprivileged user, in front of the simulator, answering the real SDK.

The engine and the image come from tests/docker_engine.py (a private dockerd and a local
Debian base, since no registry is reachable here). Marked ``docker``: ``make test`` runs them
as root; elsewhere they skip, and fail under ``CI=true``.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator

import pytest
from google.genai import types

from proxy.simulator.client import SimulatorControl

from .conftest import calls
from .docker_engine import BuiltImage, Engine
from .support import free_port
from .test_sdk_e2e import sdk

pytestmark = pytest.mark.docker

FLASH = "gemini-2.5-flash"
CONTAINER = "gemini-breaker-image-test"
UID = 10001
# Nothing that builds or installs software may be left in the image.
BUILD_TOOLS = ("gcc", "cc", "c++", "g++", "make", "pip", "pip3")


@pytest.fixture(scope="module")
def container(
    docker_engine: Engine,
    project_image: BuiltImage,
    simulator_url: str,
    figures: dict[str, str],
) -> Iterator[str]:
    """The image serving on a free host port, read-only, with /tmp as its only writable path;
    yields the proxy's URL once Docker reports the HEALTHCHECK healthy."""
    figures["image size"] = f"{project_image.size_bytes / 1e6:.0f} MB"
    figures["image build, cold"] = f"{project_image.cold_seconds:.0f} s"
    figures["image build, cached"] = f"{project_image.cached_seconds:.1f} s"
    port = free_port()
    docker_engine.docker(
        "run",
        "--detach",
        "--name",
        CONTAINER,
        "--network",
        "host",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--env",
        "GEMINI_BREAKER_HOST=127.0.0.1",
        "--env",
        f"GEMINI_BREAKER_PORT={port}",
        "--env",
        f"GEMINI_BREAKER_UPSTREAM_URL={simulator_url}",
        project_image.tag,
    )
    try:
        started = time.monotonic()
        deadline = started + 180  # start period 15 s, then a check every 10 s
        while (status := health(docker_engine)) != "healthy":
            assert status in ("starting", "healthy"), (status, logs(docker_engine))
            assert time.monotonic() < deadline, logs(docker_engine)
            time.sleep(1)  # Docker offers no event for a health change on this API version
        figures["container start to healthy"] = f"{time.monotonic() - started:.0f} s"
        yield f"http://127.0.0.1:{port}"
    finally:
        docker_engine.docker("rm", "--force", CONTAINER, check=False)


def health(engine: Engine) -> str:
    state = json.loads(engine.docker("inspect", "--format", "{{json .State}}", CONTAINER).stdout)
    assert state["Running"], state
    return str(state["Health"]["Status"])


def logs(engine: Engine) -> str:
    result = engine.docker("logs", "--tail", "50", CONTAINER, check=False)
    return result.stdout + result.stderr


def test_the_container_runs_read_only_as_its_unprivileged_user(
    docker_engine: Engine, container: str
) -> None:
    host_config = json.loads(
        docker_engine.docker("inspect", "--format", "{{json .HostConfig}}", CONTAINER).stdout
    )
    assert host_config["ReadonlyRootfs"] is True
    identity = docker_engine.docker("exec", CONTAINER, "id", "-u").stdout.strip()
    assert identity == str(UID)
    refused = docker_engine.docker(
        "exec", CONTAINER, "python", "-c", "open('/opt/gemini-breaker/x', 'w')", check=False
    )
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr


def test_the_sdk_is_served_through_the_container(
    container: str, simulator: SimulatorControl
) -> None:
    client = sdk(container)
    unary = client.models.generate_content(model=FLASH, contents="hello from the image test")
    assert unary.text
    assert unary.sdk_http_response is not None and unary.sdk_http_response.headers is not None
    assert unary.sdk_http_response.headers["x-gemini-breaker-model"] == FLASH
    chunks = list(client.models.generate_content_stream(model=FLASH, contents="stream, please"))
    assert len(chunks) > 1 and "".join(c.text or "" for c in chunks)
    data = b"uploaded through the container\n" * 50
    uploaded = client.files.upload(
        file=io.BytesIO(data), config=types.UploadFileConfig(mime_type="text/plain")
    )
    assert uploaded.size_bytes == len(data) and uploaded.name is not None
    assert client.files.get(name=uploaded.name).name == uploaded.name
    client.files.delete(name=uploaded.name)
    assert len(calls(simulator, FLASH)) == 2  # the unary call and the stream reached upstream
    uploads = [a for a in simulator.attempts(include_body=True) if "upload_id=" in a["query"]]
    assert [simulator.body_of(a) for a in uploads] == [data]


def test_the_image_holds_no_compiler_and_no_pip(
    docker_engine: Engine, project_image: BuiltImage
) -> None:
    probe = (
        "import importlib.util, json, shutil, sys; "
        f"tools = {list(BUILD_TOOLS)!r}; "
        "print(json.dumps({'found': [t for t in tools if shutil.which(t)], "
        "'pip': importlib.util.find_spec('pip') is not None, 'prefix': sys.prefix}))"
    )
    result = docker_engine.docker(
        "run", "--rm", "--network", "none", "--entrypoint", "python", project_image.tag, "-c", probe
    )
    answer = json.loads(result.stdout)
    assert answer["found"] == []
    assert answer["pip"] is False and answer["prefix"] == "/opt/gemini-breaker"
    version = docker_engine.docker(
        "run", "--rm", "--network", "none", project_image.tag, "--version"
    )
    assert version.stdout.strip() == "gemini-breaker 0.1.0"
