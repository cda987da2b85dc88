"""The operator surface: access rules of the admin API, its reads and actions on one replica and
across a three-replica cluster (every action reaches every replica and the audit), route pins
that move real traffic and run out, and the ``gemini-breaker admin`` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import httpx
import pytest
import yaml
from starlette.requests import Request

from proxy.app import create_app
from proxy.cluster.coordinator import Coordinator
from proxy.cluster.mirror import Mirror
from proxy.cluster.state import ActiveModel, Pin, PinChange, Snapshot
from proxy.config_load import build_settings
from proxy.errors import ConfigError
from proxy.operators import admin_auth
from proxy.operators.admin_auth import AdminAuth
from proxy.simulator.client import SimulatorControl

from .conftest import calls, proxy_settings
from .redis_support import RedisServer
from .redis_support import redis_server as redis_server  # the fixture
from .support import eventually, free_port, running, serve
from .test_cluster_e2e import Cluster, ask, spread, wait_all
from .test_cluster_e2e import cluster as cluster  # the fixture

PRO, FLASH, LITE = "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"
TOKEN = "op3rator-t0ken-2026"


def act(url: str, path: str, body: Any, token: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.post(url + path, json=body, headers=headers, timeout=10)


def get(url: str, path: str, token: str | None = None) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(url + path, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def generate(url: str, text: str = "hello") -> httpx.Response:
    return httpx.post(
        f"{url}/v1beta/models/{PRO}:generateContent",
        json={"contents": [{"parts": [{"text": text}]}]},
        headers={"x-goog-api-key": "k"},
        timeout=30,
    )


# -- access -----------------------------------------------------------------------------------


def request_from(
    peer: str | None,
    authorization: str | None = None,
    method: str = "GET",
    **extra: str,
) -> Request:
    """A request to /admin from ``peer``; ``extra`` headers (underscores for dashes)
    replace the default ``Host: 127.0.0.1:8080``."""
    fields = {"host": "127.0.0.1:8080", **{k.replace("_", "-"): v for k, v in extra.items()}}
    if authorization:
        fields["authorization"] = authorization
    headers = [(name.encode(), value.encode()) for name, value in fields.items()]
    return Request(
        {
            "type": "http",
            "method": method,
            "path": "/admin/state",
            "query_string": b"",
            "headers": headers,
            "client": None if peer is None else (peer, 40000),
        }
    )


def refusal(auth: AdminAuth, request: Request) -> tuple[int, str] | None:
    response = auth.check(request)
    if response is None:
        return None
    error = json.loads(bytes(response.body))["error"]
    assert error["code"] == response.status_code
    return response.status_code, error["status"]


def test_without_a_token_the_admin_api_is_disabled() -> None:
    auth = AdminAuth(None)
    assert auth.mode == "disabled"
    response = auth.check(request_from("127.0.0.1", "Bearer anything"))
    assert response is not None and response.status_code == 403
    message = json.loads(bytes(response.body))["error"]["message"]
    assert "admin.token" in message and "GEMINI_BREAKER_ADMIN_TOKEN" in message
    assert "allow_unauthenticated_loopback" in message


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("127.0.0.2", False),  # exactly the two loopback addresses a sidecar's app uses
        ("::ffff:127.0.0.1", False),
        ("10.0.0.5", False),
        ("192.168.1.20", False),
        ("::ffff:10.0.0.5", False),
        ("testclient", False),
        (None, False),
    ],
)
def test_loopback_opt_in_admits_only_loopback_callers(host: str | None, allowed: bool) -> None:
    auth = AdminAuth(None, allow_unauthenticated_loopback=True)
    assert auth.mode == "loopback"
    assert refusal(auth, request_from(host)) == (None if allowed else (403, "PERMISSION_DENIED"))


@pytest.mark.parametrize(
    ("method", "headers", "allowed"),
    [
        ("GET", {"host": "localhost:8080"}, True),
        ("GET", {"host": "[::1]:8080"}, True),
        ("GET", {"host": "127.0.0.1"}, True),
        ("GET", {"host": "attacker.example:8080"}, False),  # DNS rebinding
        ("GET", {"host": "localhost.attacker.example"}, False),
        ("GET", {"host": ""}, False),
        ("GET", {"origin": "http://127.0.0.1:8080"}, True),
        ("GET", {"origin": "http://localhost:3000"}, True),
        ("GET", {"origin": "https://attacker.example"}, False),
        ("GET", {"origin": "null"}, False),
        ("GET", {"sec_fetch_site": "same-origin"}, True),
        ("GET", {"sec_fetch_site": "none"}, True),
        ("GET", {"sec_fetch_site": "cross-site"}, False),
        ("POST", {"content_type": "application/json"}, True),
        ("POST", {"content_type": "application/json; charset=utf-8"}, True),
        ("POST", {}, False),
        ("POST", {"content_type": "text/plain"}, False),  # what a page's simple fetch sends
        ("POST", {"content_type": "application/x-www-form-urlencoded"}, False),
    ],
)
def test_loopback_opt_in_refuses_what_a_web_page_could_send(
    method: str, headers: dict[str, str], allowed: bool
) -> None:
    auth = AdminAuth(None, allow_unauthenticated_loopback=True)
    request = request_from("127.0.0.1", None, method, **headers)
    assert refusal(auth, request) == (None if allowed else (403, "PERMISSION_DENIED"))


def test_a_web_page_cannot_reach_the_unauthenticated_admin_api(simulator_url: str) -> None:
    """Against the real proxy: a same-machine caller with the browser's cross-site marks, a
    rebound host name or a form post gets 403 and the action does not happen."""
    settings = proxy_settings(simulator_url)
    path = f"/admin/breakers/{PRO}/force_open"
    body = {"reason": "drill"}
    with serve(create_app(settings)) as url:
        attempts = [
            httpx.post(url + path, json=body, headers={"origin": "https://evil.example"}),
            httpx.post(url + path, json=body, headers={"sec-fetch-site": "cross-site"}),
            httpx.post(url + path, json=body, headers={"host": "evil.example:80"}),
            httpx.post(url + path, data=body),  # a form: application/x-www-form-urlencoded
            httpx.post(
                url + path, content=json.dumps(body), headers={"content-type": "text/plain"}
            ),
        ]
        for response in attempts:
            assert response.status_code == 403, response.text
            assert response.json()["error"]["status"] == "PERMISSION_DENIED"
        assert get(url, "/admin/breakers")["breakers"][PRO]["state"] == "closed"
        assert act(url, path, body).status_code == 200
        assert get(url, "/admin/breakers")["breakers"][PRO]["state"] == "forced_open"


def test_a_token_is_checked_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = admin_auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(admin_auth.hmac, "compare_digest", spy)
    # A configured token wins over the loopback opt-in: loopback callers need it too.
    auth = AdminAuth(TOKEN, allow_unauthenticated_loopback=True)
    assert auth.mode == "token"
    assert refusal(auth, request_from("127.0.0.1")) == (401, "UNAUTHENTICATED")
    assert refusal(auth, request_from("127.0.0.1", f"Basic {TOKEN}")) == (401, "UNAUTHENTICATED")
    assert refusal(auth, request_from("127.0.0.1", "Bearer ")) == (401, "UNAUTHENTICATED")
    assert compared == []  # nothing to compare yet
    assert refusal(auth, request_from("10.1.1.1", "Bearer wrong")) == (403, "PERMISSION_DENIED")
    assert refusal(auth, request_from("10.1.1.1", f"bearer {TOKEN}")) is None
    assert compared == [(b"wrong", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


def test_the_loopback_opt_in_is_validated() -> None:
    assert not build_settings({}).admin.allow_unauthenticated_loopback
    on = build_settings({"admin": {"allow_unauthenticated_loopback": True}})
    assert on.admin.allow_unauthenticated_loopback
    with pytest.raises(ConfigError, match=r"admin\.allow_unauthenticated_loopback"):
        build_settings({"admin": {"allow_unauthenticated_loopback": "yes"}})


def test_the_default_configuration_disables_the_admin_api(simulator_url: str) -> None:
    settings = proxy_settings(simulator_url, admin={"allow_unauthenticated_loopback": False})
    assert settings.admin.token is None
    with serve(create_app(settings)) as url:
        for method, path in [
            ("GET", "/admin/state"),
            ("GET", "/admin/breakers"),
            ("GET", "/admin/audit"),
            ("POST", f"/admin/breakers/{PRO}/force_open"),
            ("GET", "/admin/no-such-thing"),
        ]:
            response = httpx.request(method, url + path, json={"reason": "x"})
            assert response.status_code == 403, (method, path)
            assert response.json()["error"]["status"] == "PERMISSION_DENIED"
            assert "admin.token" in response.json()["error"]["message"]
        assert generate(url).status_code == 200  # the proxy itself is unaffected


def test_the_token_guards_every_admin_path(simulator_url: str) -> None:
    settings = proxy_settings(simulator_url, admin={"token": TOKEN})
    with serve(create_app(settings)) as url:
        for method, path in [
            ("GET", "/admin/state"),
            ("GET", "/admin/replicas"),
            ("POST", f"/admin/breakers/{PRO}/force_open"),
            ("POST", f"/admin/routes/{PRO}/pin"),
            ("GET", "/admin/no-such-thing"),  # 401, not 404: nothing leaks
            ("DELETE", "/admin/state"),  # nor 405
        ]:
            missing = httpx.request(method, url + path, json={"reason": "x"})
            assert missing.status_code == 401, (method, path)
            assert missing.headers["www-authenticate"] == "Bearer"
            assert missing.json()["error"]["status"] == "UNAUTHENTICATED"
            wrong = httpx.request(
                method, url + path, json={"reason": "x"}, headers={"authorization": "Bearer op3"}
            )
            assert wrong.status_code == 403, (method, path)
            assert TOKEN not in wrong.text and "op3" not in wrong.text
        assert get(url, "/admin/breakers", TOKEN)["breakers"][PRO]["state"] == "closed"
        unknown = httpx.get(url + "/admin/nope", headers={"authorization": f"Bearer {TOKEN}"})
        assert unknown.status_code == 404 and unknown.json()["error"]["status"] == "NOT_FOUND"
        wrong_method = httpx.delete(
            url + "/admin/state", headers={"authorization": f"Bearer {TOKEN}"}
        )
        assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "GET"


# -- the mirror and the chain a request walks ---------------------------------------------------


def pin_change(route: str, model: str | None, epoch: int, until_ms: int = 10**15) -> PinChange:
    pin = None if model is None else Pin(route, model, until_ms, 0, "ops", "why", epoch)
    active = {route: ActiveModel(route, model or "a", epoch)}
    return PinChange(1_000, route, pin, epoch, active, True, "pin" if model else "unpin")


def test_the_mirror_orders_pin_changes_by_epoch() -> None:
    mirror = Mirror()
    mirror.apply_pin(pin_change("r", "b", 5))
    assert mirror.pin("r") == Pin("r", "b", 10**15, 0, "ops", "why", 5)
    mirror.apply_pin(pin_change("r", None, 4))  # an older unpin, arriving late
    assert mirror.pin("r") is not None
    mirror.apply_pin(pin_change("r", None, 6))
    assert mirror.pin("r") is None
    mirror.apply_pin(pin_change("r", "c", 5))  # an older pin, arriving late
    assert mirror.pin("r") is None
    assert mirror.highest_epoch == 6

    # A snapshot lists the pins that hold: one missing from it is gone, unless ours is newer.
    mirror.apply_pin(pin_change("r", "c", 9))
    mirror.apply_pin(pin_change("s", "d", 7))
    mirror.merge(Snapshot(2_000, 8, {}, {}, {}, {}, pins={}))
    assert mirror.pin("r") is not None and mirror.pin("s") is None
    mirror.merge(Snapshot(2_000, 10, {}, {}, {}, {}, pins={}))
    assert mirror.pins == {}


def test_an_expired_pin_is_ignored_before_any_snapshot_drops_it() -> None:
    now = [100.0]
    mirror = Mirror(clock=lambda: now[0])
    # The change says the store's clock read 1_000 ms; locally it is 100 s: the mirror keeps
    # the offset and judges the pin on the store's clock.
    mirror.apply_pin(pin_change("r", "b", 3, until_ms=1_500))
    assert mirror.pin("r") is not None
    now[0] = 100.6
    assert mirror.pin("r") is None and "r" in mirror.pins


def test_chain_for_puts_the_pinned_model_first(simulator_url: str) -> None:
    settings = proxy_settings(simulator_url)
    coordinator = Coordinator(
        settings, fakeredis.FakeAsyncRedis(), embedded=True, replica="replica-under-test"
    )
    assert coordinator.chain_for(PRO) == (PRO, FLASH, LITE)
    assert coordinator.chain_for("unrouted") == ("unrouted",)
    coordinator.mirror.apply_pin(pin_change(PRO, LITE, 2))
    assert coordinator.chain_for(PRO) == (LITE, PRO, FLASH)
    coordinator.mirror.apply_pin(pin_change(PRO, PRO, 3))
    assert coordinator.chain_for(PRO) == (PRO, FLASH, LITE)
    # A pin naming a model outside this replica's chain (config drift) is ignored.
    coordinator.mirror.apply_pin(pin_change(PRO, "x", 4))
    assert coordinator.chain_for(PRO) == (PRO, FLASH, LITE)


# -- one replica (embedded store) ---------------------------------------------------------------


@pytest.fixture
def proxy(simulator_url: str) -> Iterator[str]:
    settings = proxy_settings(
        simulator_url, redis={"reconcile_interval": 0.1, "flush_interval": 0.02}
    )
    with serve(create_app(settings)) as url:
        yield url


def test_breaker_actions_change_the_breaker_and_are_audited(
    proxy: str, simulator: SimulatorControl
) -> None:
    expected = [
        ("force_open", "forced_open", FLASH),
        ("disable", "disabled", PRO),
        ("open", "open", FLASH),
        ("close", "closed", PRO),
        ("reset", "closed", PRO),
    ]
    epochs = []
    for action, state, active in expected:
        body: dict[str, Any] = {"reason": f"drill: {action}", "by": "alice"}
        if action == "reset":
            body = {"reason": "drill: reset"}  # by defaults to "admin"
        answer = act(proxy, f"/admin/breakers/{PRO}/{action.replace('_', '-')}", body)
        assert answer.status_code == 200, answer.text
        document = answer.json()
        assert (document["action"], document["breaker"]["state"]) == (action, state)
        assert document["active"] == {PRO: active}
        assert document["breaker"]["reason"] == body["reason"]
        epochs.append(document["epoch"])
        breakers = get(proxy, "/admin/breakers")["breakers"]
        assert breakers[PRO]["state"] == state and breakers[PRO]["epoch"] == document["epoch"]
        assert breakers[PRO]["routes"] == [PRO]
        assert get(proxy, "/admin/routes")["routes"][PRO]["active"] == active
    assert epochs == sorted(epochs)
    assert get(proxy, "/admin/breakers")["breakers"][PRO]["forced_by"] == "admin"

    audit = get(proxy, "/admin/audit?limit=5")["entries"]
    assert [(e["action"], e["target"], e["by"], e["epoch"]) for e in reversed(audit)] == [
        (action, PRO, "admin" if action == "reset" else "alice", epoch)
        for (action, _, _), epoch in zip(expected, epochs, strict=True)
    ]
    assert all(e["via"] == get(proxy, "/admin/state")["replica"] for e in audit)
    assert audit[0]["result"]["state"] == "closed" and audit[0]["reason"] == "drill: reset"
    assert len(get(proxy, "/admin/audit?limit=2")["entries"]) == 2

    # While forced open, traffic really moves.
    act(proxy, f"/admin/breakers/{FLASH}/force_open", {"reason": "no flash"})
    act(proxy, f"/admin/breakers/{PRO}/force_open", {"reason": "no pro"})
    response = generate(proxy)
    assert response.headers["x-gemini-breaker-model"] == LITE
    assert [a["model"] for a in calls(simulator)] == [LITE]


@pytest.mark.parametrize(
    ("method", "path", "body", "code", "says"),
    [
        ("POST", f"/admin/breakers/{PRO}/explode", {"reason": "x"}, 404, "Unknown breaker action"),
        ("POST", "/admin/breakers/no-such-model/open", {"reason": "x"}, 404, "Unknown model"),
        ("POST", f"/admin/breakers/{PRO}/open", {}, 400, "reason"),
        ("POST", f"/admin/breakers/{PRO}/open", {"reason": "  "}, 400, "reason"),
        ("POST", f"/admin/breakers/{PRO}/open", {"reason": "x", "by": ""}, 400, "by must"),
        ("POST", f"/admin/breakers/{PRO}/open", {"reason": "x", "by": 7}, 400, "by must"),
        ("POST", f"/admin/breakers/{PRO}/open", ["reason"], 400, "JSON object"),
        ("POST", f"/admin/breakers/{PRO}/open", "not json", 400, "not valid JSON"),
        ("GET", f"/admin/breakers/{PRO}/open", None, 405, "POST"),
        ("POST", "/admin/state", {"reason": "x"}, 405, "GET"),
        ("POST", "/admin/routes/no-such-route/pin", {"reason": "x"}, 404, "Unknown route"),
        ("POST", f"/admin/routes/{PRO}/pin", {"reason": "x", "ttl_seconds": 9}, 400, "'model'"),
        (
            "POST",
            f"/admin/routes/{PRO}/pin",
            {"model": "gemini-1.0-pro", "ttl_seconds": 9, "reason": "x"},
            400,
            "not in the chain",
        ),
        ("POST", f"/admin/routes/{PRO}/pin", {"model": FLASH, "reason": "x"}, 400, "ttl_seconds"),
        (
            "POST",
            f"/admin/routes/{PRO}/pin",
            {"model": FLASH, "ttl_seconds": 0, "reason": "x"},
            400,
            "7 days",
        ),
        (
            "POST",
            f"/admin/routes/{PRO}/pin",
            {"model": FLASH, "ttl_seconds": 7 * 86400 + 1, "reason": "x"},
            400,
            "7 days",
        ),
        (
            "POST",
            f"/admin/routes/{PRO}/pin",
            {"model": FLASH, "ttl_seconds": "600", "reason": "x"},
            400,
            "ttl_seconds",
        ),
        ("POST", f"/admin/routes/{PRO}/pin", {"model": FLASH, "ttl_seconds": 60}, 400, "reason"),
        ("POST", "/admin/routes/no-such-route/unpin", {"reason": "x"}, 404, "Unknown route"),
        ("GET", "/admin/audit?limit=0", None, 400, "limit"),
        ("GET", "/admin/audit?limit=lots", None, 400, "limit"),
    ],
)
def test_bad_admin_requests_say_what_is_wrong(
    proxy: str, method: str, path: str, body: Any, code: int, says: str
) -> None:
    content = body if isinstance(body, str) else None
    payload = None if isinstance(body, str) or body is None else body
    headers = {"content-type": "application/json"} if content is not None else None
    response = httpx.request(method, proxy + path, json=payload, content=content, headers=headers)
    assert response.status_code == code, response.text
    assert says in response.json()["error"]["message"]
    assert get(proxy, "/admin/audit")["entries"] == []  # nothing happened


def test_a_pin_moves_the_traffic_then_runs_out(proxy: str, simulator: SimulatorControl) -> None:
    answer = act(
        proxy,
        f"/admin/routes/{PRO}/pin",
        {"model": LITE, "ttl_seconds": 2.5, "reason": "cheaper for a while", "by": "bob"},
    )
    assert answer.status_code == 200, answer.text
    pinned = answer.json()
    assert pinned["pin"]["model"] == LITE and pinned["active"] == LITE
    assert pinned["effective_chain"] == [LITE, PRO, FLASH]
    assert 2.0 < pinned["pin"]["expires_in_seconds"] <= 2.5
    route = get(proxy, "/admin/routes")["routes"][PRO]
    assert route["pin"]["by"] == "bob" and route["pin"]["reason"] == "cheaper for a while"
    assert route["effective_chain"] == [LITE, PRO, FLASH] and route["chain"] == [PRO, FLASH, LITE]
    assert get(proxy, "/admin/state")["routes"][PRO]["pin"]["model"] == LITE

    response = generate(proxy)
    assert (response.headers["x-gemini-breaker-model"], response.json()["modelVersion"]) == (
        LITE,
        LITE,
    )
    assert response.headers["x-gemini-breaker-fallbacks"] == "0"
    # The pinned model's breaker still guards it: forced open, the chain takes over.
    act(proxy, f"/admin/breakers/{LITE}/force_open", {"reason": "lite broke"})
    assert get(proxy, "/admin/routes")["routes"][PRO]["active"] == PRO
    assert generate(proxy).headers["x-gemini-breaker-model"] == PRO
    act(proxy, f"/admin/breakers/{LITE}/close", {"reason": "lite fixed"})
    assert generate(proxy).headers["x-gemini-breaker-model"] == LITE
    assert [a["model"] for a in calls(simulator)] == [LITE, PRO, LITE]

    # Time's up: back to the chain, without anyone unpinning.
    # (The mirror ignores the pin at once; the active model follows the store's expiry, which
    # the next reconcile carries out.)
    eventually(lambda: get(proxy, "/admin/routes")["routes"][PRO]["pin"] is None, timeout=15.0)
    eventually(lambda: get(proxy, "/admin/routes")["routes"][PRO]["active"] == PRO, timeout=15.0)
    assert generate(proxy).headers["x-gemini-breaker-model"] == PRO
    expired = eventually(
        lambda: [e for e in get(proxy, "/admin/audit")["entries"] if e["action"] == "pin_expired"],
        timeout=15.0,
    )
    assert expired[0]["result"] == {"unpinned": LITE, "active": {PRO: PRO}}


def test_unpin_goes_back_to_the_chain(proxy: str, simulator: SimulatorControl) -> None:
    act(proxy, f"/admin/routes/{PRO}/pin", {"model": FLASH, "ttl_seconds": 600, "reason": "r"})
    assert generate(proxy).headers["x-gemini-breaker-model"] == FLASH
    answer = act(proxy, f"/admin/routes/{PRO}/unpin", {"reason": "over", "by": "carol"}).json()
    assert (answer["changed"], answer["active"]) == (True, PRO)
    assert answer["effective_chain"] == [PRO, FLASH, LITE]
    assert generate(proxy).headers["x-gemini-breaker-model"] == PRO
    again = act(proxy, f"/admin/routes/{PRO}/unpin", {"reason": "again"}).json()
    assert again["changed"] is False
    actions = [(e["action"], e["by"]) for e in get(proxy, "/admin/audit")["entries"]]
    assert actions == [("unpin", "admin"), ("unpin", "carol"), ("pin", "admin")]


def test_replicas_of_one_embedded_proxy(proxy: str) -> None:
    document = eventually(
        lambda: (d := get(proxy, "/admin/replicas"))["replicas"] and d, timeout=15.0
    )
    assert document["config_drift"] is False
    [me] = document["replicas"]
    assert me["self"] and me["alive"] and me["same_routes"]
    assert me["replica"] == document["replica"]
    assert me["routes_digest"] == document["routes_digest"]


# -- a cluster of three replicas --------------------------------------------------------------


def test_every_action_reaches_every_replica_and_the_audit(
    cluster: Cluster, simulator: SimulatorControl
) -> None:
    replicas = cluster()
    names = [get(url, "/admin/state")["replica"] for url in replicas]
    steps = [
        ("force_open", "forced_open", FLASH),
        ("disable", "disabled", PRO),
        ("open", "open", FLASH),
        ("close", "closed", PRO),
        ("reset", "closed", PRO),
    ]
    taken = []
    for i, (action, state, active) in enumerate(steps):
        url = replicas[i % 3]
        answer = act(url, f"/admin/breakers/{PRO}/{action}", {"reason": f"step {i}", "by": "ops"})
        assert answer.status_code == 200, answer.text
        epoch = answer.json()["epoch"]
        taken.append((action, PRO, epoch, names[i % 3]))
        states = wait_all(
            replicas,
            lambda s, state=state, epoch=epoch, active=active: (
                s["breakers"][PRO]["state"] == state
                and s["breakers"][PRO]["epoch"] == epoch
                and s["routes"][PRO]["active"] == active
            ),
        )
        assert {s["breakers"][PRO]["reason"] for s in states} == {f"step {i}"}

    pinned = act(
        replicas[1],
        f"/admin/routes/{PRO}/pin",
        {"model": FLASH, "ttl_seconds": 600, "reason": "steer", "by": "ops"},
    ).json()
    taken.append(("pin", PRO, pinned["epoch"], names[1]))
    wait_all(
        replicas,
        lambda s: (
            (s["routes"][PRO]["pin"] or {}).get("model") == FLASH
            and s["routes"][PRO]["active"] == FLASH
        ),
    )
    assert {served for served, _, _ in spread(replicas, 6)} == {FLASH}
    unpinned = act(replicas[2], f"/admin/routes/{PRO}/unpin", {"reason": "done", "by": "ops"})
    taken.append(("unpin", PRO, unpinned.json()["epoch"], names[2]))
    wait_all(
        replicas, lambda s: s["routes"][PRO]["pin"] is None and s["routes"][PRO]["active"] == PRO
    )

    # One audit for the cluster, the same from every replica, newest first.
    for url in replicas:
        entries = get(url, "/admin/audit?limit=20")["entries"]
        assert [(e["action"], e["target"], e["epoch"], e["via"]) for e in entries] == list(
            reversed(taken)
        )
        assert {e["by"] for e in entries} == {"ops"}

    # Every replica heard every other one, and they run the same routes.
    for url in replicas:
        document = eventually(
            lambda url=url: len((d := get(url, "/admin/replicas"))["replicas"]) == 3 and d,
            timeout=15.0,
        )
        assert document["config_drift"] is False
        assert {r["replica"] for r in document["replicas"]} == set(names)
        assert all(r["alive"] and r["same_routes"] for r in document["replicas"])


def test_a_pin_moves_every_replica_and_runs_out_everywhere(
    cluster: Cluster, simulator: SimulatorControl
) -> None:
    replicas = cluster()
    assert {served for served, _, _ in spread(replicas, 3)} == {PRO}
    answer = act(
        replicas[0],
        f"/admin/routes/{PRO}/pin",
        {"model": FLASH, "ttl_seconds": 4, "reason": "pro is slow today"},
    )
    assert answer.status_code == 200, answer.text
    wait_all(replicas, lambda s: (s["routes"][PRO]["pin"] or {}).get("model") == FLASH)
    simulator.clear_attempts()
    assert set(spread(replicas, 9)) == {(FLASH, FLASH, "0")}
    assert [a["model"] for a in calls(simulator)] == [FLASH] * 9

    wait_all(
        replicas,
        lambda s: s["routes"][PRO]["pin"] is None and s["routes"][PRO]["active"] == PRO,
        timeout=20,
    )
    simulator.clear_attempts()
    assert set(spread(replicas, 6)) == {(PRO, PRO, "0")}
    assert [a["model"] for a in calls(simulator)] == [PRO] * 6
    entries = get(replicas[2], "/admin/audit")["entries"]
    # Every replica's reconcile races to drop it; the script runs once.
    assert [e["action"] for e in entries] == ["pin_expired", "pin"]


def test_replicas_that_disagree_on_routes_are_flagged(
    cluster: Cluster, simulator: SimulatorControl, redis_server: RedisServer, tmp_path: Path
) -> None:
    replicas = cluster(count=2)
    eventually(lambda: len(get(replicas[0], "/admin/replicas")["replicas"]) == 2, timeout=15.0)
    assert get(replicas[0], "/admin/replicas")["config_drift"] is False
    config = {
        "upstream": {"base_url": "http://127.0.0.1:9"},
        "redis": {"url": redis_server.url, "reconcile_interval": 0.2},
        "routes": {"fast": [FLASH, LITE]},
        "admin": {"allow_unauthenticated_loopback": True},
    }
    path = tmp_path / "odd.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    with running(["serve", "--config", str(path), "--port", str(port)], {}) as log:
        odd = f"http://127.0.0.1:{port}"
        for url in [*replicas, odd]:
            document = eventually(
                lambda url=url: (d := get(url, "/admin/replicas"))["config_drift"] and d,
                timeout=15.0,
            )
            assert len(document["replicas"]) == 3
            assert get(url, "/admin/state")["config_drift"] is True
        digests = {r["routes_digest"] for r in get(odd, "/admin/replicas")["replicas"]}
        assert len(digests) == 2
        eventually(lambda: any("config drift" in line for line in log), timeout=15.0)
    assert ask(replicas[0])[0] == PRO  # drift is reported, not acted on


# -- the command line -------------------------------------------------------------------------


@pytest.fixture
def guarded(simulator_url: str) -> Iterator[str]:
    settings = proxy_settings(simulator_url, admin={"token": TOKEN})
    with serve(create_app(settings)) as url:
        yield url


def cli(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GEMINI_BREAKER_ADMIN_TOKEN"}
    if token is not None:
        env["GEMINI_BREAKER_ADMIN_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "proxy", "admin", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def lines_with(text: str, *words: str) -> list[str]:
    return [line for line in text.splitlines() if all(w in line for w in words)]


def test_the_cli_reads_as_tables_and_json(guarded: str) -> None:
    state = cli("--url", guarded, "--token", TOKEN, "state")
    assert state.returncode == 0, state.stderr
    assert lines_with(state.stdout, "ROUTE", "ACTIVE", "CHAIN")
    assert lines_with(state.stdout, PRO, f"{PRO} > {FLASH} > {LITE}")
    assert lines_with(state.stdout, "MODEL", "STATE", "EPOCH")
    assert lines_with(state.stdout, LITE, "closed")

    # Options go before or after the subcommand; the token may come from the environment.
    as_json = cli("state", "--json", "--url", guarded, token=TOKEN)
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["routes"][PRO]["chain"] == [PRO, FLASH, LITE]

    replicas = cli("--url", guarded, "--token", TOKEN, "replicas")
    assert replicas.returncode == 0, replicas.stderr
    assert lines_with(replicas.stdout, "(this one)", "yes")
    assert "config drift: none" in replicas.stdout
    breakers = cli("--url", guarded, "--token", TOKEN, "breakers")
    assert lines_with(breakers.stdout, "MODEL", "STATE", "ROUTES")
    assert lines_with(breakers.stdout, FLASH, "closed", PRO)


def test_the_cli_acts_and_the_audit_shows_it(guarded: str, simulator: SimulatorControl) -> None:
    base = ("--url", guarded, "--token", TOKEN)
    forced = cli(*base, "force-open", PRO, "--reason", "maintenance window", "--by", "alice")
    assert forced.returncode == 0, forced.stderr
    assert f"breaker {PRO}: forced_open" in forced.stdout
    assert f"{PRO} -> {FLASH}" in forced.stdout
    breakers = cli(*base, "breakers")
    assert lines_with(breakers.stdout, PRO, "forced_open", "maintenance window", "alice")

    pinned = cli(*base, "pin", PRO, LITE, "--ttl", "10m", "--reason", "cost", "--json")
    assert pinned.returncode == 0, pinned.stderr
    pin = json.loads(pinned.stdout)["pin"]
    assert pin["model"] == LITE and 590 < pin["expires_in_seconds"] <= 600
    routes = cli(*base, "routes")
    assert lines_with(routes.stdout, PRO, LITE, "cost", f"{LITE} > {PRO} > {FLASH}")
    assert generate(guarded).headers["x-gemini-breaker-model"] == LITE

    unpinned = cli(*base, "unpin", PRO, "--reason", "done")
    assert unpinned.returncode == 0 and f"route {PRO} unpinned" in unpinned.stdout
    again = cli(*base, "unpin", PRO, "--reason", "done")
    assert again.returncode == 0 and "was not pinned" in again.stdout
    for action in ("disable", "open", "close", "reset"):
        done = cli(*base, action, FLASH, "--reason", f"cli {action}")
        assert done.returncode == 0, done.stderr

    audit = cli(*base, "audit", "--limit", "8")
    assert audit.returncode == 0, audit.stderr
    rows = audit.stdout.splitlines()[1:]
    assert [row.split()[3] for row in rows] == [
        "reset",
        "close",
        "open",
        "disable",
        "unpin",
        "unpin",
        "pin",
        "force_open",
    ]
    assert lines_with(audit.stdout, "force_open", PRO, "alice", "maintenance window")
    entries = json.loads(cli(*base, "audit", "--json", "--limit", "1").stdout)["entries"]
    assert entries[0]["action"] == "reset" and entries[0]["reason"] == "cli reset"


def test_cli_errors_print_the_servers_message(guarded: str) -> None:
    wrong = cli("--url", guarded, "--token", "nope", "state")
    assert wrong.returncode == 1 and wrong.stdout == ""
    assert "403 PERMISSION_DENIED: The admin token is not valid." in wrong.stderr
    missing = cli("--url", guarded, "state")
    assert missing.returncode == 1 and "401 UNAUTHENTICATED" in missing.stderr
    unknown = cli("--url", guarded, "open", "gemini-0", "--reason", "x", token=TOKEN)
    assert unknown.returncode == 1 and "404 NOT_FOUND: Unknown model 'gemini-0'" in unknown.stderr
    bad_pin = cli("--url", guarded, "pin", PRO, "gemini-0", "--ttl", "60", "--reason", "x",
                  token=TOKEN)  # fmt: skip
    assert bad_pin.returncode == 1 and "not in the chain" in bad_pin.stderr
    too_long = cli("--url", guarded, "pin", PRO, FLASH, "--ttl", "8d", "--reason", "x", token=TOKEN)
    assert too_long.returncode == 1 and "7 days" in too_long.stderr
    usage = cli("--url", guarded, "pin", PRO, FLASH, "--reason", "x", token=TOKEN)
    assert usage.returncode == 2 and "--ttl" in usage.stderr
    down = cli("--url", f"http://127.0.0.1:{free_port()}", "state", token=TOKEN)
    assert down.returncode == 1 and "cannot reach" in down.stderr
