"""The CDN's in-memory state: one ``TaskState`` per task, the ``Op`` (origin operation) that
callers of ``ensure()`` share, and the read-only views handed to the shell (``CDNTask``,
``CDNStats``).

A task's mutable state has one owner, the ``CDN``; everything here is plain data. The caller's
headers (credentials) live only in memory, on the task and its op, and are never part of a view,
a ``repr`` or the meta record.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field

from damselfly.core.errors import DamselflyError
from damselfly.core.ids import redact_url
from damselfly.core.pieces import PiecePlan
from damselfly.supernode.cdn_meta import TaskMeta
from damselfly.supernode.cdn_policy import Action


@dataclass(frozen=True, slots=True)
class CDNTask:
    """A read-only view of one task, for listings. ``url`` has its query values hidden."""

    task_id: str
    url: str
    length: int  # -1 while unknown
    piece_size: int
    piece_count: int
    pieces_ready: int
    complete: bool
    failed: bool
    error: str  # the last failure's message, "" when none
    file_sha256: str
    etag: str
    last_modified: str
    origin_bytes: int  # body bytes this task received from the origin in this process
    cache_hit: bool  # the content held was reused from the cache (revalidated or unchanged)
    fetching: bool
    pattern: str


@dataclass
class CDNStats:
    """Counters for metrics; read as attributes or, like a dict, with ``get``."""

    origin_bytes: int = 0  # body bytes received from origins
    origin_requests: int = 0
    cache_hits: int = 0  # ensure() calls answered from the cache without new content
    fetches_started: int = 0
    fetches_failed: int = 0
    revalidations: int = 0
    pieces_lost: int = 0  # cached pieces found corrupt

    def get(self, name: str, default: int = 0) -> int:
        value = getattr(self, name, default)
        return value if isinstance(value, int) else default

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(eq=False)
class Op:
    """One origin operation of a task, shared by every caller that joins it."""

    action: Action
    headers: dict[str, str]
    ready: asyncio.Future[None]
    task: asyncio.Task[None] | None = None
    began: bool = False  # a new version's body started arriving
    reused: bool = False  # the origin confirmed the cached copy
    space_checked: bool = False


@dataclass(eq=False)
class TaskState:
    task_id: str
    url: str
    plan: PiecePlan | None = None
    etag: str = ""
    last_modified: str = ""
    digests: list[str | None] = field(default_factory=list)  # None = not held
    verified: set[int] = field(default_factory=set)  # hashed in this process
    lost: dict[int, str] = field(default_factory=dict)  # digests of pieces found corrupt
    complete: bool = False
    file_sha256: str = ""
    gen: int = 0  # bumped whenever the content is replaced or the task removed
    op: Op | None = None
    headers: dict[str, str] | None = field(default=None, repr=False)  # credentials: memory only
    last_used: float = 0.0
    last_validated: float | None = None
    #: clock time the last source-pattern probe of the origin began (``CDN.confirm_change``)
    probe_started: float = float("-inf")
    error: DamselflyError | None = None
    origin_bytes: int = 0
    cache_hit: bool = False
    stored: bool = False  # files exist on disk
    removed: bool = False
    meta_dirty: bool = False
    meta_writer: asyncio.Task[None] | None = None

    def held(self) -> int:
        return sum(d is not None for d in self.digests)

    def to_meta(self) -> TaskMeta:
        assert self.plan is not None
        return TaskMeta(
            task_id=self.task_id,
            url=self.url,
            length=self.plan.length,
            piece_size=self.plan.piece_size,
            etag=self.etag,
            last_modified=self.last_modified,
            digests=list(self.digests),
            complete=self.complete,
            file_sha256=self.file_sha256,
        )

    def view(self, pattern: str) -> CDNTask:
        p = self.plan
        return CDNTask(
            task_id=self.task_id,
            url=redact_url(self.url),
            length=p.length if p else -1,
            piece_size=p.piece_size if p else 0,
            piece_count=p.count if p else 0,
            pieces_ready=self.held(),
            complete=self.complete,
            failed=self.error is not None,
            error=str(self.error) if self.error else "",
            file_sha256=self.file_sha256,
            etag=self.etag,
            last_modified=self.last_modified,
            origin_bytes=self.origin_bytes,
            cache_hit=self.cache_hit,
            fetching=self.op is not None,
            pattern=pattern,
        )

    def __repr__(self) -> str:
        p = self.plan
        return (
            f"TaskState({self.task_id[:12]} len={p.length if p else '?'} "
            f"held={self.held()}/{p.count if p else '?'} complete={self.complete} "
            f"op={self.op.action.value if self.op else None} gen={self.gen})"
        )


def mark_retrieved(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()  # an op that fails with nobody waiting must not warn at exit
