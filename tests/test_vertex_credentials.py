"""Credentials for Vertex requests: the client's own token passes through untouched; a request
with none gets a token from Application Default Credentials, here GKE-style from a fake
metadata server (google-auth reads ``GCE_METADATA_HOST`` at import, so the proxy runs as its
own process). Tokens are reused while valid, replaced before they expire, and never logged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from google.genai import Client, types
from google.oauth2.credentials import Credentials

from proxy.simulator import SimulatorConfig, create_simulator_app
from proxy.simulator.attempts import key_digest
from proxy.simulator.client import SimulatorControl
from proxy.simulator.metadata import create_metadata_app

from .conftest import calls
from .support import free_port, running, serve

FLASH, EU, PROJECT = "gemini-2.5-flash", "europe-west4", "test-project"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[str, SimulatorControl, str, list[str]]]:
    """(proxy URL, the region's simulator, the metadata server's URL, the proxy's log)."""
    with (
        serve(create_simulator_app(SimulatorConfig())) as region,
        serve(create_metadata_app()) as metadata,
        SimulatorControl(region) as simulator,
    ):
        config = tmp_path / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "upstream": {"base_url": "http://127.0.0.1:9"},
                    "vertex": {"project": PROJECT, "location": EU, "origins": {EU: region}},
                    "routes": {},
                }
            )
        )
        host = metadata.removeprefix("http://")
        env = {
            "GCE_METADATA_HOST": host,
            "GCE_METADATA_IP": host,
            "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "absent.json"),
            "CLOUDSDK_CONFIG": str(tmp_path),
        }
        env.pop("GOOGLE_APPLICATION_CREDENTIALS")
        port = free_port()
        with running(["serve", "--config", str(config), "--port", str(port)], env) as log:
            yield f"http://127.0.0.1:{port}", simulator, metadata, log


def short_form(proxy: str) -> Client:
    """The gateway form: no project, location or token from the SDK."""
    return Client(
        vertexai=True,
        http_options=types.HttpOptions(
            base_url=proxy, base_url_resource_scope=types.ResourceScope.COLLECTION
        ),
    )


def test_requests_without_credentials_get_metadata_tokens_refreshed_before_expiry(
    stack: tuple[str, SimulatorControl, str, list[str]],
) -> None:
    proxy, simulator, metadata, log = stack
    client = short_form(proxy)
    httpx.put(f"{metadata}/_control", json={"expires_in": 60})  # inside the refresh margin
    client.models.generate_content(model=FLASH, contents="one")
    client.models.generate_content(model=FLASH, contents="two")  # token 1 is about to expire
    httpx.put(f"{metadata}/_control", json={"expires_in": 3600})
    client.models.generate_content(model=FLASH, contents="three")
    client.models.generate_content(model=FLASH, contents="four")  # token 3 is still good
    seen = [attempt["key_digest"] for attempt in calls(simulator)]
    assert seen == [key_digest(f"metadata-token-{n}") for n in (1, 2, 3, 3)]
    assert httpx.get(f"{metadata}/_control").json()["issued"] == 3
    assert not any("metadata-token" in line for line in log)


def test_a_client_token_is_never_replaced(
    stack: tuple[str, SimulatorControl, str, list[str]],
) -> None:
    proxy, simulator, metadata, _ = stack
    client = Client(
        vertexai=True,
        project=PROJECT,
        location=EU,
        credentials=Credentials(token="the-clients-own"),
        http_options=types.HttpOptions(base_url=proxy),
    )
    client.models.generate_content(model=FLASH, contents="hello")
    [attempt] = calls(simulator)
    assert attempt["key_digest"] == key_digest("the-clients-own")
    assert httpx.get(f"{metadata}/_control").json()["issued"] == 0
