"""The live status page at ``/admin/status``: who gets it, and a real headless Chromium (Debian's
``chromium`` and ``chromium-driver``, driven by Selenium) that loads it with an admin token, sees a
change made through the admin API, and flips a breaker by clicking one of its buttons.

Without the browser the browser test skips, except in CI (``CI=true``), where it fails:
``make test`` installs the browser when it runs as root."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.app import create_app
from proxy.operators.static_assets import FILES, load_assets
from proxy.operators.status_page import PATH, SCRIPT, page

from .conftest import proxy_settings
from .support import serve

PRO, FLASH = "gemini-2.5-pro", "gemini-2.5-flash"
ASSETS = load_assets()
HEADERS = page(ASSETS)[1]
TOKEN = "st4tus-page-t0ken"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = Path("/tmp/status-page.png")
# Data that would run as markup if the page used innerHTML anywhere.
HOSTILE = '<img src=x id=injected onerror="document.title=1">'


def _post(url: str, path: str, body: Any, token: str | None = TOKEN) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.post(url + path, json=body, headers=headers, timeout=10)


def _state(url: str) -> dict[str, Any]:
    response = httpx.get(
        url + "/admin/state", headers={"authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


@pytest.fixture
def token_proxy(simulator_url: str) -> Iterator[str]:
    settings = proxy_settings(
        simulator_url, admin={"token": TOKEN, "allow_unauthenticated_loopback": False}
    )
    with serve(create_app(settings)) as url:
        yield url


# -- who gets the page -------------------------------------------------------------------------


def test_with_a_token_the_page_is_served_without_one_and_holds_no_data(token_proxy: str) -> None:
    page = httpx.get(token_proxy + PATH, timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == HEADERS["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-content-type-options"] == "nosniff"
    # Static: no model state in it, and nothing inserted as markup.
    assert PRO not in page.text
    assert "innerHTML" not in SCRIPT and "insertAdjacentHTML" not in SCRIPT
    # Everything else under /admin/ still needs the token, other methods on the page's path too.
    assert httpx.get(token_proxy + "/admin/state", timeout=10).status_code == 401
    assert httpx.post(token_proxy + PATH, timeout=10).status_code == 401
    assert httpx.get(token_proxy + PATH + "/", timeout=10).status_code == 401


def test_the_vendored_chart_library_is_served_pinned_and_licensed(token_proxy: str) -> None:
    """uPlot comes from the proxy (no CDN), without the token like the page, and the page's
    policy admits exactly the bytes served; any other static path still needs the token."""
    for name, content_type in FILES.items():
        response = httpx.get(token_proxy + "/admin/static/" + name, timeout=10)
        assert response.status_code == 200
        assert response.headers["content-type"] == content_type
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.content == ASSETS.files[name]
    licence = httpx.get(token_proxy + "/admin/static/uplot/LICENSE", timeout=10).text
    assert "MIT License" in licence and "Leon Sorokin" in licence
    document = httpx.get(token_proxy + PATH, timeout=10).text
    integrity = ASSETS.integrity("uplot/uPlot.iife.min.js")
    assert f'src="static/uplot/uPlot.iife.min.js" integrity="{integrity}"' in document
    assert f"'{integrity}'" in HEADERS["content-security-policy"]
    assert "http" not in document.split("<body>")[0].replace('href="data:,"', "")
    assert httpx.get(token_proxy + "/admin/static/other.js", timeout=10).status_code == 401
    post = httpx.post(token_proxy + "/admin/static/" + next(iter(FILES)), timeout=10)
    assert post.status_code == 401


def test_without_a_token_the_page_is_refused_like_every_admin_path(simulator_url: str) -> None:
    disabled = proxy_settings(simulator_url, admin={"allow_unauthenticated_loopback": False})
    with serve(create_app(disabled)) as url:
        response = httpx.get(url + PATH, timeout=10)
        assert response.status_code == 403
        assert "admin API is disabled" in response.json()["error"]["message"]
    with serve(create_app(proxy_settings(simulator_url))) as url:  # loopback allowed
        assert httpx.get(url + PATH, timeout=10).status_code == 200


# -- in a real browser -------------------------------------------------------------------------


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason}; CI must run the browser test (make test installs it as root)")
    pytest.skip(f"{reason} (apt-get install chromium chromium-driver, or run make test as root)")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed (pip install -e '.[dev]')")
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(binary):
            _unavailable(f"{binary} is missing")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    # The driver's path is given, so Selenium Manager is never asked (it would download one).
    driver = webdriver.Chrome(
        options=options, service=Service(executable_path=CHROMEDRIVER, log_output=os.devnull)
    )
    try:
        driver.set_page_load_timeout(15)
        yield driver
    finally:
        driver.quit()


def test_the_page_shows_changes_made_elsewhere_and_its_buttons_act(
    token_proxy: str, browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 10, poll_frequency=0.05)

    def text(css: str) -> str:
        elements = browser.find_elements(By.CSS_SELECTOR, css)
        return str(elements[0].text) if elements else ""

    route_active = f'#routes tr[data-route="{PRO}"] td.active'
    pro_row = f'#breakers tr[data-model="{PRO}"]'

    browser.get(token_proxy + PATH)
    # No token yet: the page says it needs one.
    wait.until(lambda _: "401" in text("#error") and "token" in text("#error"))
    token_field = browser.find_element(By.ID, "token")
    token_field.send_keys(TOKEN, Keys.ENTER)  # Enter fires the field's change event
    wait.until(lambda _: text(route_active) == PRO)
    assert text("#error") == ""
    assert text("#store") == "store ok (embedded)"
    assert browser.execute_script("return sessionStorage.length") == 1
    assert text(f"{pro_row} .badge") == "closed"

    # A change made elsewhere (another operator, through the API) shows within a poll.
    forced = _post(token_proxy, f"/admin/breakers/{PRO}/force_open", {"reason": HOSTILE})
    assert forced.status_code == 200, forced.text
    wait.until(lambda _: text(f"{pro_row} .badge") == "forced_open")
    wait.until(lambda _: text(route_active) == FLASH)
    # ... and appears among the recent transitions this replica saw.
    wait.until(lambda _: text("#transitions tbody tr td:nth-child(2)") == PRO)
    assert text("#transitions tbody tr td:nth-child(3)") == "closed \u2192 forced_open"
    badge = browser.find_element(By.CSS_SELECTOR, f"{pro_row} .badge")
    assert "state-forced_open" in badge.get_attribute("class")
    assert badge.value_of_css_property("background-color") == "rgba(207, 34, 46, 1)"  # red
    flash_row = f'#breakers tr[data-model="{FLASH}"]'
    flash_badge = browser.find_element(By.CSS_SELECTOR, f"{flash_row} .badge")
    assert flash_badge.value_of_css_property("background-color") == "rgba(26, 127, 55, 1)"
    # The hostile reason is shown as text, in the breaker row and in the audit, never as markup.
    wait.until(lambda _: text("#audit tbody tr td:nth-child(2)") == "force_open")
    assert HOSTILE in text(pro_row)
    assert text("#audit tbody tr td:nth-child(5)") == HOSTILE
    assert browser.find_elements(By.ID, "injected") == []
    assert browser.title == "gemini-breaker status"
    browser.save_screenshot(str(SCREENSHOT))

    # A button on the page acts on the cluster, with the page's reason.
    reason_field = browser.find_element(By.ID, "reason")
    reason_field.clear()
    reason_field.send_keys("flipped by the browser test")
    browser.find_element(By.CSS_SELECTOR, f'{pro_row} button[data-action="reset"]').click()
    deadline = time.monotonic() + 10
    while _state(token_proxy)["breakers"][PRO]["state"] != "closed":
        assert time.monotonic() < deadline, "the reset button did not close the breaker"
        time.sleep(0.05)
    assert _state(token_proxy)["routes"][PRO]["active"] == PRO
    audit = httpx.get(
        token_proxy + "/admin/audit?limit=1",
        headers={"authorization": f"Bearer {TOKEN}"},
        timeout=10,
    ).json()["entries"][0]
    assert (audit["action"], audit["target"], audit["by"], audit["reason"]) == (
        "reset",
        PRO,
        "status-page",
        "flipped by the browser test",
    )
    # ... and the page follows.
    wait.until(lambda _: text(f"{pro_row} .badge") == "closed" and text(route_active) == PRO)
    assert text("#result").startswith(f"reset {PRO}: done (epoch ")

    # Pin and unpin from the page.
    route_row = f'#routes tr[data-route="{PRO}"]'
    browser.find_element(By.CSS_SELECTOR, f"{route_row} select option[value='{FLASH}']").click()
    browser.find_element(By.CSS_SELECTOR, f'{route_row} button[data-action="pin"]').click()
    wait.until(lambda _: text(route_active) == FLASH and text(route_row).count(FLASH) >= 2)
    assert _state(token_proxy)["routes"][PRO]["pin"]["model"] == FLASH
    browser.find_element(By.CSS_SELECTOR, f'{route_row} button[data-action="unpin"]').click()
    wait.until(lambda _: text(route_active) == PRO)
    assert _state(token_proxy)["routes"][PRO]["pin"] is None
    browser.save_screenshot(str(SCREENSHOT.with_name("status-page-after.png")))


# -- Vertex targets ----------------------------------------------------------------------------

US, EU = "us-central1", "europe-west4"


@pytest.fixture
def vertex_proxy(simulator_url: str) -> Iterator[str]:
    """Breakers named ``model@location``, one route over them."""
    settings = proxy_settings(
        simulator_url,
        admin={"token": TOKEN, "allow_unauthenticated_loopback": False},
        vertex={"project": "test-project", "location": US, "origins": {US: simulator_url}},
        routes={PRO: [f"{PRO}@{US}", f"{PRO}@{EU}", f"{FLASH}@{US}"]},
    )
    with serve(create_app(settings)) as url:
        yield url


def test_the_page_shows_and_acts_on_vertex_targets(vertex_proxy: str, browser: Any) -> None:
    """An ``@`` in a target's name is data: the rows are keyed by the whole name, shown as
    text, and the buttons reach the target's own breaker (its name escaped in the path)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 10, poll_frequency=0.05)
    us_pro, eu_pro, us_flash = f"{PRO}@{US}", f"{PRO}@{EU}", f"{FLASH}@{US}"

    def text(css: str) -> str:
        elements = browser.find_elements(By.CSS_SELECTOR, css)
        return str(elements[0].text) if elements else ""

    route_row = f'#routes tr[data-route="{PRO}"]'
    us_row = f'#breakers tr[data-model="{us_pro}"]'
    browser.get(vertex_proxy + PATH)
    browser.find_element(By.ID, "token").send_keys(TOKEN, Keys.ENTER)
    wait.until(lambda _: text(f"{route_row} td.active") == us_pro)
    assert text(f"{route_row} td:nth-child(2)") == f"{us_pro} > {eu_pro} > {us_flash}"
    rows = browser.find_elements(By.CSS_SELECTOR, "#breakers tbody tr")
    assert sorted(row.get_attribute("data-model") for row in rows) == sorted(
        [us_pro, eu_pro, us_flash]
    )
    assert text(f"{us_row} td:first-child") == us_pro
    assert text("#error") == ""

    browser.find_element(By.CSS_SELECTOR, f'{us_row} button[data-action="force_open"]').click()
    wait.until(lambda _: text(f"{us_row} .badge") == "forced_open")
    assert _state(vertex_proxy)["breakers"][us_pro]["state"] == "forced_open"
    assert _state(vertex_proxy)["breakers"][eu_pro]["state"] == "closed"
    wait.until(lambda _: text(f"{route_row} td.active") == eu_pro)
    assert text("#result").startswith(f"force_open {us_pro}: done")
    wait.until(lambda _: text("#transitions tbody tr td:nth-child(2)") == us_pro)

    browser.find_element(By.CSS_SELECTOR, f"{route_row} select option[value='{us_flash}']").click()
    browser.find_element(By.CSS_SELECTOR, f'{route_row} button[data-action="pin"]').click()
    wait.until(lambda _: text(f"{route_row} td.active") == us_flash)
    assert _state(vertex_proxy)["routes"][PRO]["pin"]["model"] == us_flash
    audit = httpx.get(
        vertex_proxy + "/admin/audit?limit=2",
        headers={"authorization": f"Bearer {TOKEN}"},
        timeout=10,
    ).json()["entries"]
    assert [(e["action"], e["target"]) for e in audit] == [("pin", PRO), ("force_open", us_pro)]
