"""The Helm chart (helm/gemini-breaker), checked with the real ``helm`` binary and Kubernetes'
own schemas.

``helm`` (Helm 4, fetched once by tests/helm_tools.py) lints the chart with ``--strict`` for
every values file below and renders it, as ``helm install --dry-run=client`` (manifest and
NOTES, no cluster) and as ``helm template --kube-version`` for the oldest and newest Kubernetes
the chart supports, whose output kubernetes-validate checks strictly against that version's
OpenAPI schemas; the custom resources (ServiceMonitor, PrometheusRule) are checked against the
prometheus-operator's schemas (tests/validate_custom_resources.mjs). The tests also read the
rendered manifests, and hand each rendered configuration file to the proxy's own loader.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from proxy.app import create_app
from proxy.config import Settings
from proxy.config_load import load_settings
from proxy.operators.certs import make_certificates

from . import helm_tools
from .conftest import proxy_settings
from .support import serve
from .tool_cache import unavailable

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "gemini-breaker"
EXAMPLE = ROOT / "helm" / "examples" / "app-with-sidecar"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
CUSTOM_RESOURCE_VALIDATOR = Path(__file__).resolve().parent / "validate_custom_resources.mjs"
RELEASE = "demo"
FULLNAME = "demo-gemini-breaker"
API_KEY = "AIza-test-api-key-0123456789"
ADMIN_TOKEN = "admin-token-0123456789"

PROXY_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}

STANDALONE: dict[str, Any] = {
    "redis": {"url": "redis://redis-master:6379/0", "username": "breaker"},
    "secrets": {
        "apiKey": {"value": API_KEY},
        "clientTokens": {"existingSecret": "app-tokens", "key": "gemini-breaker"},
        "adminToken": {"existingSecret": "ops-tokens", "key": "gemini-breaker"},
        "redisPassword": {"existingSecret": "redis-auth", "key": "password"},
    },
    "config": {"model_defaults": {"headers_timeout": 45}, "quota": {"max_retry_wait": 5}},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True},
    "telemetry": {"otlpEndpoint": "http://otel-collector:4318"},
}
# Values that render; each is also checked by the proxy's configuration loader.
CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "standalone": STANDALONE,
    "standalone-new-routes": {**STANDALONE, "routes": {"fast": ["gemini-2.5-flash-lite"]}},
    "fixed-replicas": {
        "replicaCount": 3,
        "autoscaling": {"enabled": False},
        "podDisruptionBudget": {"maxUnavailable": 1},
    },
    "single-replica": {"replicaCount": 1, "autoscaling": {"enabled": False}},
    "vertex-workload-identity": {
        "vertex": {"project": "my-project", "location": "europe-west4"},
        "serviceAccount": {
            "create": True,
            "annotations": {
                "iam.gke.io/gcp-service-account": "proxy@my-project.iam.gserviceaccount.com"
            },
        },
        "routes": {
            "gemini-2.5-pro": [
                "gemini-2.5-pro@europe-west4",
                "gemini-2.5-pro@europe-west1",
                "gemini-2.5-flash@europe-west4",
            ]
        },
    },
    "sidecar-vertex": {
        "mode": "sidecar",
        "sidecar": {"exampleApp": {"enabled": True}},
        "vertex": {"project": "my-project", "location": "europe-west4"},
    },
    "open-relay": {"secrets": {"apiKey": {"value": API_KEY}}, "server": {"allowOpenRelay": True}},
    "sidecar": {"mode": "sidecar", "serviceMonitor": {"enabled": True}},
    "sidecar-example": {
        "mode": "sidecar",
        "sidecar": {"exampleApp": {"enabled": True}},
        "secrets": {"apiKey": {"existingSecret": "gemini", "key": "key"}},
    },
    "standalone-tls": {
        "server": {"tls": {"existingSecret": "gateway-tls"}},
        "serviceMonitor": {"enabled": True},
    },
    "sidecar-tls": {
        "mode": "sidecar",
        "sidecar": {"exampleApp": {"enabled": True}},
        "server": {"tls": {"existingSecret": "proxy-tls"}},
    },
    "sentinel": {
        "redis": {
            "sentinel": {
                "masterName": "mymaster",
                "addresses": ["sentinel-0:26379", "sentinel-1:26379", "sentinel-2:26379"],
            }
        },
        "secrets": {
            "redisPassword": {"value": "data-password"},
            "redisSentinelPassword": {"existingSecret": "sentinel-auth", "key": "password"},
        },
        "server": {"port": 9000, "workers": 2},
    },
    "cluster-tls": {
        "redis": {
            "cluster": {"nodes": ["redis-0:6379", "redis-1:6379", "redis-2:6379"]},
            "tls": {
                "enabled": True,
                "existingSecret": "redis-tls",
                "caKey": "ca.crt",
                "certKey": "tls.crt",
                "keyKey": "tls.key",
            },
        }
    },
}
# A cert-manager Secret's keys, for the application chart that includes the sidecar.
EXAMPLE_TLS = {
    "existingSecret": "app-proxy-tls",
    "certKey": "tls.crt",
    "keyKey": "tls.key",
    "caKey": "ca.crt",
}
# The cases whose configuration names files only a pod has (the mounted certificate).
NEEDS_MOUNTS = {"sidecar-tls", "standalone-tls"}
# Values the chart refuses: (values, what the error names).
INVALID: dict[str, tuple[dict[str, Any], str]] = {
    "unknown mode": ({"mode": "gateway"}, "/mode"),
    "url and sentinel": (
        {"redis": {"url": "redis://r:6379", "sentinel": {"masterName": "m", "addresses": ["s:1"]}}},
        "/redis/sentinel/masterName",
    ),
    "url and cluster": (
        {"redis": {"url": "redis://r:6379", "cluster": {"nodes": ["r:1"]}}},
        "/redis/cluster/nodes",
    ),
    "sentinel and cluster": (
        {
            "redis": {
                "sentinel": {"masterName": "m", "addresses": ["s:1"]},
                "cluster": {"nodes": ["r:1"]},
            }
        },
        "/redis/cluster/nodes",
    ),
    "sentinel without addresses": ({"redis": {"sentinel": {"masterName": "m"}}}, "/redis/sentinel"),
    "address without a port": ({"redis": {"cluster": {"nodes": ["redis-0"]}}}, "/redis/cluster"),
    "credentials in the url": ({"redis": {"url": "redis://:hunter2@r:6379/0"}}, "/redis/url"),
    "secret given twice": (
        {"secrets": {"apiKey": {"value": "k", "existingSecret": "s"}}},
        "/secrets/apiKey/value",
    ),
    "api key in the config file": (
        {"config": {"upstream": {"api_key": "k"}}},
        "/config/upstream/api_key",
    ),
    "admin token in the config file": (
        {"config": {"admin": {"token": "t"}}},
        "/config/admin/token",
    ),
    "redis in the config file": ({"config": {"redis": {"url": "redis://r:6379"}}}, "/config"),
    "port out of range": ({"server": {"port": 70000}}, "/server/port"),
    "misspelt key": ({"replicas": 3}, "replicas"),
    "tls file without its secret": ({"redis": {"tls": {"caKey": "ca.crt"}}}, "/redis/tls"),
    "redis password without redis": (
        {"secrets": {"redisPassword": {"value": "pw"}}},
        "no Redis is",
    ),
    "workers without redis": ({"server": {"workers": 2}}, "need a Redis"),
    "api key for any caller": (
        {"secrets": {"apiKey": {"value": "k"}}},
        "secrets.clientTokens: the proxy listens on 0.0.0.0",
    ),
    "client tokens without a key": (
        {"secrets": {"clientTokens": {"value": "client-token-0123456789"}}},
        "secrets.clientTokens: they stand for secrets.apiKey",
    ),
    # Sidecar mode makes no pods: a ServiceAccount of the chart's would be silently unused.
    "service account annotations in sidecar mode": (
        {
            "mode": "sidecar",
            "vertex": {"project": "my-project", "location": "europe-west4"},
            "serviceAccount": {
                "annotations": {
                    "iam.gke.io/gcp-service-account": "proxy@my-project.iam.gserviceaccount.com"
                }
            },
        },
        "serviceAccount: sidecar mode makes no pods",
    ),
    "service account created in sidecar mode": (
        {"mode": "sidecar", "serviceAccount": {"create": True}},
        "the sidecar runs as the application's pod service account",
    ),
    "service account named in sidecar mode": (
        {"mode": "sidecar", "serviceAccountName": "proxy"},
        "the sidecar runs as the application's pod service account",
    ),
    "client tokens in the config file": (
        {"config": {"server": {"client_tokens": ["client-token-0123456789"]}}},
        "/config/server/client_tokens",
    ),
}


# ---- running Helm ----


def tool(fetch: Callable[[], Path]) -> Path:
    """A tool from tests/helm_tools.py; skip where it cannot be had (fail in CI)."""
    try:
        return fetch()
    except helm_tools.ToolUnavailable as exc:
        unavailable(f"{exc}; the chart cannot be checked")
        raise


def version_key(version: str) -> tuple[int, ...]:
    return tuple(map(int, version.split(".")))


# The Kubernetes versions the chart is checked against: the oldest and newest with schemas.
KUBE_VERSIONS = (min(all_versions(), key=version_key), max(all_versions(), key=version_key))


@dataclass
class Rendered:
    docs: list[dict[str, Any]]
    notes: str

    def kinds(self) -> set[str]:
        return {doc["kind"] for doc in self.docs}

    def get(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [
            doc
            for doc in self.docs
            if doc["kind"] == kind and name in (None, doc["metadata"]["name"])
        ]
        assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in found])
        return found[0]

    def config_text(self) -> str:
        text: str = self.get("ConfigMap")["data"]["config.yaml"]
        return text


@dataclass
class HelmResults:
    binary: Path
    env: dict[str, str]
    workdir: Path
    example: Path  # the example application's chart, with gemini-breaker vendored
    rendered: dict[str, Rendered]
    errors: dict[str, str]

    def run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *map(str, args)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def values_file(self, values: dict[str, Any]) -> Path:
        """``values`` as a file (JSON is YAML), named by its content."""
        text = json.dumps(values, sort_keys=True)
        path = self.workdir / f"values-{hashlib.sha256(text.encode()).hexdigest()[:12]}.json"
        path.write_text(text)
        return path


def example_chart(tmp: Path) -> Path:
    """The example application chart with gemini-breaker vendored, as `helm dependency
    update` leaves it."""
    target = tmp / "app-with-sidecar"
    shutil.copytree(EXAMPLE, target)
    shutil.copytree(CHART, target / "charts" / "gemini-breaker")
    return target


def sources(example: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Each case's chart and values: the chart's cases, the refused ones, the example app."""
    found = {name: (CHART, values) for name, values in CASES.items()}
    found |= {f"invalid: {name}": (CHART, values) for name, (values, _) in INVALID.items()}
    found["example"] = (example, {})
    found["example-tls"] = (example, {"gemini-breaker": {"server": {"tls": EXAMPLE_TLS}}})
    return found


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> HelmResults:
    """Every case rendered by ``helm install --dry-run=client`` (manifest and NOTES; no
    cluster is contacted)."""
    binary = tool(helm_tools.helm)
    tmp = tmp_path_factory.mktemp("helm")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("HELM_", "KUBE"))},
        "HELM_CACHE_HOME": str(tmp / "cache"),
        "HELM_CONFIG_HOME": str(tmp / "config"),
        "HELM_DATA_HOME": str(tmp / "data"),
        "KUBECONFIG": str(tmp / "no-kubeconfig"),  # never a real cluster's
    }
    results = HelmResults(binary, env, tmp, example_chart(tmp), {}, {})
    for name, (chart, values) in sources(results.example).items():
        result = results.run(
            "install", RELEASE, chart, "--dry-run=client", "--namespace", "default",
            "--output", "json", "--values", results.values_file(values),
        )  # fmt: skip
        if result.returncode != 0:
            results.errors[name] = result.stderr
            continue
        release = json.loads(result.stdout)
        docs = [d for d in yaml.safe_load_all(release["manifest"]) if d]
        results.rendered[name] = Rendered(docs, release["info"].get("notes", ""))
    return results


