"""Credentials for Vertex requests: the client's own token passes through untouched; a request
with none gets a token from Application Default Credentials, GKE-style from a fake metadata
server or from a service-account file (a key made for the test, its grants checked by the
simulator's token endpoint). google-auth reads ``GCE_METADATA_HOST`` at import, so the proxy
runs as its own process. Tokens are reused while valid, replaced before they expire, fetched
off the event loop, and never logged."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import crypt
from google.auth import jwt as google_jwt
from google.auth._helpers import REFRESH_THRESHOLD
from google.genai import Client, errors, types
from google.oauth2.credentials import Credentials
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from proxy.simulator import SimulatorConfig, create_simulator_app
from proxy.simulator.app import SimulatorApp
from proxy.simulator.attempts import key_digest
from proxy.simulator.client import SimulatorControl
from proxy.simulator.live import LiveFault
from proxy.simulator.metadata import TokenIssuer, create_metadata_app

from .conftest import calls
from .support import eventually, free_port, running, serve

FLASH, EU, PROJECT = "gemini-2.5-flash", "europe-west4", "test-project"
VERTEX_LIVE_PATH = "/ws/google.cloud.aiplatform.v1beta1.LlmBidiService/BidiGenerateContent"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[str, SimulatorControl, str, list[str]]]:
    """(proxy URL, the region's simulator, the metadata server's URL, the proxy's log)."""
    with (
        serve(create_simulator_app(SimulatorConfig())) as region,
        serve(create_metadata_app()) as metadata,
        SimulatorControl(region) as simulator,
        proxy_on_metadata(tmp_path, region, metadata) as (proxy, log),
    ):
        yield proxy, simulator, metadata, log


@contextlib.contextmanager
def proxy_on_metadata(
    tmp_path: Path, region: str, metadata: str
) -> Iterator[tuple[str, list[str]]]:
    """A proxy process whose Application Default Credentials come from the metadata server at
    ``metadata``, serving the Vertex location EU at ``region``; (its URL, its log)."""
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
        yield f"http://127.0.0.1:{port}", log


LIVE_SETUP = json.dumps(
    {"setup": {"model": f"projects/{PROJECT}/locations/{EU}/publishers/google/models/{FLASH}"}}
)


@contextlib.contextmanager
def live_on_metadata(tmp_path: Path, region: SimulatorApp) -> Iterator[tuple[str, list[str]]]:
    """``region`` served as EU's origin behind a proxy on the metadata server's credentials;
    (the proxy's Vertex Live URL, its log)."""
    with (
        serve(region) as region_url,
        serve(create_metadata_app()) as metadata,
        proxy_on_metadata(tmp_path, region_url, metadata) as (proxy, log),
    ):
        yield proxy.replace("http://", "ws://") + VERTEX_LIVE_PATH, log


@pytest.mark.anyio
async def test_a_vertex_live_session_without_credentials_gets_a_metadata_token(
    tmp_path: Path,
) -> None:
    """A Live session with no credential of its own (a client speaking the frames itself: the
    SDK would fetch a token first) is opened upstream with the pod's token, never logged."""
    region = create_simulator_app(SimulatorConfig())
    with live_on_metadata(tmp_path, region) as (url, log):
        async with connect(url) as session:
            await session.send(LIVE_SETUP)
            assert "setupComplete" in json.loads(await session.recv())
    assert region.live.paths == [VERTEX_LIVE_PATH]
    assert region.live.credentials == [key_digest("metadata-token-1")]
    assert not any("metadata-token" in line for line in log)


@pytest.mark.anyio
async def test_a_live_upgrade_refused_401_replaces_the_pods_token_for_the_next_session(
    tmp_path: Path,
) -> None:
    region = create_simulator_app(SimulatorConfig())
    region.live.add_fault(FLASH, LiveFault("refuse", status=401))
    with live_on_metadata(tmp_path, region) as (url, _):
        async with connect(url) as refused:
            await refused.send(LIVE_SETUP)
            with pytest.raises(ConnectionClosed) as closed:
                await refused.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        async with connect(url) as session:
            await session.send(LIVE_SETUP)
            assert "setupComplete" in json.loads(await session.recv())
    assert region.live.credentials == [key_digest("metadata-token-2")]


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


def test_a_token_valid_at_first_use_is_replaced_once_it_expires(
    stack: tuple[str, SimulatorControl, str, list[str]],
) -> None:
    """The first token is good for a couple of seconds as google-auth sees it (its expiry
    minus the refresh threshold): it serves requests, then, as time passes, a new one does."""
    proxy, simulator, metadata, log = stack
    client = short_form(proxy)
    lifetime = int(REFRESH_THRESHOLD.total_seconds()) + 2
    httpx.put(f"{metadata}/_control", json={"expires_in": lifetime})
    client.models.generate_content(model=FLASH, contents="first")
    httpx.put(f"{metadata}/_control", json={"expires_in": 3600})
    first, second = key_digest("metadata-token-1"), key_digest("metadata-token-2")

    def renewed() -> bool:
        client.models.generate_content(model=FLASH, contents="again")
        return bool(calls(simulator)[-1]["key_digest"] == second)

    eventually(renewed, timeout=30, interval=0.2, what="a request with the second token")
    seen = [attempt["key_digest"] for attempt in calls(simulator)]
    used = seen.index(second)
    assert used >= 1 and seen[:used] == [first] * used  # valid at first use, then replaced
    assert seen[used:] == [second]
    assert httpx.get(f"{metadata}/_control").json()["issued"] == 2
    assert not any("metadata-token" in line for line in log)


def test_a_token_the_upstream_refuses_is_replaced_for_the_next_request(
    stack: tuple[str, SimulatorControl, str, list[str]],
) -> None:
    """A 401 to a request carrying the proxy's token (revoked, rotated) drops that token,
    though google-auth still deems it valid: the next request fetches a new one. The refused
    request itself is answered 401, not retried."""
    proxy, simulator, metadata, log = stack
    client = short_form(proxy)
    client.models.generate_content(model=FLASH, contents="one")
    simulator.set_faults(FLASH, [{"kind": "error", "status": 401, "times": 1}])
    with pytest.raises(errors.ClientError) as refused:
        client.models.generate_content(model=FLASH, contents="two")
    assert refused.value.code == 401
    client.models.generate_content(model=FLASH, contents="three")
    client.models.generate_content(model=FLASH, contents="four")
    seen = [attempt["key_digest"] for attempt in calls(simulator)]
    assert seen == [key_digest(f"metadata-token-{n}") for n in (1, 1, 2, 2)]
    assert httpx.get(f"{metadata}/_control").json()["issued"] == 2
    assert not any("metadata-token" in line for line in log)


def test_a_401_to_a_client_token_keeps_the_pods_token(
    stack: tuple[str, SimulatorControl, str, list[str]],
) -> None:
    """Only a 401 to the token the proxy added drops it: the client's own token is its own."""
    proxy, simulator, _, _ = stack
    pods = short_form(proxy)
    pods.models.generate_content(model=FLASH, contents="one")
    simulator.set_faults(FLASH, [{"kind": "error", "status": 401, "times": 1}])
    own = Client(
        vertexai=True,
        project=PROJECT,
        location=EU,
        credentials=Credentials(token="the-clients-own"),
        http_options=types.HttpOptions(base_url=proxy),
    )
    with pytest.raises(errors.ClientError):
        own.models.generate_content(model=FLASH, contents="two")
    pods.models.generate_content(model=FLASH, contents="three")
    assert [attempt["key_digest"] for attempt in calls(simulator)] == [
        key_digest("metadata-token-1"),
        key_digest("the-clients-own"),
        key_digest("metadata-token-1"),
    ]


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


# -- a service-account file -------------------------------------------------------------------

SERVICE_ACCOUNT = "proxy-sa@test-project.iam.gserviceaccount.com"


@dataclass(frozen=True)
class ServiceAccountStack:
    proxy: str
    simulator: SimulatorControl
    issuer: TokenIssuer
    log: list[str]
    private_key: str


def rsa_key() -> tuple[str, str]:
    """A fresh RSA key, as (private PKCS#8 PEM, public PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


@pytest.fixture
def sa_stack(tmp_path: Path) -> Iterator[ServiceAccountStack]:
    """The proxy with ADC from a service-account file whose ``token_uri`` is the simulator's
    token endpoint; no metadata server is reachable."""
    private, public = rsa_key()
    issuer = TokenIssuer(service_accounts={SERVICE_ACCOUNT: public})
    with (
        serve(create_simulator_app(SimulatorConfig())) as region,
        serve(create_metadata_app(issuer)) as oauth,
        SimulatorControl(region) as simulator,
    ):
        account = tmp_path / "service-account.json"
        account.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": PROJECT,
                    "private_key_id": "test-key-1",
                    "private_key": private,
                    "client_email": SERVICE_ACCOUNT,
                    "client_id": "1234567890",
                    "token_uri": f"{oauth}/token",
                }
            )
        )
        config = tmp_path / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    # The most verbose logging: not even a debug line may hold a token.
                    "server": {"log_level": "debug"},
                    "upstream": {"base_url": "http://127.0.0.1:9"},
                    "vertex": {"project": PROJECT, "location": EU, "origins": {EU: region}},
                    "routes": {},
                }
            )
        )
        env = {
            "GOOGLE_APPLICATION_CREDENTIALS": str(account),
            "GCE_METADATA_HOST": "127.0.0.1:9",
            "GCE_METADATA_IP": "127.0.0.1:9",
            "NO_GCE_CHECK": "True",
            "CLOUDSDK_CONFIG": str(tmp_path),
        }
        port = free_port()
        with running(["serve", "--config", str(config), "--port", str(port)], env) as log:
            yield ServiceAccountStack(f"http://127.0.0.1:{port}", simulator, issuer, log, private)


def test_a_service_account_file_gets_tokens_from_its_token_uri_refreshed_before_expiry(
    sa_stack: ServiceAccountStack,
) -> None:
    client = short_form(sa_stack.proxy)
    sa_stack.issuer.expires_in = 60  # inside google-auth's refresh margin: stale at once
    client.models.generate_content(model=FLASH, contents="one")
    client.models.generate_content(model=FLASH, contents="two")
    sa_stack.issuer.expires_in = 3600
    client.models.generate_content(model=FLASH, contents="three")
    client.models.generate_content(model=FLASH, contents="four")  # token 3 is still good
    seen = [attempt["key_digest"] for attempt in calls(sa_stack.simulator)]
    assert seen == [key_digest(f"sa-token-{n}") for n in (1, 2, 3, 3)]
    # Every grant's assertion was a JWT signed by the account's key (else invalid_grant).
    assert (sa_stack.issuer.issued, sa_stack.issuer.rejected) == (3, 0)
    log = "".join(sa_stack.log)
    assert "sa-token" not in log
    assert sa_stack.private_key.splitlines()[1] not in log


def test_a_client_token_passes_through_unchanged_beside_a_service_account(
    sa_stack: ServiceAccountStack,
) -> None:
    client = Client(
        vertexai=True,
        project=PROJECT,
        location=EU,
        credentials=Credentials(token="the-clients-own"),
        http_options=types.HttpOptions(base_url=sa_stack.proxy),
    )
    client.models.generate_content(model=FLASH, contents="hello")
    [attempt] = calls(sa_stack.simulator)
    assert attempt["key_digest"] == key_digest("the-clients-own")
    assert sa_stack.issuer.issued == 0


def test_a_token_fetch_does_not_hold_up_other_requests(sa_stack: ServiceAccountStack) -> None:
    """google-auth fetches synchronously: the proxy does it off its event loop, so a request
    that brings its own token is served while another waits for a slow token endpoint."""
    sa_stack.issuer.hold = threading.Event()
    results: list[str] = []
    client = short_form(sa_stack.proxy)

    def needs_a_token() -> None:
        answer = client.models.generate_content(model=FLASH, contents="a")
        results.append(answer.text or "")

    waiting = threading.Thread(target=needs_a_token)
    waiting.start()
    try:
        eventually(lambda: sa_stack.issuer.waiting == 1, what="a token request held")
        own = httpx.post(
            f"{sa_stack.proxy}/v1beta1/projects/{PROJECT}/locations/{EU}/publishers/google/"
            f"models/{FLASH}:generateContent",
            json={"contents": [{"parts": [{"text": "b"}]}]},
            headers={"authorization": "Bearer the-clients-own"},
            timeout=5,
        )
        assert own.status_code == 200
        assert sa_stack.issuer.waiting == 1  # the other request's token is still on its way
    finally:
        sa_stack.issuer.hold.set()
        waiting.join(30)
    assert len(results) == 1 and "simulated answer" in results[0]
    assert [a["key_digest"] for a in calls(sa_stack.simulator)] == [
        key_digest("the-clients-own"),
        key_digest("sa-token-1"),
    ]


def grant(private_key: str, **claims: object) -> dict[str, str]:
    """A JWT-bearer grant as google-auth posts it, signed with ``private_key``."""
    now = int(time.time())
    payload = {
        "iss": SERVICE_ACCOUNT,
        "aud": "https://oauth2.googleapis.com/token",
        "scope": "https://www.googleapis.com/auth/cloud-platform",
        "iat": now,
        "exp": now + 3600,
        **claims,
    }
    signer = crypt.RSASigner.from_string(private_key, "test-key-1")
    assertion = google_jwt.encode(signer, payload).decode()
    return {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}


def test_the_token_endpoint_checks_the_assertion() -> None:
    private, public = rsa_key()
    stranger, _ = rsa_key()
    issuer = TokenIssuer(service_accounts={SERVICE_ACCOUNT: public})
    good = grant(private)
    header, claims, signature = good["assertion"].split(".")
    unsigned_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').decode().rstrip("=")
    refused = {
        "not a JWT": {**good, "assertion": "not-a-jwt"},
        "no RS256": {**good, "assertion": f"{unsigned_header}.{claims}."},
        "another key": grant(stranger),
        "tampered": {**good, "assertion": f"{header}.{claims}.{signature[:-4]}AAAA"},
        "unknown account": grant(private, iss="someone@else.iam.gserviceaccount.com"),
        "another audience": grant(private, aud="https://example.com/token"),
        "expired": grant(private, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600),
        "another grant": {**good, "grant_type": "client_credentials"},
    }
    with serve(create_metadata_app(issuer)) as oauth:
        for why, form in refused.items():
            answer = httpx.post(f"{oauth}/token", data=form)
            assert answer.status_code == 400, why
            assert answer.json()["error"] == "invalid_grant", why
        answer = httpx.post(f"{oauth}/token", data=good)
        assert answer.status_code == 200
        assert answer.json() == {
            "access_token": "sa-token-1",
            "expires_in": 3600,
            "token_type": "Bearer",
        }
    assert (issuer.issued, issuer.rejected) == (1, len(refused))
