"""The piece server: ``GET /pieces/{task_id}/{num}`` answers one verified piece, by id.

Shared by the supernode's download port (8001) and every peer engine's upload port. No path
from a request reaches the file system: the task id and piece number are validated and looked
up through a ``PieceProvider``, which answers only pieces it holds verified. Bytes go out with
``sendfile`` (zero copy), paced by an optional host-wide upload limiter.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from damselfly.core.errors import BadRequest
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
    ) -> None:
        self.provider = provider
        self.limiter = limiter
        self.on_served = on_served
        self.max_piece_num = max_piece_num
        self.active = 0  # uploads in progress, for idle detection and metrics

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/pieces/{task_id}/{num}", self.handle)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
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
        self.active += 1
        try:
            resp = SendfileResponse(loc, self.limiter)
            await resp.prepare(request)
        finally:
            self.active -= 1
        if self.on_served is not None:
            self.on_served(task_id, num, loc.size)
        return resp
