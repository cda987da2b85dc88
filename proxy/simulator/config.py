"""Simulator configuration: catalogue overrides, per-model faults and quotas, validated.

The YAML file (every section optional)::

    seed: 1                  # seeds the RNG behind fault ``probability`` (default 0)
    api_keys: [k1, k2]       # accept only these keys, others get 400 (default: any key)
    chunk_words: 3           # words per streamed chunk (default 3)
    chunk_interval: 0.0      # seconds between two stream chunks (default 0); a unary answer
                             # comes whole after as long as its stream would take
    close_every: 0           # close the connection after every Nth response (default 0: never)
    max_attempts: 10000      # requests kept in the attempt log (default 10000)
    models:                  # catalogue additions (a built-in model: only the given fields change)
      my-model: {input_token_limit: 1000, output_token_limit: 100, supports_prefill: false}
    faults:                  # model -> list of fault specs, checked in order
      gemini-2.5-pro:
        - {kind: error, status: 503, for_seconds: 30}
    quotas:                  # model -> request-rate quota
      gemini-2.5-flash: {requests_per_second: 5}

Model keys: ``display_name``, ``description``, ``version``, ``input_token_limit``,
``output_token_limit``, ``supported_generation_methods``, ``temperature``, ``max_temperature``,
``top_p``, ``top_k``, ``thinking``, ``supports_prefill`` (default true; false: a generate request
whose ``contents`` end with a ``model`` turn gets 400 INVALID_ARGUMENT "Please ensure that
multiturn requests end with a user role or a function response."; not shown by ``models.get``).
A prompt counted over ``input_token_limit`` gets 400 INVALID_ARGUMENT "The input token count (N)
exceeds the maximum number of tokens allowed (M)." before any quota or fault.

Answers (``content.py``) are deterministic and their text is the same whichever model serves
the request; only ``modelVersion`` and ``responseId`` name the model. A request ending with a
``model`` turn (prefill) is continued: the answer is the rest of the answer to the request
without that turn, so prefill + answer is the whole answer (prompt tokens include the prefill).
With ``generationConfig.responseMimeType: application/json`` the text is JSON that conforms to
``responseJsonSchema`` or ``responseSchema`` (``jsonmode.py``), or ``{"answer": ...}`` without a
schema; streams split it into chunks like any text.

A fault spec has a ``kind``, that kind's fields, and any schedule fields: ``after_seconds``
(starts that long after it was installed), ``for_seconds`` (then lasts that long), ``times``
(applies to that many requests, then expires), ``probability`` (0..1, drawn from the seeded
RNG) and ``methods`` (API methods it applies to; default all model calls, never models.get).
Faults from the file count as installed when the server starts. Kinds:

- ``latency {seconds}``: wait before answering; stacks with the other faults.
- ``slow_first_chunk {seconds}``: wait before the headers of a unary answer, or after the
  headers and before the first chunk of a stream; stacks too.
- ``error {status=503, message, after_chunks}``: Google's error for that status; with
  ``after_chunks``, a stream sends that many chunks, then an in-band ``data: {"error": ...}``.
- ``input_too_long``: 400 "The input token count (N) exceeds ... (M)".
- ``rate_limited {per=minute, retry_delay=15, retry_info=true, retry_after_header=false,
  message}``: 429 RESOURCE_EXHAUSTED with QuotaFailure, Help and RetryInfo (on a Vertex path,
  Vertex's per-project quota 429, which names the quota in its message only).
- ``reset``: TCP reset before any response byte. ``hang``: no answer until the client leaves.
- Streams only, after ``after_chunks`` (default 1; 0: the headers, then nothing) chunks,
  always before the last one:
  ``cut {abrupt=false, close=false}`` ends the body cleanly (or aborts the connection; with
  ``close``, ends it cleanly and resets the connection, unread, when the next request arrives on
  it, as when a front end's close crosses that request on the wire), ``stall`` goes
  silent until the client leaves, ``malformed`` sends one event that is not JSON and ends.
- ``blocked {block_reason=SAFETY}``: generate calls get 200 with ``promptFeedback`` only.
- ``empty_final_chunk``: streams only; the stream sends every text chunk, then ends with an
  event that has ``finishReason`` and the usage but no ``content`` (``{"candidates":
  [{"finishReason": "STOP", "index": 0}], "usageMetadata": ...}``), as Gemini sometimes does.
- ``reject_continuation {message}``: generate requests that end with a ``model`` turn get the
  400 INVALID_ARGUMENT a model without ``supports_prefill`` gives; other requests are served
  (and do not use up ``times``).
- ``json_drift {mode=invalid}``: JSON-mode generate requests get a 200 answer whose JSON is
  broken: ``invalid`` cuts it short (not valid JSON), ``schema`` makes it valid JSON that
  breaks the schema (the first required property missing, else a property or the whole value
  of the wrong type). Requests not in JSON mode are served (and do not use up ``times``).

For each request the first active, matching fault other than the two delays applies.

A quota has exactly one of ``requests_per_second`` / ``requests_per_minute``, plus ``per``
(``minute`` or ``day``: which quota the 429 names), ``methods`` (default the two generate
calls) and ``retry_after_header``.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from proxy.errors import ConfigError
from proxy.simulator.catalogue import ModelSpec, default_catalogue
from proxy.simulator.jsonmode import DRIFT_MODES
from proxy.validation import (
    build_dataclass,
    model_name,
    reject_unknown,
    require_mapping,
)

FAULT_KINDS = (
    "latency",
    "slow_first_chunk",
    "error",
    "input_too_long",
    "rate_limited",
    "reset",
    "hang",
    "cut",
    "stall",
    "malformed",
    "blocked",
    "empty_final_chunk",
    "reject_continuation",
    "json_drift",
)

# Kinds that shape the timing of an answer rather than replace it; they stack.
MODIFIER_KINDS = frozenset({"latency", "slow_first_chunk"})
# Kinds that only make sense once a stream has started.
STREAM_ONLY_KINDS = frozenset({"cut", "stall", "malformed", "empty_final_chunk"})
# Kinds for generate calls only; the last two also only for requests of one sort.
GENERATE_ONLY_KINDS = frozenset(
    {"blocked", "empty_final_chunk", "reject_continuation", "json_drift"}
)
CONTINUATION_ONLY_KINDS = frozenset({"reject_continuation"})
JSON_ONLY_KINDS = frozenset({"json_drift"})

GENERATE_METHODS = ("generateContent", "streamGenerateContent")
API_METHODS = (
    *GENERATE_METHODS,
    "countTokens",
    "embedContent",
    "batchEmbedContents",
    # Vertex AI only.
    "computeTokens",
    "predict",
)

SCHEDULE_FIELDS = frozenset({"kind", "after_seconds", "for_seconds", "times", "probability"})
KIND_FIELDS: dict[str, frozenset[str]] = {
    "latency": frozenset({"seconds"}),
    "slow_first_chunk": frozenset({"seconds"}),
    "error": frozenset({"status", "message", "after_chunks"}),
    "input_too_long": frozenset(),
    "rate_limited": frozenset(
        {"per", "retry_delay", "retry_info", "retry_after_header", "message"}
    ),
    "reset": frozenset(),
    "hang": frozenset(),
    "cut": frozenset({"after_chunks", "abrupt", "close"}),
    "stall": frozenset({"after_chunks"}),
    "malformed": frozenset({"after_chunks"}),
    "blocked": frozenset({"block_reason"}),
    "empty_final_chunk": frozenset(),
    "reject_continuation": frozenset({"message"}),
    "json_drift": frozenset({"mode"}),
}
BLOCK_REASONS = ("SAFETY", "OTHER", "BLOCKLIST", "PROHIBITED_CONTENT", "IMAGE_SAFETY")


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """One fault for one model. Only the fields of its ``kind`` (and the schedule) may be set."""

    kind: str = field(metadata={"choices": FAULT_KINDS})
    seconds: float | None = field(default=None, metadata={"min": 0})
    """latency, slow_first_chunk: the delay."""
    status: int = field(default=503, metadata={"min": 400, "max": 599})
    """error: the HTTP status; Google's canonical status name and message go with it."""
    message: str | None = None
    """error, rate_limited, reject_continuation: replaces Google's default message."""
    after_chunks: int | None = field(default=None, metadata={"min": 0})
    """cut, stall, malformed (default 1); error: fail a stream mid-way instead of up front."""
    abrupt: bool = False
    """cut: abort the connection instead of ending the body cleanly."""
    close: bool = False
    """cut: after the clean end, close the connection as the client's next request on it
    arrives (unread, with a reset: the close crossed that request on the wire)."""
    per: str = field(default="minute", metadata={"choices": ("minute", "day")})
    retry_delay: float = field(default=15.0, metadata={"min": 0})
    retry_info: bool = True
    retry_after_header: bool = False
    block_reason: str = field(default="SAFETY", metadata={"choices": BLOCK_REASONS})
    mode: str = field(default="invalid", metadata={"choices": DRIFT_MODES})
    """json_drift: ``invalid`` (not JSON) or ``schema`` (JSON that breaks the schema)."""
    after_seconds: float = field(default=0.0, metadata={"min": 0})
    for_seconds: float | None = field(default=None, metadata={"min": 0})
    times: int | None = field(default=None, metadata={"min": 1})
    probability: float = field(default=1.0, metadata={"min": 0, "max": 1})
    methods: tuple[str, ...] | None = field(default=None, metadata={"items": API_METHODS})

    @property
    def is_modifier(self) -> bool:
        return self.kind in MODIFIER_KINDS

    def to_json(self) -> dict[str, Any]:
        """The spec as given: the kind, its non-default fields and the schedule."""
        allowed = SCHEDULE_FIELDS | KIND_FIELDS[self.kind] | {"methods"}
        defaults = FaultSpec(kind=self.kind)
        out: dict[str, Any] = {"kind": self.kind}
        for spec_field in dataclasses.fields(self):
            name = spec_field.name
            value = getattr(self, name)
            if name in allowed and name != "kind" and value != getattr(defaults, name):
                out[name] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True, slots=True)
