"""The supernode's passive CDN: fetches each task from its origin once, cuts it into pieces,
digests them and keeps the cache on disk across restarts.

- ``ensure()`` starts or joins the one origin request of a task (single flight) and returns as
  soon as the length, hence the piece plan, is known. The body then streams into
  ``home/repo/<id[:2]>/<id>.data``; each full piece is written (pwrite) and sha256-hashed in a
  worker thread while the next one is received, and announced with ``listener.piece_ready`` at
  once, so peers can fetch pieces while the origin is still sending. A whole-file sha256 is fed
  in order on the way.
- Listener events are idempotent notifications, in order per task; ``task_reset`` comes before
  any event of a new version of a task's content. The first events of a fetch can arrive before
  the ``ensure()`` that started it returns, and a cached task announces nothing by itself: a
  listener that learns of a task catches up with ``ready_pieces()`` and ``get().complete``.
- Freshness: a complete task is revalidated (If-None-Match / If-Modified-Since) by the first
  registration after ``revalidate_window`` seconds; registrations arriving meanwhile share that
  request. 304 → reuse; 200 → the new version replaces the old (``task_reset``). A URL naming a
  sha256 is content-addressed: never revalidated, and checked against that digest when fetched.
- Resume: a partial copy (a cut connection, or a restart) is completed with
  ``Range`` + ``If-Range`` requests for the missing pieces only. A 200 instead of a 206, or a 206
  of another length or ETag, means the content changed: the version starts over from byte 0 —
  two versions are never stitched together. Transient failures are retried (``retries`` times
  without progress, exponential backoff).
- Origins without Content-Length (chunked): the body is spooled to the cache file first (free
  space checked as it grows), then cut into pieces and digested, and only then is the length
  announced; ``ensure()`` for such a task returns when the whole file is cached.
- ``pattern="source"``: nothing is stored; a HEAD (or a ``Range: bytes=0-0`` GET) learns the
  length and the validator (``validator()``: peers send it as ``If-Range``, so every piece of
  the task comes from that version) and every piece is announced with digest "" (peers fetch
  ranges from the origin). A peer whose Range request found another version asks for
  ``confirm_change()``: a new probe (one at a time, at most every ``REPROBE_INTERVAL``), and a
  new version resets the task (``task_reset``).
- The caller's headers (credentials) go to the origin only: never to the meta file, a log line
  or an error message. URLs are logged through ``redact_url`` (a query may hold a signature).
- A cached piece is re-hashed on its first serve after a restart; a corrupt piece is never
  served: it is reported with ``piece_lost`` and fetched again from the origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from damselfly.core.clock import Clock
from damselfly.core.errors import (
    ConfigError,
    DamselflyError,
    IntegrityError,
    NoSpaceError,
    OriginAuthError,
    OriginChanged,
    OriginError,
    OriginNotFound,
)
from damselfly.core.ids import redact_url, sha256_in_url, validate_task_id, validate_url
from damselfly.core.pieces import PiecePlan, piece_rule
from damselfly.core.ratelimit import AsyncLimiter
from damselfly.store.pieceserver import PieceLocation
from damselfly.supernode import cdn_body, cdn_disk, diskgc
from damselfly.supernode.cdn_fetch import OriginClient, OriginResponse, probe_length
from damselfly.supernode.cdn_meta import Layout, remove_task_files, scan, write_meta
from damselfly.supernode.cdn_policy import (
    MAX_LENGTH,
    Action,
    Cached,
    CacheState,
    Head,
    Kind,
    NegativeCache,
    Verdict,
    backoff,
    check_space,
    clean_headers,
    conditional_headers,
    decide,
    if_range_validator,
    is_retriable,
    judge,
    missing_runs,
    range_header,
    status_error,
)
from damselfly.supernode.cdn_state import CDNStats, CDNTask, Op, TaskState, mark_retrieved
from damselfly.supernode.diskgc import GCCandidate, GCThresholds, choose_victims

__all__ = ["CDN", "CDNConfig", "CDNListener", "CDNStats", "CDNTask"]

log = logging.getLogger("damselfly.supernode.cdn")

MiB = 1024 * 1024
PATTERNS = ("local", "source")
#: a caller whose credentials differ from those of a request that failed with 401/403 tries its own
AUTH_ATTEMPTS = 3
#: source pattern: probes asked for by peers' "the file changed" reports start at most this often
#: per task (a report cannot make the supernode hammer the origin)
REPROBE_INTERVAL = 0.25


class CDNListener(Protocol):
    """The shell's side: forwards to the scheduler and wakes long polls. Calls are idempotent."""

    def piece_ready(self, task_id: str, num: int, digest: str) -> None: ...
    def piece_lost(self, task_id: str, num: int) -> None: ...
    def task_complete(self, task_id: str, file_sha256: str) -> None: ...
    def task_failed(self, task_id: str, error: DamselflyError) -> None: ...
    def task_reset(self, task_id: str, length: int, piece_size: int) -> None: ...


