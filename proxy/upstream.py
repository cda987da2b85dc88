"""The one pooled upstream HTTP client, with per-model deadlines.

Failures are raised as ``UpstreamError`` subclasses that carry the status and message the
client should see; nothing from the upstream URL (which may carry ``?key=``) goes into them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator

import httpx

from .config import ModelSettings, UpstreamSettings
from .headers import Headers


class UpstreamError(Exception):
    """A failure talking to the upstream; ``status`` and ``message`` are for the client."""

    status: int = 502

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class UpstreamUnreachable(UpstreamError):
    """No connection could be made, or it broke before the response headers."""

    status = 502


class UpstreamTimeout(UpstreamError):
    """Connecting or waiting for the response headers took longer than allowed."""

    status = 504


class UpstreamBusy(UpstreamError):
    """Every pooled connection is in use and none freed up in time."""

    status = 503


class UpstreamBodyError(UpstreamError):
    """The response body broke off, or stalled, after the headers were received."""

    status = 502


class Upstream:
    """Sends requests to the configured upstream over one shared connection pool."""

    def __init__(self, settings: UpstreamSettings, client: httpx.AsyncClient) -> None:
        self.base_url = settings.base_url
        self.host = httpx.URL(settings.base_url).host
        self._client = client

    @staticmethod
    def create_client(settings: UpstreamSettings) -> httpx.AsyncClient:
        """The pooled client; timeouts are set per request from the model's settings."""
        limits = httpx.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_keepalive_connections,
            keepalive_expiry=settings.keepalive_expiry,
        )
        # trust_env=False: a sidecar must not pick up HTTP(S)_PROXY meant for the app.
        return httpx.AsyncClient(limits=limits, trust_env=False, follow_redirects=False)

    async def open(
        self,
        method: str,
        path: str,
        query_string: bytes,
        headers: Headers,
        body: bytes | AsyncIterable[bytes],
        limits: ModelSettings,
    ) -> httpx.Response:
        """Send a request and return once the response headers arrived (body unread)."""
        url = self.base_url + path
        if query_string:
            url += "?" + query_string.decode("latin-1")
        # The read timeout is enforced per chunk by ``iter_body``, and the wait for the
        # headers by the first-byte deadline below, so httpx's own read timeout is off.
        timeout = httpx.Timeout(
            connect=limits.connect_timeout,
            read=None,
            write=limits.stall_timeout,
            pool=limits.connect_timeout,
        )
        request = self._client.build_request(
            method, url, headers=headers, content=body, timeout=timeout
        )
        try:
            async with asyncio.timeout(limits.first_byte_timeout):
                return await self._client.send(request, stream=True)
        except TimeoutError:
            raise UpstreamTimeout(
                f"The upstream ({self.host}) sent no response within "
                f"{limits.first_byte_timeout:g} s."
            ) from None
        except httpx.PoolTimeout:
            raise UpstreamBusy(
                "The proxy's upstream connection pool is exhausted; retry later."
            ) from None
        except httpx.ConnectTimeout:
            raise UpstreamTimeout(
                f"Connecting to the upstream ({self.host}) timed out after "
                f"{limits.connect_timeout:g} s."
            ) from None
        except httpx.TransportError as exc:
            raise UpstreamUnreachable(
                f"The upstream ({self.host}) is unreachable: {type(exc).__name__}."
            ) from None

    async def iter_body(
        self,
        response: httpx.Response,
        limits: ModelSettings,
        deadline: float | None = None,
        first_chunk_timeout: float | None = None,
    ) -> AsyncIterator[bytes]:
        """The response body as it arrives (still encoded), failing on a stall, a break, or
        the request's deadline (a ``loop.time()`` value). ``first_chunk_timeout`` replaces the
        stall timeout until the first chunk (a stream's first token may take a while)."""
        loop = asyncio.get_running_loop()
        chunks = response.aiter_raw()
        stall = first_chunk_timeout or limits.stall_timeout
        while True:
            timeout = stall
            if deadline is not None and deadline - loop.time() < timeout:
                timeout = max(deadline - loop.time(), 0.0)
            try:
                async with asyncio.timeout(timeout):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if timeout < stall:
                    raise UpstreamBodyError(
                        "The request's deadline passed mid-response.", status=504
                    ) from None
                raise UpstreamBodyError(
                    f"The upstream ({self.host}) stalled for {stall:g} s mid-response."
                ) from None
            except httpx.TransportError as exc:
                raise UpstreamBodyError(
                    f"The upstream ({self.host}) broke off the response: {type(exc).__name__}."
                ) from None
            stall = limits.stall_timeout
            yield chunk
