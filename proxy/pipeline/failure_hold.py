"""One request's failed attempts, held back from the breakers until the request's fate is known.

A failure is reported when the request turns out to be fine elsewhere (another model
answered, or the chain ran out), judged by ``proxy.pipeline.evidence`` first; it is dropped when the
request failed the same way on two models (the request is poison). Created only when an
attempt failed, so a request that succeeds at once costs nothing here.
"""

from __future__ import annotations

from ..cluster.coordinator import Admission, Coordinator
from .evidence import HeldFailure, counts_against_model, fingerprint, is_request_fault
from .outcomes import Verdict


class FailureHold:
    """The held failures of one request, and its fingerprint (taken once, when it first failed)."""

    def __init__(
        self, coordinator: Coordinator, method: str, credential: str, body: bytes | None
    ) -> None:
        self._coordinator = coordinator
        self._ledger = coordinator.evidence
        self._credential = credential
        self.request = None if body is None else fingerprint(method, credential, body)
        """The fingerprint; None for a body that was streamed through (never compared)."""
        self._held: list[tuple[Admission, HeldFailure]] = []

    @property
    def known_poison(self) -> bool:
        """The request twice failed the same way on two models lately: answer it after one
        attempt."""
        return self.request is not None and self._ledger.is_poison(self.request)

    def hold(self, admission: Admission, sign: str) -> None:
        """Keep a failed attempt's verdict; a known poison request's is dropped at once."""
        self._ledger.failed(admission.model, self._credential)
        if admission.probe:
            # A half-open probe's result is the breaker's own question: it is never held.
            self._coordinator.record(admission, Verdict.FAILURE)
            return
        if not self.known_poison:
            self._held.append((admission, HeldFailure(admission.model, sign)))

    def request_fault(self) -> bool:
        """Whether the held failures are the request's fault; if so they are dropped, and the
        request is remembered (as poison, when it was the second time)."""
        failures = [failure for _, failure in self._held]
        models = {failure.model for failure in failures}
        if len(models) < 2:
            return False
        coordinator = self._coordinator
        serving = any(coordinator.serving(model) for model in models)
        request = self.request
        failed_before = request is not None and self._ledger.failed_before(request)
        if not is_request_fault(failures, serving, failed_before):
            return False
        self._held.clear()
        if request is not None:
            params = coordinator.params(failures[0].model)
            if failed_before:
                # Once can be bad luck in a partial outage; twice is the request. (A request
                # remembered as poison is not tried on another model for a while.)
                self._ledger.remember_poison(request, params.poison_memory_seconds)
            self._ledger.remember_failed(request, params.window_seconds)
        return True

    def settle(self) -> None:
        """Report the held failures that are evidence about their model; drop the others.

        A request's failures on one model (its retries) are judged together, as one."""
        held, self._held = self._held, []
        if self.known_poison:  # learned meanwhile (by another request, or by this one)
            return
        coordinator, ledger, request = self._coordinator, self._ledger, self.request
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
        if held and request is not None:
            ledger.remember_failed(request, coordinator.params(held[0][1].model).window_seconds)
