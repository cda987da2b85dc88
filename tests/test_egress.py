"""Choosing the egress proxy: the setting, the environment, NO_PROXY; and the settings'
validation, which never repeats a proxy password."""

from __future__ import annotations

import base64

import pytest

from proxy.config_load import build_settings
from proxy.errors import ConfigError
from proxy.transport.egress import EgressProxy, bypassed, parse_proxy_url, proxy_for

GOOGLE = "https://generativelanguage.googleapis.com"


def test_credentials_in_the_url_become_basic_proxy_authorization() -> None:
    proxy = parse_proxy_url("http://us%40er:p%3Ass@proxy.corp:3128")
    assert (proxy.host, proxy.port) == ("proxy.corp", 3128)
    assert proxy.authorization == b"Basic " + base64.b64encode(b"us@er:p:ss")
    assert proxy.label == "http://proxy.corp:3128"
    assert "p:ss" not in repr(proxy) and "p%3Ass" not in repr(proxy)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"HTTPS_PROXY": "http://upper:8080"}, EgressProxy("upper", 8080)),
        (
            {"HTTPS_PROXY": "http://upper:8080", "https_proxy": "http://lower:8080"},
            EgressProxy("lower", 8080),
        ),
        ({"HTTP_PROXY": "http://plain:8080"}, None),  # not for an https upstream
        ({"HTTPS_PROXY": "proxy:3128", "NO_PROXY": ".googleapis.com"}, None),
        ({"HTTPS_PROXY": "proxy:3128", "no_proxy": "*"}, None),
        ({"HTTPS_PROXY": "proxy:3128", "NO_PROXY": "example.com"}, EgressProxy("proxy", 3128)),
    ],
)
def test_the_environment_names_the_proxy(
    environ: dict[str, str], expected: EgressProxy | None
) -> None:
    assert proxy_for(GOOGLE, None, True, environ) == expected


def test_the_setting_wins_and_trust_env_false_ignores_the_environment() -> None:
    environ = {"HTTPS_PROXY": "http://env:1", "NO_PROXY": "*"}
    assert proxy_for(GOOGLE, "http://set:2", True, environ) == EgressProxy("set", 2)
    assert proxy_for(GOOGLE, None, False, environ) is None
    assert proxy_for("http://127.0.0.1:9", None, True, {"HTTP_PROXY": "http://p:3"}) == (
        EgressProxy("p", 3)
    )


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "expected"),
    [
        ("a.googleapis.com", 443, "googleapis.com", True),
        ("googleapis.com", 443, ".googleapis.com", True),
        ("notgoogleapis.com", 443, "googleapis.com", False),
        ("10.1.2.3", 443, "10.0.0.0/8", True),
        ("10.1.2.3", 443, "10.1.2.3:443", True),
        ("10.1.2.3", 443, "10.1.2.3:8443", False),
        ("::1", 443, "::1", True),
        ("h", 443, " , ", False),
    ],
)
def test_no_proxy_matching(host: str, port: int, no_proxy: str, expected: bool) -> None:
    assert bypassed(host, port, no_proxy) is expected


def test_a_bad_proxy_url_is_refused_without_its_password() -> None:
    with pytest.raises(ConfigError, match=r"upstream\.proxy_url: only http://") as caught:
        build_settings({"upstream": {"proxy_url": "https://user:hunter2@proxy:3128"}})
    assert "hunter2" not in str(caught.value)
    settings = build_settings({"upstream": {"proxy_url": "http://user:hunter2@proxy:3128"}})
    assert "hunter2" not in repr(settings)


def test_tls_files_must_exist_and_a_key_needs_its_certificate() -> None:
    with pytest.raises(ConfigError, match=r"upstream\.tls\.ca_file: no such file"):
        build_settings({"upstream": {"tls": {"ca_file": "/nonexistent/ca.pem"}}})
    with pytest.raises(ConfigError, match=r"upstream\.tls\.key_file: needs cert_file"):
        build_settings({"upstream": {"tls": {"key_file": "/etc/hostname"}}})
