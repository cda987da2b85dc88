"""Vertex-only model methods: ``computeTokens`` and ``predict`` (the older text-embedding
models' call), shaped as Vertex answers them so that the google-genai SDK parses them."""

from __future__ import annotations

import base64
from typing import Any

from proxy.simulator import content
from proxy.simulator.content import RequestError

VERTEX_ONLY_METHODS = frozenset({"computeTokens", "predict"})
# Four characters a token, as ``countTokens`` counts, so the two calls agree on a text.
_TOKEN_CHARS = 4
_FIRST_TOKEN_ID = 1000


def compute_tokens(body: dict[str, Any]) -> dict[str, Any]:
    """``{"tokensInfo": [...]}``: one entry per content, its text cut into tokens."""
    contents = content.check_contents(body.get("contents"), "ComputeTokensRequest.contents")
    infos: list[dict[str, Any]] = []
    for item in contents:
        text = "".join(
            part["text"]
            for part in item.get("parts") or ()
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
        pieces = [text[i : i + _TOKEN_CHARS] for i in range(0, len(text), _TOKEN_CHARS)]
        infos.append(
            {
                "tokens": [base64.b64encode(piece.encode()).decode() for piece in pieces],
                "tokenIds": [str(_token_id(piece)) for piece in pieces],
                "role": item.get("role") or "user",
            }
        )
    return {"tokensInfo": infos}


def predict_embeddings(body: dict[str, Any]) -> dict[str, Any]:
    """A text-embedding model's ``predict`` answer: one prediction per instance."""
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        raise RequestError("* PredictRequest.instances: instances is not specified\n")
    if len(instances) > content.MAX_BATCH_EMBED_REQUESTS:
        raise RequestError(
            f"* PredictRequest.instances: at most {content.MAX_BATCH_EMBED_REQUESTS} "
            "instances can be in one request\n"
        )
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise RequestError("Invalid value at 'parameters': expected an object.")
    dims = content.dimensions(parameters, "PredictRequest.parameters")
    predictions: list[dict[str, Any]] = []
    characters = 0
    for index, instance in enumerate(instances):
        text = instance.get("content") if isinstance(instance, dict) else None
        if not isinstance(text, str):
            raise RequestError(f"* PredictRequest.instances[{index}].content: expected a string\n")
        characters += len(text)
        statistics = {"token_count": content.text_tokens(text), "truncated": False}
        values = content.embedding(text, dims)
        predictions.append({"embeddings": {"values": values, "statistics": statistics}})
    return {"predictions": predictions, "metadata": {"billableCharacterCount": characters}}


def _token_id(piece: str) -> int:
    return _FIRST_TOKEN_ID + sum(piece.encode()) % 30_000
