"""The supernode's I/O shell: HTTP API, piece server, and the glue between CDN and scheduler.

Decisions live in ``damselfly.scheduler`` (pure) and fetching/caching in ``cdn``; this module
only turns HTTP requests into calls on them, wakes long-polling peers when something changed, and
runs the background loops (expiry, disk GC) tied to the application's lifetime.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from damselfly import __version__
from damselfly.core.clock import Clock, MonotonicClock
from damselfly.core.cluster import TOKEN_HINT, TOKEN_REFUSED, request_token, token_ok
from damselfly.core.errors import (
    BadRequest,
    DamselflyError,
    NoSpaceError,
    OriginAuthError,
    OriginError,
    OriginNotFound,
)
from damselfly.core.ids import redact_url, task_id, validate_peer_id, validate_task_id
from damselfly.core.protocol import (
    ORIGIN,
    STATUS_DONE,
    STATUS_WAIT,
    BackSourceReport,
    PieceSource,
    RegisterRequest,
    RegisterResponse,
    ScheduleRequest,
    error_body,
    loads_bounded,
)
from damselfly.scheduler import Scheduler, SchedulerConfig
from damselfly.store.pieceserver import PieceServer
from damselfly.supernode import console
from damselfly.supernode.access import AccessControl, GrantRequired
from damselfly.supernode.cdn import CDN, CDNConfig, CDNTask
from damselfly.supernode.cdn_policy import clean_headers
from damselfly.supernode.config import SupernodeConfig
from damselfly.supernode.metrics import SupernodeMetrics
from damselfly.supernode.preheat import Preheater, PreheatRequest

log = logging.getLogger("damselfly.supernode")

EXPIRE_INTERVAL = 1.0  # seconds between scheduler expiry sweeps (cheap: bounded by state size)
GRANT_SWEEP_EVERY = 30  # expiry sweeps between sweeps of lapsed grant records
#: an access check for a private task gets this long from the origin
ACCESS_CHECK_TIMEOUT = 15.0
#: a schedule call reporting "the file changed at the origin" waits this long at most for the
#: CDN's re-probe (and the reset it may bring) before it is answered
CHANGE_CHECK_TIMEOUT = 15.0
DISK_GC_INTERVAL = 15.0  # v1's disk GC interval
MAX_BODY = 256 * 1024
# open requests (long polls, piece uploads) get this long to finish when the supernode stops
SHUTDOWN_GRACE = 2.0
# waiters woken when the CDN announces a piece: the supernode serves a few pieces per task at
# once (SchedulerConfig.supernode_limit), so more would only re-run their polls for nothing
WAKE_PER_CDN_PIECE = 4
# downloads followed for the one "download done" log line; the oldest are forgotten beyond this
MAX_DOWNLOAD_LOGS = 65536
# a preheat re-checks its task this often even without a CDN event (a missed one, a GC)
PREHEAT_POLL = 1.0
# a preheat whose fetch stopped short (a cut connection) asks the CDN to resume this many times
PREHEAT_ATTEMPTS = 3


class DownloadLog:
    """What the supernode saw of one peer's download of one task, for its "done" log line."""

    __slots__ = ("bytes_by_source", "seen", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.bytes_by_source = {"origin": 0, "supernode": 0, "peer": 0}
        self.seen: set[int] = set()  # pieces counted (a late duplicate report is not)

    def add(self, piece: int, source: str, nbytes: int) -> None:
        if piece in self.seen:
            return
        self.seen.add(piece)
        kind = source if source in ("origin", "supernode") else "peer"
        self.bytes_by_source[kind] += nbytes


def _status_for(err: DamselflyError) -> int:
    if isinstance(err, BadRequest):
        return 400
    if isinstance(err, GrantRequired):
        return 409
    if isinstance(err, OriginNotFound):
        return 404
    if isinstance(err, OriginAuthError):
        return err.status if err.status in (401, 403) else 401
    if isinstance(err, NoSpaceError):
        return 507
    if isinstance(err, OriginError):
        return 502
    return 500


class Supernode:
    """One supernode: owns the scheduler, the CDN, and the wake-ups of long-polling peers."""

    def __init__(self, config: SupernodeConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or MonotonicClock()
        self.scheduler = Scheduler(
            SchedulerConfig(
                up_limit=config.up_limit,
                down_limit=config.down_limit,
                peer_gc_delay=config.peer_gc_delay,
                task_expire=config.task_expire_time,
            ),
            self.clock,
            random.Random(),
            PieceSource(
                id="supernode",
                kind="supernode",
                ip=config.advertise_ip,
                port=config.download_port,
            ),
        )
        self.cdn = CDN(
            CDNConfig(
                home=config.home_dir,
                rate=config.cdn_rate,
                pattern=config.cdn_pattern,
                piece_sizes=config.piece_sizes,
                disk_gc_young=config.young_gc_threshold,
                disk_gc_full=config.full_gc_threshold,
            ),
            self,
            self.clock,
        )
        self.preheater = Preheater(self.warm, self.clock)
        self.metrics = SupernodeMetrics(self)
        self.access = AccessControl(config.home_dir, self._probe, self.clock, config.grant_ttl)
        #: the cluster token ("" = none): read once, kept in memory only
        self.token = config.security.token()
        self.piece_server = PieceServer(
            self.cdn, on_served=self._on_served, guard=self.access, token=self.token
        )
        # Long-polling schedule calls per task, oldest first (a dict used as an ordered set).
        self._waiters: dict[str, dict[asyncio.Future[None], None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # preheats waiting for a task's CDN fetch to finish or fail
        self._cdn_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._downloads: dict[tuple[str, str], DownloadLog] = {}

    # ---- CDN listener: forward to the scheduler, wake waiting peers ------------------------
    def piece_ready(self, tid: str, num: int, digest: str) -> None:
        if self.scheduler.has_task(tid):
            self.scheduler.piece_ready(tid, num, digest)
            self._wake(tid, WAKE_PER_CDN_PIECE)

    def piece_lost(self, tid: str, num: int) -> None:
        if self.scheduler.has_task(tid):
            self.scheduler.piece_lost(tid, num)

    def task_complete(self, tid: str, file_sha256: str) -> None:
        if self.scheduler.has_task(tid):
            self.scheduler.task_complete(tid, file_sha256)
            self._wake(tid)
        self._cdn_settled(tid)

    def task_failed(self, tid: str, error: DamselflyError) -> None:
        log.warning("task %s failed at the origin: %s", tid[:12], error)
        if self.scheduler.has_task(tid):
            self.scheduler.task_failed(tid, error.code, str(error))
            self._wake(tid)
        self._cdn_settled(tid)

    def _cdn_settled(self, tid: str) -> None:
        for fut in self._cdn_waiters.pop(tid, []):
            if not fut.done():
                fut.set_result(None)

    def task_reset(self, tid: str, length: int, piece_size: int) -> None:
        log.info("task %s changed at the origin; starting over", tid[:12])
        if self.scheduler.has_task(tid):
            self.scheduler.reset_task(tid, length, piece_size)
            self._wake(tid)

    def _wake(self, tid: str, n: int | None = None) -> None:
        """Wake the ``n`` oldest long polls of a task (all of them when None).

        A finished piece frees one upload slot and adds one holder with ``up_limit`` slots, so a
        report can unlock at most about ``up_limit + 1`` new assignments: waking every waiter
        on every report made each report cost one schedule call per waiting peer (thousands in a
        big swarm) for nothing. Nothing is woken when the scheduler says no call could get a
        piece now; the long poll's own timeout still re-asks (e.g. after fallback_reuse_delay).
        """
        waiters = self._waiters.get(tid)
        if not waiters:
            return
        if n is not None and not self.scheduler.can_assign(tid):
            return
        k = len(waiters) if n is None else n
        while waiters and k > 0:
            fut = next(iter(waiters))
            del waiters[fut]
            if not fut.done():
                fut.set_result(None)
                k -= 1

    async def _probe(self, url: str, headers: Mapping[str, str]) -> int:
        """An access check: ``GET url`` with the peer's own headers and ``Range: bytes=0-0``
        (HEAD is avoided: presigned GET URLs refuse it); the origin's status."""
        hdrs = clean_headers(headers)
        hdrs["Range"] = "bytes=0-0"
        async with asyncio.timeout(ACCESS_CHECK_TIMEOUT):
            try:
                async with self.cdn.client.request("GET", url, hdrs) as resp:
                    return resp.head.status
            except TimeoutError:
                raise OriginError(
                    f"the origin did not answer the access check of {redact_url(url)}",
                    "try again later",
                ) from None

    def _on_served(self, tid: str, num: int, size: int) -> None:
        self.metrics.piece_bytes_served.inc(size)
        self.metrics.pieces_served.inc()

    # ---- preheat --------------------------------------------------------------------------
    async def warm(
        self, url: str, filter_keys: list[str], identifier: str, headers: dict[str, str]
    ) -> str:
        """Fetch the task of ``url`` into the CDN and return its id once it is complete
        (with ``--cdn-pattern source``, once its length is known: nothing is stored)."""
        tid = task_id(url, filter_keys, "", identifier)
        self.access.classify(tid, headers)
        loop = asyncio.get_running_loop()
        for _attempt in range(PREHEAT_ATTEMPTS):
            ct = await self.cdn.ensure(tid, url, headers)
            if self.config.cdn_pattern == "source":
                return tid
            while True:
                ct = self.cdn.get(tid) or ct
                if ct.complete:
                    self.metrics.preheated_bytes.inc(max(ct.length, 0))
                    return tid
                if ct.failed:
                    raise OriginError(ct.error or "the origin fetch failed")
                if not ct.fetching:
                    break  # stopped short: ensure() again resumes it
                fut: asyncio.Future[None] = loop.create_future()
                self._cdn_waiters.setdefault(tid, []).append(fut)
                try:
                    await asyncio.wait_for(fut, PREHEAT_POLL)
                except TimeoutError:
                    pass
                finally:
                    waiters = self._cdn_waiters.get(tid)
                    if waiters is not None and fut in waiters:
                        waiters.remove(fut)
                        if not waiters:
                            del self._cdn_waiters[tid]
        raise OriginError(
            f"the origin fetch of task {tid[:12]} stopped {PREHEAT_ATTEMPTS} times",
            "check the origin and preheat again",
        )

    async def post_preheat(self, request: web.Request) -> web.Response:
        req = PreheatRequest.from_json(loads_bounded(await request.read()))
        job = self.preheater.submit(req)
        return web.json_response({"id": job.id, "ID": job.id, "status": job.status})

    async def get_preheat(self, request: web.Request) -> web.Response:
        job = self.preheater.get(request.match_info["preheat_id"])
        if job is None:
            return web.json_response(
                error_body("not_found", "no such preheat (finished jobs are kept for a while)"),
                status=404,
            )
        return web.json_response(job.to_json())

    async def list_preheats(self, request: web.Request) -> web.Response:
        return web.json_response({"preheats": [j.to_json() for j in self.preheater.jobs()]})

    # ---- download log ---------------------------------------------------------------------
    def _follow(self, tid: str, pid: str) -> None:
        key = (tid, pid)
        if key in self._downloads:
            return
        if len(self._downloads) >= MAX_DOWNLOAD_LOGS:
            del self._downloads[next(iter(self._downloads))]
        self._downloads[key] = DownloadLog(self.clock.now())

    def _download_done(self, tid: str, pid: str) -> None:
        dl = self._downloads.pop((tid, pid), None)
        if dl is None:
            return
        self.metrics.downloads_done.inc()
        b = dl.bytes_by_source
        log.info(
            "download done: task %s peer %s bytes from origin %d supernode %d peers %d "
            "total %d in %.3fs",
            tid,
            pid,
            b["origin"],
            b["supernode"],
            b["peer"],
            sum(b.values()),
            self.clock.now() - dl.started,
        )

    # ---- background work ------------------------------------------------------------------
    def spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _expire_loop(self) -> None:
        sweeps = 0
        while True:
            await asyncio.sleep(EXPIRE_INTERVAL)
            sweeps += 1
            if sweeps % GRANT_SWEEP_EVERY == 0:
                self.access.expire_grants()
            report = self.scheduler.expire()
            for tid in getattr(report, "idle_tasks", []):
                self.scheduler.remove_task(tid)
                self.access.forget_task(tid)
                self._wake(tid)
                log.info("task %s idle: dropped from memory (cache kept on disk)", tid[:12])

    async def _disk_gc_loop(self) -> None:
        while True:
            await asyncio.sleep(DISK_GC_INTERVAL)
            try:
                removed = await self.cdn.gc_once(self.scheduler.has_task)
            except OSError as e:
                log.warning("disk GC failed: %s", e)
                continue
            for tid in removed:
                log.info("disk GC removed cached task %s", tid[:12])

    async def _suspects(self, suspects: list[tuple[str, int]]) -> None:
        for tid, num in suspects:
            try:
                bad = await self.cdn.report_bad(tid, num)
            except DamselflyError as e:
                log.warning("re-verifying piece %d of %s failed: %s", num, tid[:12], e)
                continue
            if bad:
                log.warning("cached piece %d of task %s was corrupt; refetching", num, tid[:12])

    async def on_startup(self, app: web.Application) -> None:
        await self.cdn.start()
        self.access.load(lambda tid: self.cdn.get(tid) is not None)
        await self.preheater.start()
        self.spawn(self._expire_loop(), "supernode-expire")
        self.spawn(self._disk_gc_loop(), "supernode-disk-gc")

    async def on_cleanup(self, app: web.Application) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.preheater.close()
        await self.cdn.close()

    # ---- HTTP handlers --------------------------------------------------------------------
    async def ping(self, request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": __version__, "component": "supernode"})

    async def register(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        req = RegisterRequest.from_json(loads_bounded(await request.read()))
        tid = task_id(req.url, req.filter, req.md5, req.identifier)
        try:
            ct = await self._admit_and_ensure(tid, req)
        except DamselflyError as e:
            self.metrics.registrations.labels(result=e.code).inc()
            raise
        private = self.access.is_private(tid)
        if not self.scheduler.has_task(tid):
            self.scheduler.add_task(tid, ct.length, ct.piece_size, self.config.cdn_pattern)
            self._sync_from_cdn(tid)
        self.scheduler.add_peer(tid, req.peer, req.pattern)
        self._follow(tid, req.peer.id)
        self.metrics.registrations.labels(result="ok").inc()
        self.metrics.register_latency.observe(time.perf_counter() - started)
        log.info(
            "peer %s registered for task %s (%s, %d bytes)",
            req.peer.id,
            tid[:12],
            redact_url(req.url),
            ct.length,
        )
        resp = RegisterResponse(
            task_id=tid,
            length=ct.length,
            piece_size=ct.piece_size,
            piece_count=ct.piece_count,
            cdn_pattern=self.config.cdn_pattern,
            private=private,
            grant=self.access.grant(tid, req.peer.id) if private else "",
            supernode_key=self.access.signer.public_text,
            origin_validator=self._origin_validator(tid),
        )
        return web.json_response(resp.to_json())

    def _origin_validator(self, tid: str) -> str:
        """Source pattern: the version of the file peers must fetch from the origin."""
        return self.cdn.validator(tid) if self.config.cdn_pattern == "source" else ""

    async def _confirm_change(self, tid: str, peer_id: str) -> None:
        """A peer's Range request found another version of the file at the origin: let the
        CDN probe it again (a new version resets the task, dropping every holder of the old
        one) before this call is answered, so the answer already names the new version."""
        log.info("peer %s found task %s changed at the origin; re-probing", peer_id, tid[:12])
        try:
            async with asyncio.timeout(CHANGE_CHECK_TIMEOUT):
                await self.cdn.confirm_change(tid)
        except (TimeoutError, DamselflyError) as e:
            log.warning("re-probing task %s failed: %s", tid[:12], e or "timed out")

    async def _admit_and_ensure(self, tid: str, req: RegisterRequest) -> CDNTask:
        """The CDN's task for a registration, once the peer may have it: a private task only
        for a peer whose own headers open the URL (supernode/access.py)."""
        if not self.access.classify(tid, req.headers):
            return await self.cdn.ensure(tid, req.url, req.headers)
        if self.cdn.get(tid) is not None or not self.access.claim(tid, req.url, req.headers):
            await self.access.admit(tid, req.url, req.headers)  # cached, single-flighted
            return await self.cdn.ensure(tid, req.url, req.headers)
        # new to the CDN: its fetch starts now with this peer's headers and is its check
        try:
            ct = await self.cdn.ensure(tid, req.url, req.headers)
        except OriginAuthError as e:
            self.access.record(req.url, req.headers, False, e.status or 403)
            raise self.access.refused() from None
        finally:
            self.access.unclaim(tid)
        self.access.record(req.url, req.headers, True, 200)
        return ct

    def _sync_from_cdn(self, tid: str) -> None:
        """A task new to the scheduler learns what the CDN already holds (e.g. a cache hit)."""
        for num, digest in self.cdn.ready_pieces(tid):
            self.scheduler.piece_ready(tid, num, digest)
        ct = self.cdn.get(tid)
        if ct is not None and ct.complete:
            self.scheduler.task_complete(tid, ct.file_sha256)

    async def schedule(self, request: web.Request) -> web.Response:
        tid = validate_task_id(request.match_info["task_id"])
        req = ScheduleRequest.from_json(loads_bounded(await request.read()))
        private = self.access.is_private(tid)
        if private:
            self.access.renew(tid, req.peer_id)  # GrantRequired (409) when it holds none
        loop = asyncio.get_running_loop()
        deadline = loop.time() + req.wait_ms / 1000
        results = req.results
        if self.config.cdn_pattern == "source" and any(
            r.failure == "changed" and r.source == ORIGIN for r in results
        ):
            await self._confirm_change(tid, req.peer_id)
        dl = self._downloads.get((tid, req.peer_id))
        if dl is not None:
            for r in results:
                if r.ok:
                    dl.add(r.piece, r.source, r.bytes)
        while True:
            t0 = time.perf_counter()
            resp = self.scheduler.schedule(tid, req.peer_id, results, req.want)
            self.metrics.schedule_latency.observe(time.perf_counter() - t0)
            if results:
                if any(r.ok for r in results):
                    # a new holder and freed upload slots: a few waiting peers may get work
                    self._wake(tid, self.config.up_limit + 1)
                suspects = self.scheduler.drain_suspects()
                if suspects:
                    self.spawn(self._suspects(suspects), "supernode-suspects")
            results = []
            left = deadline - loop.time()
            if resp.status != STATUS_WAIT or left <= 0:
                break
            fut: asyncio.Future[None] = loop.create_future()
            waiters = self._waiters.setdefault(tid, {})
            waiters[fut] = None
            try:
                await asyncio.wait_for(fut, left)
            except TimeoutError:
                pass
            finally:
                waiters.pop(fut, None)
                if not waiters and self._waiters.get(tid) is waiters:
                    del self._waiters[tid]
        if resp.status == STATUS_DONE:
            self._download_done(tid, req.peer_id)
        # read with no await since the last schedule(): the pieces and the version agree
        resp.origin_validator = self._origin_validator(tid)
        if private:
            try:
                resp.grant = self.access.renew(tid, req.peer_id)
            except GrantRequired:
                pass  # the task or the peer was dropped meanwhile: its next call says so
        return web.json_response(resp.to_json())

    async def leave_task(self, request: web.Request) -> web.Response:
        tid = validate_task_id(request.match_info["task_id"])
        body = loads_bounded(await request.read())
        pid = validate_peer_id(body.get("peer_id", ""))
        self.scheduler.leave_task(tid, pid)
        self.access.drop_grant(tid, pid)
        self._downloads.pop((tid, pid), None)
        self._wake(tid)
        return web.json_response({"ok": True})

    async def back_source(self, request: web.Request) -> web.Response:
        """A peer goes to the origin itself: counted by its reason (a bounded label)."""
        tid = validate_task_id(request.match_info["task_id"])
        rep = BackSourceReport.from_json(loads_bounded(await request.read()))
        self.metrics.back_source.labels(reason=rep.reason).inc()
        self._downloads.pop((tid, rep.peer_id), None)  # it will not finish through the swarm
        log.info(
            "peer %s downloads task %s from the origin itself (%s)",
            rep.peer_id,
            tid[:12],
            rep.reason,
        )
        return web.json_response({"ok": True})

    async def heartbeat(self, request: web.Request) -> web.Response:
        pid = validate_peer_id(request.match_info["peer_id"])
        self.scheduler.heartbeat(pid)
        return web.json_response({"ok": True})

    async def leave_peer(self, request: web.Request) -> web.Response:
        pid = validate_peer_id(request.match_info["peer_id"])
        self.scheduler.remove_peer(pid)
        self.access.drop_peer(pid)
        for tid in list(self._waiters):
            self._wake(tid)
        return web.json_response({"ok": True})

    async def list_tasks(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"tasks": [self._task_json(v) for v in self.scheduler.tasks_view()]}
        )

    async def get_task(self, request: web.Request) -> web.Response:
        tid = validate_task_id(request.match_info["task_id"])
        view = self.scheduler.task_view(tid)
        ct = self.cdn.get(tid)
        if view is None and ct is None:
            return web.json_response(error_body("not_found", "no such task"), status=404)
        out = self._task_json(view or {"task_id": tid})
        return web.json_response(out)

    def _task_json(self, view: dict[str, Any]) -> dict[str, Any]:
        out = dict(view)
        out["private"] = self.access.is_private(out.get("task_id", ""))
        ct = self.cdn.get(out.get("task_id", ""))
        if ct is not None:
            out["cdn"] = {
                "url": ct.url,  # already redacted by the CDN
                "length": ct.length,
                "pieces_ready": ct.pieces_ready,
                "complete": ct.complete,
                "failed": ct.failed,
                "file_sha256": ct.file_sha256,
                "cache_hit": ct.cache_hit,
            }
        return out

    async def list_peers(self, request: web.Request) -> web.Response:
        return web.json_response({"peers": self.scheduler.peers_view()})

    async def metrics_handler(self, request: web.Request) -> web.Response:
        body, ctype = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": ctype})


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Errors from the vocabulary become JSON answers; nothing else leaks a traceback."""
    try:
        return await handler(request)
    except DamselflyError as e:
        return web.json_response(error_body(e.code, str(e)), status=_status_for(e))
    except web.HTTPException:
        raise
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return web.json_response(
            error_body("internal", "internal error; see the supernode log"), status=500
        )


def token_middleware(token: str) -> Any:
    """With a cluster token, every API request but ``/_ping`` must carry it (401 otherwise)."""

    @web.middleware
    async def check_token(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path != "/_ping" and not token_ok(token, request_token(request.headers)):
            return web.json_response(
                error_body("unauthorized", f"{TOKEN_REFUSED} ({TOKEN_HINT})"), status=401
            )
        return await handler(request)

    return check_token


def make_api_app(node: Supernode) -> web.Application:
    middlewares = [error_middleware]
    if node.token:
        middlewares.insert(0, token_middleware(node.token))
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY)
    app.router.add_get("/_ping", node.ping)
    app.router.add_get("/version", node.version)
    app.router.add_get("/metrics", node.metrics_handler)
    app.router.add_post("/api/v1/register", node.register)
    app.router.add_post("/api/v1/tasks/{task_id}/schedule", node.schedule)
    app.router.add_post("/api/v1/tasks/{task_id}/leave", node.leave_task)
    app.router.add_post("/api/v1/tasks/{task_id}/backsource", node.back_source)
    app.router.add_post("/api/v1/peers/{peer_id}/heartbeat", node.heartbeat)
    app.router.add_post("/api/v1/peers/{peer_id}/leave", node.leave_peer)
    app.router.add_get("/api/v1/tasks", node.list_tasks)
    app.router.add_get("/api/v1/tasks/{task_id}", node.get_task)
    app.router.add_get("/api/v1/peers", node.list_peers)
    app.router.add_routes(console.routes(node))
    for prefix in ("", "/api/v1"):
        app.router.add_post(f"{prefix}/preheats", node.post_preheat)
        app.router.add_get(f"{prefix}/preheats", node.list_preheats)
        app.router.add_get(f"{prefix}/preheats/{{preheat_id}}", node.get_preheat)
    app.on_startup.append(node.on_startup)
    app.on_cleanup.append(node.on_cleanup)
    return app


def make_piece_app(node: Supernode) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app.add_routes(node.piece_server.routes())
    return app


async def serve(config: SupernodeConfig) -> tuple[Supernode, list[web.AppRunner]]:
    """Start both ports; returns the runners (call ``cleanup()`` on them to stop)."""
    node = Supernode(config)
    tls = config.security.server_ssl()
    runners = []
    for app, port in (
        (make_api_app(node), config.port),
        (make_piece_app(node), config.download_port),
    ):
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE
        )
        await runner.setup()
        site = web.TCPSite(runner, config.listen, port, reuse_address=True, ssl_context=tls)
        await site.start()
        runners.append(runner)
    return node, runners
