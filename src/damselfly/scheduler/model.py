"""The scheduler's state: tasks, peers, a peer's part in a task, and in-flight assignments.

Plain records with slots; every mutation is done by :class:`damselfly.scheduler.Scheduler`,
one event at a time. Derived counters (a piece's level in ``Task.avail``, a source's upload
count) are kept in step by the scheduler and re-checked from scratch by ``Scheduler.audit``.
"""

from __future__ import annotations

import random

from damselfly.core.pieces import PiecePlan
from damselfly.core.protocol import PeerInfo, PieceSource
from damselfly.scheduler.availability import Availability, HolderList
from damselfly.scheduler.states import PEER_RUNNING, SOURCE_ACTIVE, SOURCE_ISOLATED, TASK_WAITING

KIND_PEER = "peer"
KIND_SUPERNODE = "supernode"
KIND_ORIGIN = "origin"

ORIGIN_SOURCE = PieceSource(id="origin", kind=KIND_ORIGIN)


class Peer:
    """A peer host (one engine), shared by every task it takes part in."""

    __slots__ = (
        "blacklist",
        "bytes_served",
        "consecutive_failures",
        "failures",
        "info",
        "last_seen",
        "serving",
        "source",
        "state",
        "tasks",
    )

    def __init__(self, info: PeerInfo, now: float) -> None:
        self.info = info
        self.source = PieceSource(id=info.id, kind=KIND_PEER, ip=info.ip, port=info.port)
        self.last_seen = now
        self.tasks: set[str] = set()
        # (task_id, requester_id, piece) of every upload assigned to this peer and not reported:
        # its size is the peer's upload load, and it finds them again when the peer goes away.
        self.serving: set[tuple[str, str, int]] = set()
        self.blacklist: dict[str, float] = {}  # source peer id -> until (as a requester)
        self.consecutive_failures = 0  # as a source; reset by one success
        self.failures = 0  # as a source, in total
        self.bytes_served = 0  # to other peers, as reported by them
        self.state = SOURCE_ACTIVE

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def isolated(self) -> bool:
        return self.state == SOURCE_ISOLATED

    def set_info(self, info: PeerInfo) -> None:
        if info != self.info:
            self.info = info
            self.source = PieceSource(id=info.id, kind=KIND_PEER, ip=info.ip, port=info.port)

    def __repr__(self) -> str:
        return (
            f"<Peer {self.id} {self.info.ip}:{self.info.port} {self.state}"
            f" tasks={len(self.tasks)} uploads={len(self.serving)}>"
        )


class Assignment:
    """One piece handed to one downloader, until it reports or times out."""

    __slots__ = ("counted", "deadline", "kind", "num", "seq", "source", "source_id")

    def __init__(
        self, num: int, source: Peer | None, kind: str, seq: int, deadline: float, counted: bool
    ) -> None:
        self.num = num
        self.source = source  # None for the supernode and the origin
        self.source_id = source.id if source is not None else kind
        self.kind = kind
        self.seq = seq
        self.deadline = deadline
        # True when the downloader will become a holder (pattern p2p, not isolated): the piece's
        # availability counts it in advance, so the next downloaders spread over other pieces.
        self.counted = counted


class TaskPeer:
    """A peer's part in one task: what it holds, what it is fetching, how it fared."""

    __slots__ = (
        "failures",
        "have",
        "held",
        "idle_since",
        "inflight",
        "late",
        "pattern",
        "peer",
        "state",
    )

    def __init__(self, peer: Peer, pattern: str, piece_count: int) -> None:
        self.peer = peer
        self.pattern = pattern  # "p2p", or "cdn": from the supernode only and never a source
        self.state = PEER_RUNNING
        self.have = bytearray(piece_count)
        self.held = 0
        self.inflight: dict[int, Assignment] = {}
        # Assignments released by the in-flight timeout: piece -> source id. A late success
        # report is still believed (the bytes did arrive); a late failure is ignored.
        self.late: dict[int, str] = {}
        self.failures = 0  # piece fetches from peers that failed, as a downloader
        # when this peer was last left with nothing in flight and nothing to fetch (None while
        # it has work): after SchedulerConfig.fallback_reuse_delay it may take from the
        # supernode a piece that peers already hold or are fetching
        self.idle_since: float | None = None

    @property
    def id(self) -> str:
        return self.peer.id

    @property
    def is_source(self) -> bool:
        return self.pattern == "p2p" and not self.peer.isolated

    def __repr__(self) -> str:
        return (
            f"<TaskPeer {self.id} {self.state} held={self.held}/{len(self.have)}"
            f" inflight={sorted(self.inflight)}>"
        )


