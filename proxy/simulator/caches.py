"""A minimal in-memory ``cachedContents`` API: create, get, list, patch (TTL) and delete.

The contents themselves are not kept, only their token count: nothing reads them back.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.simulator.content import RequestError, check_contents, count_tokens
from proxy.simulator.paging import PageError, paginate
from proxy.simulator.wire import (
    Reply,
    error_reply,
    json_reply,
    parse_duration,
    parse_rfc3339,
    rfc3339,
)

DEFAULT_TTL_SECONDS = 3600.0
MAX_CACHES = 1000


@dataclass(slots=True)
class CachedContent:
    cache_id: str
    model: str
    display_name: str | None
    tokens: int
    created: float
    updated: float
    expires: float

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": f"cachedContents/{self.cache_id}", "model": self.model}
        if self.display_name:
            out["displayName"] = self.display_name
        out.update(
            {
                "usageMetadata": {"totalTokenCount": self.tokens},
                "createTime": rfc3339(self.created),
                "updateTime": rfc3339(self.updated),
                "expireTime": rfc3339(self.expires),
            }
        )
        return out


def _missing() -> Reply:
    # Google does not distinguish "absent" from "not yours" here.
    return error_reply(403, "CachedContent not found (or permission denied)")


def _expiry(body: dict[str, Any], now: float) -> float | None:
    """When the cache should expire, from ``ttl`` or ``expireTime``; raises on a bad value."""
    ttl = body.get("ttl")
    expire_time = body.get("expireTime", body.get("expire_time"))
    if ttl is not None:
        seconds = parse_duration(ttl) if isinstance(ttl, str) else None
        if seconds is None:
            raise RequestError(f"Invalid value at 'cached_content.ttl' ({ttl!r}): bad Duration.")
        return now + seconds
    if expire_time is not None:
        when = parse_rfc3339(expire_time) if isinstance(expire_time, str) else None
        if when is None:
            raise RequestError(f"Invalid value at 'cached_content.expire_time' ({expire_time!r}).")
        return when
    return None


@dataclass(slots=True)
class CacheStore:
    seed: int = 0
    _caches: dict[str, CachedContent] = field(default_factory=dict)
    _counter: int = 0

    def create(self, body: dict[str, Any], known_model: Callable[[str], bool], now: float) -> Reply:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return error_reply(400, "* CreateCachedContentRequest.cached_content.model: required\n")
        # Vertex AI names it ``projects/P/locations/L/publishers/google/models/M``.
        bare = model.rpartition("models/")[2]
        if not known_model(bare):
            return error_reply(404, f"models/{bare} is not found for createCachedContent.")
        try:
            contents = body.get("contents") or []
            if contents:
                check_contents(contents, "CreateCachedContentRequest.cached_content.contents")
            system = body.get("systemInstruction", body.get("system_instruction"))
            expires = _expiry(body, now) or now + DEFAULT_TTL_SECONDS
        except RequestError as exc:
            return error_reply(400, str(exc))
        self._forget_expired(now)
        if len(self._caches) >= MAX_CACHES:
            return error_reply(429, f"The simulator keeps at most {MAX_CACHES} cached contents.")
        self._counter += 1
        digest = hashlib.sha256(f"cache:{self.seed}:{self._counter}".encode()).digest()
        cache = CachedContent(
            cache_id=base64.b32encode(digest).decode().lower()[:12],
            model=f"models/{bare}",
            display_name=_str_or_none(body.get("displayName", body.get("display_name"))),
            tokens=count_tokens(contents, system),
            created=now,
            updated=now,
            expires=expires,
        )
        self._caches[cache.cache_id] = cache
        return json_reply(cache.to_json())

    def get(self, cache_id: str, now: float) -> Reply:
        cache = self._find(cache_id, now)
        return _missing() if cache is None else json_reply(cache.to_json())

    def update(self, cache_id: str, body: dict[str, Any], now: float) -> Reply:
        cache = self._find(cache_id, now)
        if cache is None:
            return _missing()
        try:
            expires = _expiry(body, now)
        except RequestError as exc:
            return error_reply(400, str(exc))
        if expires is not None:
            cache.expires = expires
        cache.updated = now
        return json_reply(cache.to_json())

    def delete(self, cache_id: str, now: float) -> Reply:
        if self._find(cache_id, now) is None:
            return _missing()
        del self._caches[cache_id]
        return json_reply({})

    def list(self, page_size: str | None, page_token: str | None, now: float) -> Reply:
        self._forget_expired(now)
        try:
            page, next_token = paginate(
                list(self._caches.values()), page_size, page_token, default=100, maximum=1000
            )
        except PageError as exc:
            return error_reply(400, str(exc))
        body: dict[str, Any] = {}
        if page:
            body["cachedContents"] = [cache.to_json() for cache in page]
        if next_token:
            body["nextPageToken"] = next_token
        return json_reply(body)

    def _find(self, cache_id: str, now: float) -> CachedContent | None:
        self._forget_expired(now)
        return self._caches.get(cache_id)

    def _forget_expired(self, now: float) -> None:
        for cache_id in [k for k, c in self._caches.items() if c.expires <= now]:
            del self._caches[cache_id]


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