def render(helm: HelmResults, case: str) -> Rendered:
    assert case in helm.rendered, helm.errors.get(case)
    return helm.rendered[case]


# ---- reading manifests ----


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def proxy_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod_spec(deployment)["containers"] if c["name"] == "gemini-breaker"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def settings_from(rendered: Rendered, deployment: dict[str, Any], tmp_path: Path) -> Settings:
    """What the proxy in that container would load: the mounted file plus its environment,
    with each secret reference standing for a value."""
    path = tmp_path / "config.yaml"
    path.write_text(rendered.config_text())
    container = proxy_container(deployment)
    env = {}
    for name, value in env_of(container).items():
        if isinstance(value, dict):
            ref = value["secretKeyRef"]
            value = f"{ref['name']}/{ref['key']}"
        env[name] = value
    assert env["GEMINI_BREAKER_CONFIG"] == "/etc/gemini-breaker/config.yaml"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    config_mount = mounts["/etc/gemini-breaker/config.yaml"]
    assert config_mount["readOnly"] and config_mount["subPath"] == "config.yaml"
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    assert (
        volumes[config_mount["name"]]["configMap"]["name"]
        == rendered.get("ConfigMap")["metadata"]["name"]
    )
    return load_settings(path, env=env)


def gateway(helm: HelmResults, case: str) -> tuple[Rendered, dict[str, Any]]:
    rendered = render(helm, case)
    return rendered, rendered.get("Deployment", FULLNAME)


