"""The one place a request's outcomes reach the breakers.

Successes and answers that are evidence in themselves (a stream cut after it started, a JSON
answer that breaks its schema) are recorded at once. A failed attempt before the answer
started is held back until the request's fate is known: reported when the request turns out
to be fine elsewhere (another model answered, or the chain ran out), judged by ``evidence``
first; dropped when the request failed the same way on two models (the request is poison).
The request's fingerprint is taken only when it first fails, so a request that succeeds at
once costs nothing here but the recording. A half-open probe's permit that the request used
without an outcome that counts (a 400, 401, 403, 404 or 429: nothing about the model's health)
is handed back when the request ends, so the next request probes instead of the breaker waiting
for the permit to be taken as lost.
"""

from __future__ import annotations

from ..cluster.coordinator import Admission, Coordinator
from .evidence import HeldFailure, counts_against_model, fingerprint, is_request_fault
from .outcomes import Verdict


class BreakerReport:
    """One request's reports to the breakers, and its held failures."""

    __slots__ = ("_body", "_coordinator", "_credential", "_held", "_method", "_probes", "_request")

    def __init__(
        self, coordinator: Coordinator, method: str, credential: str, body: bytes | None
    ) -> None:
        self._coordinator = coordinator
        self._method = method
        self._credential = credential
        self._body = body
        self._request: bytes | None = None
        self._held: list[tuple[Admission, HeldFailure]] | None = None
        """None until an attempt failed."""
        self._probes: list[Admission] | None = None
        """Probe permits taken and not yet answered by an outcome that counts."""

    def admitted(self, admission: Admission) -> None:
        """A model admitted the request; a probe's permit is followed until it is answered."""
        if admission.probe:
            if self._probes is None:
                self._probes = []
            self._probes.append(admission)

    def outcome(self, admission: Admission, verdict: Verdict) -> None:
        """Record an outcome that is evidence in itself (an answer, or a failure after the
        client's answer started)."""
        self._coordinator.record(admission, verdict)
        if admission.probe and verdict.counts_for_breaker:
            self._answered(admission)

    def finish(self, answered: bool = False) -> None:
        """The request ended: ``settle``, and hand back the probe permits it used without an
        outcome that counts (the breaker's question is still open)."""
        self.settle(answered)
        probes, self._probes = self._probes, None
        for admission in probes or ():
            self._coordinator.release(admission)

    def _answered(self, admission: Admission) -> None:
        if self._probes:
            self._probes = [probe for probe in self._probes if probe is not admission]

    @property
    def request(self) -> bytes | None:
        """The request's fingerprint, taken at its first failure; None for a body that was
        streamed through (never compared)."""
        return self._request

    @property
    def known_poison(self) -> bool:
        """The request twice failed the same way on two models lately: answer it after one
        attempt."""
        return self._request is not None and self._coordinator.evidence.is_poison(self._request)

    def hold(self, admission: Admission, sign: str) -> bool:
        """Keep a failed attempt's verdict until the request's fate is known; True when the
        request is known poison (its failure is dropped, and it is answered now)."""
        if self._held is None:
            self._held = []
            if self._body is not None:
                self._request = fingerprint(self._method, self._credential, self._body)
        self._coordinator.evidence.failed(admission.model, self._credential)
        if admission.probe:
            # A half-open probe's result is the breaker's own question: it is never held.
            self._coordinator.record(admission, Verdict.FAILURE)
            self._answered(admission)
            return self.known_poison
        poison = self.known_poison
        if not poison:
            self._held.append((admission, HeldFailure(admission.model, sign)))
        return poison

    def request_fault(self) -> bool:
        """Whether the held failures are the request's fault; if so they are dropped, and the
        request is remembered (as poison, when it was the second time)."""
        if not self._held:
            return False
        failures = [failure for _, failure in self._held]
        models = {failure.model for failure in failures}
        if len(models) < 2:
            return False
        coordinator, ledger = self._coordinator, self._coordinator.evidence
        serving = any(coordinator.serving(model) for model in models)
        request = self._request
        failed_before = request is not None and ledger.failed_before(request)
        if not is_request_fault(failures, serving, failed_before):
            return False
        self._held.clear()
        if request is not None:
            params = coordinator.params(failures[0].model)
            if failed_before:
                # Once can be bad luck in a partial outage; twice is the request. (A request
                # remembered as poison is not tried on another model for a while.)
                ledger.remember_poison(request, params.poison_memory_seconds)
            ledger.remember_failed(request, params.window_seconds)
        return True

    def settle(self, answered: bool = False) -> None:
        """Report the held failures that are evidence about their model; drop the others.
        ``answered``: a model answered the request after all (it is then not remembered as
        a request that failed: a repeat of it meeting the same outage walks the chain again).

        A request's failures on one model (its retries) are judged together, as one."""
        if not self._held:
            return
        held, self._held = self._held, []
        if self.known_poison:  # learned meanwhile (by another request, or by this one)
            return
        coordinator, ledger, request = self._coordinator, self._coordinator.evidence, self._request
        by_model: dict[str, list[Admission]] = {}
        for admission, failure in held:
            by_model.setdefault(failure.model, []).append(admission)
        for model, admissions in by_model.items():
            params = coordinator.params(model)
            view = ledger.view(
                model,
                self._credential,
                request,
                coordinator.serving(model),
                coordinator.throttle.attempts_on(model),
            )
            if not counts_against_model(view, params.max_failure_share_per_key):
                continue
            for admission in admissions:
                coordinator.record(admission, Verdict.FAILURE)
                ledger.counted(model, self._credential, request, params.window_seconds)
        if request is not None and not answered:
            ledger.remember_failed(request, coordinator.params(held[0][1].model).window_seconds)
