"""Lint and render the Helm chart with a real Helm engine, for tests/test_helm_chart.py.

helm-sdkpy (Helm 4 as a library) needs Python >= 3.12 while the project runs on 3.11, so the
test runs this script with a separate interpreter: a JSON request on stdin, a JSON answer on
stdout.

    request: {"lint": "<chart dir>",
              "renders": [{"chart": "<chart dir>", "release": "demo", "values": {...}}, ...]}
    answer:  {"lint": {"messages": [{"severity": 1, "path": "..."}], "errors": 0},
              "renders": [{"manifest": "...", "notes": "..."} or {"error": "..."}, ...]}

helm-sdkpy offers Helm's install action but not ``helm template``, so each render is an
install into a stand-in for the Kubernetes API server: a loopback HTTP server in this process
that answers discovery for the kinds the chart may use and accepts every create. Helm renders
the chart (values schema, templates, NOTES) exactly as for a real install, and the stand-in
refuses any kind it does not list. Releases are kept in memory: the caller must set
HELM_DRIVER=memory (the Go runtime reads the environment when the library loads).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# group/version -> (resource, kind) served by the stand-in: what the chart is allowed to use.
RESOURCES: dict[str, list[tuple[str, str]]] = {
    "v1": [
        ("configmaps", "ConfigMap"),
        ("secrets", "Secret"),
        ("services", "Service"),
        ("serviceaccounts", "ServiceAccount"),
    ],
    "apps/v1": [("deployments", "Deployment")],
    "autoscaling/v2": [("horizontalpodautoscalers", "HorizontalPodAutoscaler")],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget")],
    "monitoring.coreos.com/v1": [
        ("servicemonitors", "ServiceMonitor"),
        ("prometheusrules", "PrometheusRule"),
    ],
}
NOT_FOUND = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound"}


def discovery(path: str) -> dict[str, Any] | None:
    """The discovery document for ``path``, or None."""
    if path == "/version":
        return {"major": "1", "minor": "31", "gitVersion": "v1.31.0", "platform": "linux/amd64"}
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if path == "/apis":
        groups = []
        for group_version in RESOURCES:
            if "/" in group_version:
                group, version = group_version.split("/")
                entry = {"groupVersion": group_version, "version": version}
                groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
    group_version = path.removeprefix("/api/").removeprefix("/apis/")
    if group_version in RESOURCES:
        resources = [
            {
                "name": name,
                "singularName": kind.lower(),
                "namespaced": True,
                "kind": kind,
                "verbs": ["create", "get", "list", "watch", "update", "patch", "delete"],
            }
            for name, kind in RESOURCES[group_version]
        ]
        return {"kind": "APIResourceList", "groupVersion": group_version, "resources": resources}
    return None


class StandIn(BaseHTTPRequestHandler):
    """Discovery answers, 404 for every object read, and creates echoed back."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        document = discovery(self.path.split("?", 1)[0])
        if document is None:
            self.reply(404, {**NOT_FOUND, "code": 404})
        else:
            self.reply(200, document)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.reply(201, json.loads(self.rfile.read(length)))


def kubeconfig(port: int) -> str:
    return (
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: stand-in, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
        "contexts: [{name: stand-in, context: {cluster: stand-in, namespace: default}}]\n"
        "current-context: stand-in\nusers: []\n"
    )


async def run(request: dict[str, Any]) -> dict[str, Any]:
    import helm_sdkpy

    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config_yaml = kubeconfig(server.server_address[1])
    answer: dict[str, Any] = {"renders": []}
    try:
        if request.get("lint"):
            config = helm_sdkpy.Configuration(namespace="default", kubeconfig=config_yaml)
            result = await helm_sdkpy.Lint(config).run(request["lint"])
            # Helm's messages lose their text in the library's JSON; severity and file remain.
            answer["lint"] = {
                "messages": [
                    {"severity": m["Severity"], "path": m["Path"]}
                    for m in result.get("Messages") or []
                ],
                "errors": len(result.get("Errors") or []),
            }
        for render in request.get("renders", []):
            # A fresh configuration: a fresh in-memory release store, so names never clash.
            config = helm_sdkpy.Configuration(namespace="default", kubeconfig=config_yaml)
            try:
                release = await helm_sdkpy.Install(config).run(
                    render.get("release", "demo"),
                    render["chart"],
                    values=render.get("values") or {},
                    wait=False,
                    timeout=60,
                )
            except helm_sdkpy.HelmError as exc:
                answer["renders"].append({"error": str(exc)})
            else:
                notes = (release.get("info") or {}).get("notes", "")
                answer["renders"].append({"manifest": release["manifest"], "notes": notes})
    finally:
        server.shutdown()
        server.server_close()
    return answer


def main() -> int:
    if os.environ.get("HELM_DRIVER") != "memory":
        print("helm_render.py: run with HELM_DRIVER=memory", file=sys.stderr)
        return 2
    request = json.load(sys.stdin)
    json.dump(asyncio.run(run(request)), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
