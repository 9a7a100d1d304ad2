"""A small, honest supernode for the engine's tests: register/schedule over real files, pieces
served by the real ``store/pieceserver.py``.

It keeps what a scheduler must (holders per piece, in-flight per peer, blacklists after failed
pieces) with the simplest policy: lowest piece first, a holding peer before the supernode, the
origin when both failed for that requester. Knobs for tests: ``corrupt`` (pieces the supernode
serves with a flipped byte), ``file_sha256_override``, ``die_after`` (schedule calls answered
before the connection is dropped), ``always_wait``, ``fail_task`` and ``no_fallback``.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from damselfly.core.ids import task_id
from damselfly.core.pieces import PiecePlan
from damselfly.core.protocol import (
    ORIGIN,
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_PIECES,
    STATUS_WAIT,
    SUPERNODE,
    PieceAssignment,
    PieceResult,
    PieceSource,
    RegisterRequest,
    RegisterResponse,
    ScheduleRequest,
    ScheduleResponse,
    error_body,
    loads_bounded,
)
from damselfly.store.pieceserver import PieceLocation, PieceServer


@dataclass
class FakeTask:
    tid: str
    url: str
    path: Path
    plan: PiecePlan
    digests: list[str]
    file_sha256: str
    holders: dict[int, set[str]] = field(default_factory=dict)
    inflight: dict[str, dict[int, str]] = field(default_factory=dict)  # peer → piece → source
    blacklist: set[tuple[str, str, int]] = field(default_factory=set)  # (source, peer, piece)


class FakeSupernode:
    def __init__(self, root: Path, piece_size: int, origin_base: str) -> None:
        self.root = root
        self.piece_size = piece_size
        self.origin_base = origin_base.rstrip("/")
        self.tasks: dict[str, FakeTask] = {}
        self.peers: dict[str, Any] = {}
        self.results: list[tuple[str, PieceResult]] = []  # (peer, result) as reported
        self.registrations: list[RegisterRequest] = []
        self.heartbeats: list[str] = []
        self.left: list[tuple[str, str]] = []
        self.schedule_calls = 0
        self.corrupt: set[int] = set()
        self.file_sha256_override = ""
        self.die_after: int | None = None
        self.always_wait = False
        self.fail_task = ""  # an error code: every schedule answers "failed" with it
        self.no_fallback = False  # keep naming the supernode even after it failed a piece
        self.bad_copy: dict[str, Path] = {}
        self.pieceserver = PieceServer(self)
        self.port = 0
        self.download_port = 0
        self._runners: list[web.AppRunner] = []

    # -- life --------------------------------------------------------------------------------

    async def start(self) -> FakeSupernode:
        api = web.Application()
        api.router.add_post("/api/v1/register", self.register)
        api.router.add_post("/api/v1/tasks/{task_id}/schedule", self.schedule)
        api.router.add_post("/api/v1/tasks/{task_id}/leave", self.leave)
        api.router.add_post("/api/v1/peers/{peer_id}/heartbeat", self.heartbeat)
        api.router.add_post("/api/v1/peers/{peer_id}/leave", self.leave)
        pieces = web.Application()
        pieces.add_routes(self.pieceserver.routes())
        for app in (api, pieces):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            self._runners.append(runner)
        self.port = self._runners[0].addresses[0][1]
        self.download_port = self._runners[1].addresses[0][1]
        return self

    async def stop(self) -> None:
        for r in self._runners:
            await r.cleanup()
        self._runners.clear()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, rel: str) -> str:
        return f"{self.origin_base}/{rel}"

    # -- PieceProvider (the supernode's own piece server) ----------------------------------

    async def locate(self, tid: str, num: int) -> PieceLocation | None:
        task = self.tasks.get(tid)
        if task is None or not 0 <= num < task.plan.count:
            return None
        path = task.path
        if num in self.corrupt:
            path = self._bad(task)
        return PieceLocation(str(path), task.plan.start(num), task.plan.size(num))

    def _bad(self, task: FakeTask) -> Path:
        if task.tid not in self.bad_copy:
            data = bytearray(task.path.read_bytes())
            for num in range(task.plan.count):
                data[task.plan.start(num)] ^= 0xFF
            bad = task.path.with_name(task.path.name + ".corrupt")
            bad.write_bytes(bytes(data))
            self.bad_copy[task.tid] = bad
        return self.bad_copy[task.tid]

    # -- API ---------------------------------------------------------------------------------

    async def register(self, request: web.Request) -> web.Response:
        req = RegisterRequest.from_json(loads_bounded(await request.read()))
        self.registrations.append(req)
        rel = urlsplit(req.url).path.lstrip("/")
        path = self.root / rel
        if not path.is_file():
            return web.json_response(
                error_body("origin_not_found", f"the origin has no file at {req.url}"), status=404
            )
        tid = task_id(req.url, req.filter, req.md5, req.identifier)
        data = path.read_bytes()
        plan = PiecePlan(len(data), self.piece_size)
        task = self.tasks.get(tid)
        digests = [
            hashlib.sha256(data[plan.start(n) : plan.start(n) + plan.size(n)]).hexdigest()
            for n in range(plan.count)
        ]
        if task is None or task.digests != digests:
            task = FakeTask(tid, req.url, path, plan, digests, hashlib.sha256(data).hexdigest())
            self.tasks[tid] = task
        self.peers[req.peer.id] = req.peer
        task.inflight.setdefault(req.peer.id, {})
        resp = RegisterResponse(tid, plan.length, plan.piece_size, plan.count)
        return web.json_response(resp.to_json())

    async def schedule(self, request: web.Request) -> web.StreamResponse:
        self.schedule_calls += 1
        if self.die_after is not None and self.schedule_calls > self.die_after:
            assert request.transport is not None
            request.transport.close()  # the supernode "dies": no answer
            return web.Response(status=500)
        task = self.tasks.get(request.match_info["task_id"])
        req = ScheduleRequest.from_json(loads_bounded(await request.read()))
        if task is None or req.peer_id not in task.inflight:
            return web.json_response(error_body("not_found", "unknown task or peer"), status=404)
        mine = task.inflight[req.peer_id]
        for r in req.results:
            self.results.append((req.peer_id, r))
            src = mine.pop(r.piece, r.source)
            if r.ok:
                task.holders.setdefault(r.piece, set()).add(req.peer_id)
            else:
                task.blacklist.add((src, req.peer_id, r.piece))
        if self.fail_task:
            return self._answer(
                ScheduleResponse(STATUS_FAILED, message="origin said no", error_code=self.fail_task)
            )
        held = {n for n, h in task.holders.items() if req.peer_id in h}
        if len(held) == task.plan.count:
            sha = self.file_sha256_override or task.file_sha256
            return self._answer(ScheduleResponse(STATUS_DONE, file_sha256=sha))
        out: list[PieceAssignment] = []
        if not self.always_wait:
            for num in range(task.plan.count):
                if len(out) >= req.want:
                    break
                if num in held or num in mine:
                    continue
                src = self._source(task, req.peer_id, num)
                mine[num] = src.id
                out.append(
                    PieceAssignment(
                        num, task.plan.start(num), task.plan.size(num), task.digests[num], src
                    )
                )
        if out:
            return self._answer(ScheduleResponse(STATUS_PIECES, out))
        if not mine:
            await asyncio.sleep(min(req.wait_ms, 50) / 1000)  # a (short) long poll
        return self._answer(ScheduleResponse(STATUS_WAIT, retry_ms=20))

    def _source(self, task: FakeTask, peer_id: str, num: int) -> PieceSource:
        for holder in sorted(task.holders.get(num, ())):
            if holder != peer_id and (holder, peer_id, num) not in task.blacklist:
                info = self.peers[holder]
                return PieceSource(holder, "peer", info.ip, info.port)
        if self.no_fallback or (SUPERNODE, peer_id, num) not in task.blacklist:
            return PieceSource(SUPERNODE, "supernode", "127.0.0.1", self.download_port)
        return PieceSource(ORIGIN, "origin")

    @staticmethod
    def _answer(resp: ScheduleResponse) -> web.Response:
        return web.json_response(resp.to_json())

    async def heartbeat(self, request: web.Request) -> web.Response:
        self.heartbeats.append(request.match_info["peer_id"])
        return web.json_response({"ok": True})

    async def leave(self, request: web.Request) -> web.Response:
        body = loads_bounded(await request.read())
        self.left.append((request.path, str(body.get("peer_id"))))
        return web.json_response({"ok": True})

    def failures(self) -> list[tuple[int, str, str]]:
        """(piece, source, failure kind) of every failed piece reported."""
        return [(r.piece, r.source, r.failure) for _, r in self.results if not r.ok]
