"""The breaker scripts, called through redis-py: one method per script.

Every state change happens inside Lua (see ``lua/``), atomically and on Redis's clock; this
module only packs arguments and parses answers. Works with a real ``redis.asyncio.Redis`` (one
server or a Sentinel-managed master), a ``redis.asyncio.RedisCluster`` (every key shares one
hash tag, and every call names the epoch key, so the cluster client sends it to the node owning
that slot), or an in-process ``fakeredis.FakeAsyncRedis``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, TypeVar

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ReadOnlyError, ResponseError
from redis.typing import EncodableT

from ..errors import ClusterError
from .codec import PayloadError, decode, encode, loads
from .keys import Keys
from .state import (
    ACTIONS,
    Acquired,
    AuditEntry,
    BreakerParams,
    Change,
    Heartbeat,
    Outcome,
    PinChange,
    QuotaChange,
    QuotaParams,
    QuotaSnapshot,
    QuotaState,
    Snapshot,
    audit_entry_from_fields,
)

if TYPE_CHECKING:  # connect imports the configuration, which imports this package
    from .connect import StoreClient

T = TypeVar("T")
ScriptArgs = Mapping[str, object]
"""A script's own arguments, by name (ARGS in the scripts)."""

#: Helpers every script starts with (Redis scripts cannot load one another).
_PRELUDE = ("common.lua", "window.lua", "view.lua")
_DEFAULT_PARAMS = BreakerParams()
#: Longest pin accepted: a pin is a temporary override, not configuration.
MAX_PIN_SECONDS = 7 * 24 * 3600


class StoreError(ClusterError):
    """Redis ran a breaker script and answered with an error, or with something unreadable.

    Connection problems are not wrapped: redis-py's own exceptions propagate, and so does
    ``ReadOnlyError`` (a replica after a failover), which is an availability problem too.
    """


def script_source(name: str, prelude: Sequence[str] = _PRELUDE) -> str:
    """The full text of one script (``report``, ``acquire``, ...), prelude included."""
    folder = resources.files(__package__).joinpath("lua")
    parts = (*prelude, f"{name}.lua")
    return "\n".join(folder.joinpath(part).read_text(encoding="utf-8") for part in parts)


def _no_floor() -> int:
    return 0


