"""The engine's control channel: an aiohttp app served on the unix socket ``$HOME/engine.sock``.

``GET /status``, ``POST /download`` (a stream of JSON lines: progress and log events, a
keepalive every second, then one result), ``POST /shutdown``. The socket is mode 0600, so only
the engine's own user reaches it; this is the only way the user's headers travel to the engine.
When the client goes away mid-download (dfget killed, Ctrl-C), the download is cancelled.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from damselfly.core.errors import REASON_DOWNLOAD_ERROR, BadRequest
from damselfly.core.ids import redact_url
from damselfly.core.protocol import MAX_BODY, error_body, loads_bounded
from damselfly.peer import metrics
from damselfly.peer.download import Download, DownloadResult
from damselfly.peer.request import DownloadRequest
from damselfly.peer.tasks import drain

if TYPE_CHECKING:
    from damselfly.peer.engine import Engine

log = logging.getLogger("damselfly.peer.control")

KEEPALIVE_S = 1.0


class ControlApi:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.add_routes(
            [
                web.get("/status", self.status),
                web.post("/download", self.download),
                web.post("/shutdown", self.shutdown),
            ]
        )
        return app

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.engine.status())

    async def shutdown(self, request: web.Request) -> web.Response:
        asyncio.get_running_loop().call_soon(self.engine.request_stop, "POST /shutdown")
        return web.json_response({"ok": True})

    async def download(self, request: web.Request) -> web.StreamResponse:
        engine = self.engine
        try:
            body = await request.read()
            req = DownloadRequest.from_json(loads_bounded(body))
        except BadRequest as e:
            return web.json_response(error_body(e.code, str(e)), status=400)
        except web.HTTPRequestEntityTooLarge:
            return web.json_response(error_body("bad_request", "request too large"), status=400)
        if engine.stopping.is_set() or engine.services is None:
            return web.json_response(
                error_body("stopping", "the engine is shutting down; run the command again"),
                status=503,
            )
        if req.totallimit:
            engine.total_limiter.set_rate(req.totallimit)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        dl = Download(engine.services, req, queue.put_nowait)
        log.info("download %s → %s (pattern %s)", redact_url(req.url), req.output, req.pattern)
        engine.download_started()
        task = engine.owner.spawn(self._run(dl, queue), f"download-{dl.tid[:12]}")
        try:
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE_S):
                        ev = await queue.get()
                except TimeoutError:
                    ev = {"event": "keepalive"}
                await resp.write(json.dumps(ev).encode() + b"\n")
                if ev.get("event") == "result":
                    break
            await resp.write_eof()
        except (ConnectionError, OSError):
            log.info("client of the download of %s went away: cancelling it", redact_url(req.url))
            await drain(task)
        finally:
            engine.download_ended()
        return resp

    @staticmethod
    async def _run(dl: Download, queue: asyncio.Queue[dict[str, Any]]) -> None:
        try:
            result = await dl.run()
        except asyncio.CancelledError:
            queue.put_nowait(
                DownloadResult(
                    False,
                    REASON_DOWNLOAD_ERROR,
                    "the engine stopped during the download; run the command again",
                ).event()
            )
            raise
        limiter = dl.task_limiter
        metrics.ENGINE.record(result, limiter.waited if limiter is not None else 0.0)
        queue.put_nowait(result.event())
