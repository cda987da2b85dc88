"""The status page's cluster charts in a real headless Chromium: three replicas on a real
redis-server, the SDK's traffic spread over them, an outage of the primary in the simulator
and its recovery. The page of one replica must show the traffic of all of them moving from
pro to flash and back, with the breaker transitions and an operator action marked, both in
the DOM and in the pixels of a screenshot."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.genai.errors import APIError

from proxy.operators.status_page import PATH
from proxy.simulator.client import SimulatorControl

from .png_support import colour_counts, near
from .redis_support import redis_server as redis_server  # the fixture
from .support import eventually
from .test_cluster_e2e import FLASH, PRO, Cluster, ask, state, wait_all
from .test_cluster_e2e import cluster as cluster  # the fixture
from .test_status_page import browser as browser  # the fixture

SCREENSHOT = Path("/tmp/status-page-cluster.png")
# Colours of the page (status_charts.py): the chain's first two models, and the marks.
PRO_COLOUR, FLASH_COLOUR = "#0969da", "#8250df"
OPEN_COLOUR, CLOSED_COLOUR = "#cf222e", "#1a7f37"
BUCKETS_PER_PHASE = 3


@pytest.fixture
def traffic(cluster: Cluster) -> Iterator[tuple[list[str], list[BaseException]]]:
    """Three replicas (one-second series buckets) and SDK calls spread over them in a loop
    until the test ends; errors are collected (the failover must answer every call)."""
    replicas = cluster(
        admin={"series_resolution": 1.0, "series_window": 120},
        open_seconds=1.0,
        open_max_seconds=2.0,
    )
    stop = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        for i, url in zip(itertools.count(), itertools.cycle(replicas), strict=False):
            if stop.is_set():
                return
            try:
                ask(url, f"request {i}")
            except (APIError, httpx.HTTPError) as exc:
                failures.append(exc)
            stop.wait(0.02)  # a steady, modest rate

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield replicas, failures
    finally:
        stop.set()
        thread.join(timeout=30)


def series(url: str) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(url + "/admin/series", timeout=10).json()
    return document


def buckets_served_by(url: str, model: str, since_ms: float) -> int:
    document = series(url)
    served = document["routes"][PRO]["served"].get(model, [])
    return sum(1 for t, n in zip(document["times_ms"], served, strict=False) if n and t > since_ms)


def test_the_page_shows_an_outage_move_the_cluster_to_the_fallback_and_back(
    traffic: tuple[list[str], list[BaseException]], simulator: SimulatorControl, browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    replicas, failures = traffic
    url = replicas[0]
    began = time.time() * 1000
    eventually(
        lambda: buckets_served_by(url, PRO, began) >= BUCKETS_PER_PHASE,
        what="pro's traffic",
        timeout=60.0,
        interval=0.1,
    )

    simulator.set_faults(PRO, [{"kind": "error", "status": 503}])
    wait_all(replicas, lambda s: s["routes"][PRO]["active"] == FLASH, timeout=30)
    moved = time.time() * 1000
    eventually(
        lambda: buckets_served_by(url, FLASH, moved) >= BUCKETS_PER_PHASE,
        what="the fallback",
        timeout=60.0,
        interval=0.1,
    )

    simulator.clear_faults()
    wait_all(
        replicas,
        lambda s: s["routes"][PRO]["active"] == PRO and s["breakers"][PRO]["state"] == "closed",
        timeout=60,
    )
    back = time.time() * 1000
    eventually(
        lambda: buckets_served_by(url, PRO, back) >= BUCKETS_PER_PHASE,
        what="pro again",
        timeout=60.0,
        interval=0.1,
    )
    # An operator action, marked too.
    reset = httpx.post(
        url + f"/admin/breakers/{FLASH}/reset", json={"reason": "after the drill"}, timeout=10
    )
    assert reset.status_code == 200, reset.text
    assert failures == []

    wait = WebDriverWait(browser, 30, poll_frequency=0.1)
    chart = f'section[data-route="{PRO}"] div[data-chart="requests"]'

    def attribute(css: str, name: str) -> str:
        found = browser.find_elements(By.CSS_SELECTOR, css)
        return str(found[0].get_attribute(name) or "") if found else ""

    def marks() -> list[str]:
        items = browser.find_elements(By.CSS_SELECTOR, f'section[data-route="{PRO}"] .marks li')
        return [str(item.text) for item in items]

    browser.get(url + PATH)  # loopback, no token configured: the page and its data load
    wait.until(lambda _: f"{PRO} > {FLASH} > {PRO}" in attribute(chart, "data-serving"))
    wait.until(lambda _: any(m.endswith(f"reset {FLASH} by admin") for m in marks()))
    texts = marks()
    assert any(f"{PRO} closed \u2192 open" in m for m in texts), texts
    assert any(f"{PRO} half_open \u2192 closed" in m for m in texts), texts
    assert any(f"reset {FLASH} by admin" in m for m in texts), texts
    assert int(attribute(chart, "data-marks")) == len(texts)
    assert browser.find_element(By.ID, "error").text == ""

    # The breaker timeline: pro was open in the window and is closed at its end.
    bands = browser.find_elements(By.CSS_SELECTOR, f'.timeline-row[data-model="{PRO}"] .band')
    states = [band.get_attribute("data-state") for band in bands]
    assert "open" in states and states[-1] == "closed", states
    flash_bands = f'.timeline-row[data-model="{FLASH}"] .band'
    assert [
        b.get_attribute("data-state") for b in browser.find_elements(By.CSS_SELECTOR, flash_bands)
    ] == ["closed"]

    # Every replica listed, alive, on the same routes.
    rows = browser.find_elements(By.CSS_SELECTOR, "#replicas tbody tr")
    assert len(rows) == 3
    assert all("alive" in row.text and "(differs)" not in row.text for row in rows)
    assert {state(u)["replica"] for u in replicas} == {
        row.get_attribute("data-replica") for row in rows
    }

    # The pixels: both models' areas, and the open (red) and closed (green) marks, drawn.
    canvas = browser.find_element(By.CSS_SELECTOR, f"{chart} canvas")
    counts = colour_counts(canvas.screenshot_as_png)
    for colour in (PRO_COLOUR, FLASH_COLOUR, OPEN_COLOUR, CLOSED_COLOUR):
        assert near(counts, colour) > 20, f"{colour} is not on the chart"
    browser.save_screenshot(str(SCREENSHOT))
