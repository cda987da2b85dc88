"""A small synchronous client for the control API, for tests and scripts.

with SimulatorControl("http://127.0.0.1:9000") as sim:
    sim.set_faults("gemini-2.5-pro", [{"kind": "error", "status": 503, "times": 2}])
    ...
    assert [a["fault"] for a in sim.attempts(model="gemini-2.5-pro")] == ["error", "error"]
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, cast

import httpx

from proxy.errors import SimulatorError


class SimulatorControlError(SimulatorError, RuntimeError):
    """The control API refused a request; the message is the simulator's explanation."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class SimulatorControl:
    """Drive a running simulator through ``/_sim``."""

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self._client = httpx.Client(base_url=base_url.rstrip("/") + "/_sim", timeout=timeout)

    def __enter__(self) -> SimulatorControl:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def healthz(self) -> bool:
        return bool(self._request("GET", "/healthz").get("status") == "ok")

    def faults(self, model: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """Installed faults per model, each with its spec and schedule state."""
        path = "/faults" if model is None else f"/faults/{model}"
        return cast(dict[str, list[dict[str, Any]]], self._request("GET", path))

    def set_faults(self, model: str, faults: Sequence[Mapping[str, Any]]) -> None:
        """Replace the model's fault list (an empty list clears it)."""
        self._request("PUT", f"/faults/{model}", [dict(fault) for fault in faults])

    def add_fault(self, model: str, fault: Mapping[str, Any] | None = None, **fields: Any) -> None:
        """Append one fault, given as a mapping or as keywords: ``add_fault(m, kind="hang")``."""
        self._request("POST", f"/faults/{model}", {**(fault or {}), **fields})

    def clear_faults(self, model: str | None = None) -> None:
        self._request("DELETE", "/faults" if model is None else f"/faults/{model}")

    def quotas(self) -> dict[str, dict[str, Any]]:
        return cast(dict[str, dict[str, Any]], self._request("GET", "/quotas"))

    def set_quota(self, model: str, quota: Mapping[str, Any] | None = None, **fields: Any) -> None:
        """Install a quota: ``set_quota(m, requests_per_minute=3)``; its count restarts."""
        self._request("PUT", f"/quotas/{model}", {**(quota or {}), **fields})

    def clear_quotas(self, model: str | None = None) -> None:
        self._request("DELETE", "/quotas" if model is None else f"/quotas/{model}")

    def attempts(
        self, model: str | None = None, *, include_body: bool = False, since: int = 0
    ) -> list[dict[str, Any]]:
        """Recorded requests, oldest first; with ``include_body`` each has ``body`` (base64)."""
        params: dict[str, str] = {"since": str(since)}
        if model is not None:
            params["model"] = model
        if include_body:
            params["include_body"] = "1"
        return cast(list[dict[str, Any]], self._request("GET", "/attempts", params=params))

    @staticmethod
    def body_of(attempt: Mapping[str, Any]) -> bytes:
        """The request body recorded in an attempt fetched with ``include_body=True``."""
        return base64.b64decode(attempt["body"])

    def clear_attempts(self) -> None:
        self._request("DELETE", "/attempts")

    def clear_all(self) -> None:
        """Faults, quotas and the attempt log, all cleared."""
        self.clear_faults()
        self.clear_quotas()
        self.clear_attempts()

    def _request(
        self, method: str, path: str, body: Any = None, params: Mapping[str, str] | None = None
    ) -> Any:
        kwargs: dict[str, Any] = {"params": params}
        if body is not None:
            kwargs["json"] = body
        response = self._client.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                message = str(response.json()["error"]["message"])
            except (ValueError, KeyError, TypeError):
                message = response.text
            raise SimulatorControlError(response.status_code, message)
        return response.json()
