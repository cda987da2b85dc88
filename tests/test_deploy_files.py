"""The monitoring files under deploy/: the alert rules are well formed, and every metric the
rules and the dashboard use is one the proxy really exposes after some traffic."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from proxy.app import create_app
from proxy.simulator.client import SimulatorControl

from .conftest import proxy_settings
from .support import serve
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


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_config_and_rules() -> None:
    result = subprocess.run(
        ["promtool", "check", "config", PROMETHEUS.name],
        cwd=PROMETHEUS.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout + result.stderr
