"""The CDN's HTTP client towards origins: one aiohttp session, errors translated at the boundary.

Every origin request goes through ``OriginClient.request``; body bytes come out of
``OriginResponse.chunks`` paced by the CDN's shared rate limiter. aiohttp and OS exceptions
become ``OriginError`` here, with a message that names the URL only through ``redact_url`` and
never a header value (the caller's headers are credentials).

The session keeps no cookies (one user's session cookie must never travel with another user's
request), does not decompress (the cached bytes are the file's own bytes) and asks for
``Accept-Encoding: identity``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from damselfly.core.errors import OriginError
from damselfly.core.ids import redact_url
from damselfly.core.ratelimit import AsyncLimiter
from damselfly.supernode.cdn_policy import (
    Head,
    parse_content_length,
    parse_content_range,
    status_error,
)

CHUNK = 256 * 1024
MAX_VALIDATOR_LEN = 1024


def _network_error(e: BaseException, url: str) -> OriginError:
    """A transport failure as an OriginError (str(e) is avoided: it may quote the full URL)."""
    if isinstance(e, asyncio.TimeoutError):
        what = "timed out"
    elif isinstance(e, aiohttp.ClientPayloadError):
        what = "closed the connection in the middle of the body"
    elif isinstance(e, aiohttp.ServerDisconnectedError):
        what = "closed the connection"
    elif isinstance(e, aiohttp.ClientConnectorError):
        what = f"could not be reached ({e.os_error.strerror or type(e.os_error).__name__})"
    elif isinstance(e, aiohttp.TooManyRedirects):
        what = "redirected too many times"
    elif isinstance(e, OSError):
        what = f"failed ({e.strerror or type(e).__name__})"
    else:
        what = f"failed ({type(e).__name__})"
    return OriginError(
        f"the origin for {redact_url(url)} {what}",
        "check that the origin is up and reachable from the supernode; it is retried",
    )


def _validator(value: str | None) -> str:
    if not value or len(value) > MAX_VALIDATOR_LEN or any(c in value for c in "\r\n\x00"):
        return ""
    return value


@dataclass(slots=True)
class OriginResponse:
    head: Head
    accept_ranges: bool
    _resp: aiohttp.ClientResponse
    _limiter: AsyncLimiter | None
    _url: str

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body in chunks of at most CHUNK bytes, each paid for at the rate limiter."""
        try:
            async for chunk in self._resp.content.iter_chunked(CHUNK):
                if self._limiter is not None:
                    await self._limiter.acquire(len(chunk))
                yield chunk
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise _network_error(e, self._url) from None


class OriginClient:
    """One shared aiohttp session for every origin fetch of a CDN."""

    def __init__(
        self,
        limiter: AsyncLimiter | None,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        self.limiter = limiter
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=self.connect_timeout, sock_read=self.read_timeout
                ),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                connector=aiohttp.TCPConnector(limit=256, enable_cleanup_closed=True),
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @asynccontextmanager
    async def request(
        self, method: str, url: str, headers: Mapping[str, str]
    ) -> AsyncIterator[OriginResponse]:
        """Send one request; the response is released (connection closed if unread) on exit."""
        if self._session is None:
            raise OriginError("the CDN's origin client is closed", "restart the supernode")
        hdrs = dict(headers)
        hdrs["Accept-Encoding"] = "identity"
        try:
            resp = await self._session.request(method, url, headers=hdrs, allow_redirects=True)
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise _network_error(e, url) from None
        try:
            h = resp.headers
            head = Head(
                status=resp.status,
                length=parse_content_length(h.get("Content-Length")),
                content_range=parse_content_range(h.get("Content-Range")),
                etag=_validator(h.get("ETag")),
                last_modified=_validator(h.get("Last-Modified")),
            )
            accept = h.get("Accept-Ranges", "").strip().lower() == "bytes"
            yield OriginResponse(head, accept, resp, self.limiter, url)
        finally:
            if resp.content.at_eof():
                resp.release()  # back to the pool
            else:
                resp.close()  # an unread body: drop the connection rather than drain it


async def probe_length(
    client: OriginClient,
    url: str,
    headers: Mapping[str, str],
    negative_ttl: float,
    on_request: Callable[[], None],
) -> Head:
    """Learn a file's length and validators without its body (the CDN's source pattern).

    A HEAD first; when the origin refuses HEAD or gives no length, a ``Range: bytes=0-0`` GET
    (whose 206 names the total length). Error statuses raise the matching OriginError.
    """
    shown = redact_url(url)
    async with client.request("HEAD", url, headers) as resp:
        on_request()
        h = resp.head
        if h.status == 200 and h.length is not None:
            return h
        if h.status in (401, 403, 404, 407, 410) or h.status >= 500:
            raise status_error(h.status, shown, negative_ttl)
    async with client.request("GET", url, {**headers, "Range": "bytes=0-0"}) as resp:
        on_request()
        h = resp.head
        if h.status == 206 and h.content_range is not None:
            return Head(200, h.content_range[2], None, h.etag, h.last_modified)
        if h.status == 200 and h.length is not None:
            return h  # no ranges: the body is left unread (the connection is dropped)
        if h.status >= 400:
            raise status_error(h.status, shown, negative_ttl)
    raise OriginError(
        f"the origin does not say how long {shown} is",
        "peers cannot fetch ranges of it; run the supernode with the local CDN pattern",
    )
