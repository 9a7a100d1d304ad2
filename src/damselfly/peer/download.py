"""One download, driven end to end: register → schedule/fetch/verify/write → whole-file check →
atomic output; failover between supernodes; back source; a result with a v1 reason code.

The decisions about pieces live in ``plan.DownloadPlan``; this module does the I/O it asks for.
Errors end here as a ``DownloadResult`` whose message says what happened and what to do.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from damselfly.core.clock import Clock
from damselfly.core.errors import (
    REASON_DOWNLOAD_ERROR,
    REASON_MD5_MISMATCH,
    REASON_NO_SPACE,
    REASON_NO_SUPERNODE,
    REASON_NONE,
    REASON_REGISTER_FAIL,
    REASON_SOURCE_ERROR,
    REASON_USER_SOURCE,
    DamselflyError,
    IntegrityError,
    NoSpaceError,
    OriginError,
    PieceFetchError,
)
from damselfly.core.grants import GrantError, GrantVerifier, decode_public_key
from damselfly.core.ids import redact_url, sha256_in_url, task_id
from damselfly.core.logs import fields
from damselfly.core.nodes import Node, rendezvous_order
from damselfly.core.pieces import PiecePlan
from damselfly.core.protocol import (
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_WAIT,
    PeerInfo,
    PieceAssignment,
    RegisterRequest,
    RegisterResponse,
    ScheduleRequest,
)
from damselfly.core.ratelimit import AsyncLimiter
from damselfly.peer.backsource import back_source, reported
from damselfly.peer.fetch import OriginAccess, PieceFetcher, ssl_for
from damselfly.peer.net import local_ip_for
from damselfly.peer.output import check_output_dir, check_room, place, same_filesystem
from damselfly.peer.piececlient import PieceClient
from damselfly.peer.plan import DownloadPlan, off_version
from damselfly.peer.request import DownloadRequest, compute_timeout
from damselfly.peer.snclient import Rejected, SupernodeClient, SupernodeDown, TaskLost
from damselfly.peer.store import LocalStore, TaskData
from damselfly.peer.tasks import TaskOwner
from damselfly.peer.wholefile import (
    Confirmed,
    Expected,
    PrefixHasher,
    expected_digest,
    needs_full_hash,
    pieces_suffice,
)

log = logging.getLogger("damselfly.peer.download")

LONG_POLL_MS = 2000
#: with pieces in flight and room for more, ask the scheduler again this often
REASK_S = 0.5
MIN_RETRY_S = 0.1
MAX_RETRY_S = 2.0
#: once every piece is here, how many more schedule calls to wait for the file's digest
FINAL_POLLS = 3
PROGRESS_EVERY_S = 0.1
_ORIGIN_FINAL = ("origin_not_found", "origin_auth")
#: cdn_pattern "source" with an origin that names no version of its file: Range requests made at
#: different times cannot be tied to one version, so the swarm is not used for it
NO_VERSION = (
    "the origin names no version of the file (no ETag or Last-Modified), so pieces fetched "
    "from it at different times could come from two versions; downloading it whole instead"
)


@dataclass
class Services:
    """What a download needs from its engine (one per engine process)."""

    session: aiohttp.ClientSession
    supernodes: SupernodeClient
    store: LocalStore
    total_limiter: AsyncLimiter
    clock: Clock
    peer_id: str
    peer_port: int
    ip: str = ""  # --ip; "" = discover per supernode
    seen_ip: str = ""  # the address last given to a supernode
    hostname: str = field(default_factory=socket.gethostname)
    stall_timeout: float = 5.0
    long_poll_ms: int = LONG_POLL_MS
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    #: called when a task was registered at a supernode (heartbeats and leave go there)
    on_registered: Callable[[Node, TaskData], None] = lambda node, td: None
    #: kept-alive connections to peers and supernodes for piece fetches (closed by the engine)
    pieces: PieceClient = field(default_factory=PieceClient)
    #: the supernode keys this engine trusts for grants to private tasks (learned when
    #: registering); the upload server checks grants with it
    grants: GrantVerifier = field(default_factory=GrantVerifier)


@dataclass(slots=True)
class DownloadResult:
    ok: bool
    reason: int
    message: str
    length: int = 0
    cost: float = 0.0
    bytes_from: dict[str, int] = field(
        default_factory=lambda: {"origin": 0, "supernode": 0, "peers": 0}
    )

    def event(self) -> dict[str, Any]:
        return {
            "event": "result",
            "ok": self.ok,
            "reason": self.reason,
            "message": self.message,
            "length": self.length,
            "cost": round(self.cost, 3),
            "bytes_from": dict(self.bytes_from),
        }


class BackSource(Exception):
    """The swarm cannot deliver: go to the origin (unless --notbs) with this v1 reason."""

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Fatal(Exception):
    """The download fails with this reason; the origin would not help."""

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


Emit = Callable[[dict[str, Any]], None]


class Download:
    def __init__(self, svc: Services, req: DownloadRequest, emit: Emit) -> None:
        self.svc = svc
        self.req = req
        self.emit = emit
        self.tid = task_id(req.url, req.filter, req.md5, req.identifier)
        self.url_sha256 = sha256_in_url(req.url)
        self.task_limiter = AsyncLimiter(req.locallimit, svc.clock) if req.locallimit else None
        self.limiters: list[AsyncLimiter | None] = [self.task_limiter, svc.total_limiter]
        self.bytes_from = {"origin": 0, "supernode": 0, "peers": 0}
        self.length = 0
        self._deadline: asyncio.Timeout | None = None
        self._started = svc.clock.now()
        self._last_progress = 0.0
        self.origin = OriginAccess(req.url, req.headers)
        #: pieces verified against the current supernode's digests (for the whole-file check)
        self._confirmed = Confirmed()
        #: streaming hook (dfdaemon): called with the task's local copy when it is opened and
        #: again after each piece is verified and written; it must not block or raise
        self.on_piece: Callable[[TaskData], None] | None = None
        #: the supernode that last answered (told when this download goes to the origin)
        self.answered: Node | None = None

    # -- entry -----------------------------------------------------------------------------

    async def run(self) -> DownloadResult:
        """The download's result; one summary line is logged however it ends."""
        try:
            result = await self._result()
        except asyncio.CancelledError:
            _log_summary(self, None)
            raise
        _log_summary(self, result)
        return result

    async def _result(self) -> DownloadResult:
        start = self._started
        try:
            self.origin.ssl = ssl_for(self.req.cacerts, self.req.insecure)
            async with asyncio.timeout(self.req.timeout) as cm:
                self._deadline = cm
                reason = await self._run()
            return DownloadResult(
                True, reason, "ok", self.length, self.svc.clock.now() - start, self.bytes_from
            )
        except Fatal as f:
            return self._fail(f.reason, f.message)
        except TimeoutError:
            if self._deadline is None or not self._deadline.expired():
                raise
            return self._fail(
                REASON_DOWNLOAD_ERROR,
                f"download timed out after {self.svc.clock.now() - start:.0f}s: "
                "raise --timeout (or lower --minrate) or check the network",
            )
        except DamselflyError as e:
            return self._fail(REASON_DOWNLOAD_ERROR, str(e))
        except Exception as e:
            log.exception("download of %s failed unexpectedly", redact_url(self.req.url))
            return self._fail(
                REASON_DOWNLOAD_ERROR,
                f"internal error ({e.__class__.__name__}): see the engine log under --home/logs",
            )

    def _fail(self, reason: int, message: str) -> DownloadResult:
        return DownloadResult(
            False,
            reason,
            message,
            self.length,
            self.svc.clock.now() - self._started,
            self.bytes_from,
        )

    async def _run(self) -> int:
        await asyncio.to_thread(check_output_dir, self.req.output)
        if self.req.pattern == "source":
            await self._back_source(REASON_USER_SOURCE, "")
            return REASON_USER_SOURCE
        try:
            await self._swarm()
            return REASON_NONE
        except BackSource as bs:
            if self.req.notbs:
                raise Fatal(
                    bs.reason,
                    f"{bs.message}; not downloading from the origin because --notbs was given "
                    "(check the supernodes, or drop --notbs)",
                ) from None
            self._say(f"downloading from the origin: {bs.message}")
            await self._back_source(bs.reason, bs.message)
            return bs.reason

    # -- back source -----------------------------------------------------------------------

    async def _back_source(self, reason: int, why: str) -> None:
        expected = [e for e in (expected_digest(self.req.md5, None, ""),) if e is not None]
        if self.url_sha256:
            expected.append(Expected("sha256", self.url_sha256, "the sha256 in the URL"))
        after = f" (after the swarm failed: {why})" if why else ""
        node = self.answered
        if reason == REASON_USER_SOURCE:  # no registration: tell the task's first supernode
            node = next(iter(rendezvous_order(self.tid, self.req.node_list())), None)
        try:
            async with reported(self.svc.supernodes, node, self.tid, self.svc.peer_id, reason):
                self.length = await back_source(
                    self.svc.session,
                    self.origin,
                    self.req.output,
                    expected,
                    self.limiters,
                    self._origin_progress,
                )
        except NoSpaceError as e:
            raise Fatal(REASON_NO_SPACE, str(e)) from None
        except IntegrityError as e:
            raise Fatal(REASON_MD5_MISMATCH, str(e)) from None
        except OriginError as e:
            raise Fatal(REASON_SOURCE_ERROR, f"{e}{after}") from None
        self.bytes_from["origin"] += self.length

    def _origin_progress(self, done: int, total: int | None) -> None:
        self._progress(done, total if total is not None else -1, force=done == total)

    # -- the swarm -------------------------------------------------------------------------

    async def _swarm(self) -> None:
        nodes = rendezvous_order(self.tid, self.req.node_list())
        if not nodes:
            raise BackSource(REASON_NO_SUPERNODE, "no supernode was given (use --node)")
        lock = self.svc.locks.setdefault(self.tid, asyncio.Lock())
        if lock.locked():
            self._say("another download of the same file runs on this host; waiting for it")
        try:
            async with lock:
                await self._swarm_locked(nodes)
        finally:
            if not lock.locked() and self.svc.locks.get(self.tid) is lock:
                del self.svc.locks[self.tid]

    async def _swarm_locked(self, nodes: list[Node]) -> None:
        registered = False
        problems: list[str] = []
        for node in nodes:
            for _attempt in range(3):  # a supernode that forgot the task gets another register
                try:
                    reg = await self._register(node)
                except SupernodeDown as e:
                    problems.append(str(e.message))
                    self._say(f"supernode {node.addr} did not answer; trying the next one")
                    break
                except Rejected as e:
                    self.answered = node
                    msg = f"supernode {node.addr} refused the download: {e.message}"
                    if e.code in _ORIGIN_FINAL:
                        raise Fatal(REASON_SOURCE_ERROR, _origin_hint(msg, e.code)) from None
                    raise BackSource(REASON_REGISTER_FAIL, msg) from None
                registered = True
                self.answered = node
                try:
                    await self._download_from(node, reg)
                    return
                except SupernodeDown as e:
                    problems.append(str(e.message))
                    self._say(f"supernode {node.addr} stopped answering; trying the next one")
                    break
                except TaskLost as e:
                    self._say(f"{e.message}; registering again")
                    continue
        if registered:
            raise BackSource(
                REASON_DOWNLOAD_ERROR, f"every supernode failed ({'; '.join(problems[-2:])})"
            )
        raise BackSource(REASON_NO_SUPERNODE, f"no supernode answered ({'; '.join(problems[-2:])})")

    async def _register(self, node: Node) -> RegisterResponse:
        ip = self.svc.ip or await local_ip_for(node.host, node.port)
        peer = PeerInfo(self.svc.peer_id, ip, self.svc.peer_port, self.svc.hostname[:255])
        req = RegisterRequest(
            url=self.req.url,
            peer=peer,
            filter=list(self.req.filter),
            md5=self.req.md5,
            identifier=self.req.identifier,
            headers=dict(self.req.headers),
            pattern=self.req.pattern,
            callsystem=self.req.callsystem,
        )
        reg = await self.svc.supernodes.register(node, req)
        self.svc.seen_ip = ip
        if reg.supernode_key:
            try:
                self.svc.grants.trust(decode_public_key(reg.supernode_key))
            except GrantError:
                log.warning("supernode %s sent a malformed key; ignored", node.addr)
        if PiecePlan(reg.length, reg.piece_size).count != reg.piece_count:
            raise SupernodeDown(f"supernode {node.addr} sent an inconsistent piece count")
        self.length = reg.length
        if self._deadline is not None and not self.req.timeout:
            t = compute_timeout(None, self.req.minrate, reg.length)
            if t is not None:
                self._deadline.reschedule(self._loop_time_at(self._started + t))
        self._say(
            f"registered at supernode {node.addr}: {reg.length} bytes in {reg.piece_count} "
            f"pieces of {reg.piece_size}"
        )
        return reg

    def _loop_time_at(self, clock_time: float) -> float:
        return asyncio.get_running_loop().time() + (clock_time - self.svc.clock.now())

    async def _download_from(self, node: Node, reg: RegisterResponse) -> None:
        store = self.svc.store
        if reg.task_id != self.tid:
            log.warning(
                "supernode %s names the task %s (we computed %s)",
                node.addr,
                reg.task_id[:12],
                self.tid[:12],
            )
        out_dir = os.path.dirname(self.req.output)
        versioned = reg.cdn_pattern == "source"
        if versioned and not reg.origin_validator:
            await self.svc.supernodes.leave_task(node, reg.task_id, self.svc.peer_id)
            raise BackSource(REASON_DOWNLOAD_ERROR, NO_VERSION)
        try:
            td = await store.open_task(
                reg.task_id, reg.length, reg.piece_size, upload=self.req.pattern != "cdn"
            )
        except NoSpaceError as e:
            raise BackSource(REASON_NO_SPACE, str(e)) from None
        if reg.private and not td.private:
            td.private = True  # before anyone can ask for a piece of it, and kept in its meta
            await store.save_meta(td)
        try:
            if versioned and td.origin_version != reg.origin_validator:
                # pieces held from an earlier download of another version of the file: their
                # digests were never the supernode's, so only the version tells them apart
                if td.held:
                    self._say("the local copy is from another version of the file; dropping it")
                    await store.reset(td)
                td.origin_version = reg.origin_validator
            if not await asyncio.to_thread(same_filesystem, td.path, out_dir):
                try:
                    await asyncio.to_thread(check_room, out_dir, reg.length, "the output")
                except NoSpaceError as e:
                    raise Fatal(REASON_NO_SPACE, str(e)) from None
            self.svc.on_registered(node, td)
            if self.on_piece is not None:
                self.on_piece(td)
            t0 = self.svc.clock.now()
            plan, hasher = await self._piece_loop(node, reg, td)
            t1 = self.svc.clock.now()
            try:
                if versioned:
                    await self._check_version(node, td, plan)
                await self._check_whole(td, plan, hasher)
            finally:
                await hasher.close()
            t2 = self.svc.clock.now()
            try:
                how = await asyncio.to_thread(place, td.path, self.req.output)
            except NoSpaceError as e:
                raise Fatal(REASON_NO_SPACE, str(e)) from None
            log.info(
                "placed %s (%s) from task %s: pieces in %.3fs, whole-file check %.3fs more, "
                "placing %.3fs",
                self.req.output,
                how,
                td.task_id[:12],
                t1 - t0,
                t2 - t1,
                self.svc.clock.now() - t2,
            )
        finally:
            await store.release(td)

    async def _piece_loop(
        self, node: Node, reg: RegisterResponse, td: TaskData
    ) -> tuple[DownloadPlan, PrefixHasher]:
        svc = self.svc
        versioned = reg.cdn_pattern == "source"
        plan = DownloadPlan.start(
            PiecePlan(reg.length, reg.piece_size),
            td.held,
            origin_validator=reg.origin_validator if versioned else None,
        )
        fetcher = PieceFetcher(
            svc.session, reg.task_id, self.origin, self.limiters, svc.stall_timeout, svc.pieces
        )
        fetcher.grant = reg.grant
        if versioned:  # every origin piece of this task from the supernode's version
            fetcher.pin(reg.origin_validator, reg.length)
        hasher = self._hasher(td, plan)
        self._confirmed.clear()  # confirmations hold for one supernode's digests
        changed = asyncio.Event()
        fatal: list[BaseException] = []
        fetches = TaskOwner(f"dl-{reg.task_id[:8]}")
        known_locally = bool(self.req.md5 or self.url_sha256)
        final_polls = 0
        ok = False
        try:
            while True:
                if fatal:
                    raise fatal[0]
                if (num := plan.gave_up()) is not None:
                    raise BackSource(
                        REASON_DOWNLOAD_ERROR,
                        f"piece {num} failed {plan.failures[num]} times from the sources offered",
                    )
                if plan.finished(known_locally) or (plan.complete and final_polls >= FINAL_POLLS):
                    break
                if plan.complete and not plan.in_flight:
                    final_polls += 1
                results = plan.take_results()
                sreq = ScheduleRequest(
                    svc.peer_id, results, plan.want(), plan.wait_ms(svc.long_poll_ms)
                )
                asked = svc.clock.now()
                try:
                    resp = await svc.supernodes.schedule(node, reg.task_id, sreq)
                except Rejected as e:
                    raise BackSource(
                        REASON_DOWNLOAD_ERROR, f"supernode {node.addr} refused: {e.message}"
                    ) from None
                if resp.status == STATUS_FAILED:
                    msg = f"the supernode could not get the file: {resp.message or resp.error_code}"
                    if resp.error_code in _ORIGIN_FINAL:
                        raise Fatal(REASON_SOURCE_ERROR, _origin_hint(msg, resp.error_code))
                    raise BackSource(REASON_SOURCE_ERROR, msg)
                if resp.grant:
                    fetcher.grant = resp.grant  # renewed at half its life
                decision = plan.on_response(resp)
                if decision.stale:
                    new_version = decision.new_version
                    if new_version is None:
                        self._say(
                            "the local copy is from an older version of the file; dropping it"
                        )
                    else:
                        self._say(
                            "the file changed at the origin; dropping the old version's pieces"
                        )
                    await fetches.close()
                    await hasher.close()
                    await svc.store.reset(td)
                    plan.drop_local_copy(new_version)
                    self._confirmed.clear()
                    hasher = self._hasher(td, plan)
                    # the empty copy is of the version the plan now follows (the reset forgot it)
                    td.origin_version = plan.origin_validator or ""
                    if new_version is not None:
                        if not new_version:
                            await svc.supernodes.leave_task(node, reg.task_id, svc.peer_id)
                            raise BackSource(REASON_DOWNLOAD_ERROR, NO_VERSION)
                        fetcher.pin(new_version, plan.pieces.length)
                    decision = plan.on_response(resp)
                if decision.rejected:  # pieces cut for another length: start over at its size
                    # (leaving first: the scheduler must forget what this copy held)
                    await svc.supernodes.leave_task(node, reg.task_id, svc.peer_id)
                    raise TaskLost("the file changed size at the origin")
                self._confirmed.on_assigned(resp.pieces, td.verified_here)
                for a in decision.fetch:
                    # tagged with the version the answer that assigned it names (see off_version)
                    version = plan.origin_validator or ""
                    fetches.spawn(
                        self._fetch_one(fetcher, plan, td, a, version, hasher, changed, fatal),
                        name=f"piece-{a.num}",
                    )
                if resp.status == STATUS_DONE and not plan.complete and not plan.in_flight:
                    raise BackSource(
                        REASON_DOWNLOAD_ERROR, "the supernode ended the task with pieces missing"
                    )
                if plan.in_flight:
                    if not changed.is_set():
                        try:
                            async with asyncio.timeout(REASK_S if plan.want() else None):
                                await changed.wait()
                        except TimeoutError:
                            pass
                    changed.clear()
                elif resp.status == STATUS_WAIT and not plan.results:
                    # After a long poll the supernode held, ask again at once (it answers as
                    # soon as something changes); after an early "wait", back off as told.
                    held_s = svc.clock.now() - asked
                    if held_s < 0.8 * sreq.wait_ms / 1000:
                        await asyncio.sleep(
                            min(MAX_RETRY_S, max(MIN_RETRY_S, resp.retry_ms / 1000))
                        )
            ok = True
            return plan, hasher
        finally:
            await fetches.close()
            await fetcher.close()
            for k, v in plan.bytes_from.items():
                self.bytes_from[k] += v
            if not ok:
                await hasher.close()

    def _hasher(self, td: TaskData, plan: DownloadPlan) -> PrefixHasher:
        hasher = PrefixHasher(
            "md5" if self.req.md5 else "sha256", td.fd, plan.pieces, lambda n: n in td.held
        )
        if needs_full_hash(self.req.md5, self.url_sha256):
            hasher.start(f"hash-{td.task_id[:8]}")  # else only if the pieces do not suffice
        return hasher

    async def _fetch_one(
        self,
        fetcher: PieceFetcher,
        plan: DownloadPlan,
        td: TaskData,
        a: PieceAssignment,
        version: str,
        hasher: PrefixHasher,
        changed: asyncio.Event,
        fatal: list[BaseException],
    ) -> None:
        try:
            async with fetcher.piece(a) as buf:
                got = await self.svc.store.write_piece(td, a.num, buf, a.digest, version)
        except PieceFetchError as e:
            log.info("piece %d from %s failed: %s", a.num, a.source.id, e.message)
            plan.on_piece(a.num, False, e.kind)
        except IntegrityError:
            log.warning("piece %d from %s failed its digest check", a.num, a.source.id)
            plan.on_piece(a.num, False, "digest")
        except NoSpaceError as e:
            plan.on_piece(a.num, False, "other")
            fatal.append(BackSource(REASON_NO_SPACE, str(e)))
        except OSError as e:
            plan.on_piece(a.num, False, "other")
            fatal.append(
                BackSource(REASON_DOWNLOAD_ERROR, f"could not write the data file: {e.strerror}")
            )
        else:
            log.debug("piece %d from %s (%s) verified", a.num, a.source.id, a.source.kind)
            plan.on_piece(a.num, True, nbytes=a.size, digest=got)
            self._confirmed.on_verified(a.num, a.digest)
            hasher.poke()
            if self.on_piece is not None:
                self.on_piece(td)
            self._progress(plan.held_bytes, plan.pieces.length, force=plan.complete)
        finally:
            changed.set()

    async def _check_version(self, node: Node, td: TaskData, plan: DownloadPlan) -> None:
        """cdn_pattern "source": the last line of defence against a file mixing two versions
        (no whole-file digest is known to catch it). Pieces not tied to the version the
        supernode named last are dropped and the download registers again to fetch them."""
        version = plan.origin_validator or ""
        stray = off_version(plan.pieces.count, td.versions, version)
        if not stray:
            return
        log.warning(
            "task %s: %d piece(s) not tied to version %s of the file (first: %d); dropped",
            td.task_id[:12],
            len(stray),
            version,
            stray[0],
        )
        await self.svc.store.drop_pieces(td, stray)
        # leaving first: the scheduler must forget that this copy held them
        await self.svc.supernodes.leave_task(node, td.task_id, self.svc.peer_id)
        raise TaskLost(
            f"{len(stray)} piece(s) of the local copy were not of the file's current version; "
            "fetching them again"
        )

    async def _check_whole(self, td: TaskData, plan: DownloadPlan, hasher: PrefixHasher) -> None:
        exp = expected_digest(self.req.md5, self.url_sha256, plan.file_sha256)
        if exp is None:
            log.warning(
                "task %s: no whole-file digest known; every piece was verified", td.task_id[:12]
            )
            return
        if exp.algo == "sha256" and td.file_sha256 == exp.hexdigest:
            return  # this very data file was verified before and never rewritten since
        if pieces_suffice(exp, self._confirmed, plan.pieces.count, td.confirmed_sha256):
            td.confirmed_sha256 = exp.hexdigest
            return  # every byte was verified against the supernode's piece digests
        got = await hasher.result()
        if got != exp.hexdigest:
            await self.svc.store.reset(td)
            raise BackSource(
                REASON_MD5_MISMATCH,
                f"the downloaded file's {exp.algo} is {got}, but {exp.origin} says {exp.hexdigest}",
            )
        if exp.algo == "sha256":
            td.file_sha256 = got

    # -- events to the client --------------------------------------------------------------

    def _say(self, message: str) -> None:
        log.info("%s: %s", self.tid[:12], message)
        self.emit({"event": "log", "message": message})

    def _progress(self, done: int, total: int, force: bool = False) -> None:
        now = self.svc.clock.now()
        if not force and now - self._last_progress < PROGRESS_EVERY_S:
            return
        self._last_progress = now
        self.emit({"event": "progress", "completed": done, "total": total})


