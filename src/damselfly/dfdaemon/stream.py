"""Stream a swarm download to an HTTP client while it is still downloading.

The engine's ``Download`` writes verified pieces into the task's data file and calls
``on_piece`` after each; ``PieceFeed`` turns that into the length of the contiguous verified
prefix, and ``SwarmStream`` sends that prefix, in order, as it grows, reading the next chunk (and
hashing it) while the previous one drains to the client. The blob's sha256 is computed along the
way. The last bytes are held back until the whole body is verified — the digest in the URL when
there is one, and the download's own check in every case — so a client never receives a complete
body with wrong content: on a mismatch the connection is aborted and the local copy dropped.

The digest in the URL is checked here, on the very bytes sent, so the download is not also told
to hash its data file against it (``Download.url_sha256`` cleared): it checks the pieces against
the supernode's digests as any download does, and the bytes are hashed once more, not twice —
on a busy host that third pass over every byte (plus reading the data file back from disk, since
pieces are written with O_DIRECT) was a large share of a pull's CPU (docs/benchmarks.md).

If the download fails before any byte was sent, the caller falls back (``SwarmFailed``); once
bytes were sent nothing can be taken back, so a failure aborts the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aiohttp import web

from damselfly.core.ids import redact_url, sha256_in_url
from damselfly.core.pieces import PiecePlan
from damselfly.peer.download import Download, DownloadResult, Services
from damselfly.peer.request import DownloadRequest
from damselfly.peer.store import TaskData
from damselfly.peer.tasks import TaskOwner, drain

log = logging.getLogger("damselfly.dfdaemon.stream")

#: bytes read (and hashed) per step; one step is read ahead while the previous one is sent
CHUNK = 2 * 1024 * 1024


def contiguous_prefix(
    plan: PiecePlan, held: dict[int, str], start_piece: int = 0
) -> tuple[int, int]:
    """(bytes, next piece): how far the file is verified without a gap, from ``start_piece``."""
    n = start_piece
    while n < plan.count and held.get(n):
        n += 1
    return (plan.length if n >= plan.count else plan.start(n)), n


class DownloadLike(Protocol):
    """What the streamer needs of a download (``peer.download.Download``, or a test's fake)."""

    tid: str
    on_piece: Callable[[TaskData], None] | None

    async def run(self) -> DownloadResult: ...


class PieceFeed:
    """What the streamer knows of the download: the task's local copy and its verified prefix."""

    def __init__(self) -> None:
        self.td: TaskData | None = None
        self.prefix = 0
        self._next_piece = 0
        self.changed = asyncio.Event()

    def update(self, td: TaskData) -> None:
        if self.td is not td:
            self.td, self._next_piece, self.prefix = td, 0, 0
        self.prefix, self._next_piece = contiguous_prefix(td.plan, td.held, self._next_piece)
        self.changed.set()

    def __repr__(self) -> str:
        length = self.td.length if self.td else "?"
        return f"PieceFeed({self.prefix}/{length} bytes verified in order)"


class SwarmFailed(Exception):
    """The swarm could not deliver and nothing was sent yet: the caller may go direct."""

    def __init__(self, result: DownloadResult) -> None:
        super().__init__(result.message)
        self.result = result


@dataclass
class StreamStats:
    sent: int = 0
    verified: bool = False


class SwarmStream:
    """One client response fed by one ``Download`` of ``req`` (its output is a scratch file)."""

    def __init__(
        self,
        svc: Services | None,
        req: DownloadRequest,
        owner: TaskOwner,
        on_start: Callable[[], None] = lambda: None,
        on_end: Callable[[], None] = lambda: None,
        download: DownloadLike | None = None,
    ) -> None:
        self.req = req
        self.expected = sha256_in_url(req.url)
        self.feed = PieceFeed()
        if download is None:
            assert svc is not None
            dl = Download(svc, req, self._event)
            if self.expected is not None:
                dl.url_sha256 = None  # checked here on the bytes sent (see the module docstring)
            download = dl
        self.svc = svc
        self.dl: DownloadLike = download
        self.dl.on_piece = self.feed.update
        self.owner = owner
        self.on_start, self.on_end = on_start, on_end
        self.stats = StreamStats()
        self._task: asyncio.Task[DownloadResult] | None = None
        self._fd = -1
        self._fd_path = ""
        self._bad_digest = False

    def _event(self, ev: dict[str, object]) -> None:
        if ev.get("event") == "log":
            log.debug("%s: %s", self.dl.tid[:12], ev.get("message"))

    async def respond(
        self, request: web.BaseRequest, headers: dict[str, str]
    ) -> web.StreamResponse:
        """Answer ``request`` from the swarm; raises ``SwarmFailed`` if nothing could be sent."""
        self.on_start()
        self._task = self.owner.spawn(
            self.dl.run(), f"swarm-{self.dl.tid[:12]}-{secrets.token_hex(2)}"
        )
        self._task.add_done_callback(lambda _t: self.feed.changed.set())
        try:
            return await self._respond(request, headers)
        finally:
            if not self._task.done():
                await drain(self._task)  # the client went away: stop downloading for it
            await asyncio.to_thread(self._cleanup)
            if self._bad_digest:
                await self._drop_local_copy()
            self.on_end()

    async def _respond(
        self, request: web.BaseRequest, headers: dict[str, str]
    ) -> web.StreamResponse:
        assert self._task is not None
        while self.feed.td is None and not self._task.done():
            await self.feed.changed.wait()
            self.feed.changed.clear()
        if self._task.done():
            result = self._task.result()
            if not result.ok:
                raise SwarmFailed(result)
            length = await asyncio.to_thread(os.path.getsize, self.req.output)
        else:
            assert self.feed.td is not None
            length = self.feed.td.length
        resp = web.StreamResponse(status=200, headers=headers)
        resp.content_length = length
        await resp.prepare(request)
        hasher = hashlib.sha256()
        sent = 0
        ahead: asyncio.Future[tuple[bytes, int]] | None = None  # the next chunk: read, hashed
        try:
            while sent < length:
                if ahead is None:
                    end, path = await self._available()
                    if end is None:
                        return self._cut(
                            request, resp, "the swarm download failed after the body started"
                        )
                    ahead = self._read_ahead(path, sent, min(end, length), hasher)
                    if ahead is None:
                        continue
                data, n = await ahead
                ahead = None
                if len(data) != n:
                    return self._cut(request, resp, "the local copy is shorter than announced")
                if sent + n >= length:
                    if not await self._verified(hasher):
                        return self._cut(request, resp, "the body failed its verification")
                else:
                    # the next chunk, if it is there already, is read while this one is sent
                    end, path = self._ready_now()
                    ahead = self._read_ahead(path, sent + n, min(end, length), hasher)
                await resp.write(data)
                sent += n
                self.stats.sent = sent
        finally:
            if ahead is not None:  # a worker thread reads with our descriptor: let it finish
                await asyncio.wait([ahead])
        if length == 0 and not await self._verified(hasher):
            return self._cut(request, resp, "the body failed its verification")
        await resp.write_eof()
        return resp

    def _read_ahead(
        self, path: str, offset: int, end: int, hasher: hashlib._Hash
    ) -> asyncio.Future[tuple[bytes, int]] | None:
        """Start reading (and hashing) bytes from ``offset`` up to ``end`` (at most ``CHUNK``) in
        a worker thread: (the bytes, how many were asked for); None when there is nothing to
        read yet."""
        if end <= offset:
            return None
        n = min(CHUNK, end - offset)

        def read() -> tuple[bytes, int]:
            return self._read_hash(path, offset, n, hasher), n

        return asyncio.ensure_future(asyncio.to_thread(read))

    def _ready_now(self) -> tuple[int, str]:
        """How far the body can be read right now, without waiting (0 when unknown)."""
        assert self._task is not None
        if self._task.done():
            ok = not self._task.cancelled() and self._task.exception() is None
            return (1 << 62, self.req.output) if ok and self._task.result().ok else (0, "")
        td = self.feed.td
        return (self.feed.prefix, str(td.path)) if td is not None else (0, "")

    async def _available(self) -> tuple[int | None, str]:
        """How far the body can be read now (waits for progress), and from which file."""
        assert self._task is not None
        while True:
            if self._task.done():
                if not self._task.result().ok:
                    return None, ""
                return 1 << 62, self.req.output  # complete and verified: read the rest
            td = self.feed.td
            if td is not None and self.feed.prefix > self.stats.sent:
                return self.feed.prefix, str(td.path)
            await self.feed.changed.wait()
            self.feed.changed.clear()

    async def _verified(self, hasher: hashlib._Hash) -> bool:
        """Before the last bytes: the URL's digest matches and the download itself succeeded."""
        assert self._task is not None
        got = hasher.hexdigest()
        if self.expected is not None and got != self.expected:
            self._bad_digest = True
            log.warning(
                "blob %s: sha256 of the streamed body is %s, the URL says %s; cutting the "
                "response off",
                redact_url(self.req.url),
                got[:16],
                self.expected[:16],
            )
            return False
        result = await asyncio.shield(self._task)
        if not result.ok:
            log.warning(
                "blob %s: the download failed: %s", redact_url(self.req.url), result.message
            )
            return False
        self.stats.verified = True
        return True

    async def _drop_local_copy(self) -> None:
        """After a digest mismatch: forget the engine's copy of the task, so that the next pull
        of this blob starts clean instead of streaming the same wrong bytes (not while another
        download of it holds the copy open)."""
        if self.svc is None:
            return
        td = self.svc.store.tasks.get(self.dl.tid)
        if td is not None and td.active == 0:
            log.warning("task %s: dropping the local copy that failed its digest", self.dl.tid[:12])
            await self.svc.store.remove(self.dl.tid)

    def _cut(
        self, request: web.BaseRequest, resp: web.StreamResponse, why: str
    ) -> web.StreamResponse:
        log.warning("%s: %s; aborting the connection", redact_url(self.req.url), why)
        if request.transport is not None:
            request.transport.abort()  # no clean end: the client sees a broken body
        resp.force_close()
        return resp

    def _read_hash(self, path: str, offset: int, n: int, hasher: hashlib._Hash) -> bytes:
        if path != self._fd_path:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            self._fd_path = path
        data = os.pread(self._fd, n, offset)
        hasher.update(data)
        return data

    def _cleanup(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.req.output)


def scratch_output(directory: Path) -> str:
    """A fresh output path for one streamed download (removed when the response ends)."""
    return str(directory / f"blob-{secrets.token_hex(8)}")
