"""The one pooled HTTP client the gateway uses to reach vLLM: httpx's API on aiohttp's connection pool.

httpx's own pool (httpcore 1.0) checks every pooled connection with a poll() system call on each request, so its
cost grows with the number of open connections; with 64 concurrent clients that was 28 % of the gateway's event
loop, and swapping in aiohttp's pool through `httpx-aiohttp` took the gateway from 443 to 1,144 requests/s in
front of an instant responder (same load script, one run each). Everything above the transport stays httpx.

httpx-aiohttp maps every aiohttp connection error to `httpx.ConnectTimeout`; the proxy treats timeouts and
connection failures differently (504 vs. retry on the base model, then 503), so this transport restores the
distinction: refused/unreachable → ConnectError, dropped connection → RemoteProtocolError, real timeouts stay
timeouts.
"""

from __future__ import annotations

from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import AsyncIterator

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport


def _precise(exc: httpx.HTTPError) -> httpx.HTTPError:
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ServerTimeoutError) or not isinstance(cause, aiohttp.ClientConnectionError):
        return exc  # a real timeout, or already mapped to the right kind
    kind = httpx.ConnectError if isinstance(cause, aiohttp.ClientConnectorError) else httpx.RemoteProtocolError
    return kind(f"{type(cause).__name__}: {cause}")


class _Stream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream):
        self.inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.inner:
                yield chunk
        except httpx.HTTPError as exc:
            raise _precise(exc) from exc.__cause__

    async def aclose(self) -> None:
        await self.inner.aclose()


class UpstreamTransport(AiohttpTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            resp = await super().handle_async_request(request)
        except httpx.HTTPError as exc:
            raise _precise(exc) from exc.__cause__
        resp.stream = _Stream(resp.stream)
        return resp


def upstream_client(timeout: httpx.Timeout, max_connections: int) -> httpx.AsyncClient:
    # the transport reads max_connections (aiohttp's pool limit) and keepalive_expiry; aiohttp keeps every
    # released connection alive, so there is no separate keep-alive count to set
    # no cookie jar in effect: the client is shared by every caller, so a cookie vLLM (or a proxy in front of it)
    # set for one request must not ride along on everyone else's
    no_cookies = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    return httpx.AsyncClient(timeout=timeout, cookies=no_cookies,
                             transport=UpstreamTransport(limits=httpx.Limits(max_connections=max_connections)))