def _log_summary(dl: Download, r: DownloadResult | None) -> None:
    """The one line per finished download (``r`` None: cancelled); JSON logs get the fields."""
    svc, src = dl.svc, (r.bytes_from if r is not None else dl.bytes_from)
    outcome = "cancelled" if r is None else "success" if r.ok else "failure"
    cost = r.cost if r is not None else svc.clock.now() - dl._started
    length = r.length if r is not None else dl.length
    reason = r.reason if r is not None else REASON_DOWNLOAD_ERROR
    error = "" if r is None or r.ok else r.message
    # the address given to the supernode; the host's name when none was (-p source)
    peer = f"{svc.ip or svc.seen_ip or svc.hostname}:{svc.peer_port}"
    url = redact_url(dl.req.url)
    log.info(
        "download %s: task %s peer %s (%s) %s length %d bytes from origin %d supernode %d "
        "peers %d in %.3fs reason %d%s",
        outcome,
        dl.tid[:12],
        svc.peer_id,
        peer,
        url,
        length,
        src.get("origin", 0),
        src.get("supernode", 0),
        src.get("peers", 0),
        cost,
        reason,
        f": {error}" if error else "",
        extra=fields(
            event="download",
            task_id=dl.tid,
            peer_id=svc.peer_id,
            peer=peer,
            url=url,
            length=length,
            bytes_from=dict(src),
            duration=round(cost, 3),
            result=outcome,
            reason=reason,
            error=error,
        ),
    )


def _origin_hint(message: str, code: str) -> str:
    hint = "pass the right credentials with --header" if code == "origin_auth" else "check the URL"
    if "--header" in message or "check the URL" in message:
        return message  # the supernode already said what to do
    return f"{message} ({hint})"
