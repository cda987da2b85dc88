"""The Live dialect's pure parts: paths, the setup rewrite, what an upstream close means, and
the ``certs`` command's files."""

from __future__ import annotations

import contextlib
import json
import ssl
from pathlib import Path

import pytest

from proxy.cli import main
from proxy.config import VertexSettings
from proxy.live.relay import frame_of
from proxy.live.vertex import VertexModel, is_vertex, parse_vertex_model
from proxy.live.wire import (
    BadSetup,
    CloseKind,
    classify_close,
    classify_upgrade_status,
    live_path,
    new_handle,
    parse_setup,
    setup_for,
    upstream_url,
)

DEVELOPER = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"


@pytest.mark.parametrize(
    "path",
    [
        DEVELOPER,
        "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContent",
        "/ws/google.ai.generativelanguage.v1alpha.GenerativeService.BidiGenerateContentConstrained",
        "/ws/google.cloud.aiplatform.v1beta1.LlmBidiService/BidiGenerateContent",
        "/ws/google.cloud.aiplatform.v1.LlmBidiService/BidiGenerateContent",
    ],
)
def test_live_paths_are_recognised_with_or_without_a_prefix(path: str) -> None:
    assert live_path(path) == path
    assert live_path("/gemini" + path) == path


@pytest.mark.parametrize(
    "path", ["/v1beta/models/x:generateContent", "/ws/other.Service.Method", DEVELOPER + "/x"]
)
def test_other_paths_are_not_live(path: str) -> None:
    assert live_path(path) is None


def test_the_setup_goes_unchanged_unless_the_model_changes() -> None:
    raw = b'{"setup":{"model":"models/gemini-2.5-pro","generationConfig":{"x":1}}}'
    setup = parse_setup(raw)
    assert setup.model == "gemini-2.5-pro" and not setup.resumable
    assert setup_for(setup, "gemini-2.5-pro") is raw
    rewritten = json.loads(setup_for(setup, "gemini-2.5-flash"))
    assert rewritten == {
        "setup": {"model": "models/gemini-2.5-flash", "generationConfig": {"x": 1}}
    }


def test_a_resumed_setup_carries_the_handle() -> None:
    setup = parse_setup(b'{"setup":{"model":"models/m","sessionResumption":{}}}')
    assert setup.resumable
    body = json.loads(setup_for(setup, "m", handle="h-1"))
    assert body["setup"]["sessionResumption"] == {"handle": "h-1"}


@pytest.mark.parametrize("raw", [b"not json", b'{"clientContent":{}}', b'{"setup":{}}', b"[]"])
def test_a_first_message_that_is_no_setup_is_refused(raw: bytes) -> None:
    with pytest.raises(BadSetup):
        parse_setup(raw)


def test_only_resumable_handles_are_kept() -> None:
    update = {"sessionResumptionUpdate": {"newHandle": "h", "resumable": True}}
    assert new_handle(json.dumps(update).encode()) == "h"
    update["sessionResumptionUpdate"]["resumable"] = False
    assert new_handle(json.dumps(update).encode()) is None
    assert new_handle(b'{"serverContent":{}}') is None


@pytest.mark.parametrize(
    ("code", "reason", "kind"),
    [
        (1011, "RESOURCE_EXHAUSTED: You exceeded your current quota.", CloseKind.RATE_LIMITED),
        (1011, "UNAVAILABLE: The service is currently unavailable.", CloseKind.FAILURE),
        (1011, "INTERNAL: Internal error encountered.", CloseKind.FAILURE),
        (None, "", CloseKind.FAILURE),
        (1007, "Invalid JSON payload received.", CloseKind.CLIENT_ERROR),
        (1008, "", CloseKind.CLIENT_ERROR),
        (1011, "PERMISSION_DENIED: bad key", CloseKind.CLIENT_ERROR),
    ],
)
def test_what_an_upstream_close_means(code: int | None, reason: str, kind: CloseKind) -> None:
    assert classify_close(code, reason) is kind


def test_what_a_refused_upgrade_means() -> None:
    assert classify_upgrade_status(429) is CloseKind.RATE_LIMITED
    assert classify_upgrade_status(503) is CloseKind.FAILURE
    assert classify_upgrade_status(403) is CloseKind.CLIENT_ERROR


