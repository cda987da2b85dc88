"""Redis key names of one deployment namespace.

Every key carries the same hash tag, ``{<namespace>}``, so the scripts may touch several keys at
once, also on Redis Cluster (all of them hash to one slot).
"""

from __future__ import annotations


class Keys:
    """The names of every key and channel the breaker scripts use, for one namespace."""

    __slots__ = ("_prefix",)

    def __init__(self, namespace: str = "default") -> None:
        # Braces inside the namespace would end the hash tag early and scatter keys over slots.
        if not namespace or "{" in namespace or "}" in namespace:
            raise ValueError(f"namespace must be non-empty and free of braces: {namespace!r}")
        self._prefix = f"gb:{{{namespace}}}:"

    def __repr__(self) -> str:
        return f"Keys(prefix={self._prefix!r})"

    @property
    def prefix(self) -> str:
        """Common prefix; the scripts receive it and build the other names from it."""
        return self._prefix

    @property
    def epoch(self) -> str:
        """Global counter; every transition takes the next value as its epoch."""
        return self._prefix + "epoch"

    def breaker(self, model: str) -> str:
        """Hash with the breaker state of ``model``."""
        return self._prefix + "breaker:" + model

    def window(self, model: str) -> str:
        """Hash with the sliding window (ring of buckets) of ``model``."""
        return self._prefix + "window:" + model

    @property
    def models(self) -> str:
        """Set of every model any script has seen."""
        return self._prefix + "models"

    @property
    def routes(self) -> str:
        """Hash route -> JSON list of the chain's models."""
        return self._prefix + "routes"

    @property
    def route_digests(self) -> str:
        """Hash replica id -> digest of the routes it registered (drift is visible)."""
        return self._prefix + "route_digests"

    @property
    def active(self) -> str:
        """Hash route -> JSON ``{"model": str | null, "epoch": int}``."""
        return self._prefix + "active"

    def quota(self, scope: str, model: str) -> str:
        """Hash with the 429 cooldown and rate scale of one (credential digest, model)."""
        return self._prefix + "quota:" + scope + ":" + model

    @property
    def quotas(self) -> str:
        """Set of ``scope|model`` members that have (or recently had) a quota condition."""
        return self._prefix + "quotas"

    @property
    def pins(self) -> str:
        """Hash route -> JSON ``{"model", "until_ms", "since_ms", "by", "reason", "epoch"}``:
        operator pins, honoured while ``until_ms`` (Redis time) lies ahead."""
        return self._prefix + "pins"

    @property
    def audit(self) -> str:
        """Stream of operator actions (who, what, why, when, resulting epoch), capped."""
        return self._prefix + "audit"

    @property
    def replicas(self) -> str:
        """Sorted set replica id -> time of its last heartbeat (Redis milliseconds)."""
        return self._prefix + "replicas"

    @property
    def events(self) -> str:
        """Pub/sub channel carrying every change, as the JSON the scripts return."""
        return self._prefix + "events"
