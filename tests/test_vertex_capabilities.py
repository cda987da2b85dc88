"""Capability-aware routing between Vertex targets: the real google-genai SDK in Vertex mode,
the real proxy, one simulator per location. Vertex publishes no token limits on its model
resource, so a target's limits and unsupported features are its model's configured ones
(docs/vertex.md): a request too long for the first target moves to a larger one, and a
fallback lacking a feature the request needs is passed over."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from google.genai import Client, types
from google.oauth2.credentials import Credentials

from proxy.app import create_app
from proxy.simulator import SimulatorConfig, create_simulator_app
from proxy.simulator.client import SimulatorControl
from proxy.simulator.config import build_simulator_config

from .conftest import calls, proxy_settings
from .support import serve

PRO, FLASH, LITE = "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"
US, EU, PROJECT = "us-central1", "europe-west4", "test-project"
LONG_PROMPT = "word " * 200  # about 250 tokens
DEVELOPER = "developer-api"


@dataclass(frozen=True)
class Regions:
    urls: dict[str, str]
    sims: dict[str, SimulatorControl]

    def proxy(self, **sections: Any) -> Any:
        """A proxy serving both locations from their simulators."""
        return create_app(
            proxy_settings(
                self.urls[DEVELOPER],
                vertex={
                    "project": PROJECT,
                    "location": US,
                    "origins": {US: self.urls[US], EU: self.urls[EU]},
                },
                **sections,
            )
        )


@pytest.fixture
def regions() -> Iterator[Regions]:
    """Two locations, plus the Developer API origin that Vertex targets never reach; flash in
    us-central1 really refuses prompts over 50 tokens."""
    small_flash = build_simulator_config({"models": {FLASH: {"input_token_limit": 50}}})
    with (
        serve(create_simulator_app(small_flash)) as us,
        serve(create_simulator_app(SimulatorConfig())) as eu,
        serve(create_simulator_app(SimulatorConfig())) as developer,
    ):
        urls = {US: us, EU: eu, DEVELOPER: developer}
        sims = {name: SimulatorControl(url) for name, url in urls.items()}
        try:
            yield Regions(urls, sims)
        finally:
            for control in sims.values():
                control.close()


def vertex(proxy: str) -> Client:
    return Client(
        vertexai=True,
        project=PROJECT,
        location=US,
        credentials=Credentials(token="client-oauth-token"),
        http_options=types.HttpOptions(base_url=proxy),
    )


def served_by(response: Any) -> str:
    return str(response.sdk_http_response.headers["x-gemini-breaker-model"])


def test_a_prompt_over_the_first_targets_configured_limit_goes_to_a_larger_target(
    regions: Regions,
) -> None:
    app = regions.proxy(
        models={
            FLASH: {"capabilities": {"input_token_limit": 50}},
            PRO: {"capabilities": {"input_token_limit": 1_048_576}},
        },
        routes={FLASH: [f"{FLASH}@{US}", f"{PRO}@{EU}"]},
    )
    with serve(app) as proxy:
        client = vertex(proxy)
        long = client.models.generate_content(model=FLASH, contents=LONG_PROMPT)
        assert served_by(long) == f"{PRO}@{EU}"
        # The first target is always asked (the estimate may be off); its "input too long"
        # 400 moved the request, once, to the target whose configured limit is larger.
        [refused] = calls(regions.sims[US])
        assert (refused["model"], refused["status"]) == (FLASH, 400)
        assert [a["model"] for a in calls(regions.sims[EU])] == [PRO]
        short = client.models.generate_content(model=FLASH, contents="short")
        assert served_by(short) == f"{FLASH}@{US}"
        # No limit was looked up from a Developer API models.get for a Vertex target.
        assert regions.sims[DEVELOPER].attempts() == []


def test_a_vertex_fallback_lacking_a_needed_feature_is_skipped(
    regions: Regions,
) -> None:
    app = regions.proxy(
        models={LITE: {"capabilities": {"unsupported": ["google_search"]}}},
        routes={PRO: [f"{PRO}@{US}", f"{LITE}@{US}", f"{FLASH}@{EU}"]},
    )
    regions.sims[US].set_faults(PRO, [{"kind": "error", "status": 503}])
    with serve(app) as proxy:
        client = vertex(proxy)
        search = types.GenerateContentConfig(tools=[types.Tool(google_search=types.GoogleSearch())])
        with_search = client.models.generate_content(
            model=PRO, contents="news today", config=search
        )
        assert served_by(with_search) == f"{FLASH}@{EU}"  # flash-lite was passed over
        plain = client.models.generate_content(model=PRO, contents="hello")
        assert served_by(plain) == f"{LITE}@{US}"  # it can serve this one
    assert [a["model"] for a in calls(regions.sims[US])] == [PRO, PRO, LITE]
    assert [a["model"] for a in calls(regions.sims[EU])] == [FLASH]
