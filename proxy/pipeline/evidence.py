"""Whether a failed attempt is evidence about the model, or about the request that met it.

A request the upstream fails on every model (a poison request) says nothing about any model,
and one client must not be able to open a breaker for everyone. The decisions are pure
functions over ``FailureView``; ``FailureLedger`` is this replica's recent memory they read
(identical requests, requests known to be poison, failures per API key). Nothing here runs
for a request that succeeds: a request is fingerprinted only once one of its attempts failed.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .sliding import SlidingCounts

# Fingerprints and (model, credential) counts kept at most; the oldest are forgotten first.
MAX_REMEMBERED = 10_000


@dataclass(frozen=True, slots=True)
class HeldFailure:
    """A failed attempt whose verdict waits until the request's fate is known."""

    model: str
    sign: str
    """How it failed: the upstream's HTTP status, or the kind of transport failure."""


@dataclass(frozen=True, slots=True)
class FailureView:
    """What this replica knows, when a failure is judged, about its model and its request."""

    model_serving: bool
    """The model answered some request lately (it is not failing everything)."""
    other_keys_served: bool
    """Requests of other API keys to the model went through lately."""
    already_counted: bool
    """This very request (same fingerprint) already counted against the model this window."""
    key_counted: int
    """Failures of this request's API key that counted against the model this window."""
    all_counted: int
    """Failures of every key that counted against the model this window."""


def fingerprint(method: str, credential: str, body: bytes) -> bytes:
    """Identifies a request whatever model it goes to: method, credential digest, body."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(method.encode())
    digest.update(b"\0")
    digest.update(credential.encode())
    digest.update(b"\0")
    digest.update(body)
    return digest.digest()


def shared_sign(failures: Sequence[HeldFailure]) -> str | None:
    """The way of failing that two different models of the chain share, if any."""
    first_model: dict[str, str] = {}
    for failure in failures:
        model = first_model.setdefault(failure.sign, failure.model)
        if model != failure.model:
            return failure.sign
    return None


def is_request_fault(
    failures: Sequence[HeldFailure], models_serving: bool, failed_before: bool
) -> bool:
    """A request that failed the same way on two models is the request's fault, unless
    nothing is being served at all and it is new (that is an outage of every model)."""
    return shared_sign(failures) is not None and (models_serving or failed_before)


def counts_against_model(view: FailureView, max_share_per_key: float) -> bool:
    """Whether a request's failures on a model enter the model's breaker window.

    While the model serves other requests, an identical request counts once per window; while
    other keys' requests go through, one key supplies at most ``max_share_per_key`` of the
    counted failures, and always one request's (a request's failures on a model are judged
    together, so a key alone never counts more than one request's). A model that fails
    everything is judged on every failure, as before."""
    if view.model_serving and view.already_counted:
        return False
    if not view.other_keys_served:
        return True
    allowed = max(1.0, max_share_per_key * (view.all_counted + 1))
    return view.key_counted < allowed


class _Expiring:
    """Keys remembered until a deadline, at most ``MAX_REMEMBERED`` of them."""

    __slots__ = ("_until",)

    def __init__(self) -> None:
        self._until: OrderedDict[object, float] = OrderedDict()

    def holds(self, key: object, now: float) -> bool:
        until = self._until.get(key)
        if until is None:
            return False
        if until <= now:
            del self._until[key]
            return False
        return True

    def add(self, key: object, until: float) -> None:
        self._until.pop(key, None)
        self._until[key] = until
        while len(self._until) > MAX_REMEMBERED:
            self._until.popitem(last=False)


class FailureLedger:
    """This replica's recent memory of failures: which requests are poison, which already
    counted, and how many failures each API key had per model (``a``: counted, ``b``: seen).

    Per replica by design: the breaker windows stay in Redis; a replica only decides which
    of its own failures it reports there."""

    def __init__(self, window_seconds: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window_seconds
        self._clock = clock
        self._poison = _Expiring()
        self._failed = _Expiring()
        self._counted = _Expiring()
        self._keys: OrderedDict[tuple[str, str], SlidingCounts] = OrderedDict()
        self._models: dict[str, SlidingCounts] = {}
        self._served_at: dict[str, float] = {}

    # -- what happened ----------------------------------------------------------------------

    def served(self, model: str) -> None:
        """The model answered requests (called in the background, from the outcome flush)."""
        self._served_at[model] = self._clock()

    def failed(self, model: str, credential: str) -> None:
        """An attempt of this key on the model failed (whether or not it counts)."""
        self._key(model, credential).add_b()

    def remember_poison(self, request: bytes, seconds: float) -> None:
        self._poison.add(request, self._clock() + seconds)

    def remember_failed(self, request: bytes, seconds: float) -> None:
        self._failed.add(request, self._clock() + seconds)

    def counted(self, model: str, credential: str, request: bytes | None, seconds: float) -> None:
        """A failure of this request was reported against the model."""
        self._key(model, credential).add_a()
        totals = self._models.get(model)
        if totals is None:
            totals = self._models[model] = SlidingCounts(self._window, self._clock)
        totals.add_a()
        if request is not None:
            self._counted.add((model, request), self._clock() + seconds)

    # -- what is known ----------------------------------------------------------------------

    def is_poison(self, request: bytes) -> bool:
        return self._poison.holds(request, self._clock())

    def failed_before(self, request: bytes) -> bool:
        return self._failed.holds(request, self._clock())

    def served_within(self, model: str, seconds: float) -> bool:
        served = self._served_at.get(model)
        return served is not None and self._clock() - served <= seconds

    def view(
        self,
        model: str,
        credential: str,
        request: bytes | None,
        serving: bool,
        attempts_by_key: Iterable[tuple[str, int]],
    ) -> FailureView:
        """The view a failure of ``credential`` on ``model`` is judged by; ``attempts_by_key``
        are the attempts each key sent the model this window (the quota throttle counts them)."""
        mine = self._keys.get((model, credential))
        if mine is not None:
            mine.refresh()
        totals = self._models.get(model)
        if totals is not None:
            totals.refresh()
        others = serving and self._others_went_through(model, credential, attempts_by_key)
        return FailureView(
            model_serving=serving,
            other_keys_served=others,
            already_counted=request is not None
            and self._counted.holds((model, request), self._clock()),
            key_counted=mine.a if mine is not None else 0,
            all_counted=totals.a if totals is not None else 0,
        )

    def _others_went_through(
        self, model: str, credential: str, attempts_by_key: Iterable[tuple[str, int]]
    ) -> bool:
        for key, attempts in attempts_by_key:
            if key == credential:
                continue
            counts = self._keys.get((model, key))
            if counts is not None:
                counts.refresh()
            if attempts > (counts.b if counts is not None else 0):
                return True
        return False

    def _key(self, model: str, credential: str) -> SlidingCounts:
        counts = self._keys.get((model, credential))
        if counts is None:
            if len(self._keys) >= MAX_REMEMBERED:
                self._keys.popitem(last=False)
            counts = self._keys[(model, credential)] = SlidingCounts(self._window, self._clock)
        return counts
