"""The supernode's brain: state plus an event in, decisions out (Dragonfly v1's algorithm,
plus the ramp-up rules below).

Pure: no awaits, no sockets, no files, no wall clock — time comes from an injected Clock and
chance from a seeded ``random.Random``. The supernode's HTTP shell calls these methods one at a
time and turns ``BadRequest`` into a 4xx.

A schedule call applies the peer's reports, then picks up to ``min(want, down_limit -
in_flight)`` pieces in the piece policy's order (rarest first), each from a holder peer with a
free upload slot — drawn from the least-loaded peers first, then the least loaded of a bounded
random sample of the piece's holders — or else from the supernode (from the origin with
cdn_pattern "source") within its per-task limit.

Ramp-up rules (``SchedulerConfig``; measured in benchmarks/simulator): a peer serves at most as
many pieces at once as it holds and fetches at most as many as it holds (one when it holds
none), and while peers holding nothing are asking for a source, peers that hold pieces get
only the slots beyond theirs. A piece is served only once whole, so at the start the number of
holders limits the swarm; these rules make it double every piece time.

Cost: nothing in a call grows with the number of peers. Piece order comes from
``Availability`` (O(1) per change), sources from ``Task.by_load`` (free peers bucketed by
upload count) and samples of at most ``SOURCE_SAMPLE`` holders; a walk gives up after
``MAX_FRUITLESS`` pieces without a source, and then tries the least-loaded peers for any piece
they hold (``_pick_by_source``, at most ``MAX_SCAN`` pieces each). Timeouts sit in a heap;
views and ``audit`` are the only O(everything) calls.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from damselfly.core.clock import Clock
from damselfly.core.errors import BadRequest
from damselfly.core.pieces import PiecePlan
from damselfly.core.protocol import (
    FAILURE_KINDS,
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_PIECES,
    STATUS_WAIT,
    PeerInfo,
    PieceAssignment,
    PieceResult,
    PieceSource,
    ScheduleResponse,
)
from damselfly.scheduler import audit, views
from damselfly.scheduler.availability import HolderList
from damselfly.scheduler.config import SchedulerConfig
from damselfly.scheduler.model import (
    KIND_ORIGIN,
    KIND_PEER,
    KIND_SUPERNODE,
    ORIGIN_SOURCE,
    Assignment,
    Peer,
    Task,
    TaskPeer,
)
from damselfly.scheduler.policies import piece_policy, source_policy
from damselfly.scheduler.states import (
    PEER_DONE,
    PEER_TASK,
    SOURCE,
    TASK,
    TASK_FAILED,
    step,
)

#: Holders of a piece looked at per decision. Drawing a few at random and taking the least
#: loaded ("power of d choices") balances load nearly as well as looking at all of them, and
#: keeps a decision O(1) in the swarm size; 16 leaves room for busy or blacklisted ones.
SOURCE_SAMPLE = 16
#: Pieces tried without finding a free source before a call gives up and answers "wait". When
#: every source is busy, walking all pieces would cost O(pieces × sample) for nothing; the
#: random rotation inside each rarity bucket makes the next call try other pieces.
MAX_FRUITLESS = 24
#: Pieces of one peer looked at by the source-first pass (``Scheduler._pick_by_source``).
MAX_SCAN = 512
#: Pieces without any holder skipped in one call (each costs O(1)) before it gives up.
MAX_SKIPPED = 256
#: retry hints (ms) for a "wait" answer; the shell long-polls, so these matter little.
RETRY_NOT_READY_MS = 500  # the pieces this peer lacks are not at the CDN yet
RETRY_BUSY_MS = 200  # pieces exist but every source is busy (or this peer's slots are full)
#: at most this many suspect pieces queued for re-verification (a flood of reports is bounded)
MAX_SUSPECTS = 4096
#: a task's piece count is bounded so its arrays stay small (15 MiB pieces: ~3.7 TiB)
MAX_PIECES = 1 << 18
#: the in-flight deadline heap is rebuilt from live entries when it outgrows them this much
HEAP_SLACK = 4
PATTERNS = ("p2p", "cdn")
CDN_PATTERNS = ("local", "source")


@dataclass
class ExpireReport:
    dropped_peers: list[str] = field(default_factory=list)
    released: int = 0  # in-flight assignments released by timeout
    idle_tasks: list[str] = field(default_factory=list)  # for the shell to remove_task()


class Scheduler:
    """Tasks, peers and in-flight assignments of one supernode; see the module docstring."""

    def __init__(
        self,
        config: SchedulerConfig,
        clock: Clock,
        rng: random.Random,
        supernode: PieceSource,
    ) -> None:
        config.validate()
        if supernode.kind != KIND_SUPERNODE:
            raise ValueError("the supernode's PieceSource must have kind 'supernode'")
        self.config = config
        self._clock = clock
        self._rng = rng
        self._supernode = supernode
        self._piece_policy = piece_policy(config.piece_policy)
        self._source_policy = source_policy(config.source_policy)
        self._tasks: dict[str, Task] = {}
        self._peers: dict[str, Peer] = {}
        self._seq = itertools.count()
        # (deadline, seq, task_id, peer_id, piece); stale entries are skipped when popped.
        self._deadlines: list[tuple[float, int, str, str, int]] = []
        self._inflight = 0
        self._suspects: dict[tuple[str, int], None] = {}  # an ordered set
        self._assignments: Counter[str] = Counter()
        self._bytes: Counter[str] = Counter()
        self._failures: Counter[str] = Counter()
        self._ignored = 0
        self._timeouts = 0
        self._isolations = 0

    # ---- tasks ------------------------------------------------------------------------------
    def add_task(
        self, task_id: str, length: int, piece_size: int, cdn_pattern: str = "local"
    ) -> None:
        """Create the task (idempotent: a known id is left as it is)."""
        if task_id in self._tasks:
            return
        if cdn_pattern not in CDN_PATTERNS:
            raise ValueError(f"cdn_pattern must be one of {CDN_PATTERNS}, not {cdn_pattern!r}")
        plan = self._plan(length, piece_size)
        task = Task(task_id, plan, cdn_pattern, self._clock.now(), self._rng)
        if task.from_origin:
            task.state = step(TASK, f"task {task_id[:12]}", task.state, "from_origin")
        self._tasks[task_id] = task

    def reset_task(self, task_id: str, length: int, piece_size: int) -> None:
        """The origin's content changed: forget pieces, holders and in-flight assignments."""
        task = self._task(task_id)
        plan = self._plan(length, piece_size)
        state = step(TASK, f"task {task_id[:12]}", task.state, "reset")
        for tp in list(task.peers.values()):
            self._release_all(task, tp)
        task.reset(plan, self._rng)
        task.state = state
        if task.from_origin:
            task.state = step(TASK, f"task {task_id[:12]}", task.state, "from_origin")
        for tp in task.peers.values():
            tp.have = bytearray(plan.count)
            tp.held = 0
            tp.late.clear()
            tp.state = step(PEER_TASK, f"peer {tp.id}", tp.state, "reset")
            if plan.count == 0:
                tp.state = step(PEER_TASK, f"peer {tp.id}", tp.state, "all_held")
        for key in [k for k in self._suspects if k[0] == task_id]:
            del self._suspects[key]

    def piece_ready(self, task_id: str, num: int, digest: str) -> None:
        """The CDN holds piece ``num``, verified. Ignored for a task no longer known."""
        task = self._tasks.get(task_id)
        if task is None:
            return
        self._check_num(task, num)
        if len(digest) > 128:
            raise ValueError("a piece digest is a hex string of at most 128 characters")
        task.state = step(TASK, f"task {task_id[:12]}", task.state, "piece_ready")
        task.digests[num] = digest
        if not task.cdn_ready[num]:
            task.cdn_ready[num] = 1
            task.ready_count += 1
            task.relevel(num)

    def piece_lost(self, task_id: str, num: int) -> None:
        """The CDN's copy of piece ``num`` is corrupt: not served by the supernode until
        piece_ready again (peers holding it still serve it)."""
        task = self._tasks.get(task_id)
        if task is None:
            return
        self._check_num(task, num)
        if task.cdn_ready[num]:
            task.cdn_ready[num] = 0
            task.ready_count -= 1
            task.relevel(num)

    def task_complete(self, task_id: str, file_sha256: str) -> None:
        task = self._tasks.get(task_id)
        if task is None:
            return
        task.state = step(TASK, f"task {task_id[:12]}", task.state, "complete")
        task.file_sha256 = file_sha256

    def task_failed(self, task_id: str, code: str, message: str) -> None:
        task = self._tasks.get(task_id)
        if task is None:
            return
        task.state = step(TASK, f"task {task_id[:12]}", task.state, "failed")
        task.error_code = code
        task.error_message = message

    def remove_task(self, task_id: str) -> None:
        task = self._tasks.get(task_id)
        if task is None:
            return
        for tp in list(task.peers.values()):
            self._release_all(task, tp)
            tp.peer.tasks.discard(task_id)
        del self._tasks[task_id]
        for key in [k for k in self._suspects if k[0] == task_id]:
            del self._suspects[key]

    def has_task(self, task_id: str) -> bool:
        return task_id in self._tasks

    # ---- peers ------------------------------------------------------------------------------
    def add_peer(
        self, task_id: str, peer: PeerInfo, pattern: str = "p2p", have: Iterable[int] = ()
    ) -> None:
        """Register ``peer`` on the task (idempotent). ``have``: pieces it already holds,
        verified — e.g. after moving here from a failed supernode — so it is not sent after
        them again and serves them to others at once."""
        task = self._task(task_id)
        if pattern not in PATTERNS:
            raise BadRequest(
                f"peer pattern {pattern!r} cannot register with a supernode",
                f"use one of {', '.join(PATTERNS)}; pattern 'source' goes to the origin directly",
            )
        if peer.id in (KIND_SUPERNODE, KIND_ORIGIN):
            raise BadRequest(f"peer id {peer.id!r} is reserved", "use another peer id")
        now = self._clock.now()
        p = self._peers.get(peer.id)
        if p is None:
            p = self._peers[peer.id] = Peer(peer, now)
        else:
            p.set_info(peer)
            p.last_seen = now
        task.last_active = now
        tp = task.peers.get(peer.id)
        if tp is not None and tp.pattern != pattern:
            self._detach(task, tp)
            tp = None
        if tp is None:
            tp = task.peers[peer.id] = TaskPeer(p, pattern, task.plan.count)
            p.tasks.add(task_id)
            if task.plan.count == 0:
                tp.state = step(PEER_TASK, f"peer {tp.id}", tp.state, "all_held")
        for num in have:
            if isinstance(num, bool) or not isinstance(num, int) or not 0 <= num < task.plan.count:
                raise BadRequest(f"held piece {num!r} is not a piece of this task")
            self._gain(task, tp, num)

    def heartbeat(self, peer_id: str) -> None:
        self._peer(peer_id).last_seen = self._clock.now()

    def leave_task(self, task_id: str, peer_id: str) -> None:
        task = self._task(task_id)
        tp = task.peers.get(peer_id)
        if tp is None:
            raise BadRequest(
                f"peer {peer_id} is not registered on task {task_id[:12]}",
                "nothing to leave: it already left or was dropped",
            )
        self._detach(task, tp)

    def remove_peer(self, peer_id: str) -> None:
        """The peer is gone: from every task, with its in-flight work as source and downloader."""
        self._peer(peer_id)
        self._drop_peer(peer_id)

    # ---- the decision -----------------------------------------------------------------------
    def schedule(
        self, task_id: str, peer_id: str, results: list[PieceResult], want: int
    ) -> ScheduleResponse:
        task = self._task(task_id)
        tp = task.peers.get(peer_id)
        if tp is None:
            raise BadRequest(
                f"peer {peer_id} is not registered on task {task_id[:12]}",
                "register again (the supernode may have restarted or dropped a silent peer)",
            )
        now = self._clock.now()
        tp.peer.last_seen = now
        task.last_active = now
        for r in results:
            self._apply(task, tp, r, now)

        if task.state == TASK_FAILED:
            return ScheduleResponse(
                STATUS_FAILED, error_code=task.error_code, message=task.error_message
            )
        if tp.state == PEER_DONE:
            return ScheduleResponse(STATUS_DONE, file_sha256=task.file_sha256)
        cfg = self.config
        room = min(want, cfg.down_limit - len(tp.inflight))
        fresh = tp.held == 0 and tp.is_source
        if cfg.download_slow_start and tp.is_source:
            # no more pieces at once than it holds, one when it holds none (see the config)
            room = min(room, max(1, tp.held) - len(tp.inflight))
        if room <= 0:
            return ScheduleResponse(
                STATUS_WAIT, retry_ms=RETRY_BUSY_MS, message="report a piece to get more"
            )
        if not fresh:
            # Fresh peers first (SchedulerConfig.fresh_first_window): leave them the free
            # slots (peers' and the fallback's) they are asking for; only the slots beyond
            # those are handed out here.
            starving = self._starving(task, now)
            if starving:
                limit = cfg.origin_limit if task.from_origin else cfg.supernode_limit
                spare = (
                    len(task.free.items)
                    - (tp.peer in task.free.index)  # (it cannot serve itself)
                    + max(0, limit - task.fallback_inflight)
                    - starving
                )
                if spare <= 0:
                    if not tp.inflight and tp.idle_since is None:
                        tp.idle_since = now
                    return ScheduleResponse(
                        STATUS_WAIT, retry_ms=RETRY_BUSY_MS, message="every source is busy"
                    )
                room = min(room, spare)
        picks, saw_candidate = self._pick(task, tp, room, now)
        if picks:
            tp.idle_since = None
        elif not tp.inflight and tp.idle_since is None:
            tp.idle_since = now
        if picks or not fresh:
            task.starving.pop(tp.id, None)
        elif saw_candidate and not tp.inflight and tp.failures <= cfg.client_fail_limit:
            task.starving.pop(tp.id, None)  # re-inserted last: the entries stay in time order
            task.starving[tp.id] = now
        if not picks:
            if saw_candidate:
                return ScheduleResponse(
                    STATUS_WAIT, retry_ms=RETRY_BUSY_MS, message="every source is busy"
                )
            return ScheduleResponse(
                STATUS_WAIT, retry_ms=RETRY_NOT_READY_MS, message="waiting for the CDN"
            )
        return ScheduleResponse(
            STATUS_PIECES, pieces=[self._assign(task, tp, num, src, now) for num, src in picks]
        )

    def can_assign(self, task_id: str) -> bool:
        """Whether a schedule call on this task could get any piece now: some peer has a free
        upload slot or the supernode (origin) has room. When False every call answers "wait",
        so a shell may skip re-running its long polls. O(1)."""
        task = self._tasks.get(task_id)
        if task is None or task.state == TASK_FAILED:
            return False
        limit = self.config.origin_limit if task.from_origin else self.config.supernode_limit
        return bool(task.free.items) or task.fallback_inflight < limit

    def _starving(self, task: Task, now: float) -> int:
        """How many fresh peers asked for a source in the last fresh_first_window seconds
        (older entries are dropped here, from the front: O(1) amortized)."""
        window, starving = self.config.fresh_first_window, task.starving
        if not starving or window <= 0:
            return 0
        cutoff = now - window
        while starving:
            pid = next(iter(starving))
            if starving[pid] > cutoff:
                break
            del starving[pid]
        return len(starving)

    def _cap(self, task: Task, p: Peer) -> int:
        """Uploads peer ``p`` may carry at once as a source of ``task``: up_limit, or with
        SchedulerConfig.source_slow_start no more than the pieces it holds of the task."""
        up = self.config.up_limit
        if not self.config.source_slow_start:
            return up
        tp = task.peers.get(p.id)
        return min(up, tp.held) if tp is not None else 0

    def _pick(
        self, task: Task, tp: TaskPeer, room: int, now: float
    ) -> tuple[list[tuple[int, Peer | None]], bool]:
        """Up to ``room`` (piece, source) pairs, source None meaning the fallback, and whether
        any piece was a candidate at all. Nothing is mutated here (the policy walks live
        structures); ``extra`` counts the uploads this call has handed out so far.

        Three passes, each bounded. (1) The pieces in the policy's order (rarest first),
        each from the least loaded of ``few``: up to SOURCE_SAMPLE peers with a free slot
        drawn from the least-loaded first (``Task.by_load``), or else from the fallback. Taking
        sources by load keeps every uplink equally busy: rarest first alone piles requests
        on the holders of the rare pieces while holders of common ones idle, and in the
        scale simulator a quarter of the uplinks sat at 0–2 uploads while half were full.
        (2) Pieces whose holders are all outside ``few`` (only when more peers are free):
        from a sample of their holders, as before. (3) ``_pick_by_source``."""
        cfg, rng = self.config, self._rng
        limit = cfg.origin_limit if task.from_origin else cfg.supernode_limit
        fallback_free = limit - task.fallback_inflight
        me, cap = tp.peer, self._cap
        stale = now - cfg.peer_gc_delay
        blacklist = me.blacklist
        free = task.free.items
        use_peers = bool(free) and tp.pattern == "p2p" and tp.failures <= cfg.client_fail_limit
        # May the fallback serve pieces that peers hold or are fetching? (seed once; see
        # SchedulerConfig.fallback_reuse_delay)
        reuse_ok = (
            tp.pattern != "p2p"
            or tp.failures > cfg.client_fail_limit
            or cfg.fallback_reuse_delay == 0
            or (
                not tp.inflight
                and tp.idle_since is not None
                and now - tp.idle_since >= cfg.fallback_reuse_delay
            )
        )
        few: list[Peer] = []
        if use_peers:
            # Vet the least-loaded free peers once for this call; then each piece only asks
            # whether one of them holds it.
            few = [
                p
                for p in self._least_loaded(task, SOURCE_SAMPLE)
                if p is not me
                and p.last_seen > stale
                and not (blacklist and blacklist.get(p.id, 0.0) > now)
            ]
        if not few and fallback_free <= 0:
            # Nobody can serve anything now: O(1), apart from telling "busy" from "not yet".
            return [], next(self._piece_policy.candidates(task, tp, rng), None) is not None

        picks: list[tuple[int, Peer | None]] = []
        extra: dict[Peer, int] = {}
        later: list[int] = []  # pieces with holders, none of them in ``few``
        saw_candidate = False
        fruitless = skipped = 0
        # Fallback pieces this downloader may still take while the fallback seeds: its even
        # share of the fallback's slots (see SchedulerConfig.supernode_limit); a rescue
        # (reuse_ok) is not limited.
        seeds = (
            room
            if reuse_ok
            else max(1, limit // len(task.peers))
            - sum(a.source is None for a in tp.inflight.values())
        )
        # Level 1 holds the pieces only the fallback can serve: with no room there, skip them.
        from_level = 1 if fallback_free > 0 else 2
        for num in self._piece_policy.candidates(task, tp, rng, from_level):
            saw_candidate = True
            holders = task.holders[num]
            src: Peer | None = None
            if few and holders.items:
                index = holders.index
                eligible = [
                    p for p in few if p in index and len(p.serving) + extra.get(p, 0) < cap(task, p)
                ]
                if len(eligible) == 1:
                    src = eligible[0]
                elif eligible:
                    src = self._source_policy.choose(
                        eligible, lambda p: len(p.serving) + extra.get(p, 0), rng
                    )
            if src is not None:
                picks.append((num, src))
                extra[src] = extra.get(src, 0) + 1
            elif (
                fallback_free > 0
                and seeds > 0
                and task.fallback_has(num)
                and (
                    reuse_ok
                    or (task.pending[num] == 0 and not holders.items)  # nobody has it yet
                    or (holders.items and not self._busy_holder(holders, me, stale, now))
                )
            ):
                fallback_free -= 1
                seeds -= 1
                picks.append((num, None))
            else:
                # Only a piece with holders cost a source lookup; one without is skipped in
                # O(1), under a looser bound.
                if holders.items:
                    fruitless += 1
                    if use_peers and len(free) > len(few):
                        later.append(num)
                skipped += 1
                if fruitless >= MAX_FRUITLESS or skipped >= MAX_SKIPPED:
                    break
                continue
            if len(picks) >= room:
                return picks, True
        if not saw_candidate and from_level > 1:
            saw_candidate = next(self._piece_policy.candidates(task, tp, rng), None) is not None
        if saw_candidate and few and (later or fruitless >= MAX_FRUITLESS):
            self._pick_by_source(task, tp, room, now, picks, extra)
        if later and len(picks) < room:
            taken = {num for num, _ in picks}
            for num in later:
                src = None if num in taken else self._holder_for(task, tp, num, now, extra)
                if src is not None:
                    picks.append((num, src))
                    extra[src] = extra.get(src, 0) + 1
                    if len(picks) >= room:
                        break
        return picks, saw_candidate

    def _holder_for(
        self, task: Task, tp: TaskPeer, num: int, now: float, extra: dict[Peer, int]
    ) -> Peer | None:
        """The least loaded eligible holder of ``num`` in a bounded random sample (looking
        among the free peers instead when fewer peers are free than hold the piece)."""
        cfg, rng, me = self.config, self._rng, tp.peer
        stale, blacklist = now - cfg.peer_gc_delay, me.blacklist
        holders = task.holders[num]
        if len(task.free.items) < len(holders.items):
            index = holders.index
            pool = [p for p in task.free.sample(SOURCE_SAMPLE, rng) if p in index]
        else:
            pool = holders.sample(SOURCE_SAMPLE, rng)
        eligible = [
            p
            for p in pool
            if p is not me
            and len(p.serving) + extra.get(p, 0) < self._cap(task, p)
            and p.last_seen > stale
            and not (blacklist and blacklist.get(p.id, 0.0) > now)
        ]
        if len(eligible) <= 1:
            return eligible[0] if eligible else None
        return self._source_policy.choose(eligible, lambda p: len(p.serving) + extra.get(p, 0), rng)

    def _least_loaded(self, task: Task, k: int) -> list[Peer]:
        """Up to ``k`` free peers, the least loaded first (random among equals)."""
        out: list[Peer] = []
        for bucket in task.by_load:
            if bucket.items:
                out += bucket.sample(k - len(out), self._rng)
                if len(out) >= k:
                    break
        return out

    def _pick_by_source(
        self,
        task: Task,
        tp: TaskPeer,
        room: int,
        now: float,
        picks: list[tuple[int, Peer | None]],
        extra: dict[Peer, int],
    ) -> None:
        """The rarest pieces had no free holder: start from peers with a free slot instead and
        take any piece one of them holds that ``tp`` lacks. In a growing swarm the rare pieces
        sit with the first, saturated holders while the many new holders hold the common
        ones; without this pass those new holders idle (the scale simulator showed 260 of
        them free while 500 peers were told "every source is busy"). Bounded: at most
        SOURCE_SAMPLE peers, each scanned over at most MAX_SCAN pieces from a random offset."""
        cfg, rng, me = self.config, self._rng, tp.peer
        stale, blacklist = now - cfg.peer_gc_delay, me.blacklist
        have, inflight = tp.have, tp.inflight
        taken = {num for num, _ in picks}
        n = len(have)
        for p in self._least_loaded(task, SOURCE_SAMPLE):
            if (
                p is me
                or p.last_seen <= stale
                or (blacklist and blacklist.get(p.id, 0.0) > now)
                or len(p.serving) + extra.get(p, 0) >= self._cap(task, p)
            ):
                continue
            theirs = task.peers[p.id].have
            start = int(rng.random() * n)
            for k in range(min(n, MAX_SCAN)):
                num = (start + k) % n
                if theirs[num] and not have[num] and num not in inflight and num not in taken:
                    picks.append((num, p))
                    taken.add(num)
                    extra[p] = extra.get(p, 0) + 1
                    break
            if len(picks) >= room:
                return

    def _busy_holder(self, holders: HolderList[Peer], me: Peer, stale: float, now: float) -> bool:
        """Whether some holder could serve ``me`` once it has a free slot (in a bounded sample):
        if none could (all blacklisted for me, isolated or silent), waiting is pointless."""
        blacklist = me.blacklist
        return any(
            p is not me
            and not p.isolated
            and p.last_seen > stale
            and not (blacklist and blacklist.get(p.id, 0.0) > now)
            for p in holders.sample(SOURCE_SAMPLE, self._rng)
        )

    def _assign(
        self, task: Task, tp: TaskPeer, num: int, src: Peer | None, now: float
    ) -> PieceAssignment:
        seq = next(self._seq)
        if src is not None:
            kind, source = KIND_PEER, src.source
            src.serving.add((task.id, tp.id, num))
            self._update_free(src)
        else:
            kind = KIND_ORIGIN if task.from_origin else KIND_SUPERNODE
            source = ORIGIN_SOURCE if task.from_origin else self._supernode
            task.fallback_inflight += 1
        deadline = now + self.config.inflight_timeout
        a = Assignment(num, src, kind, seq, deadline, counted=tp.is_source)
        tp.inflight[num] = a
        if a.counted:
            task.pending[num] += 1
            task.relevel(num)
        self._inflight += 1
        self._assignments[kind] += 1
        heapq.heappush(self._deadlines, (deadline, seq, task.id, tp.id, num))
        plan = task.plan
        return PieceAssignment(
            num=num,
            start=num * plan.piece_size,
            size=plan.size(num),
            digest=task.digests[num],
            source=source,
        )

    # ---- results ----------------------------------------------------------------------------
    def _apply(self, task: Task, tp: TaskPeer, r: PieceResult, now: float) -> None:
        num = r.piece
        a = tp.inflight.get(num)
        if a is None or a.source_id != r.source:
            if r.ok and tp.late.get(num) == r.source:
                # Released by the timeout, yet it arrived: believe it, the slot is long free.
                del tp.late[num]
                self._credit(task, tp, num, r.source)
            else:
                self._ignored += 1  # never assigned, already reported, or from another source
            return
        self._release(task, tp, a)
        if r.ok:
            if a.kind == KIND_ORIGIN and r.digest and not task.digests[num]:
                # cdn_pattern "source": the first copy fetched from the origin defines the
                # piece's digest, which every later assignment carries (peers verify peers)
                task.digests[num] = r.digest
            self._credit(task, tp, num, a.source_id, a.source)
        else:
            self._fail(task, tp, a, r.failure, now)

    def _credit(
        self, task: Task, tp: TaskPeer, num: int, source_id: str, src: Peer | None = None
    ) -> None:
        if src is None and source_id not in (KIND_SUPERNODE, KIND_ORIGIN):
            src = self._peers.get(source_id)
        if src is not None:
            src.consecutive_failures = 0
        if tp.have[num]:
            return  # already credited (a late report): no double counting
        size = task.plan.size(num)
        kind = source_id if source_id in (KIND_SUPERNODE, KIND_ORIGIN) else KIND_PEER
        task.bytes_by_kind[kind] += size
        self._bytes[kind] += size
        if src is not None:
            src.bytes_served += size
        self._gain(task, tp, num)

    def _gain(self, task: Task, tp: TaskPeer, num: int) -> None:
        """``tp`` now holds piece ``num``: a source for it at once (unless pattern cdn)."""
        if tp.have[num]:
            return
        a = tp.inflight.get(num)
        if a is not None:  # it got the piece another way (a late report, a re-registration)
            self._release(task, tp, a)
        tp.have[num] = 1
        tp.held += 1
        tp.late.pop(num, None)
        if tp.is_source and task.holders[num].add(tp.peer):
            task.relevel(num)
        task.starving.pop(tp.id, None)
        if tp.held <= self.config.up_limit:  # its cap grows with what it holds (slow start)
            self._update_free(tp.peer)
        if tp.held == len(tp.have):
            tp.state = step(PEER_TASK, f"peer {tp.id}", tp.state, "all_held")

    def _fail(self, task: Task, tp: TaskPeer, a: Assignment, failure: str, now: float) -> None:
        kind = failure if failure in FAILURE_KINDS and failure else "other"
        self._failures[kind] += 1
        src = a.source
        if src is not None:
            tp.failures += 1
            src.failures += 1
            src.consecutive_failures += 1
            tp.peer.blacklist[src.id] = now + self.config.blacklist_time
            if kind in ("http", "digest") and task.holders[a.num].discard(src):
                # It answered, but not with the piece: its copy is gone or bad.
                task.relevel(a.num)
            if src.consecutive_failures >= self.config.isolate_after and not src.isolated:
                self._isolate(src)
        elif a.kind == KIND_SUPERNODE and kind == "digest":
            if len(self._suspects) < MAX_SUSPECTS:
                self._suspects[(task.id, a.num)] = None

    def _isolate(self, src: Peer) -> None:
        """Never chosen again: out of every holder list; its own downloads stay, uncounted."""
        src.state = step(SOURCE, f"peer {src.id}", src.state, "isolate")
        self._isolations += 1
        self._update_free(src)
        for tid in src.tasks:
            task = self._tasks[tid]
            tp = task.peers[src.id]
            for num, held in enumerate(tp.have):
                if held and task.holders[num].discard(src):
                    task.relevel(num)
            for a in tp.inflight.values():
                if a.counted:
                    a.counted = False
                    task.pending[a.num] -= 1
                    task.relevel(a.num)

    # ---- releasing --------------------------------------------------------------------------
    def _release(self, task: Task, tp: TaskPeer, a: Assignment) -> None:
        del tp.inflight[a.num]
        self._inflight -= 1
        if a.counted:
            task.pending[a.num] -= 1
            task.relevel(a.num)
        src = a.source
        if src is not None:
            src.serving.discard((task.id, tp.id, a.num))
            self._update_free(src)
        else:
            task.fallback_inflight -= 1

    def _update_free(self, peer: Peer) -> None:
        """Keep ``Task.free`` in step after the peer's slots, holdings or standing changed."""
        serving = len(peer.serving)
        for tid in peer.tasks:
            task = self._tasks[tid]
            tp = task.peers[peer.id]
            free = (
                not peer.isolated
                and tp.held
                and tp.pattern == "p2p"
                and serving < self._cap(task, peer)
            )
            old = task.load_of.get(peer)
            if free:
                task.free.add(peer)
                if old != serving:
                    if old is not None:
                        task.by_load[old].discard(peer)
                    while len(task.by_load) <= serving:
                        task.by_load.append(HolderList())
                    task.by_load[serving].add(peer)
                    task.load_of[peer] = serving
            else:
                task.free.discard(peer)
                if old is not None:
                    task.by_load[old].discard(peer)
                    del task.load_of[peer]

    def _release_all(self, task: Task, tp: TaskPeer) -> None:
        """Release ``tp``'s downloads and the uploads it was assigned on this task."""
        for a in list(tp.inflight.values()):
            self._release(task, tp, a)
        for _tid, requester, num in [k for k in tp.peer.serving if k[0] == task.id]:
            other = task.peers[requester]
            self._release(task, other, other.inflight[num])

    def _detach(self, task: Task, tp: TaskPeer) -> None:
        self._release_all(task, tp)
        for num, held in enumerate(tp.have):
            if held and task.holders[num].discard(tp.peer):
                task.relevel(num)
        del task.peers[tp.id]
        tp.peer.tasks.discard(task.id)
        task.free.discard(tp.peer)
        old = task.load_of.pop(tp.peer, None)
        if old is not None:
            task.by_load[old].discard(tp.peer)
        task.starving.pop(tp.id, None)

    def _drop_peer(self, peer_id: str) -> None:
        p = self._peers.pop(peer_id)
        for tid in list(p.tasks):
            task = self._tasks[tid]
            self._detach(task, task.peers[peer_id])

    # ---- time -------------------------------------------------------------------------------
    def expire(self) -> ExpireReport:
        """Drop silent peers, release timed-out assignments, list idle tasks (call it often:
        its cost is the number of peers plus the assignments that expired)."""
        now = self._clock.now()
        report = ExpireReport()
        gc_before = now - self.config.peer_gc_delay
        for pid in [pid for pid, p in self._peers.items() if p.last_seen <= gc_before]:
            self._drop_peer(pid)
            report.dropped_peers.append(pid)

        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, seq, tid, pid, num = heapq.heappop(heap)
            task = self._tasks.get(tid)
            tp = task.peers.get(pid) if task is not None else None
            a = tp.inflight.get(num) if tp is not None else None
            if task is None or tp is None or a is None or a.seq != seq:
                continue  # reported, released or replaced since
            self._release(task, tp, a)
            tp.late[num] = a.source_id
            report.released += 1
        self._timeouts += report.released
        if len(heap) > HEAP_SLACK * self._inflight + 1024:
            self._rebuild_deadlines()

        for p in self._peers.values():
            if p.blacklist:
                p.blacklist = {s: t for s, t in p.blacklist.items() if t > now}
        task_before = now - self.config.task_expire
        report.idle_tasks = [tid for tid, t in self._tasks.items() if t.last_active <= task_before]
        return report

    def _rebuild_deadlines(self) -> None:
        self._deadlines = [
            (a.deadline, a.seq, task.id, tp.id, a.num)
            for task in self._tasks.values()
            for tp in task.peers.values()
            for a in tp.inflight.values()
        ]
        heapq.heapify(self._deadlines)

    def drain_suspects(self) -> list[tuple[str, int]]:
        """(task_id, piece) the supernode served with a bad digest, per a peer; oldest first."""
        out = list(self._suspects)
        self._suspects.clear()
        return out

    # ---- views ------------------------------------------------------------------------------
    def task_view(self, task_id: str) -> dict[str, Any] | None:
        task = self._tasks.get(task_id)
        return None if task is None else views.task_view(task)

    def tasks_view(self) -> list[dict[str, Any]]:
        """Every task, without its peer list (that can be thousands long): counts instead."""
        return [views.task_view(task, with_peers=False) for task in self._tasks.values()]

    def peers_view(self) -> list[dict[str, Any]]:
        return [views.peer_view(p) for p in self._peers.values()]

    def stats(self) -> dict[str, Any]:
        """Counters for metrics (totals since start, except the gauges tasks..inflight)."""
        return {
            "tasks": len(self._tasks),
            "peers": len(self._peers),
            "isolated_peers": sum(p.isolated for p in self._peers.values()),
            "inflight": self._inflight,
            "assignments_by_source": {
                k: self._assignments[k] for k in (KIND_PEER, KIND_SUPERNODE, KIND_ORIGIN)
            },
            "bytes_by_source": {
                k: self._bytes[k] for k in (KIND_PEER, KIND_SUPERNODE, KIND_ORIGIN)
            },
            "failures_by_kind": dict(self._failures),
            "ignored_results": self._ignored,
            "timeouts": self._timeouts,
            "isolations": self._isolations,
            "suspects_queued": len(self._suspects),
        }

    def __repr__(self) -> str:
        isolated = sum(p.isolated for p in self._peers.values())
        return (
            f"<Scheduler tasks={len(self._tasks)} peers={len(self._peers)} isolated={isolated}"
            f" inflight={self._inflight}"
            f" policy={self.config.piece_policy}/{self.config.source_policy}>"
        )

    # ---- checks -----------------------------------------------------------------------------
    def audit(self) -> None:
        """Recompute every derived counter from scratch; AssertionError on a mismatch.

        O(everything): for tests and the simulator, never on the request path.
        """
        audit.audit(self._tasks, self._peers, self.config, self._inflight)

    # ---- helpers ----------------------------------------------------------------------------
    def _task(self, task_id: str) -> Task:
        task = self._tasks.get(task_id)
        if task is None:
            raise BadRequest(
                f"unknown task {task_id[:12]}",
                "register the download again (the task expired or the supernode restarted)",
            )
        return task

    def _peer(self, peer_id: str) -> Peer:
        p = self._peers.get(peer_id)
        if p is None:
            raise BadRequest(
                f"unknown peer {peer_id}",
                "register again (the supernode dropped a silent peer or restarted)",
            )
        return p

    @staticmethod
    def _plan(length: int, piece_size: int) -> PiecePlan:
        if length < 0 or piece_size < 1:
            raise ValueError(f"bad task shape: length {length}, piece size {piece_size}")
        plan = PiecePlan(length, piece_size)
        if plan.count > MAX_PIECES:
            raise BadRequest(
                f"file of {length} bytes in {piece_size}-byte pieces has {plan.count} pieces,"
                f" more than the scheduler's limit of {MAX_PIECES}",
                "use larger pieces",
            )
        return plan

    @staticmethod
    def _check_num(task: Task, num: int) -> None:
        if not 0 <= num < task.plan.count:
            raise ValueError(f"piece {num} out of range 0..{task.plan.count - 1}")