# ---- the tests ----


def test_the_chart_keeps_a_copy_of_the_alert_rules() -> None:
    """Helm reads only files inside the chart: its copy must stay the deploy/ file."""
    assert (CHART / "files" / "alerts.yml").read_text() == ALERTS.read_text()


def test_the_image_is_the_one_the_dockerfile_builds() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["repository"] == "gemini-breaker" and values["image"]["tag"] == ""
    # The chart runs the image's own user.
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "USER 10001:10001" in dockerfile
    assert values["securityContext"]["runAsUser"] == values["podSecurityContext"]["runAsUser"]
    assert values["securityContext"]["runAsUser"] == 10001
    # The command (gemini-breaker) and the probes' python are both in the image's venv on PATH.
    assert "PATH=/opt/gemini-breaker/bin:" in dockerfile


LINTED = {"chart defaults": {}, **CASES}


@pytest.mark.parametrize("case", list(LINTED))
def test_helm_lint_strict_passes(helm: HelmResults, case: str) -> None:
    """``--strict`` turns every warning into a failure."""
    result = helm.run("lint", "--strict", CHART, "--values", helm.values_file(LINTED[case]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_helm_lint_strict_passes_for_the_example_application(helm: HelmResults) -> None:
    result = helm.run("lint", "--strict", helm.example, "--values", EXAMPLE / "values.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_standalone_mode_is_a_gateway(helm: HelmResults) -> None:
    rendered, deployment = gateway(helm, "defaults")
    assert rendered.kinds() == {
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = rendered.get("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    hpa = rendered.get("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count
    pdb = rendered.get("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    container = proxy_container(deployment)
    assert env_of(container)["GEMINI_BREAKER_HOST"] == "0.0.0.0"
    assert container["image"] == "gemini-breaker:0.1.0"
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def test_fixed_replicas_without_autoscaler(helm: HelmResults) -> None:
    rendered, deployment = gateway(helm, "fixed-replicas")
    assert "HorizontalPodAutoscaler" not in rendered.kinds()
    assert deployment["spec"]["replicas"] == 3
    assert rendered.get("PodDisruptionBudget")["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": deployment["spec"]["selector"]["matchLabels"]},
    }


def test_no_disruption_budget_for_a_single_replica(helm: HelmResults) -> None:
    """A budget of one available pod out of one would block every node drain."""
    rendered, deployment = gateway(helm, "single-replica")
    assert deployment["spec"]["replicas"] == 1
    assert "PodDisruptionBudget" not in rendered.kinds()


def test_sidecar_mode_renders_configuration_only(helm: HelmResults) -> None:
    rendered = render(helm, "sidecar")
    # No gateway, and no ServiceMonitor: sidecars listen on loopback, out of Prometheus' reach.
    assert rendered.kinds() == {"ConfigMap"}
    assert "sidecar" in rendered.notes and "serviceMonitor is ignored" in rendered.notes


def test_sidecar_example_app(helm: HelmResults) -> None:
    rendered = render(helm, "sidecar-example")
    assert rendered.kinds() == {"ConfigMap", "Deployment"}
    app = rendered.get("Deployment", f"{FULLNAME}-example-app")
    containers = pod_spec(app)["containers"]
    assert [c["name"] for c in containers] == ["app", "gemini-breaker"]
    assert env_of(containers[0])["GOOGLE_GEMINI_BASE_URL"] == "http://127.0.0.1:8080"
    proxy = proxy_container(app)
    assert env_of(proxy)["GEMINI_BREAKER_HOST"] == "127.0.0.1"
    assert env_of(proxy)["GEMINI_API_KEY"] == {"secretKeyRef": {"name": "gemini", "key": "key"}}
    # The kubelet probes the pod's IP, never its loopback: the probes run in the container.
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        command = proxy[probe]["exec"]["command"]
        assert command[0] == "python" and command[-1] == f"http://127.0.0.1:8080{path}"
        assert "httpGet" not in proxy[probe]


def test_the_sidecar_probe_command_asks_the_proxy(helm: HelmResults, proxy_url: str) -> None:
    """The in-container probe, run against a real proxy: it passes on /healthz and /readyz,
    and fails where nothing answers or the answer is not 2xx."""
    proxy = proxy_container(render(helm, "sidecar-example").get("Deployment"))
    command = proxy["readinessProbe"]["exec"]["command"]
    assert command[0] == "python"

    def probe(url: str) -> int:
        return subprocess.run([sys.executable, *command[1:-1], url], timeout=60).returncode

    assert probe(f"{proxy_url}/healthz") == 0
    assert probe(f"{proxy_url}/readyz") == 0
    refused = f"{proxy_url}/admin/no-such-action"
    assert httpx.get(refused).status_code >= 400
    assert probe(refused) != 0
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    assert probe(f"http://127.0.0.1:{port}/healthz") != 0


def tls_pod(deployment: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The app and proxy containers of a pod whose sidecar serves TLS, and its volumes."""
    app, proxy = pod_spec(deployment)["containers"]
    assert (app["name"], proxy["name"]) == ("app", "gemini-breaker")
    return app, proxy


def test_a_sidecar_with_a_certificate_serves_live_sessions(
    helm: HelmResults, tmp_path: Path
) -> None:
    """With server.tls the app gets an https:// base URL and trusts the CA (alone: never the
    proxy's key); the proxy mounts its pair and serves TLS with it; probes speak HTTPS."""
    rendered = render(helm, "sidecar-tls")
    deployment = rendered.get("Deployment", f"{FULLNAME}-example-app")
    app, proxy = tls_pod(deployment)
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    app_env = env_of(app)
    assert app_env["GOOGLE_GEMINI_BASE_URL"] == "https://127.0.0.1:8080"
    (ca_mount,) = app["volumeMounts"]
    assert ca_mount["readOnly"]
    assert app_env["SSL_CERT_FILE"] == f"{ca_mount['mountPath']}/ca.pem"
    ca_volume = volumes[ca_mount["name"]]["secret"]
    assert ca_volume["secretName"] == "proxy-tls"
    assert ca_volume["items"] == [{"key": "ca.pem", "path": "ca.pem"}]
    tls_dir = "/etc/gemini-breaker/tls"
    (pair_mount,) = [m for m in proxy["volumeMounts"] if m["mountPath"] == tls_dir]
    assert pair_mount["readOnly"] and pair_mount["name"] != ca_mount["name"]
    pair_volume = volumes[pair_mount["name"]]["secret"]
    assert pair_volume["secretName"] == "proxy-tls"
    assert {item["key"] for item in pair_volume["items"]} == {"proxy.pem", "proxy-key.pem"}
    assert pair_volume["defaultMode"] & 0o004  # UID 10001 reads it without an fsGroup
    config = yaml.safe_load(rendered.config_text())
    assert config["server"]["tls"] == {
        "cert_file": f"{tls_dir}/proxy.pem",
        "key_file": f"{tls_dir}/proxy-key.pem",
    }
    # What the proxy loads once the Secret holds `gemini-breaker certs` output at that path.
    made = make_certificates(tmp_path / "tls", ["127.0.0.1"], days=2)
    config_map = rendered.get("ConfigMap")
    mounted = rendered.config_text().replace(tls_dir, str(made["cert"].parent))
    here = [d for d in rendered.docs if d is not config_map]
    here.append({**config_map, "data": {"config.yaml": mounted}})
    settings = settings_from(Rendered(here, rendered.notes), deployment, tmp_path)
    assert settings.server.tls.cert_file == str(made["cert"])
    assert settings.server.tls.key_file == str(made["key"])
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        assert proxy[probe]["exec"]["command"][-1] == f"https://127.0.0.1:8080{path}"
    assert "https://127.0.0.1:8080" in rendered.notes and "appTrust" in rendered.notes


def test_the_tls_probe_command_asks_a_tls_proxy(
    helm: HelmResults, simulator_url: str, tmp_path: Path
) -> None:
    """The in-container probe of a TLS sidecar, run against a real proxy serving TLS with a
    `gemini-breaker certs` pair: it passes, and fails where nothing answers."""
    proxy = proxy_container(render(helm, "sidecar-tls").get("Deployment"))
    command = proxy["readinessProbe"]["exec"]["command"]

    def probe(url: str) -> int:
        return subprocess.run([sys.executable, *command[1:-1], url], timeout=60).returncode

    made = make_certificates(tmp_path, ["127.0.0.1"], days=2)
    pair = (str(made["cert"]), str(made["key"]))
    settings = proxy_settings(
        simulator_url, server={"tls": {"cert_file": pair[0], "key_file": pair[1]}}
    )
    with serve(create_app(settings), tls=pair) as url:
        assert url.startswith("https://")
        assert probe(f"{url}/readyz") == 0
        assert probe(f"{url.replace('https://', 'http://')}/readyz") != 0
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    assert probe(f"https://127.0.0.1:{port}/healthz") != 0


def test_a_gateway_with_a_certificate(helm: HelmResults) -> None:
    """Standalone with server.tls: the proxy mounts its pair, the kubelet probes over HTTPS,
    Prometheus scrapes over HTTPS trusting the Secret's CA, and NOTES give an https:// URL."""
    rendered, deployment = gateway(helm, "standalone-tls")
    proxy = proxy_container(deployment)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert proxy[probe]["httpGet"]["scheme"] == "HTTPS"
    (mount,) = [m for m in proxy["volumeMounts"] if m["mountPath"] == "/etc/gemini-breaker/tls"]
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    assert volumes[mount["name"]]["secret"]["secretName"] == "gateway-tls"
    assert "gemini-breaker-tls-ca" not in volumes  # no application container to trust it
    (endpoint,) = rendered.get("ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {
        "ca": {"secret": {"name": "gateway-tls", "key": "ca.pem"}},
        "serverName": f"{FULLNAME}.default.svc",
    }
    assert f"GOOGLE_GEMINI_BASE_URL=https://{FULLNAME}.default.svc:" in rendered.notes


def test_an_application_chart_gets_the_trust_from_the_template(helm: HelmResults) -> None:
    """The example application chart, with a cert-manager Secret's keys: the same wiring
    through "gemini-breaker.appTrust", "gemini-breaker.baseUrl" and the sidecar template."""
    rendered = render(helm, "example-tls")
    deployment = rendered.get("Deployment", f"{RELEASE}-app")
    app, proxy = tls_pod(deployment)
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    assert env_of(app)["GOOGLE_GEMINI_BASE_URL"] == "https://127.0.0.1:8080"
    (ca_mount,) = app["volumeMounts"]
    assert env_of(app)["SSL_CERT_FILE"] == f"{ca_mount['mountPath']}/ca.crt"
    assert volumes[ca_mount["name"]]["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    assert proxy["readinessProbe"]["exec"]["command"][-1] == "https://127.0.0.1:8080/readyz"
    config = yaml.safe_load(rendered.config_text())
    assert config["server"]["tls"] == {
        "cert_file": "/etc/gemini-breaker/tls/tls.crt",
        "key_file": "/etc/gemini-breaker/tls/tls.key",
    }


def test_without_a_certificate_the_app_keeps_plain_http(helm: HelmResults) -> None:
    app = pod_spec(render(helm, "example").get("Deployment", f"{RELEASE}-app"))["containers"][0]
    assert env_of(app)["GOOGLE_GEMINI_BASE_URL"] == "http://127.0.0.1:8080"
    assert "SSL_CERT_FILE" not in env_of(app) and "volumeMounts" not in app


def test_the_sidecar_template_serves_an_application_chart(
    helm: HelmResults, tmp_path: Path
) -> None:
    rendered = render(helm, "example")
    # The dependency in sidecar mode renders its ConfigMap; the application owns the pod.
    assert rendered.kinds() == {"ConfigMap", "Deployment"}
    app = rendered.get("Deployment", f"{RELEASE}-app")
    assert [c["name"] for c in pod_spec(app)["containers"]] == ["app", "gemini-breaker"]
    proxy = proxy_container(app)
    assert proxy["image"] == "gemini-breaker:0.1.0"
    assert env_of(proxy)["GEMINI_API_KEY"] == {
        "secretKeyRef": {"name": "gemini-api-key", "key": "api-key"}
    }
    annotations = app["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/config"]
    settings = settings_from(rendered, app, tmp_path)
    assert settings.server.host == "127.0.0.1"
    assert settings.redis.url == "redis://redis:6379/0"


def test_probes(helm: HelmResults) -> None:
    _, deployment = gateway(helm, "defaults")
    container = proxy_container(deployment)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # /readyz answers 200 while Redis is down (fail-static), so Redis never unreadies pods.
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["failureThreshold"] >= 10


@pytest.mark.parametrize("case", ["defaults", "standalone", "sidecar-example", "example"])
def test_security_context(helm: HelmResults, case: str) -> None:
    rendered = render(helm, case)
    for deployment in (d for d in rendered.docs if d["kind"] == "Deployment"):
        spec = pod_spec(deployment)
        assert spec["automountServiceAccountToken"] is False
        container = proxy_container(deployment)
        assert container["securityContext"].items() >= PROXY_SECURITY.items()
        assert container["resources"]["requests"] and container["resources"]["limits"]
        (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        (volume,) = [v for v in spec["volumes"] if v["name"] == tmp["name"]]
        assert "emptyDir" in volume


def test_secrets_are_referenced_never_inlined(helm: HelmResults) -> None:
    rendered, deployment = gateway(helm, "standalone")
    env = env_of(proxy_container(deployment))
    assert env["GEMINI_API_KEY"] == {"secretKeyRef": {"name": FULLNAME, "key": "api-key"}}
    assert env["GEMINI_BREAKER_ADMIN_TOKEN"] == {
        "secretKeyRef": {"name": "ops-tokens", "key": "gemini-breaker"}
    }
    assert env["GEMINI_BREAKER_REDIS_PASSWORD"] == {
        "secretKeyRef": {"name": "redis-auth", "key": "password"}
    }
    assert env["GEMINI_BREAKER_CLIENT_TOKENS"] == {
        "secretKeyRef": {"name": "app-tokens", "key": "gemini-breaker"}
    }
    assert "GEMINI_BREAKER_REDIS_SENTINEL_PASSWORD" not in env
    # The chart's Secret holds only the value given to the chart.
    secret = rendered.get("Secret", FULLNAME)
    assert secret["data"] == {"api-key": base64.b64encode(API_KEY.encode()).decode()}
    for doc in rendered.docs:
        if doc["kind"] != "Secret":
            assert API_KEY not in yaml.safe_dump(doc), doc["kind"]
    config = yaml.safe_load(rendered.config_text())
    assert "api_key" not in config["upstream"] and "password" not in config["redis"]
    assert "admin" not in config


def test_no_secret_without_values(helm: HelmResults) -> None:
    for case in ("defaults", "sidecar-example"):
        assert "Secret" not in render(helm, case).kinds(), case


@pytest.mark.parametrize("case", [c for c in CASES if c != "sidecar" and c not in NEEDS_MOUNTS])
def test_the_proxy_accepts_the_rendered_configuration(
    helm: HelmResults, case: str, tmp_path: Path
) -> None:
    rendered = render(helm, case)
    deployments = [d for d in rendered.docs if d["kind"] == "Deployment"]
    assert deployments
    for deployment in deployments:
        settings = settings_from(rendered, deployment, tmp_path)
        port = CASES[case].get("server", {}).get("port", 8080)
        assert settings.server.port == port
        assert proxy_container(deployment)["ports"][0]["containerPort"] == port
        assert settings.server.log_format == "json"
        assert settings.routes  # the chart's default routes, or the case's


def test_the_configuration_of_the_gateway(helm: HelmResults, tmp_path: Path) -> None:
    rendered, deployment = gateway(helm, "standalone")
    settings = settings_from(rendered, deployment, tmp_path)
    assert settings.server.host == "0.0.0.0"
    assert settings.redis.url == "redis://redis-master:6379/0"
    assert settings.redis.username == "breaker"
    assert settings.redis.password == "redis-auth/password"  # from the Secret reference
    assert settings.upstream.api_key == f"{FULLNAME}/api-key"
    assert settings.admin.token == "ops-tokens/gemini-breaker"
    assert settings.server.client_tokens == ("app-tokens/gemini-breaker",)
    assert not settings.server.allow_open_relay
    assert settings.telemetry.otlp_endpoint == "http://otel-collector:4318"
    assert settings.model_defaults.headers_timeout == 45
    assert settings.quota.max_retry_wait == 5
    assert settings.chain_for("gemini-2.5-pro") == (
        "gemini-2.5-pro",
        "gemini-2.5-flash",
        "gemini-2.5-flash-lite",
    )


def test_sentinel_values(helm: HelmResults, tmp_path: Path) -> None:
    rendered, deployment = gateway(helm, "sentinel")
    config = yaml.safe_load(rendered.config_text())
    assert config["redis"] == {
        "namespace": "default",
        "sentinel": {
            "master_name": "mymaster",
            "addresses": ["sentinel-0:26379", "sentinel-1:26379", "sentinel-2:26379"],
        },
    }
    settings = settings_from(rendered, deployment, tmp_path)
    assert settings.redis.sentinel.master_name == "mymaster"
    assert len(settings.redis.sentinel.addresses) == 3
    assert settings.redis.sentinel.password == "sentinel-auth/password"
    assert settings.redis.password == f"{FULLNAME}/redis-password"
    assert settings.redis.url is None and not settings.redis.cluster.nodes
    assert settings.server.workers == 2
    assert "Sentinel" in rendered.notes and "mymaster" in rendered.notes


def test_cluster_values_with_tls(helm: HelmResults, tmp_path: Path) -> None:
    rendered, deployment = gateway(helm, "cluster-tls")
    config = yaml.safe_load(rendered.config_text())
    tls_dir = "/etc/gemini-breaker/redis-tls"
    assert config["redis"] == {
        "namespace": "default",
        "cluster": {"nodes": ["redis-0:6379", "redis-1:6379", "redis-2:6379"]},
        "tls": {
            "enabled": True,
            "check_hostname": True,
            "ca_file": f"{tls_dir}/ca.crt",
            "cert_file": f"{tls_dir}/tls.crt",
            "key_file": f"{tls_dir}/tls.key",
        },
    }
    settings = settings_from(rendered, deployment, tmp_path)
    assert settings.redis.cluster.nodes == ("redis-0:6379", "redis-1:6379", "redis-2:6379")
    assert settings.redis.tls.enabled and settings.redis.tls.ca_file == f"{tls_dir}/ca.crt"
    container = proxy_container(deployment)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == tls_dir]
    assert mount["readOnly"]
    (volume,) = [v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "redis-tls"
    # Readable by UID 10001 even in an application's pod that sets no fsGroup.
    assert volume["secret"]["defaultMode"] & 0o004


def test_configuration_changes_roll_the_pods(helm: HelmResults) -> None:
    def checksum(case: str) -> str:
        _, deployment = gateway(helm, case)
        value: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return value

    assert checksum("standalone") != checksum("standalone-new-routes")
    # An application chart computes the same digest as the ConfigMap its dependency renders.
    for case, name in (("sidecar-example", f"{FULLNAME}-example-app"), ("example", "demo-app")):
        rendered = render(helm, case)
        annotations = rendered.get("Deployment", name)["spec"]["template"]["metadata"]
        config = rendered.config_text().rstrip("\n").encode()
        assert annotations["annotations"]["checksum/config"] == hashlib.sha256(config).hexdigest()
    assert checksum("defaults") == checksum("fixed-replicas")  # same file, same pods
    _, deployment = gateway(helm, "standalone")
    # The chart's Secret rolls them too, through a digest that does not reveal it.
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert len(annotations["checksum/secret"]) == 64
    assert API_KEY not in json.dumps(annotations)


def test_monitoring(helm: HelmResults) -> None:
    rendered = render(helm, "standalone")
    monitor = rendered.get("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    service_labels = rendered.get("Service")["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    rule = rendered.get("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
    assert not {"ServiceMonitor", "PrometheusRule"} & render(helm, "defaults").kinds()


def test_notes(helm: HelmResults) -> None:
    notes = render(helm, "standalone").notes
    assert f"http://{FULLNAME}.default.svc:8080" in notes
    assert "fail-static" in notes and "WARNING" not in notes
    assert "WARNING: no Redis is configured" in render(helm, "defaults").notes
    assert "admin API (/admin) is off" in render(helm, "defaults").notes


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_values_are_rejected(helm: HelmResults, case: str) -> None:
    name = f"invalid: {case}"
    assert name not in helm.rendered, "rendered, though invalid"
    assert INVALID[case][1] in helm.errors[name], helm.errors[name]


def test_a_refused_url_is_not_echoed(helm: HelmResults) -> None:
    """Helm prints the value a pattern refused; a URL with a password is refused without one."""
    assert "hunter2" not in helm.errors["invalid: credentials in the url"]


# ---- Kubernetes' schemas ----

CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}
# The modes, and the sidecar injected into an application's chart.
VALIDATED = [c for c in CASES if c != "sidecar"] + ["sidecar", "example", "example-tls"]


def template(helm: HelmResults, case: str, kube_version: str) -> list[dict[str, Any]]:
    """``helm template`` of a case for one Kubernetes version (which the chart's kubeVersion
    must admit)."""
    chart, values = sources(helm.example)[case]
    result = helm.run(
        "template", RELEASE, chart, "--namespace", "default", "--kube-version", kube_version,
        "--values", helm.values_file(values),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def validate_custom_resources(docs: list[dict[str, Any]]) -> list[str | None]:
    """Each document's error by the prometheus-operator schemas, or None."""
    models = tool(helm_tools.custom_resource_models)
    node = shutil.which("node")
    if node is None:
        unavailable("node missing (apt-get install nodejs)")
    result = subprocess.run(
        [str(node), str(CUSTOM_RESOURCE_VALIDATOR), str(models)],
        input=json.dumps(docs),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    errors: list[str | None] = json.loads(result.stdout)
    return errors


def test_the_chart_names_the_oldest_kubernetes_it_is_checked_against(helm: HelmResults) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    oldest = KUBE_VERSIONS[0]
    assert chart["kubeVersion"] == f">={oldest}-0"
    major, minor, _ = oldest.split(".")
    older = f"{major}.{int(minor) - 1}.0"
    result = helm.run("template", RELEASE, CHART, "--kube-version", older)
    assert result.returncode != 0 and "kubeVersion" in result.stderr


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("case", VALIDATED)
def test_rendered_objects_are_valid_kubernetes(
    helm: HelmResults, case: str, kube_version: str
) -> None:
    """Every built-in object by that version's OpenAPI schema, strictly (an unknown field is
    an error), and the custom resources by their own schemas."""
    docs = template(helm, case, kube_version)
    assert docs
    custom = [d for d in docs if d["kind"] in CUSTOM_KINDS]
    for doc in docs:
        if doc["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, kube_version, strict=True)
    assert validate_custom_resources(custom) == [None] * len(custom)


def test_the_monitoring_objects_are_rendered_and_checked(helm: HelmResults) -> None:
    """The monitoring mode renders both custom resources, and their validator refuses a
    malformed one (it can fail)."""
    docs = template(helm, "standalone", KUBE_VERSIONS[-1])
    custom = [d for d in docs if d["kind"] in CUSTOM_KINDS]
    assert {d["kind"] for d in custom} == CUSTOM_KINDS
    broken = json.loads(json.dumps(custom))
    for doc in broken:
        if doc["kind"] == "ServiceMonitor":
            doc["spec"]["endpoints"][0]["port"] = 8080  # a port name must be a string
        else:
            del doc["spec"]["groups"][0]["rules"][0]["expr"]
    assert all(validate_custom_resources(broken))


def test_strict_validation_refuses_an_unknown_field(helm: HelmResults) -> None:
    (deployment,) = [
        d for d in template(helm, "defaults", KUBE_VERSIONS[0]) if d["kind"] == "Deployment"
    ]
    proxy_container(deployment)["livenessProbes"] = proxy_container(deployment).pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)


def test_vertex_values_with_workload_identity(helm: HelmResults, tmp_path: Path) -> None:
    rendered, deployment = gateway(helm, "vertex-workload-identity")
    settings = settings_from(rendered, deployment, tmp_path)
    assert (settings.vertex.project, settings.vertex.location) == ("my-project", "europe-west4")
    assert settings.chain_for("gemini-2.5-pro")[1] == "gemini-2.5-pro@europe-west1"
    account = rendered.get("ServiceAccount", FULLNAME)
    assert account["metadata"]["annotations"] == {
        "iam.gke.io/gcp-service-account": "proxy@my-project.iam.gserviceaccount.com"
    }
    assert pod_spec(deployment)["serviceAccountName"] == FULLNAME
    assert "ServiceAccount" not in render(helm, "defaults").kinds()


def test_sidecar_mode_points_vertex_users_at_the_applications_service_account(
    helm: HelmResults,
) -> None:
    """In sidecar mode the chart makes no ServiceAccount (setting one fails the install, above):
    the notes say which account carries the workload identity instead."""
    rendered = render(helm, "sidecar-vertex")
    assert "ServiceAccount" not in rendered.kinds()
    assert "runs as the application's pod service account" in rendered.notes
    assert "iam.gke.io/gcp-service-account" in rendered.notes
    assert "service account" not in render(helm, "sidecar").notes
