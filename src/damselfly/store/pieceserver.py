"""The piece server: ``GET /pieces/{task_id}/{num}`` answers one verified piece, by id.

Shared by the supernode's download port (8001) and every peer engine's upload port. No path
from a request reaches the file system: the task id and piece number are validated and looked
up through a ``PieceProvider``, which answers only pieces it holds verified. Bytes go out with
``sendfile`` (zero copy), paced by an optional host-wide upload limiter.

Private tasks: an optional ``PieceGuard`` decides, after the piece is found, whether this request
may have it (a grant in ``X-Damselfly-Grant``, see ``core/grants.py``); a refusal is a 403 with
the reason, never the bytes. With a cluster token (``core/cluster.py``) every request must carry
it (401 otherwise), before anything else is looked at.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from damselfly.core.cluster import TOKEN_HEADER, TOKEN_HINT, TOKEN_REFUSED, token_ok
from damselfly.core.errors import BadRequest
from damselfly.core.grants import GRANT_HEADER, GrantError, GrantVerifier
from damselfly.core.ids import validate_task_id
from damselfly.core.ratelimit import AsyncLimiter

#: sendfile in slices of this size when an upload limit paces us; one call otherwise
PACED_SLICE = 256 * 1024


@dataclass(frozen=True, slots=True)
class PieceLocation:
    path: str
    offset: int
    size: int


class PieceProvider(Protocol):
    async def locate(self, task_id: str, num: int) -> PieceLocation | None:
        """Where a verified piece lies, or None when it is not held (→ 404)."""
        ...


class PieceGuard(Protocol):
    def piece_refusal(self, task_id: str, grant: str | None) -> str | None:
        """Why this request may not have pieces of ``task_id`` (→ 403), or None to serve."""
        ...


class GrantGuard:
    """An engine's guard: pieces of a task ``is_private`` says is private go only to requests
    with a grant ``verifier`` accepts (an engine that knows no supernode key yet refuses)."""

    def __init__(self, is_private: Callable[[str], bool], verifier: GrantVerifier) -> None:
        self.is_private = is_private
        self.verifier = verifier

    def piece_refusal(self, task_id: str, grant: str | None) -> str | None:
        if not self.is_private(task_id):
            return None
        try:
            self.verifier.check(grant, task_id)
        except GrantError as e:
            return str(e)
        return None


class SendfileResponse(web.StreamResponse):
    """Streams ``size`` bytes of ``path`` from ``offset`` with zero-copy sendfile."""

    def __init__(self, loc: PieceLocation, limiter: AsyncLimiter | None = None) -> None:
        super().__init__(status=200)
        self.loc = loc
        self.limiter = limiter
        self.content_type = "application/octet-stream"
        self.content_length = loc.size

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:  # aiohttp prepares a handler's response again when finishing it
            return await super().prepare(request)
        loop = asyncio.get_running_loop()
        fd = await loop.run_in_executor(None, os.open, self.loc.path, os.O_RDONLY)
        try:
            writer = await super().prepare(request)
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("connection lost")
            with os.fdopen(fd, "rb", closefd=False) as f:
                offset, left = self.loc.offset, self.loc.size
                paced = self.limiter is not None and self.limiter.rate is not None
                step = PACED_SLICE if paced else left
                while left > 0:
                    n = min(step, left)
                    if self.limiter is not None:
                        await self.limiter.acquire(n)
                    await loop.sendfile(transport, f, offset, n)
                    offset += n
                    left -= n
            await super().write_eof()
            return writer
        finally:
            os.close(fd)


class PieceServer:
    """aiohttp routes for the piece server; ``on_served(task_id, num, bytes)`` counts uploads."""

    def __init__(
        self,
        provider: PieceProvider,
        limiter: AsyncLimiter | None = None,
        on_served: Callable[[str, int, int], None] | None = None,
        max_piece_num: int = 1 << 20,
        guard: PieceGuard | None = None,
        token: str = "",
    ) -> None:
        self.provider = provider
        self.guard = guard
        self.token = token
        self.limiter = limiter
        self.on_served = on_served
        self.max_piece_num = max_piece_num
        self.active = 0  # uploads in progress, for idle detection and metrics

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/pieces/{task_id}/{num}", self.handle)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.token and not token_ok(self.token, request.headers.get(TOKEN_HEADER)):
            return web.json_response(
                {"error": "unauthorized", "message": f"{TOKEN_REFUSED} ({TOKEN_HINT})"},
                status=401,
            )
        try:
            task_id = validate_task_id(request.match_info["task_id"])
            num_text = request.match_info["num"]
            # ASCII digits only: str.isdigit() also accepts '²', which int() refuses (was a 500)
            if not (num_text.isascii() and num_text.isdigit()) or len(num_text) > 8:
                raise BadRequest("invalid piece number")
            num = int(num_text)
        except BadRequest as e:
            return web.json_response({"error": e.code, "message": e.message}, status=400)
        loc = await self.provider.locate(task_id, num)
        if loc is None:
            return web.json_response(
                {"error": "not_found", "message": "piece not held here"}, status=404
            )
        if self.guard is not None:
            why = self.guard.piece_refusal(task_id, request.headers.get(GRANT_HEADER))
            if why is not None:
                return web.json_response({"error": "forbidden", "message": why}, status=403)
        self.active += 1
        try:
            resp = SendfileResponse(loc, self.limiter)
            await resp.prepare(request)
        finally:
            self.active -= 1
        if self.on_served is not None:
            self.on_served(task_id, num, loc.size)
        return resp