class Task:
    """One file: its piece plan, the CDN's copy, the holders of each piece, its peers."""

    __slots__ = (
        "avail",
        "by_load",
        "bytes_by_kind",
        "cdn_pattern",
        "cdn_ready",
        "digests",
        "error_code",
        "error_message",
        "fallback_inflight",
        "file_sha256",
        "free",
        "holders",
        "id",
        "last_active",
        "load_of",
        "peers",
        "pending",
        "plan",
        "ready_count",
        "starving",
        "state",
    )

    def __init__(
        self,
        task_id: str,
        plan: PiecePlan,
        cdn_pattern: str,
        now: float,
        rng: random.Random,
    ) -> None:
        self.id = task_id
        self.cdn_pattern = cdn_pattern
        self.peers: dict[str, TaskPeer] = {}
        self.last_active = now
        self.bytes_by_kind = {KIND_SUPERNODE: 0, KIND_PEER: 0, KIND_ORIGIN: 0}
        self.reset(plan, rng)

    def reset(self, plan: PiecePlan, rng: random.Random) -> None:
        """Forget every piece (the caller has released the in-flight assignments)."""
        n = plan.count
        self.plan = plan
        self.state = TASK_WAITING
        self.cdn_ready = bytearray(n)
        self.ready_count = 0
        self.digests = [""] * n
        self.file_sha256 = ""
        self.error_code = ""
        self.error_message = ""
        self.holders: list[HolderList[Peer]] = [HolderList() for _ in range(n)]
        self.pending = [0] * n  # counted in-flight assignments per piece
        self.fallback_inflight = 0  # assignments to the supernode (or the origin) in flight
        # Peers that could serve something of this task right now (pattern p2p, not isolated,
        # holding a piece, an upload slot free). When it is smaller than a piece's holder list,
        # sources are looked for here; when it is empty, no peer is even looked at.
        self.free: HolderList[Peer] = HolderList()
        # The same peers by their upload count (``len(Peer.serving)``): ``by_load[k]`` holds the
        # free peers with k uploads, ``load_of`` where each one sits. Least-loaded sources are
        # found in O(up_limit) (Scheduler._least_loaded).
        self.by_load: list[HolderList[Peer]] = []
        self.load_of: dict[Peer, int] = {}
        # Fresh peers (holding nothing, nothing in flight, able to fetch from peers) told
        # "every source is busy", by peer id, with the time of that answer; oldest first (a
        # refreshed entry moves to the end). See SchedulerConfig.fresh_first_window.
        self.starving: dict[str, float] = {}
        self.avail = Availability(n, rng)
        if self.from_origin:
            for p in range(n):
                self.avail.set_level(p, 1)

    @property
    def from_origin(self) -> bool:
        """cdn_pattern "source": the supernode stores nothing; peers fetch ranges from the
        origin, so every piece is schedulable from the start."""
        return self.cdn_pattern == "source"

    def fallback_has(self, num: int) -> bool:
        return self.from_origin or bool(self.cdn_ready[num])

    def relevel(self, num: int) -> None:
        """Recompute piece ``num``'s level after its holders, pending count or CDN copy changed.

        Level 0: nobody can serve it now. Otherwise 1 + holders + pending downloads.
        """
        n_holders = len(self.holders[num])
        if self.from_origin or self.cdn_ready[num] or n_holders:
            self.avail.set_level(num, 1 + n_holders + self.pending[num])
        else:
            self.avail.set_level(num, 0)

    def __repr__(self) -> str:
        return (
            f"<Task {self.id[:12]} {self.state} pieces={self.ready_count}/{self.plan.count}"
            f" peers={len(self.peers)} fallback_inflight={self.fallback_inflight}>"
        )
