"""Vertex AI's job and endpoint resources, answered minimally: batch prediction and tuning
jobs are kept as created (they never run), endpoints are never found. Enough for a client (and
the proxy's pass-through tests) to see a plausible answer from the right origin."""

from __future__ import annotations

import hashlib
from typing import Any

from proxy.simulator.wire import Reply, error_reply, json_reply, rfc3339

# Collection name -> the resource's kind, as Vertex names it in its messages.
FAMILIES = {
    "batchPredictionJobs": "BatchPredictionJob",
    "tuningJobs": "TuningJob",
    "endpoints": "Endpoint",
}
_CREATABLE = frozenset({"batchPredictionJobs", "tuningJobs"})
MAX_JOBS = 1000


class VertexJobs:
    """The jobs created on one simulator, by full resource name."""

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self._jobs: dict[str, dict[str, Any]] = {}
        self._counter = 0

    def answer(
        self, verb: str, parent: str, resource: str, body: dict[str, Any], now: float
    ) -> Reply | None:
        """The reply to ``verb`` on ``resource`` (``family[/id]``) under ``parent``
        (``projects/P/locations/L/``, empty in express mode); None when not one of ours."""
        family, _, item = resource.partition("/")
        kind = FAMILIES.get(family)
        if kind is None or "/" in item or ":" in item:
            return None
        if not item and verb == "GET":
            prefix = f"{parent}{family}/"
            listed = [job for name, job in self._jobs.items() if name.startswith(prefix)]
            return json_reply({family: listed} if listed else {})
        if not item and verb == "POST" and family in _CREATABLE:
            return self._create(parent, family, body, now)
        if item and verb == "GET":
            job = self._jobs.get(f"{parent}{resource}")
            if job is None:
                return error_reply(404, f"The {kind} does not exist.")
            return json_reply(job)
        return None

    def _create(self, parent: str, family: str, body: dict[str, Any], now: float) -> Reply:
        if len(self._jobs) >= MAX_JOBS:
            return error_reply(429, f"The simulator keeps at most {MAX_JOBS} jobs.")
        self._counter += 1
        digest = hashlib.sha256(f"job:{self.seed}:{self._counter}".encode()).digest()
        job_id = str(int.from_bytes(digest[:7], "big"))
        name = f"{parent}{family}/{job_id}"
        job = {
            **body,
            "name": name,
            "state": "JOB_STATE_PENDING",
            "createTime": rfc3339(now),
            "updateTime": rfc3339(now),
        }
        self._jobs[name] = job
        return json_reply(job)
