"""Reading the configuration: one YAML file, then environment variables, then the command
line, validated once at start-up into ``Settings``.

An invalid file fails fast with a ``ConfigError`` that names the offending key, e.g.
``routes.gemini-2.5-pro[1]: expected a string``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .cluster.state import QuotaParams
from .config import (
    DEFAULT_ROUTES,
    AdminSettings,
    ModelSettings,
    RedisSettings,
    RetryBudgetSettings,
    ServerSettings,
    Settings,
    TelemetrySettings,
    UpstreamSettings,
)
from .config_checks import check_settings
from .errors import ConfigError
from .validation import build_dataclass, model_name, reject_unknown, require_mapping

__all__ = ["build_settings", "load_raw", "load_settings"]

CONFIG_ENV = "GEMINI_BREAKER_CONFIG"

# Environment variable -> (section, key, ...). Applied over the file, under the command line.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "GEMINI_BREAKER_HOST": ("server", "host"),
    "GEMINI_BREAKER_PORT": ("server", "port"),
    "GEMINI_BREAKER_UPSTREAM_URL": ("upstream", "base_url"),
    "GEMINI_API_KEY": ("upstream", "api_key"),
    "GEMINI_BREAKER_REDIS_URL": ("redis", "url"),
    "GEMINI_BREAKER_REDIS_USERNAME": ("redis", "username"),
    "GEMINI_BREAKER_REDIS_PASSWORD": ("redis", "password"),
    "GEMINI_BREAKER_REDIS_SENTINEL_PASSWORD": ("redis", "sentinel", "password"),
    "GEMINI_BREAKER_ADMIN_TOKEN": ("admin", "token"),
    "GEMINI_BREAKER_CLIENT_TOKENS": ("server", "client_tokens"),
    "OTEL_EXPORTER_OTLP_ENDPOINT": ("telemetry", "otlp_endpoint"),
}
# The parent process hands the merged configuration to its worker processes through this.
SETTINGS_JSON_ENV = "GEMINI_BREAKER_SETTINGS_JSON"


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Read the YAML file (``path``, else ``$GEMINI_BREAKER_CONFIG``, else none), then apply
    environment variables, then ``overrides`` (the command line), and validate the result."""
    return build_settings(load_raw(path, env, overrides))


def load_raw(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The merged, not yet validated configuration mapping (see ``load_settings``)."""
    env = os.environ if env is None else env
    path = path or env.get(CONFIG_ENV) or None
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path))
    for var, (*sections, key) in ENV_OVERRIDES.items():
        value = env.get(var)
        if value:
            target = raw
            for depth, section in enumerate(sections):
                if target.get(section) is None:
                    target[section] = {}
                require_mapping(target[section], ".".join(sections[: depth + 1]))
                target = target[section]
            target[key] = _from_env(var, value, sections[0], key)
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {})
        require_mapping(raw[section], section)
        raw[section].update(values)
    return raw


def build_settings(raw: Mapping[str, Any]) -> Settings:
    """Validate a parsed configuration mapping into ``Settings``."""
    require_mapping(raw, "configuration")
    _reject_renamed(raw)
    known = {f.name for f in dataclasses.fields(Settings) if f.init}
    reject_unknown(raw, known, "")
    model_defaults = build_dataclass(ModelSettings, raw.get("model_defaults"), "model_defaults")
    models_raw = raw.get("models") or {}
    require_mapping(models_raw, "models")
    models = {
        model_name(name, "models"): build_dataclass(
            ModelSettings, spec, f"models.{name}", base=model_defaults
        )
        for name, spec in models_raw.items()
    }
    routes, stream_break = _build_routes(raw.get("routes", DEFAULT_ROUTES))
    settings = Settings(
        server=build_dataclass(ServerSettings, raw.get("server"), "server"),
        upstream=build_dataclass(UpstreamSettings, raw.get("upstream"), "upstream"),
        redis=build_dataclass(RedisSettings, raw.get("redis"), "redis"),
        admin=build_dataclass(AdminSettings, raw.get("admin"), "admin"),
        telemetry=build_dataclass(TelemetrySettings, raw.get("telemetry"), "telemetry"),
        retry_budget=build_dataclass(RetryBudgetSettings, raw.get("retry_budget"), "retry_budget"),
        quota=build_dataclass(QuotaParams, raw.get("quota"), "quota"),
        model_defaults=model_defaults,
        models=models,
        routes=routes,
        stream_break=stream_break,
    )
    check_settings(settings)
    return dataclasses.replace(
        settings,
        upstream=dataclasses.replace(
            settings.upstream, base_url=settings.upstream.base_url.rstrip("/")
        ),
    )


def _reject_renamed(raw: Mapping[str, Any]) -> None:
    """``first_byte_timeout`` covered headers, first event and unary answers at once; each now
    has its own limit, so an old file is told which ones to set instead of what it meant."""
    sections = [("model_defaults", raw.get("model_defaults"))]
    models = raw.get("models")
    if isinstance(models, Mapping):
        sections += [(f"models.{name}", spec) for name, spec in models.items()]
    for where, spec in sections:
        if isinstance(spec, Mapping) and "first_byte_timeout" in spec:
            raise ConfigError(
                f"{where}.first_byte_timeout: replaced by headers_timeout (calls that do not "
                "generate), first_event_timeout (a stream's first event, the start of a unary "
                "answer) and unary_timeout (a unary answer without maxOutputTokens)"
            )


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    require_mapping(data, f"{path}: the top level")
    return dict(data)


def _from_env(var: str, value: str, section: str, key: str) -> Any:
    if (section, key) == ("server", "client_tokens"):
        return [token.strip() for token in value.split(",") if token.strip()]
    if (section, key) == ("server", "port"):
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{var}: expected a port number, got {value!r}") from None
    return value


STREAM_BREAK_POLICIES = ("continue", "error")


def _build_routes(raw: Any) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """Routes as ``name: [chain]`` or ``name: {chain: [...], on_stream_break: ...}``."""
    if raw is None:
        return {}, {}
    require_mapping(raw, "routes")
    routes: dict[str, tuple[str, ...]] = {}
    policies: dict[str, str] = {}
    for name, spec in raw.items():
        where = f"routes.{name}"
        model_name(name, "routes")
        chain = spec
        if isinstance(spec, Mapping):
            reject_unknown(spec, {"chain", "on_stream_break"}, where)
            chain = spec.get("chain")
            where = f"{where}.chain"
            policy = spec.get("on_stream_break", "continue")
            if policy not in STREAM_BREAK_POLICIES:
                raise ConfigError(
                    f"routes.{name}.on_stream_break: must be one of "
                    + ", ".join(STREAM_BREAK_POLICIES)
                )
            policies[name] = policy
        if not isinstance(chain, list) or not chain:
            raise ConfigError(f"{where}: expected a non-empty list of model names")
        for index, model in enumerate(chain):
            model_name(model, f"{where}[{index}]")
        if len(set(chain)) != len(chain):
            raise ConfigError(f"{where}: a model appears twice in the chain")
        routes[name] = tuple(chain)
    return routes, policies