def test_the_upstream_url_takes_the_websocket_scheme() -> None:
    assert upstream_url("https://g.example/", DEVELOPER, b"") == f"wss://g.example{DEVELOPER}"
    assert upstream_url("http://127.0.0.1:1", DEVELOPER, b"a=1") == (
        f"ws://127.0.0.1:1{DEVELOPER}?a=1"
    )


FULL = "projects/p1/locations/us-central1/publishers/google/models/gemini-2.5-pro"


def test_a_vertex_setup_names_its_target_and_is_rewritten_per_location() -> None:
    settings = VertexSettings(project="p0", location="europe-west4")
    vertex = parse_vertex_model(FULL, settings, express=False)
    assert vertex == VertexModel("p1", "us-central1", "gemini-2.5-pro")
    assert vertex.target == "gemini-2.5-pro@us-central1"
    assert vertex.resource_for("gemini-2.5-flash@europe-west4") == (
        "projects/p1/locations/europe-west4/publishers/google/models/gemini-2.5-flash"
    )
    assert vertex.resource_for("gemini-2.5-flash") == (
        "projects/p1/locations/us-central1/publishers/google/models/gemini-2.5-flash"
    )
    # The origin is the HTTP dialect's: configured, then Google's endpoints.
    with_origin = VertexSettings(origins={"europe-west4": "http://127.0.0.1:9"})
    assert vertex.origin_for("m@europe-west4", with_origin) == "http://127.0.0.1:9"
    assert vertex.origin_for("m@global", settings) == "https://aiplatform.googleapis.com"
    setup = parse_setup(json.dumps({"setup": {"model": FULL}}).encode())
    sent = setup_for(setup, "m@europe-west4", None, vertex.resource_for("m@europe-west4"))
    assert json.loads(sent)["setup"]["model"].endswith("/locations/europe-west4/"
                                                       "publishers/google/models/m")  # fmt: skip
    assert setup_for(setup, vertex.target, None, FULL) is setup.raw


def test_a_short_vertex_model_takes_the_configured_project_or_express_mode() -> None:
    settings = VertexSettings(project="p0", location="europe-west4")
    short = "publishers/google/models/gemini-2.5-pro"
    assert parse_vertex_model(short, settings, express=False) == VertexModel(
        "p0", "europe-west4", "gemini-2.5-pro"
    )
    express = parse_vertex_model(short, VertexSettings(), express=True)
    assert express == VertexModel(None, "global", "gemini-2.5-pro")
    assert express.resource_for(express.target) == short
    with pytest.raises(BadSetup):
        parse_vertex_model(short, VertexSettings(), express=False)
    with pytest.raises(BadSetup):
        parse_vertex_model("projects/p/models/x", settings, express=False)
    assert is_vertex("/ws/google.cloud.aiplatform.v1.LlmBidiService/BidiGenerateContent")
    assert not is_vertex(DEVELOPER)


def test_certs_makes_a_ca_that_verifies_the_proxy_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["certs", "--out", str(tmp_path), "--name", "localhost"]) == 0
    assert "SSL_CERT_FILE=" in capsys.readouterr().out
    assert (tmp_path / "proxy-key.pem").stat().st_mode & 0o077 == 0
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "proxy.pem", tmp_path / "proxy-key.pem")
    client = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_client = client.wrap_bio(incoming, outgoing, server_hostname="localhost")
    tls_server = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):  # drive the handshake through memory
        for side in (tls_client, tls_server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(outgoing.read())
        incoming.write(s_out.read())
    assert tls_client.getpeercert()["subject"] == ((("commonName", "localhost"),),)


@pytest.mark.parametrize(
    ("message", "frame"),
    [
        ({"type": "websocket.receive", "text": ""}, ""),
        ({"type": "websocket.receive", "bytes": b""}, b""),
        ({"type": "websocket.receive", "text": "", "bytes": None}, ""),
        ({"type": "websocket.receive", "bytes": b"", "text": None}, b""),
        ({"type": "websocket.receive", "text": '{"a": 1}'}, '{"a": 1}'),
        ({"type": "websocket.receive", "bytes": b"\x00"}, b"\x00"),
    ],
)
def test_a_received_frame_keeps_its_type_even_when_empty(
    message: dict[str, object], frame: str | bytes
) -> None:
    assert type(frame_of(message)) is type(frame)
    assert frame_of(message) == frame
