"""Fetching one piece from the source the scheduler named, into a buffer of exactly its size.

``peer`` / ``supernode`` sources: ``GET http://ip:port/pieces/{task}/{num}`` through the engine's
``PieceClient`` (the body lands in the buffer by ``recv_into``). ``origin``: a Range GET on the
task's URL with the user's headers, through aiohttp (TLS, redirects, proxies of the origin's
world). A private task's pieces carry this peer's grant (``X-Damselfly-Grant``; kept current by
the download from its register and schedule answers). Buffers come from a per-download
``BufferPool``: ``fetch`` hands one out, the caller gives it back with ``release`` once the
piece is written. Every received chunk is paced by the task's
and the host's rate limiters. A source that sends nothing for ``stall`` seconds, answers an
error, or sends too few or too many bytes fails the piece with a failure kind from the protocol
(``connect``, ``timeout``, ``http``, ``short``, ``other``); digests are checked by the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp

from damselfly.core.errors import DamselflyError, PieceFetchError
from damselfly.core.grants import GRANT_HEADER
from damselfly.core.protocol import PieceAssignment
from damselfly.core.ratelimit import AsyncLimiter, acquire_all
from damselfly.peer.piececlient import BufferPool, PieceClient

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
    """Fetches the pieces of one download; ``close()`` unmaps its buffers when it is over."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        task_id: str,
        origin: OriginAccess,
        limiters: list[AsyncLimiter | None],
        stall: float,
        pieces: PieceClient | None = None,
    ) -> None:
        self.session = session
        self.task_id = task_id
        self.origin = origin
        self.limiters = limiters
        self.stall = stall
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=min(CONNECT_TIMEOUT, stall * 2), sock_read=stall
        )
        # The version this download's origin pieces come from: the first 206 pins its validator
        # and total length; later Range requests carry If-Range, so a file replaced meanwhile
        # answers 200 (or another total) and the piece fails instead of mixing two versions.
        self.pinned: tuple[str, str] | None = None
        self._own_client = pieces is None
        self.pieces = pieces if pieces is not None else PieceClient()
        self.buffers = BufferPool()
        #: this peer's grant for a private task ("" for a public one): sent with every piece
        #: request to a peer or supernode
        self.grant = ""

    async def fetch(self, a: PieceAssignment) -> memoryview:
        """The piece's bytes (exactly ``a.size``), or PieceFetchError with a failure kind.

        The view is a pool buffer: hand it back with ``release()`` once the piece is written.
        """
        buf = self.buffers.get(a.size)
        try:
            if a.source.kind == "origin":
                end = a.start + a.size - 1
                headers = dict(self.origin.headers)
                headers["Range"] = f"bytes={a.start}-{end}"
                headers["Accept-Encoding"] = "identity"
                if self.pinned is not None and self.pinned[0]:
                    headers["If-Range"] = self.pinned[0]
                await self._get(self.origin.url, headers, a, buf)
                return buf
            if not a.source.ip or not a.source.port:
                raise PieceFetchError("the scheduler named a source without an address", "other")
            path = f"/pieces/{self.task_id}/{a.num}"
            await self.pieces.get_into(
                a.source.ip,
                a.source.port,
                path,
                buf,
                self.stall,
                self.limiters,
                {GRANT_HEADER: self.grant} if self.grant else None,
            )
            return buf
        except BaseException:
            self.buffers.put(buf)  # nothing writes into it any more (the socket is dropped)
            raise

    @contextlib.asynccontextmanager
    async def piece(self, a: PieceAssignment) -> AsyncIterator[memoryview]:
        """``fetch(a)``, then ``release()`` the buffer when the block is done with it."""
        buf = await self.fetch(a)
        reuse = True
        try:
            yield buf
        except asyncio.CancelledError:
            reuse = False  # a worker thread (a cancelled to_thread) may still read the buffer
            raise
        finally:
            self.release(buf, reuse)

    def release(self, buf: memoryview, reuse: bool = True) -> None:
        """A fetched piece's buffer is free again; ``reuse=False`` when something may still read
        it (a cancelled worker thread): it is then just dropped, and unmapped once unused."""
        if reuse:
            self.buffers.put(buf)

    async def close(self) -> None:
        self.buffers.close()
        if self._own_client:
            await self.pieces.close()

    async def _get(
        self, url: str, headers: dict[str, str], a: PieceAssignment, buf: memoryview
    ) -> None:
        """A ranged GET on the origin, into ``buf``."""
        try:
            async with self.session.get(
                url,
                headers=headers,
                timeout=self.timeout,
                ssl=self.origin.ssl if self.origin.ssl is not None else True,
                allow_redirects=True,
                auto_decompress=False,
            ) as resp:
                self._check_status(resp, a)
                await self._read(resp, a, buf)
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

    def _check_status(self, resp: aiohttp.ClientResponse, a: PieceAssignment) -> None:
        if resp.status != 206:
            raise PieceFetchError(f"the origin answered {resp.status} to a Range request", "http")
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if not m or int(m.group(1)) != a.start or int(m.group(2)) != a.start + a.size - 1:
            raise PieceFetchError("the origin answered another range than asked", "http")
        etag = resp.headers.get("ETag", "")
        version = (
            (etag if etag and not etag.startswith("W/") else "")
            or resp.headers.get("Last-Modified", ""),
            m.group(3),
        )
        if self.pinned is None:
            self.pinned = version
        elif version != self.pinned:
            raise PieceFetchError("the file changed at the origin during the download", "http")
        if resp.content_length is not None and resp.content_length != a.size:
            raise PieceFetchError(
                f"the source announced {resp.content_length} bytes, expected {a.size}", "http"
            )

    async def _read(
        self, resp: aiohttp.ClientResponse, a: PieceAssignment, buf: memoryview
    ) -> None:
        got = 0
        async for chunk in resp.content.iter_any():
            n = len(chunk)
            if got + n > a.size:
                raise PieceFetchError("the source sent more bytes than the piece holds", "http")
            buf[got : got + n] = chunk
            got += n
            await acquire_all(self.limiters, n)
        if got != a.size:
            raise PieceFetchError(f"the source sent {got} of {a.size} bytes", "short")


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
