"""Fetching one piece from the source the scheduler named, into a buffer of exactly its size.

``peer`` / ``supernode`` sources: ``GET http://ip:port/pieces/{task}/{num}``. ``origin``: a Range
GET on the task's URL with the user's headers. Every received chunk is paced by the task's and
the host's rate limiters. A source that sends nothing for ``stall`` seconds, answers an error,
or sends too few or too many bytes fails the piece with a failure kind from the protocol
(``connect``, ``timeout``, ``http``, ``short``, ``other``); digests are checked by the store.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from dataclasses import dataclass, field

import aiohttp

from damselfly.core.errors import DamselflyError, PieceFetchError
from damselfly.core.protocol import PieceAssignment
from damselfly.core.ratelimit import AsyncLimiter, acquire_all

CONNECT_TIMEOUT = 5.0
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


@dataclass(slots=True)
class OriginAccess:
    """How to reach the origin for one download: URL, the user's headers (secret) and TLS."""

    url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    ssl: ssl.SSLContext | bool | None = None


def piece_url(ip: str, port: int, task_id: str, num: int) -> str:
    try:
        host = f"[{ip}]" if ipaddress.ip_address(ip).version == 6 else ip
    except ValueError:
        host = ip
    return f"http://{host}:{port}/pieces/{task_id}/{num}"


class PieceFetcher:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        task_id: str,
        origin: OriginAccess,
        limiters: list[AsyncLimiter | None],
        stall: float,
    ) -> None:
        self.session = session
        self.task_id = task_id
        self.origin = origin
        self.limiters = limiters
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=min(CONNECT_TIMEOUT, stall * 2), sock_read=stall
        )

    async def fetch(self, a: PieceAssignment) -> bytearray:
        """The piece's bytes (exactly ``a.size``), or PieceFetchError with a failure kind."""
        if a.source.kind == "origin":
            end = a.start + a.size - 1
            headers = dict(self.origin.headers)
            headers["Range"] = f"bytes={a.start}-{end}"
            headers["Accept-Encoding"] = "identity"
            return await self._get(self.origin.url, headers, a, ranged=True)
        if not a.source.ip or not a.source.port:
            raise PieceFetchError("the scheduler named a source without an address", "other")
        url = piece_url(a.source.ip, a.source.port, self.task_id, a.num)
        return await self._get(url, {"Accept-Encoding": "identity"}, a, ranged=False)

    async def _get(
        self, url: str, headers: dict[str, str], a: PieceAssignment, ranged: bool
    ) -> bytearray:
        ssl_arg = self.origin.ssl if ranged else None
        try:
            async with self.session.get(
                url,
                headers=headers,
                timeout=self.timeout,
                ssl=ssl_arg if ssl_arg is not None else True,
                allow_redirects=ranged,
                auto_decompress=False,
            ) as resp:
                self._check_status(resp, a, ranged)
                return await self._read(resp, a)
        except PieceFetchError:
            raise
        except (aiohttp.ClientConnectorError, ConnectionRefusedError) as e:
            raise PieceFetchError(
                f"cannot connect to the source: {e.__class__.__name__}", "connect"
            ) from e
        except (TimeoutError, aiohttp.ServerTimeoutError) as e:
            raise PieceFetchError("the source stalled", "timeout") from e
        except aiohttp.ClientPayloadError as e:
            raise PieceFetchError("the source closed the connection mid-piece", "short") from e
        except (aiohttp.ClientError, OSError) as e:
            raise PieceFetchError(f"fetch failed: {e!r}", "other") from e

    def _check_status(self, resp: aiohttp.ClientResponse, a: PieceAssignment, ranged: bool) -> None:
        if ranged:
            if resp.status != 206:
                raise PieceFetchError(
                    f"the origin answered {resp.status} to a Range request", "http"
                )
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != a.start or int(m.group(2)) != a.start + a.size - 1:
                raise PieceFetchError("the origin answered another range than asked", "http")
        elif resp.status != 200:
            raise PieceFetchError(f"the source answered {resp.status}", "http")
        if resp.content_length is not None and resp.content_length != a.size:
            raise PieceFetchError(
                f"the source announced {resp.content_length} bytes, expected {a.size}", "http"
            )

    async def _read(self, resp: aiohttp.ClientResponse, a: PieceAssignment) -> bytearray:
        buf = bytearray(a.size)
        view = memoryview(buf)
        got = 0
        async for chunk in resp.content.iter_any():
            n = len(chunk)
            if got + n > a.size:
                raise PieceFetchError("the source sent more bytes than the piece holds", "http")
            view[got : got + n] = chunk
            got += n
            await acquire_all(self.limiters, n)
        if got != a.size:
            raise PieceFetchError(f"the source sent {got} of {a.size} bytes", "short")
        return buf


def ssl_for(cacerts: list[str], insecure: bool) -> ssl.SSLContext | bool | None:
    """TLS towards the origin: ``--insecure`` skips checks; ``--cacerts`` adds trusted roots."""
    if insecure:
        return False
    if not cacerts:
        return None
    ctx = ssl.create_default_context()
    for path in cacerts:
        try:
            ctx.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as e:
            raise DamselflyError(
                f"cannot load CA certificates from {path}: {e}", "check --cacerts"
            ) from e
    return ctx
