"""The model catalogue the simulator serves: names, token limits and supported methods."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# What Google lists in ``supportedGenerationMethods`` for each family of model.
GENERATIVE_METHODS = (
    "generateContent",
    "countTokens",
    "createCachedContent",
    "batchGenerateContent",
)
EMBEDDING_METHODS = ("embedContent", "countTextTokens", "countTokens", "asyncBatchEmbedContent")

# Calls that ride on another listed method: Google lists neither of these itself.
_IMPLIED_BY = {
    "streamGenerateContent": "generateContent",
    "batchEmbedContents": "embedContent",
    # Vertex AI's: a Gemini model's tokenizer, and an embedding model's prediction.
    "computeTokens": "generateContent",
    "predict": "embedContent",
}

_MILLION = 1_048_576


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One catalogue entry; field names are the YAML keys under ``models.<name>``."""

    name: str
    display_name: str | None = None
    description: str | None = None
    version: str = "001"
    input_token_limit: int = field(default=_MILLION, metadata={"min": 1})
    output_token_limit: int = field(default=65_536, metadata={"min": 1})
    supported_generation_methods: tuple[str, ...] | None = None
    """Unset: the embedding set for names containing ``embedding``, else the generative set."""
    temperature: float | None = 1.0
    max_temperature: float | None = 2.0
    top_p: float | None = 0.95
    top_k: int | None = field(default=64, metadata={"min": 1})
    thinking: bool | None = None
    supports_prefill: bool = True
    """Whether the model continues a request that ends with a ``model`` turn (else 400)."""

    @property
    def methods(self) -> tuple[str, ...]:
        if self.supported_generation_methods is not None:
            return self.supported_generation_methods
        return EMBEDDING_METHODS if "embedding" in self.name else GENERATIVE_METHODS

    def supports(self, method: str) -> bool:
        return _IMPLIED_BY.get(method, method) in self.methods

    def to_json(self) -> dict[str, Any]:
        """The ``Model`` resource as ``models.get`` returns it."""
        body: dict[str, Any] = {
            "name": f"models/{self.name}",
            "version": self.version,
            "displayName": self.display_name or _display_name(self.name),
            "description": self.description or f"Simulated {self.name}.",
            "inputTokenLimit": self.input_token_limit,
            "outputTokenLimit": self.output_token_limit,
            "supportedGenerationMethods": list(self.methods),
        }
        optional = {
            "temperature": self.temperature,
            "topP": self.top_p,
            "topK": self.top_k,
            "maxTemperature": self.max_temperature,
            "thinking": self.thinking,
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        return body


def _display_name(name: str) -> str:
    words = name.replace("-", " ").split()
    return " ".join(word.capitalize() if word.isalpha() else word for word in words)


def _gemini(name: str, display: str, description: str) -> ModelSpec:
    return ModelSpec(name=name, display_name=display, description=description, thinking=True)


# Limits from the published model pages (wire reference, section 8).
DEFAULT_MODELS: tuple[ModelSpec, ...] = (
    _gemini("gemini-2.5-pro", "Gemini 2.5 Pro", "Stable release of Gemini 2.5 Pro."),
    _gemini("gemini-2.5-flash", "Gemini 2.5 Flash", "Stable release of Gemini 2.5 Flash."),
    _gemini(
        "gemini-2.5-flash-lite", "Gemini 2.5 Flash-Lite", "Stable release of Gemini 2.5 Flash-Lite."
    ),
    _gemini("gemini-3-flash-preview", "Gemini 3 Flash Preview", "Preview of Gemini 3 Flash."),
    _gemini("gemini-3.1-pro-preview", "Gemini 3.1 Pro Preview", "Preview of Gemini 3.1 Pro."),
    _gemini("gemini-3.1-flash-lite", "Gemini 3.1 Flash-Lite", "Gemini 3.1 Flash-Lite."),
    _gemini("gemini-3.5-flash-lite", "Gemini 3.5 Flash-Lite", "Gemini 3.5 Flash-Lite."),
    _gemini("gemini-3.8-flash", "Gemini 3.8 Flash", "Gemini 3.8 Flash."),
    ModelSpec(
        name="gemini-embedding-001",
        display_name="Gemini Embedding 001",
        description="Obtain a distributed representation of a text.",
        input_token_limit=2048,
        output_token_limit=1,
        temperature=None,
        max_temperature=None,
        top_p=None,
        top_k=None,
    ),
    # An older embedding model, which Vertex AI serves with ``predict``.
    ModelSpec(
        name="text-embedding-004",
        display_name="Text Embedding 004",
        description="Obtain a distributed representation of a text.",
        input_token_limit=2048,
        output_token_limit=1,
        temperature=None,
        max_temperature=None,
        top_p=None,
        top_k=None,
    ),
)


def default_catalogue() -> dict[str, ModelSpec]:
    """A fresh copy of the built-in catalogue, keyed by model name."""
    return {spec.name: spec for spec in DEFAULT_MODELS}
