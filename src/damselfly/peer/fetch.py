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

Origin versions (``origin_answer``): under cdn_pattern "source" the supernode names the version
of the file (``pin``: its validator and length); every Range request carries it as ``If-Range``,
and an answer of another version (a 200, another total length or validator) fails the piece with
kind ``changed``, which makes the supernode re-probe the origin. Without a pin (the local
pattern, where the scheduler rarely names the origin) the first 206 pins the version.
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
        # The version this download's origin pieces come from: (validator, total length), set by
        # ``pin`` from the supernode's answer or else by the first 206; Range requests carry
        # If-Range with it, so a file replaced meanwhile answers 200 (or another total) and the
        # piece fails instead of mixing two versions.
        self.pinned: tuple[str, int] | None = None
        self._own_client = pieces is None
        self.pieces = pieces if pieces is not None else PieceClient()
        self.buffers = BufferPool()
        #: this peer's grant for a private task ("" for a public one): sent with every piece
        #: request to a peer or supernode
        self.grant = ""

    def pin(self, validator: str, length: int) -> None:
        """Origin pieces must come from this version (the supernode's ``origin_validator``)."""
        self.pinned = (validator, length)

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
        h = resp.headers
        failure, version = origin_answer(
            resp.status,
            h.get("Content-Range", ""),
            h.get("ETag", ""),
            h.get("Last-Modified", ""),
            a.start,
            a.size,
            self.pinned,
        )
        if failure is not None:
            raise PieceFetchError(failure[1], failure[0])
        if self.pinned is None:
            self.pinned = version
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


def strong_validator(etag: str, last_modified: str) -> str:
    """What identifies a version for ``If-Range``: a strong ETag, else Last-Modified, else ""
    (RFC 9110 forbids weak ETags there)."""
    return etag if etag and not etag.startswith("W/") else last_modified


def origin_answer(
    status: int,
    content_range: str,
    etag: str,
    last_modified: str,
    start: int,
    size: int,
    pinned: tuple[str, int] | None,
) -> tuple[tuple[str, str] | None, tuple[str, int]]:
    """Judge the origin's answer to ``Range: bytes=start-(start+size-1)`` (with ``If-Range``
    when ``pinned`` names a validator): ((failure kind, message) or None, the answer's version).

    Another version than the pinned one is kind ``changed``: a 200 to If-Range (the origin's
    own way of saying so), a 206 of another total length, or of another validator (an origin
    that ignores If-Range still names its version).
    """
    version = (strong_validator(etag, last_modified), -1)
    if status == 200 and pinned is not None and pinned[0]:
        return ("changed", "the file changed at the origin (it answered 200 to If-Range)"), version
    if status != 206:
        return ("http", f"the origin answered {status} to a Range request"), version
    m = _CONTENT_RANGE.match(content_range)
    if not m or int(m.group(1)) != start or int(m.group(2)) != start + size - 1:
        return ("http", "the origin answered another range than asked"), version
    total = int(m.group(3)) if m.group(3) != "*" else -1
    version = (version[0], total)
    if pinned is not None:
        if total != pinned[1] or (version[0] and pinned[0] and version[0] != pinned[0]):
            return ("changed", "the file changed at the origin during the download"), version
    return None, version


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