class BreakerStore:
    """Cluster-wide breaker state in Redis, one namespace.

    ``epoch_floor`` gives the highest epoch the caller has seen; every script takes its new
    epochs above it, so epochs never go backwards after Redis lost writes.
    """

    def __init__(
        self, redis: StoreClient, keys: Keys, epoch_floor: Callable[[], int] = _no_floor
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._epoch_floor = epoch_floor
        self._report = redis.register_script(script_source("report"))
        self._acquire = redis.register_script(script_source("acquire"))
        self._probe_done = redis.register_script(script_source("probe_done"))
        self._probe_release = redis.register_script(script_source("probe_release"))
        self._force = redis.register_script(script_source("force"))
        self._register_routes = redis.register_script(script_source("register_routes"))
        self._snapshot = redis.register_script(script_source("snapshot"))
        self._seed = redis.register_script(script_source("seed"))
        self._reissue = redis.register_script(script_source("reissue"))
        self._pin = redis.register_script(script_source("pin"))
        self._unpin = redis.register_script(script_source("unpin"))
        self._heartbeat = redis.register_script(script_source("heartbeat", ("common.lua",)))
        self._budget = redis.register_script(script_source("budget", ("common.lua",)))
        # quota_feedback takes an epoch, so it needs view.lua's reissue_state (see next_epoch).
        quota_prelude = (*_PRELUDE, "quota.lua")
        self._quota_feedback = redis.register_script(script_source("quota_feedback", quota_prelude))
        self._quota_snapshot = redis.register_script(
            script_source("quota_snapshot", ("common.lua", "quota.lua"))
        )

    @property
    def keys(self) -> Keys:
        return self._keys

    async def register_routes(
        self,
        routes: Mapping[str, Sequence[str]],
        replica: str,
        digest: str,
        params: Mapping[str, BreakerParams],
    ) -> Snapshot:
        """Publish this replica's chains and digest; answer the whole state afterwards.

        ``params`` names the configured models, so those outside every chain are known too.
        """
        for route, chain in routes.items():
            if not chain or isinstance(chain, str):
                raise ValueError(f"route {route!r}: the chain must be a non-empty list of models")
        args = {
            "replica": replica,
            "digest": digest,
            "routes": {route: list(chain) for route, chain in routes.items()},
            "models": list(params),
        }
        reply = await self._call(self._register_routes, args)
        return _parse(reply, Snapshot)

    async def report(
        self, outcomes: Sequence[Outcome], params: Mapping[str, BreakerParams]
    ) -> list[Change]:
        """Add aggregated outcomes to the windows, in one round trip; one Change per outcome.

        A model missing from ``params`` uses the default parameters.
        """
        if not outcomes:
            return []
        calls = [
            {
                "model": o.model,
                "epoch": o.epoch,
                "calls": o.calls,
                "failures": o.failures,
                "params": _params(params.get(o.model)),
            }
            for o in outcomes
        ]
        replies = await self._call_many(self._report, calls)
        return [_parse(reply, Change) for reply in replies]

    async def acquire(self, model: str, params: BreakerParams) -> Acquired:
        """Ask for a permit on a breaker that is not closed (half-open probes are counted)."""
        reply = await self._call(self._acquire, {"model": model, "params": _params(params)})
        return _parse(reply, Acquired)

    async def probe_done(self, model: str, epoch: int, ok: bool, params: BreakerParams) -> Change:
        """Report the result of the probe a permit of ``epoch`` allowed."""
        args = {"model": model, "epoch": epoch, "ok": ok, "params": _params(params)}
        reply = await self._call(self._probe_done, args)
        return _parse(reply, Change)

    async def probe_release(self, model: str, epoch: int) -> Change:
        """Hand back the permit of ``epoch``'s probe, unreported: its request was the client's
        fault, which says nothing about the model."""
        reply = await self._call(self._probe_release, {"model": model, "epoch": epoch})
        return _parse(reply, Change)

    async def force(
        self,
        model: str,
        action: str,
        by: str,
        reason: str,
        params: BreakerParams,
        via: str = "",
    ) -> Change:
        """Operator action: ``open``, ``close``, ``reset``, ``force_open`` or ``disable``;
        audited in the same step (``via``: the replica that took it)."""
        if action not in ACTIONS:
            raise ValueError(
                f"unknown breaker action {action!r}; expected one of {sorted(ACTIONS)}"
            )
        args = {
            "model": model,
            "action": action,
            "by": by,
            "reason": reason,
            "params": _params(params),
            "via": via,
        }
        reply = await self._call(self._force, args)
        return _parse(reply, Change)

    async def pin(
        self, route: str, model: str, ttl_seconds: float, by: str, reason: str, via: str = ""
    ) -> PinChange:
        """Pin ``route`` to ``model`` (a member of its chain) for ``ttl_seconds`` of Redis
        time; replaces an earlier pin of the route. Audited and published."""
        if not 0 < ttl_seconds <= MAX_PIN_SECONDS:
            raise ValueError(f"ttl_seconds must be in (0, {MAX_PIN_SECONDS}]: {ttl_seconds}")
        ttl_ms = max(1, round(ttl_seconds * 1000))
        args = {
            "route": route,
            "model": model,
            "ttl_ms": ttl_ms,
            "by": by,
            "reason": reason,
            "via": via,
        }
        reply = await self._call(self._pin, args)
        return _parse(reply, PinChange)

    async def unpin(self, route: str, by: str, reason: str, via: str = "") -> PinChange:
        """Remove the route's pin (``changed`` is False when it had none). Audited."""
        args = {"route": route, "by": by, "reason": reason, "via": via}
        reply = await self._call(self._unpin, args)
        return _parse(reply, PinChange)

    async def heartbeat(self, replica: str, digest: str, forget_seconds: float) -> Heartbeat:
        """Record this replica as alive (with its routes digest); answer every replica heard
        from within ``forget_seconds``."""
        forget_ms = max(1, round(forget_seconds * 1000))
        args = {"replica": replica, "digest": digest, "forget_ms": forget_ms}
        reply = await self._call(self._heartbeat, args)
        return _parse(reply, Heartbeat)

    async def audit(self, limit: int) -> list[AuditEntry]:
        """The newest ``limit`` audit entries, newest first (a plain read, no script)."""
        try:
            raw = await self._redis.xrevrange(self._keys.audit, count=max(1, limit))
        except ReadOnlyError:
            raise
        except ResponseError as exc:
            raise StoreError(f"reading the audit stream failed: {exc}") from exc
        try:
            return [
                audit_entry_from_fields(
                    _text(entry_id), {_text(k): _text(v) for k, v in fields.items()}
                )
                for entry_id, fields in raw or []
                if fields
            ]
        except PayloadError as exc:
            raise StoreError(f"unreadable audit entry: {exc}") from exc

    async def snapshot(self) -> Snapshot:
        """Everything, read atomically: breakers, active models, routes, digests, pins. Pins
        whose time is up are removed first (published and audited)."""
        return _parse(await self._call(self._snapshot, {}), Snapshot)

    async def seed(self, snapshot: Snapshot) -> Snapshot:
        """Load a known state (the last one seen) into this store, e.g. an in-process one.

        Breakers, active models, routes, pins and digests are written as given; windows start empty;
        the epoch counter only moves forward. Nothing is published.
        """
        reply = await self._call(self._seed, {"snapshot": encode(snapshot)})
        return _parse(reply, Snapshot)

    async def reissue(self, models: Sequence[str]) -> Snapshot:
        """When the store lost writes (its epoch counter is below the floor), issue its whole
        state again at one new epoch above the floor, published, so every replica adopts it;
        any script that takes an epoch does the same. ``models`` are the caller's configured
        models (breakers the store may have forgotten). Answers the snapshot after it."""
        reply = await self._call(self._reissue, {"models": list(models)})
        return _parse(reply, Snapshot)

    async def quota_feedback(
        self,
        scope: str,
        model: str,
        delay_seconds: float,
        per_day: bool,
        quota_id: str,
        quota: QuotaParams,
    ) -> QuotaChange:
        """A 429 met ``model`` for the credential ``scope``: cool down, slow down, publish."""
        reply = await self._call(
            self._quota_feedback,
            {
                "scope": scope,
                "model": model,
                "delay_ms": max(1, round(delay_seconds * 1000)),
                "per_day": per_day,
                "quota_id": quota_id,
                "decrease": quota.decrease,
                "min_scale": quota.min_scale,
                "recovery_per_s": quota.recovery_per_second,
                "decrease_interval_ms": round(quota.decrease_interval * 1000),
            },
        )
        return _parse(reply, QuotaChange)

    async def spend_budget(self, model: str, rpm: int, tpm: int, tokens: int) -> float:
        """Take one request and ``tokens`` tokens from the model's cluster-wide budget; 0 when
        admitted, else the seconds until it would be."""
        args = {"model": model, "rpm": rpm, "tpm": tpm, "tokens": max(1, tokens)}
        reply = await self._call(self._budget, args)
        answer = _parse(reply, BudgetAnswer)
        return 0.0 if answer.allowed else max(0.001, answer.retry_after_ms / 1000)

    async def quota_snapshot(self) -> tuple[int, int, list[QuotaState]]:
        """Every live quota condition, with the store's time and epoch."""
        answer = _parse(await self._call(self._quota_snapshot, {}), QuotaSnapshot)
        return answer.now_ms, answer.epoch, answer.quotas

    async def _call(self, script: AsyncScript, args: ScriptArgs) -> object:
        try:
            reply: object = await script(keys=[self._keys.epoch], args=self._argv(args))
        except ReadOnlyError:
            raise
        except ResponseError as exc:
            raise StoreError(f"breaker script failed: {exc}") from exc
        return reply

    async def _call_many(self, script: AsyncScript, calls: Sequence[ScriptArgs]) -> list[object]:
        """Run ``script`` once per argument list in a single pipeline (no transaction)."""
        replies = await self._pipeline(script.sha, calls)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            # The server lost its script cache (restart, failover, SCRIPT FLUSH). Calls that
            # met NOSCRIPT never ran, so exactly those are sent again.
            script.sha = await self._redis.script_load(script.script)
            retried = await self._pipeline(script.sha, [calls[i] for i in missing])
            for i, reply in zip(missing, retried, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, ReadOnlyError):
                raise reply
            if isinstance(reply, ResponseError):
                raise StoreError(f"breaker script failed: {reply}") from reply
        return replies

    async def _pipeline(self, sha: str, calls: Sequence[ScriptArgs]) -> list[object]:
        # EVALSHA is queued directly: Script objects in a pipeline would cost an extra
        # SCRIPT EXISTS round trip on every execute. On a cluster every call goes to the node
        # owning the epoch key's slot.
        async with self._redis.pipeline(transaction=False) as pipe:
            for args in calls:
                # Through execute_command: redis-py's cluster pipeline refuses pipe.evalsha,
                # though it routes an EVALSHA command by its key like any other.
                pipe.execute_command("EVALSHA", sha, 1, self._keys.epoch, *self._argv(args))
            replies: list[object] = await pipe.execute(raise_on_error=False)
        return replies

    def _argv(self, args: ScriptArgs) -> list[EncodableT]:
        """ARGV of every script: the key prefix, the epoch floor, and the script's own
        arguments by name (one JSON object: see common.lua)."""
        return [self._keys.prefix, max(0, self._epoch_floor()), json.dumps(args)]


def _params(params: BreakerParams | None) -> dict[str, int | float]:
    return (params or _DEFAULT_PARAMS).script_params()


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


@dataclass(frozen=True, slots=True)
class BudgetAnswer:
    """The budget script's answer: admitted, or the milliseconds until it would be."""

    allowed: bool
    retry_after_ms: float


def _parse(reply: object, cls: type[T]) -> T:
    if not isinstance(reply, bytes | str):
        raise StoreError(f"breaker script answered {type(reply).__name__}, expected JSON text")
    try:
        return decode(cls, loads(reply))
    except PayloadError as exc:
        raise StoreError(f"unreadable breaker script answer: {exc}") from exc