@dataclass
class CDNConfig:
    home: Path  # --home-dir; the cache lives under home/repo/
    rate: int | None = None  # bytes/s shared by all origin fetches; None = unlimited
    pattern: str = "local"  # "local" | "source" (store nothing; peers fetch from the origin)
    negative_ttl: float = 180.0  # an origin 404 is remembered this long
    revalidate_window: float = 2.0  # registrations this soon after a validation share it
    disk_gc_young: int = diskgc.DEFAULT_YOUNG  # free bytes below which idle tasks are removed
    disk_gc_full: int = diskgc.DEFAULT_FULL  # free bytes below which any unused task may go
    disk_gc_min_idle: float = diskgc.DEFAULT_MIN_IDLE  # seconds idle before a young GC removes
    disk_reserve: int = 256 * MiB  # free bytes a new fetch must leave on the disk
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    retries: int = 3  # retries of a transient origin failure without progress
    retry_backoff: float = 0.5  # first retry delay (doubles each time, up to 5 s)
    piece_sizes: str = "swarm"  # the piece-size rule by name (core/pieces.py: swarm | v1)

    def __post_init__(self) -> None:
        self.home = Path(self.home)
        try:
            piece_rule(self.piece_sizes)
        except ValueError as e:
            raise ConfigError(str(e), "use --piece-sizes swarm (default) or v1") from None
        if self.pattern not in PATTERNS:
            raise ConfigError(
                f"unknown CDN pattern {self.pattern!r}", f"use one of {', '.join(PATTERNS)}"
            )
        if self.rate is not None and self.rate <= 0:
            raise ConfigError("the CDN rate must be positive", "omit it for no limit")
        for name in ("negative_ttl", "revalidate_window", "disk_gc_min_idle", "retry_backoff"):
            if getattr(self, name) < 0:
                raise ConfigError(f"CDN setting {name} must not be negative")
        for name in ("connect_timeout", "read_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"CDN setting {name} must be positive")
        if min(self.disk_gc_young, self.disk_gc_full, self.disk_reserve, self.retries) < 0:
            raise ConfigError("CDN disk thresholds and retries must not be negative")
        if self.disk_gc_full > self.disk_gc_young:
            raise ConfigError(
                "the full disk-GC threshold is above the young one",
                "the full GC threshold must be the lower free-space figure",
            )


class _StartOver(Exception):
    """Internal: the origin's answer cannot continue the cached version; GET it all again."""


class CDN:
    """The passive CDN. One per supernode; ``start()`` before use, ``close()`` at shutdown."""

    def __init__(
        self,
        config: CDNConfig,
        listener: CDNListener,
        clock: Clock,
        *,
        limiter: AsyncLimiter | None = None,
        free_space: Callable[[Path], int] = diskgc.free_space,
    ) -> None:
        self.config = config
        self.listener = listener
        self.clock = clock
        self.layout = Layout(config.home)
        # The limiter sleeps in real time, so it keeps its own monotonic clock.
        self.limiter = limiter if limiter is not None else AsyncLimiter(config.rate)
        self.client = OriginClient(self.limiter, config.connect_timeout, config.read_timeout)
        self.stats = CDNStats()
        self.thresholds = GCThresholds(
            config.disk_gc_young, config.disk_gc_full, config.disk_gc_min_idle
        )
        self._free_space = free_space
        self._negative = NegativeCache(config.negative_ttl)
        self._tasks: dict[str, TaskState] = {}
        self._removing: dict[str, asyncio.Event] = {}
        self._bg: set[asyncio.Task[Any]] = set()
        self._started = False
        self._closed = False

    def __repr__(self) -> str:
        busy = sum(t.op is not None for t in self._tasks.values())
        return (
            f"CDN(pattern={self.config.pattern}, tasks={len(self._tasks)}, fetching={busy}, "
            f"negative={len(self._negative)})"
        )

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Open the origin client and load the cache left on disk by a previous run."""
        await self.client.open()
        self._started = True
        if self.config.pattern != "local":
            return
        loaded, removed = await asyncio.to_thread(scan, self.layout, time.time())
        now = self.clock.now()
        for item in loaded:
            m = item.meta
            self._tasks[m.task_id] = TaskState(
                task_id=m.task_id,
                url=m.url,
                plan=PiecePlan(m.length, m.piece_size),
                etag=m.etag,
                last_modified=m.last_modified,
                digests=m.digests,
                complete=m.complete,
                file_sha256=m.file_sha256,
                last_used=now - item.age,
                stored=True,
            )
        log.info(
            "cdn: %d cached task(s) loaded from %s, %d stray file(s) removed",
            len(loaded),
            self.layout.root,
            len(removed),
        )

    async def close(self) -> None:
        """Cancel every fetch, flush metadata, close the origin session. Idempotent."""
        if self._closed:
            return
        self._closed = True
        ops = [t.op.task for t in self._tasks.values() if t.op is not None and t.op.task]
        for task in ops:
            task.cancel()
        await asyncio.gather(*ops, return_exceptions=True)
        while self._bg:  # meta writers and file removals finish their work
            await asyncio.gather(*list(self._bg), return_exceptions=True)
        await self.client.close()

    def _check_open(self) -> None:
        if self._closed or not self._started:
            raise DamselflyError(
                "the supernode's CDN is not running", "the supernode is starting or stopping"
            )

    # ---------------------------------------------------------------- queries

    def get(self, task_id: str) -> CDNTask | None:
        t = self._tasks.get(task_id)
        return t.view(self.config.pattern) if t is not None else None

    def tasks(self) -> list[CDNTask]:
        return [t.view(self.config.pattern) for t in self._tasks.values()]

    def ready_pieces(self, task_id: str) -> list[tuple[int, str]]:
        """(num, digest) of every piece held now (digest "" in the source pattern)."""
        t = self._tasks.get(task_id)
        if t is None:
            return []
        return [(i, d) for i, d in enumerate(t.digests) if d is not None]

    def validator(self, task_id: str) -> str:
        """The version of the task's file peers must fetch (``If-Range``): its strong ETag,
        else Last-Modified, else "" (the origin names none)."""
        t = self._tasks.get(task_id)
        return if_range_validator(t.etag, t.last_modified) if t is not None else ""

    async def confirm_change(self, task_id: str) -> None:
        """Source pattern: a peer found another version of the file at the origin than the
        task's. Returns once a probe that began after this call (or at most REPROBE_INTERVAL
        before it: probes start at most that often, whatever peers report) has ended; a new
        version has then reset the task. A failed re-probe keeps the task as it was."""
        if self.config.pattern != "source":
            return
        asked = self.clock.now()
        while True:
            self._check_open()
            t = self._tasks.get(task_id)
            if t is None or t.plan is None or t.headers is None:
                return  # nothing announced to peers: their next registration probes anyway
            if t.op is not None:
                with contextlib.suppress(DamselflyError):
                    await asyncio.shield(t.op.ready)
                if t.op is not None and t.op.task is not None:
                    await asyncio.wait([t.op.task])
                continue
            if t.probe_started >= asked - REPROBE_INTERVAL:
                return  # probed just now: a peer still finding another version asks again
            self._start_op(t, Action.REVALIDATE, t.headers)

    # ---------------------------------------------------------------- ensure

    async def ensure(self, task_id: str, url: str, headers: dict[str, str]) -> CDNTask:
        """Start or join the task's origin request; return once its length is known.

        Raises OriginNotFound, OriginAuthError, OriginError, NoSpaceError (see module doc).
        """
        self._check_open()
        validate_task_id(task_id)
        validate_url(url)
        hdrs = clean_headers(headers)
        for attempt in range(AUTH_ATTEMPTS):
            while (ev := self._removing.get(task_id)) is not None:
                await ev.wait()
            self._check_open()
            now = self.clock.now()
            neg = self._negative.lookup(task_id, now)
            if neg is not None:
                raise neg
            t = self._tasks.get(task_id)
            if t is None:
                t = self._tasks[task_id] = TaskState(task_id, url)
            t.url = url  # the newest spelling (filtered query keys may differ)
            t.headers = hdrs
            t.last_used = now
            op = t.op
            if op is None:
                action = decide(self._state(t), now, self.config.revalidate_window)
                if action is Action.REUSE:
                    t.cache_hit = True
                    self.stats.cache_hits += 1
                    return t.view(self.config.pattern)
                op = self._start_op(t, action, hdrs)
            try:
                await asyncio.shield(op.ready)
            except OriginAuthError:
                # Peers with different tokens share a task: a refusal of someone else's
                # credentials is not an answer to ours.
                if op.headers == hdrs or attempt == AUTH_ATTEMPTS - 1:
                    raise
                continue
            if op.reused:
                self.stats.cache_hits += 1
            return t.view(self.config.pattern)
        raise AssertionError("unreachable")

    def _state(self, t: TaskState) -> CacheState:
        source = self.config.pattern == "source"
        return CacheState(
            known=t.plan is not None,
            complete=t.complete,
            pieces_held=t.held(),
            busy=t.op is not None,
            content_addressed=sha256_in_url(t.url) is not None,
            can_revalidate=source or bool(t.etag or t.last_modified),
            can_resume=bool(if_range_validator(t.etag, t.last_modified)),
            last_validated=t.last_validated,
        )

    def _start_op(self, t: TaskState, action: Action, headers: dict[str, str]) -> Op:
        loop = asyncio.get_running_loop()
        op = Op(action, headers, loop.create_future())
        op.ready.add_done_callback(mark_retrieved)
        t.op = op
        if action is Action.REVALIDATE:
            self.stats.revalidations += 1
        else:
            self.stats.fetches_started += 1
        log.debug("cdn: task %s: %s %s", t.task_id[:12], action.value, redact_url(t.url))
        op.task = self._spawn(f"cdn-{action.value}-{t.task_id[:12]}", self._run(t, op))
        return op

    def _spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        return task

    @staticmethod
    def _settle(op: Op, err: DamselflyError | None = None) -> None:
        if op.ready.done():
            return
        if err is None:
            op.ready.set_result(None)
        else:
            op.ready.set_exception(err)

    async def _run(self, t: TaskState, op: Op) -> None:
        try:
            if self.config.pattern == "source":
                await self._probe(t, op)
            else:
                await self._fill(t, op)
        except asyncio.CancelledError:
            self._settle(
                op,
                OriginError(
                    f"the fetch of {redact_url(t.url)} was cancelled",
                    "the supernode is shutting down or the task was dropped; register again",
                ),
            )
            raise
        except DamselflyError as e:
            self._failed(t, op, e)
        except Exception as e:
            log.exception("cdn: task %s: internal error", t.task_id[:12])
            self._failed(
                t,
                op,
                OriginError(
                    f"internal error while fetching {redact_url(t.url)} ({type(e).__name__})",
                    "this is a bug in the supernode; register again to retry",
                ),
            )
        finally:
            if t.op is op:
                t.op = None
            self._settle(op, OriginError("the fetch ended without an answer (a bug)"))
            self._mark_dirty(t)

    def _failed(self, t: TaskState, op: Op, e: DamselflyError) -> None:
        if isinstance(e, OriginNotFound):
            self._negative.remember(t.task_id, e, self.clock.now())
        self._settle(op, e)
        log.warning("cdn: task %s: %s", t.task_id[:12], e)
        if op.action is Action.REVALIDATE and not op.began:
            return  # the cached copy stays valid for the peers already using it
        self.stats.fetches_failed += 1
        t.error = e
        if isinstance(e, NoSpaceError | IntegrityError) or t.plan is None:
            self._forget(t)  # nothing worth keeping: leave nothing on disk
        self._notify("task_failed", t.task_id, e)

    # ---------------------------------------------------------------- fetching

    async def _fill(self, t: TaskState, op: Op) -> None:
        """Bring the task to complete: revalidate, fetch, resume or repair, with retries."""
        if op.action is Action.REVALIDATE:
            kind = Kind.CONDITIONAL
        elif op.action is Action.FETCH or t.plan is None:
            kind = Kind.FULL
        else:
            kind = Kind.RANGE
        attempts = 0
        while True:
            hdrs = dict(op.headers)
            want: tuple[int, int] | None = None
            first = last = 0
            if kind is Kind.RANGE:
                assert t.plan is not None
                runs = missing_runs([d is not None for d in t.digests])
                if not runs:
                    if t.complete or await self._finish(t, op):
                        self._settle(op)
                        return
                    attempts += 1  # pieces failed verification: fetch them again
                    self._give_up_after(attempts, t)
                    continue
                validator = if_range_validator(t.etag, t.last_modified)
                if not validator:
                    kind = Kind.FULL
                    continue
                if not op.space_checked:
                    await self._prepare_resume(t, op, runs)
                first, last = runs[0]
                rng, a, b = range_header(t.plan, first, last)
                hdrs["Range"] = rng
                hdrs["If-Range"] = validator
                want = (a, b)
            elif kind is Kind.CONDITIONAL:
                hdrs.update(conditional_headers(t.etag, t.last_modified))
            held_before = t.held()
            try:
                async with self.client.request("GET", t.url, hdrs) as resp:
                    self.stats.origin_requests += 1
                    cached = Cached(t.plan.length if t.plan else -1, t.etag, t.last_modified)
                    verdict = judge(kind, resp.head, cached, want)
                    log.debug(
                        "cdn: task %s: %s request → HTTP %d (%s)",
                        t.task_id[:12],
                        kind.value,
                        resp.head.status,
                        verdict.value,
                    )
                    if verdict is Verdict.ERROR:
                        raise status_error(
                            resp.head.status, redact_url(t.url), self.config.negative_ttl
                        )
                    if verdict in (Verdict.NOT_MODIFIED, Verdict.UNCHANGED):
                        t.last_validated = self.clock.now()
                        t.cache_hit = True
                        op.reused = True
                        self._settle(op)
                        kind = Kind.RANGE  # repair pieces lost meanwhile, if any
                        continue
                    if verdict is Verdict.START_OVER:
                        raise _StartOver
                    if verdict is Verdict.FULL_BODY:
                        had = await self._begin_version(t, op, resp.head)
                        if t.plan is None:
                            await self._spool(t, op, resp, had)
                        else:
                            kind = Kind.RANGE  # if cut, resume this new version
                            hasher = hashlib.sha256()
                            await self._stream(t, resp, 0, t.plan.count - 1, hasher)
                            t.file_sha256 = hasher.hexdigest()  # every byte, in order
                    else:
                        self._settle(op)
                        await self._stream(t, resp, first, last, None)
                    kind = Kind.RANGE
            except (_StartOver, OriginChanged):
                kind = Kind.FULL
                attempts += 1
                self._give_up_after(attempts, t)
            except DamselflyError as e:
                if not is_retriable(e):
                    raise
                if t.held() > held_before:
                    attempts = 0  # progress: a flaky origin still gets there
                attempts += 1
                if attempts > self.config.retries:
                    raise
                delay = backoff(attempts, self.config.retry_backoff)
                log.info(
                    "cdn: task %s: %s; retry %d/%d in %.1fs",
                    t.task_id[:12],
                    e,
                    attempts,
                    self.config.retries,
                    delay,
                )
                await asyncio.sleep(delay)

    def _give_up_after(self, attempts: int, t: TaskState) -> None:
        if attempts > self.config.retries:
            raise OriginError(
                f"the origin keeps changing or corrupting {redact_url(t.url)}",
                "make sure the file is not being rewritten at the origin, then register again",
            )

    async def _prepare_resume(self, t: TaskState, op: Op, runs: list[tuple[int, int]]) -> None:
        """Before the first Range request of an op: room for the missing pieces, a data file."""
        assert t.plan is not None
        plan = t.plan
        missing = sum(plan.size(i) for a, b in runs for i in range(a, b + 1))
        path = self.layout.data(t.task_id)
        free = await self._free()
        home, url = str(self.config.home), redact_url(t.url)
        err = check_space(free, missing, self.config.disk_reserve, home, url)
        if err is not None:
            raise err
        try:
            await asyncio.to_thread(cdn_disk.ensure_data, path, plan.length)
        except OSError as e:
            raise cdn_disk.translate_os_error(e, path) from None
        op.space_checked = True

    async def _begin_version(self, t: TaskState, op: Op, head: Head) -> bool:
        """A full body arrives: check space, then replace whatever the task held by it.

        Returns whether an older version was known (the listener then hears task_reset).
        """
        length = head.length
        url = redact_url(t.url)
        if length is not None and length > MAX_LENGTH:
            raise OriginError(f"{url} is too large ({length} bytes)", "the limit is 1 PiB")
        had = t.plan is not None
        path = self.layout.data(t.task_id)
        if length is not None:
            free = await self._free()
            if t.stored:  # the old version's blocks come back when it is replaced
                free += await asyncio.to_thread(diskgc.allocated, path)
            err = check_space(free, length, self.config.disk_reserve, str(self.config.home), url)
            if err is not None:
                raise err
        # From here the task is the new version (no await until the state is consistent).
        t.gen += 1
        t.plan = (
            PiecePlan.for_length(length, self.config.piece_sizes) if length is not None else None
        )
        t.digests = [None] * (t.plan.count if t.plan else 0)
        t.verified = set()
        t.lost = {}
        t.complete = False
        t.file_sha256 = ""
        t.etag, t.last_modified = head.etag, head.last_modified
        t.error = None
        t.cache_hit = False
        t.last_validated = None
        op.began = True
        op.space_checked = True
        try:
            await asyncio.to_thread(cdn_disk.prepare_data, path, length or 0)
        except OSError as e:
            raise cdn_disk.translate_os_error(e, path) from None
        t.stored = True
        if t.plan is not None:
            self._mark_dirty(t)
            if had:
                self._notify("task_reset", t.task_id, t.plan.length, t.plan.piece_size)
            self._settle(op)
        return had

    async def _stream(
        self, t: TaskState, resp: OriginResponse, first: int, last: int, file_hash: Any
    ) -> None:
        """Take pieces first..last of the task's current version from ``resp``."""
        assert t.plan is not None
        gen = t.gen
        async with aclosing(self._counted(t, resp)) as chunks:
            await cdn_body.stream_pieces(
                chunks,
                t.plan,
                first,
                last,
                self.layout.data(t.task_id),
                redact_url(t.url),
                file_hash,
                lambda num, digest: self._apply_piece(t, gen, num, digest),
            )

    async def _counted(self, t: TaskState, resp: OriginResponse) -> AsyncGenerator[bytes, None]:
        """The body's chunks, counted as origin bytes (globally and for the task)."""
        async with aclosing(resp.chunks()) as chunks:
            async for chunk in chunks:
                self.stats.origin_bytes += len(chunk)
                t.origin_bytes += len(chunk)
                yield chunk

    def _apply_piece(self, t: TaskState, gen: int, num: int, digest: str) -> bool:
        """Record a written piece and announce it; False when it contradicts a lost digest."""
        if t.gen != gen:
            return True  # the task was replaced or removed meanwhile: nothing to record
        old = t.lost.pop(num, None)
        if old is not None and old != digest:
            return False
        t.digests[num] = digest
        t.verified.add(num)
        self._mark_dirty(t)
        self._notify("piece_ready", t.task_id, num, digest)
        return True

    async def _spool(self, t: TaskState, op: Op, resp: OriginResponse, had: bool) -> None:
        """A body without Content-Length: store it all, then cut and digest it, then announce."""
        path = self.layout.data(t.task_id)
        gen = t.gen
        url, home = redact_url(t.url), str(self.config.home)
        free = await self._free()
        reserve = self.config.disk_reserve

        def too_big(needed: int) -> DamselflyError:
            err = check_space(free, needed, reserve, home, url)
            return err or OriginError(f"{url} is too large", "the limit is 1 PiB")

        hasher = hashlib.sha256()
        budget = min(free - reserve, MAX_LENGTH)
        async with aclosing(self._counted(t, resp)) as chunks:
            length = await cdn_body.spool(chunks, path, budget, too_big, hasher)
        plan = PiecePlan.for_length(length, self.config.piece_sizes)
        digests = await asyncio.to_thread(cdn_disk.digest_pieces, path, plan)
        if t.gen != gen:
            return
        if digests is None:
            raise DamselflyError(
                f"the cache file of {url} vanished while it was being written",
                "check that nothing else deletes files under the supernode's --home-dir",
            )
        t.plan = plan
        t.digests = list(digests)
        t.verified = set(range(plan.count))
        t.file_sha256 = hasher.hexdigest()
        self._mark_dirty(t)
        if had:
            self._notify("task_reset", t.task_id, plan.length, plan.piece_size)
        self._settle(op)
        for i, d in enumerate(digests):
            self._notify("piece_ready", t.task_id, i, d)

    async def _finish(self, t: TaskState, op: Op) -> bool:
        """Every piece is held: establish the file's sha256 and announce completion.

        When the pieces came in several goes the file is re-read; pieces that no longer match
        are lost (and fetched again): returns False then.
        """
        assert t.plan is not None
        gen = t.gen
        url = redact_url(t.url)
        if not t.file_sha256:
            path = self.layout.data(t.task_id)
            whole, bad = await asyncio.to_thread(
                cdn_disk.verify_file, path, t.plan, list(t.digests)
            )
            if t.gen != gen:
                return False
            if bad:
                for i in bad:
                    self._lose_piece(t, i, repair=False)
                return False
            t.file_sha256 = whole
            t.verified = set(range(t.plan.count))
        named = sha256_in_url(t.url)
        if named is not None and named != t.file_sha256:
            raise IntegrityError(
                f"the origin sent content for {url} whose sha256 is not the one the URL names",
                "the origin's copy is corrupt; fix it there, then register again",
            )
        t.complete = True
        t.error = None
        t.last_validated = self.clock.now()
        # The completion is on disk before anyone hears of it: a supernode stopped right after
        # a download finishes finds the task complete (no resume, no re-verification).
        self._mark_dirty(t)
        if t.meta_writer is not None:
            await asyncio.shield(t.meta_writer)
        if t.gen != gen or not t.complete:
            return False  # a piece was lost or the task replaced meanwhile: go on
        self._settle(op)
        self._notify("task_complete", t.task_id, t.file_sha256)
        log.info(
            "cdn: task %s complete: %d bytes, %d received from the origin",
            t.task_id[:12],
            t.plan.length,
            t.origin_bytes,
        )
        return True

    async def _probe(self, t: TaskState, op: Op) -> None:
        """Source pattern: learn length and validators, store nothing, announce every piece."""
        t.probe_started = self.clock.now()
        attempts = 0
        while True:
            try:
                head = await probe_length(
                    self.client, t.url, op.headers, self.config.negative_ttl, self._count_request
                )
                break
            except DamselflyError as e:
                attempts += 1
                if not is_retriable(e) or attempts > self.config.retries:
                    raise
                await asyncio.sleep(backoff(attempts, self.config.retry_backoff))
        length = head.length
        assert length is not None
        changed = t.plan is not None and (
            t.plan.length != length or (t.etag, t.last_modified) != (head.etag, head.last_modified)
        )
        if t.plan is None or changed:
            t.gen += 1
            t.plan = PiecePlan.for_length(length, self.config.piece_sizes)
            t.digests = [""] * t.plan.count
            t.etag, t.last_modified = head.etag, head.last_modified
            t.complete = True
            if changed:
                self._notify("task_reset", t.task_id, t.plan.length, t.plan.piece_size)
            for i in range(t.plan.count):
                self._notify("piece_ready", t.task_id, i, "")
            self._notify("task_complete", t.task_id, "")
        else:
            t.cache_hit = True
            op.reused = True
        t.error = None
        t.last_validated = self.clock.now()
        self._settle(op)

    def _count_request(self) -> None:
        self.stats.origin_requests += 1

    # ---------------------------------------------------------------- serving

    async def locate(self, task_id: str, num: int) -> PieceLocation | None:
        """PieceProvider: where a ready, verified piece lies, or None."""
        t = self._tasks.get(task_id)
        if t is None or t.plan is None or self.config.pattern != "local":
            return None
        if not 0 <= num < t.plan.count or t.digests[num] is None:
            return None
        t.last_used = self.clock.now()
        loc = PieceLocation(str(self.layout.data(task_id)), t.plan.start(num), t.plan.size(num))
        if num in t.verified or await self._check_piece(t, num):
            return loc
        return None

    async def report_bad(self, task_id: str, num: int) -> bool:
        """A peer says our piece was bad: re-hash it; True (and fetch again) if it was corrupt."""
        t = self._tasks.get(task_id)
        if t is None or t.plan is None or self.config.pattern != "local":
            return False
        if not 0 <= num < t.plan.count or t.digests[num] is None:
            return False
        return not await self._check_piece(t, num)

    async def _check_piece(self, t: TaskState, num: int) -> bool:
        """Re-hash a piece off the loop; a mismatch makes it lost. True when it is good."""
        assert t.plan is not None
        gen, want = t.gen, t.digests[num]
        got = await asyncio.to_thread(
            cdn_disk.hash_range, self.layout.data(t.task_id), t.plan.start(num), t.plan.size(num)
        )
        if t.gen != gen or t.digests[num] != want:
            return False  # replaced meanwhile: let the caller ask again
        if got == want:
            t.verified.add(num)
            return True
        self._lose_piece(t, num)
        return False

    def _lose_piece(self, t: TaskState, num: int, repair: bool = True) -> None:
        old = t.digests[num]
        if old is None:
            return
        t.digests[num] = None
        t.verified.discard(num)
        t.lost[num] = old
        t.complete = False
        self.stats.pieces_lost += 1
        log.warning(
            "cdn: task %s: cached piece %d is corrupt; fetching it again", t.task_id[:12], num
        )
        self._mark_dirty(t)
        self._notify("piece_lost", t.task_id, num)
        if repair and t.op is None and t.headers is not None and not self._closed:
            self._start_op(t, Action.RESUME, t.headers)

    def _notify(self, event: str, *args: Any) -> None:
        try:
            getattr(self.listener, event)(*args)
        except Exception:  # a listener bug must not break the fetch
            log.exception("cdn: listener %s failed", event)

    # ---------------------------------------------------------------- metadata and removal

    def _mark_dirty(self, t: TaskState) -> None:
        """Persist the task's meta soon; writes are coalesced (one in flight per task)."""
        if t.removed or not t.stored or t.plan is None or self.config.pattern != "local":
            return
        t.meta_dirty = True
        if t.meta_writer is None:
            t.meta_writer = self._spawn(f"cdn-meta-{t.task_id[:12]}", self._write_meta(t))

    async def _write_meta(self, t: TaskState) -> None:
        path = self.layout.meta(t.task_id)
        try:
            while t.meta_dirty and not t.removed and t.plan is not None:
                t.meta_dirty = False
                record = t.to_meta().to_json()
                try:
                    await asyncio.to_thread(write_meta, path, record)
                except OSError as e:
                    log.warning(
                        "cdn: task %s: could not write its meta file: %s",
                        t.task_id[:12],
                        e.strerror or type(e).__name__,
                    )
        finally:
            t.meta_writer = None

    def _forget(self, t: TaskState) -> None:
        """Remove the task from memory now and its files soon (ensure() waits for that)."""
        if self._tasks.get(t.task_id) is t:
            del self._tasks[t.task_id]
        t.removed = True
        t.gen += 1
        if t.stored and t.task_id not in self._removing:
            t.stored = False
            ev = asyncio.Event()
            self._removing[t.task_id] = ev
            self._spawn(f"cdn-remove-{t.task_id[:12]}", self._remove_files(t, ev))

    async def _free(self) -> int:
        """Free bytes on the cache's file system (off the loop), as a user error if unknown."""
        try:
            return await asyncio.to_thread(self._free_space, self.layout.root)
        except OSError as e:
            raise cdn_disk.translate_os_error(e, self.layout.root / "x") from None

    async def _remove_files(self, t: TaskState, ev: asyncio.Event) -> None:
        try:
            waits = [x for x in (t.meta_writer, t.op.task if t.op else None) if x is not None]
            if waits:
                await asyncio.wait(waits)
            await asyncio.to_thread(remove_task_files, self.layout, t.task_id)
        except OSError as e:
            log.warning(
                "cdn: task %s: could not delete its cache files: %s",
                t.task_id[:12],
                e.strerror or type(e).__name__,
            )
        finally:
            ev.set()
            if self._removing.get(t.task_id) is ev:
                del self._removing[t.task_id]

    async def drop(self, task_id: str, force: bool = False) -> bool:
        """Forget a task and delete its cache files. A task being fetched is refused (False)
        unless ``force``, which cancels the fetch first."""
        validate_task_id(task_id)
        t = self._tasks.get(task_id)
        if t is not None and t.op is not None and t.op.task is not None:
            if not force:
                return False
            t.op.task.cancel()
            await asyncio.wait([t.op.task])
            if self._tasks.get(task_id) is not t or t.op is not None:
                return False
        if t is not None:
            self._forget(t)
        ev = self._removing.get(task_id)
        if ev is not None:
            await ev.wait()
        return True

    async def gc_once(self, in_use: Callable[[str], bool]) -> list[str]:
        """One disk-GC pass (see diskgc.py); returns the ids removed."""
        if self.config.pattern != "local" or self._closed:
            return []
        free = await asyncio.to_thread(self._free_space, self.layout.root)
        if free >= self.thresholds.young:
            return []
        idle = [
            t for t in self._tasks.values() if t.op is None and t.stored and not in_use(t.task_id)
        ]
        sizes = await asyncio.to_thread(
            lambda: [
                diskgc.allocated(self.layout.data(t.task_id))
                + diskgc.allocated(self.layout.meta(t.task_id))
                for t in idle
            ]
        )
        cands = [GCCandidate(t.task_id, t.last_used, s) for t, s in zip(idle, sizes, strict=True)]
        victims = choose_victims(cands, free, self.thresholds, self.clock.now())
        removed: list[str] = []
        for tid in victims:
            t = self._tasks.get(tid)
            if t is None or t.op is not None or in_use(tid):
                continue  # its state changed while we looked
            if await self.drop(tid):
                removed.append(tid)
        if removed:
            log.info("cdn: disk GC removed %d task(s) (%d bytes were free)", len(removed), free)
        return removed