class QuotaSpec:
    """A request-rate quota, counted per (API key, model) like Google's per-project quota."""

    requests_per_second: int | None = field(default=None, metadata={"min": 1})
    requests_per_minute: int | None = field(default=None, metadata={"min": 1})
    per: str = field(default="minute", metadata={"choices": ("minute", "day")})
    """Which quota the 429 names: the per-minute or the per-day one."""
    methods: tuple[str, ...] = field(default=GENERATE_METHODS, metadata={"items": API_METHODS})
    retry_after_header: bool = False

    @property
    def limit(self) -> int:
        return self.requests_per_second or self.requests_per_minute or 0

    @property
    def window(self) -> float:
        return 1.0 if self.requests_per_second is not None else 60.0

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["methods"] = list(self.methods)
        return {key: value for key, value in out.items() if value is not None}


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """Everything the simulator starts with; the control API changes faults and quotas later."""

    models: Mapping[str, ModelSpec] = field(default_factory=default_catalogue)
    """The whole catalogue: the built-in models plus the file's additions."""
    faults: Mapping[str, tuple[FaultSpec, ...]] = field(default_factory=dict)
    quotas: Mapping[str, QuotaSpec] = field(default_factory=dict)
    seed: int = 0
    api_keys: frozenset[str] | None = None
    """Unset: any non-empty key is accepted."""
    chunk_words: int = field(default=3, metadata={"min": 1})
    chunk_interval: float = field(default=0.0, metadata={"min": 0})
    max_attempts: int = field(default=10_000, metadata={"min": 1})
    """How many requests the attempt log keeps."""
    close_every: int = field(default=0, metadata={"min": 0})
    """Close the connection right after every Nth response (counted over all connections),
    without a ``connection: close`` header, as Google's front ends recycle keep-alive
    connections; 0: never."""


