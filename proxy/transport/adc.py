"""Bearer tokens from Application Default Credentials (a service-account file, or GKE workload
identity through the metadata server), for Vertex requests that bring no credential of their
own. Fetched on first need, reused while valid, refreshed before they expire (google-auth's
threshold), one refresh at a time. Tokens are never logged."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import google.auth
import google.auth.exceptions
import google.auth.transport.requests

from ..errors import TransportError

log = logging.getLogger("gemini_breaker.adc")

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
REFRESH_TIMEOUT = 10.0
"""Seconds a token fetch may take (google-auth's own HTTP calls are synchronous: a thread)."""


class CredentialsUnavailable(TransportError):
    """No token could be had; the message says why (and holds no secret)."""


class AdcTokens:
    """The ``Authorization`` value from Application Default Credentials."""

    def __init__(self) -> None:
        self._credentials: Any = None
        self._header = b""
        self._rejected = b""
        """A header the upstream answered 401: not reused, though google-auth deems it valid."""
        self._lock = asyncio.Lock()
        self.refreshes = 0
        """Tokens fetched so far."""

    async def authorization(self) -> bytes:
        """``Bearer <token>``, fetching a new token when there is none or it is about to expire."""
        if self._usable():
            return self._header
        async with self._lock:
            if not self._usable():
                try:
                    async with asyncio.timeout(REFRESH_TIMEOUT):
                        await asyncio.to_thread(self._refresh)
                except TimeoutError:
                    raise CredentialsUnavailable(
                        "Application Default Credentials did not answer in time."
                    ) from None
        return self._header

    def reject(self, header: bytes) -> None:
        """The upstream answered 401 to a request that carried ``header`` (the token was
        revoked, or the account's key rotated): the next request fetches a new token. A
        header already replaced by a newer token is no reason to drop that one."""
        if header == self._header:
            self._rejected = header
            log.info("the upstream refused the Vertex AI access token: fetching a new one")

    def _usable(self) -> bool:
        credentials = self._credentials
        return bool(
            credentials is not None and credentials.valid and self._header != self._rejected
        )

    def _refresh(self) -> None:
        try:
            if self._credentials is None:
                self._credentials, _ = google.auth.default(scopes=SCOPES)
            self._credentials.refresh(google.auth.transport.requests.Request())
        except google.auth.exceptions.GoogleAuthError as exc:
            # The exception's text names files and endpoints, never the token.
            raise CredentialsUnavailable(
                f"Application Default Credentials are unavailable: {type(exc).__name__}."
            ) from None
        self._header = b"Bearer " + str(self._credentials.token).encode("latin-1")
        # A metadata server may hand back the token it refused (it caches): use it anyway,
        # rather than fetch again for every request.
        self._rejected = b""
        self.refreshes += 1
        log.info("fetched a Vertex AI access token from Application Default Credentials")
