"""The cluster series (``GET /admin/series``) and metrics that are complete from start-up:
the tallies and their folding, the Redis scripts on a real redis-server, a three-replica
cluster whose series agrees with the sum of the replicas' ``/metrics``, and a fresh replica
that exports its failover counters at 0 in an exposition ``promtool`` accepts."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections import Counter
from typing import Any

import anyio
import httpx
import pytest
import redis.asyncio
from prometheus_client.parser import text_string_to_metric_families

from proxy.app import create_app
from proxy.cluster.health import StoreUnavailable
from proxy.cluster.keys import Keys
from proxy.cluster.series import MAX_FIELDS, RawSeries, SeriesStore, fold, quantile
from proxy.config_load import build_settings
from proxy.simulator.client import SimulatorControl
from proxy.telemetry.known import FAILOVER_REASONS, breaker_edges
from proxy.telemetry.tallies import LATENCY_BOUNDS, OTHER, SeriesTallies, status_kind

from .conftest import ROUTES, proxy_settings
from .coordinator_support import DEADLINE, replica
from .redis_support import RedisServer
from .redis_support import redis_server as redis_server  # the fixture
from .support import eventually_async, serve
from .test_cluster_e2e import FLASH, PRO, Cluster, spread, wait_all
from .test_cluster_e2e import cluster as cluster  # the fixture

LITE = "gemini-2.5-flash-lite"

# -- pure parts --------------------------------------------------------------------------------


def test_tallies_count_names_outside_the_configuration_as_other() -> None:
    tallies = SeriesTallies()
    tallies.know([PRO, FLASH])
    tallies.request(PRO, FLASH, 200, 0.3)
    tallies.request("made-up-model", "made-up-model", 404, 0.01)
    tallies.add("", PRO, "attempts")
    assert tallies.take() == {
        (PRO, FLASH, "ok"): 1,
        (PRO, "", "lat3"): 1,  # 0.25 < 0.3 <= 0.5
        (OTHER, OTHER, "4xx"): 1,
        (OTHER, "", "lat0"): 1,
        ("", PRO, "attempts"): 1,
    }
    assert tallies.take() == {}
    assert [status_kind(s) for s in (200, 404, 429, 503)] == ["ok", "4xx", "429", "5xx"]


def test_quantiles_interpolate_within_the_bucket_as_prometheus_does() -> None:
    counts = [0] * (len(LATENCY_BOUNDS) + 1)
    assert quantile(counts, 0.5) is None
    counts[3] = 10  # ten answers between 0.25 s and 0.5 s
    assert quantile(counts, 0.5) == pytest.approx(0.375)
    counts[-1] = 1  # one beyond the last bound: p99 is that bound, not infinity
    assert quantile(counts, 0.99) == LATENCY_BOUNDS[-1]


def test_fold_aligns_every_route_and_model_with_the_window() -> None:
    raw = RawSeries(
        now_ms=11_500,
        last_ms=10_000,
        buckets=(
            (8_000, {f"{PRO}|{PRO}|ok": 4, f"{PRO}||lat2": 4, f"|{PRO}|attempts": 6}),
            (10_000, {f"{PRO}|{FLASH}|ok": 3, f"{PRO}|{FLASH}|fallbacks": 3, f"|{PRO}|shed": 1}),
            (1_000, {f"{PRO}|{PRO}|ok": 99}),  # before the window: left out
            (11_000, {f"{PRO}|{PRO}|ok": 99}),  # under way: left out
        ),
    )
    document = fold(raw, {PRO: [PRO, FLASH]}, resolution_ms=1000, buckets=3)
    assert document["times_ms"] == [8_000, 9_000, 10_000]
    route = document["routes"][PRO]
    assert route["served"] == {PRO: [4, 0, 0], FLASH: [0, 0, 3]}
    assert route["fallbacks"] == [0, 0, 3]
    assert route["latency_p50"][1:] == [None, None]
    assert 0.1 < route["latency_p50"][0] <= 0.25
    assert document["models"][PRO]["attempts"] == [6, 0, 0]
    assert document["models"][FLASH]["fallbacks"] == [0, 0, 3]
    assert document["totals"] == {
        "requests": {PRO: {PRO: {"ok": 4}, FLASH: {"ok": 3}}},
        "fallbacks": {PRO: {FLASH: 3}},
        "attempts": {PRO: 6},
        "sheds": {PRO: 1},
    }


# -- the scripts on a real redis-server --------------------------------------------------------


def test_replicas_tallies_are_summed_in_expiring_capped_buckets(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> None:
        client = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            keys = Keys("series-test")
            store = SeriesStore(client, keys, resolution=60.0, window=600.0, settle=0)
            seconds, micros = await client.time()
            ended = store.bucket_of(seconds * 1000 + micros // 1000) - store.resolution_ms
            await store.add({(PRO, PRO, "ok"): 2, (PRO, "", "lat1"): 2}, ended)  # one replica
            await store.add({(PRO, PRO, "ok"): 3, ("", PRO, "attempts"): 4}, ended)  # another
            await store.add({}, ended)  # nothing to say: no call
            under_way = ended + store.resolution_ms
            await store.add({(PRO, PRO, "ok"): 1}, under_way)  # shown once it has ended
            raw = await store.read()
            # The bucket under way is not shown (unless the minute just turned).
            assert len(raw.buckets) in (1, 2)
            assert raw.buckets[0] == (
                ended,
                {f"{PRO}|{PRO}|ok": 5, f"{PRO}||lat1": 2, f"|{PRO}|attempts": 4},
            )
            key = f"{keys.prefix}series:{ended}"
            # Kept for the window, plus the bucket under way and the last one ended.
            assert await client.pexpiretime(key) == ended + store.keep_ms == ended + 720_000
            # A bucket full to its cap takes no new fields, however many replicas send names
            # (one call's batch may take it past: the cap is checked once per call).
            await store.add({(f"route-{i}", "m", "ok"): 1 for i in range(MAX_FIELDS)}, ended)
            await store.add({("one-more", "m", "ok"): 1, (PRO, PRO, "ok"): 1}, ended)
            assert await client.hlen(key) == 3 + MAX_FIELDS
            assert await client.hget(key, f"{PRO}|{PRO}|ok") == b"5"
        finally:
            await client.aclose()

    asyncio.run(scenario())


@pytest.mark.anyio
async def test_counts_made_while_redis_is_away_reach_the_series_when_it_returns(
    redis_server: RedisServer,
) -> None:
    settings = build_settings(
        {
            "redis": {
                "url": redis_server.url,
                "reconcile_interval": 0.05,
                "retry_seconds": 0.05,
                "failures_to_degrade": 1,
            },
            "routes": {PRO: [PRO, FLASH]},
            "admin": {"series_resolution": 0.2, "series_window": 60},
        }
    )
    async with replica(settings) as coordinator:
        tallies = SeriesTallies()
        tallies.know([PRO, FLASH])
        coordinator.sync.tallies = tallies
        redis_server.stop()  # (it keeps nothing: only counts made from now on can be found)
        for _ in range(5):
            tallies.request(PRO, FLASH, 200, 0.1)
        await eventually_async(lambda: coordinator.degraded, what="fail-static")
        with pytest.raises(StoreUnavailable):
            await coordinator.actions.series_document()  # refused: the series is the cluster's
        redis_server.start()
        await eventually_async(lambda: not coordinator.degraded, what="Redis adopted again")
        deadline = time.monotonic() + DEADLINE
        while True:
            totals = (await coordinator.actions.series_document())["totals"]["requests"]
            if totals:
                break
            assert time.monotonic() < deadline, "the counts never reached the series"
            await anyio.sleep(0.05)
        assert totals == {PRO: {FLASH: {"ok": 5}}}


# -- metrics complete from start-up -------------------------------------------------------------


def _samples(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    found: dict[frozenset[tuple[str, str]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[frozenset(sample.labels.items())] = sample.value
    return found


def test_a_fresh_replica_exports_its_failover_counters_at_zero(simulator_url: str) -> None:
    with serve(create_app(proxy_settings(simulator_url))) as url:
        text = httpx.get(url + "/metrics", timeout=10).text
    failovers = _samples(text, "gemini_breaker_failover_events_total")
    expected = {
        frozenset({("route", PRO), ("from_model", old), ("to_model", new), ("reason", reason)})
        for old, new in ((PRO, FLASH), (PRO, LITE), (FLASH, LITE))
        for reason in FAILOVER_REASONS
    }
    assert expected <= set(failovers)
    assert all(failovers[labels] == 0 for labels in expected)
    transitions = _samples(text, "gemini_breaker_breaker_transitions_total")
    for model in ROUTES[PRO]:
        for old, new in (("closed", "open"), ("open", "half_open"), ("half_open", "closed")):
            labels = frozenset({("model", model), ("from_state", old), ("to_state", new)})
            assert transitions[labels] == 0
    assert ("closed", "half_open") not in breaker_edges()
    sheds = _samples(text, "gemini_breaker_sheds_total")
    assert sheds[frozenset({("model", PRO), ("reason", "cooldown")})] == 0
    requests = _samples(text, "gemini_breaker_requests_total")
    served = {("model", FLASH), ("status_code", "200"), ("route", PRO)}
    assert requests[frozenset({*served, ("gen_ai_operation_name", "generate_content")})] == 0

    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("promtool is missing; make test installs it (Debian's prometheus)")
        pytest.skip("promtool is missing (apt-get install prometheus, or make test as root)")
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- the series of a cluster ---------------------------------------------------------------------


def _metric_totals(replicas: list[str]) -> dict[str, Any]:
    """The series' totals as the sum of every replica's ``/metrics``."""
    requests: Counter[tuple[str, str, str]] = Counter()
    fallbacks: Counter[tuple[str, str]] = Counter()
    sheds: Counter[str] = Counter()
    for url in replicas:
        text = httpx.get(url + "/metrics", timeout=10).text
        for labels, value in _samples(text, "gemini_breaker_requests_total").items():
            found = dict(labels)
            requests[found["route"], found["model"], status_kind(int(found["status_code"]))] += int(
                value
            )
        for labels, value in _samples(text, "gemini_breaker_failover_events_total").items():
            found = dict(labels)
            fallbacks[found["route"], found["to_model"]] += int(value)
        for labels, value in _samples(text, "gemini_breaker_sheds_total").items():
            sheds[dict(labels)["model"]] += int(value)
    totals: dict[str, Any] = {"requests": {}, "fallbacks": {}, "sheds": {}}
    for (route, model, kind), count in requests.items():
        if count:
            totals["requests"].setdefault(route, {}).setdefault(model, {})[kind] = count
    for (route, model), count in fallbacks.items():
        if count:
            totals["fallbacks"].setdefault(route, {})[model] = count
    totals["sheds"] = {model: count for model, count in sheds.items() if count}
    return totals


def test_the_series_sums_what_the_replicas_count(
    cluster: Cluster, simulator: SimulatorControl
) -> None:
    replicas = cluster(admin={"series_resolution": 1.0, "series_window": 300})
    assert {served for served, _, _ in spread(replicas, 6)} == {PRO}
    simulator.set_faults(PRO, [{"kind": "error", "status": 503}])
    assert {served for served, _, _ in spread(replicas, 9)} == {FLASH}
    wait_all(replicas, lambda s: s["routes"][PRO]["active"] == FLASH)
    assert {served for served, _, _ in spread(replicas, 6)} == {FLASH}

    expected = _metric_totals(replicas)
    assert expected["requests"][PRO] == {PRO: {"ok": 6}, FLASH: {"ok": 15}}
    assert expected["fallbacks"] == {PRO: {FLASH: 15}}
    # Each replica's tallies reach the series with its next heartbeat; every replica serves
    # the same series.
    deadline = time.monotonic() + 20
    while True:
        documents = [httpx.get(url + "/admin/series", timeout=10).json() for url in replicas]
        got = [{k: d["totals"][k] for k in ("requests", "fallbacks", "sheds")} for d in documents]
        if all(g == expected for g in got):
            break
        assert time.monotonic() < deadline, f"series {got[0]} never reached {expected}"
        time.sleep(0.1)
    route = documents[0]["routes"][PRO]
    assert sum(route["served"][PRO]) == 6 and sum(route["served"][FLASH]) == 15
    # Every upstream attempt got an answer's headers here, so each was timed once.
    for model in (PRO, FLASH):
        timed = sum(
            value
            for url in replicas
            for labels, value in _samples(
                httpx.get(url + "/metrics", timeout=10).text,
                "gemini_breaker_upstream_latency_seconds_count",
            ).items()
            if ("model", model) in labels
        )
        assert sum(documents[0]["models"][model]["attempts"]) == timed > 0
    transitions = [(t["model"], t["from"], t["to"]) for t in documents[0]["transitions"]]
    assert (PRO, "closed", "open") in transitions