def load_simulator_config(path: str | os.PathLike[str] | None) -> SimulatorConfig:
    """Read and validate a YAML file; ``None`` gives the defaults."""
    if path is None:
        return SimulatorConfig()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read simulator configuration {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return build_simulator_config({} if data is None else data)


def build_simulator_config(raw: Any) -> SimulatorConfig:
    """Validate a parsed configuration mapping; errors name the offending key."""
    require_mapping(raw, "simulator configuration")
    scalar_keys = ("seed", "chunk_words", "chunk_interval", "max_attempts", "close_every")
    reject_unknown(raw, {"models", "faults", "quotas", "api_keys", *scalar_keys}, "")
    base = build_dataclass(
        SimulatorConfig, {key: raw[key] for key in scalar_keys if key in raw}, ""
    )
    catalogue = default_catalogue()
    for name, spec in _mapping(raw.get("models"), "models").items():
        where = f"models.{model_name(name, 'models')}"
        current = catalogue.get(name, ModelSpec(name=name))
        if isinstance(spec, Mapping) and "name" in spec:
            raise ConfigError(f"{where}.name: the model name is the key, not a field")
        catalogue[name] = build_dataclass(
            ModelSpec, {} if spec is None else spec, where, base=current
        )
    faults: dict[str, tuple[FaultSpec, ...]] = {}
    for name, specs in _mapping(raw.get("faults"), "faults").items():
        where = f"faults.{model_name(name, 'faults')}"
        if not isinstance(specs, list):
            raise ConfigError(f"{where}: expected a list of fault specs")
        faults[name] = tuple(parse_fault(spec, f"{where}[{i}]") for i, spec in enumerate(specs))
    quotas = {
        model_name(name, "quotas"): parse_quota(spec, f"quotas.{name}")
        for name, spec in _mapping(raw.get("quotas"), "quotas").items()
    }
    api_keys = raw.get("api_keys")
    if api_keys is not None and (
        not isinstance(api_keys, list)
        or not api_keys
        or not all(isinstance(k, str) and k for k in api_keys)
    ):
        raise ConfigError("api_keys: expected a non-empty list of non-empty strings")
    return dataclasses.replace(
        base,
        models=catalogue,
        faults=faults,
        quotas=quotas,
        api_keys=frozenset(api_keys) if api_keys is not None else None,
    )


def parse_fault(raw: Any, where: str = "fault") -> FaultSpec:
    """Validate one fault spec (a mapping with ``kind``)."""
    require_mapping(raw, where)
    kind = raw.get("kind")
    if kind not in KIND_FIELDS:
        raise ConfigError(f"{where}.kind: expected one of {', '.join(FAULT_KINDS)}, got {kind!r}")
    allowed = SCHEDULE_FIELDS | KIND_FIELDS[kind] | {"methods"}
    for key in raw:
        if key not in allowed:
            raise ConfigError(
                f"{where}.{key}: not a field of a {kind} fault "
                f"(allowed: {', '.join(sorted(allowed))})"
            )
    spec = build_dataclass(FaultSpec, raw, where, base=FaultSpec(kind=kind))
    if kind in MODIFIER_KINDS and spec.seconds is None:
        raise ConfigError(f"{where}.seconds: a {kind} fault needs the delay in seconds")
    return spec


def parse_quota(raw: Any, where: str = "quota") -> QuotaSpec:
    """Validate one quota spec."""
    spec = build_dataclass(QuotaSpec, raw, where)
    if (spec.requests_per_second is None) == (spec.requests_per_minute is None):
        raise ConfigError(f"{where}: set exactly one of requests_per_second, requests_per_minute")
    return spec


def _mapping(value: Any, where: str) -> Mapping[Any, Any]:
    if value is None:
        return {}
    require_mapping(value, where)
    return typing.cast(Mapping[Any, Any], value)
