"""A from-scratch check of the scheduler's derived state (tests and the simulator only).

Every counter the scheduler keeps in step incrementally — holder lists, pending counts, piece
levels, free sources (under slow start) and their load buckets, upload slots, supernode slots,
the global in-flight count, the fresh peers waiting for a source — is recomputed here from the
primary facts (what each peer holds and has in flight) and compared.
"""

from __future__ import annotations

from damselfly.scheduler.config import SchedulerConfig
from damselfly.scheduler.model import Peer, Task
from damselfly.scheduler.states import PEER_DONE


def audit(
    tasks: dict[str, Task], peers: dict[str, Peer], cfg: SchedulerConfig, inflight_total: int
) -> None:
    """Raise AssertionError (with the offending ids) on the first inconsistency."""
    serving: dict[str, set[tuple[str, str, int]]] = {pid: set() for pid in peers}
    inflight = 0
    for tid, task in tasks.items():
        task.avail.check()
        n = task.plan.count
        pending = [0] * n
        holders: list[set[str]] = [set() for _ in range(n)]
        fallback = 0
        for pid, tp in task.peers.items():
            assert peers.get(pid) is tp.peer, f"{pid} on {tid[:12]} but not a peer"
            assert tid in tp.peer.tasks
            assert tp.held == sum(tp.have), tp
            assert (tp.state == PEER_DONE) == (tp.held == n), tp
            assert len(tp.inflight) <= cfg.down_limit, tp
            if cfg.download_slow_start and tp.is_source:
                assert len(tp.inflight) <= max(1, tp.held), tp
            for num, a in tp.inflight.items():
                inflight += 1
                assert a.num == num and not tp.have[num], (tp, num)
                if a.counted:
                    assert tp.is_source
                    pending[num] += 1
                if a.source is None:
                    fallback += 1
                else:
                    assert a.source is not tp.peer
                    serving[a.source.id].add((tid, pid, num))
            if tp.is_source:
                for num in range(n):
                    if tp.have[num]:
                        holders[num].add(pid)
        for num in range(n):
            # A holder may have been dropped for one piece (it answered 404 or bad bytes).
            got = {p.id for p in task.holders[num].items}
            assert got <= holders[num], (tid[:12], num, got, holders[num])
            assert pending[num] == task.pending[num], (tid[:12], num)
            available = task.from_origin or task.cdn_ready[num] or got
            level = 1 + len(got) + pending[num] if available else 0
            assert task.avail.level[num] == level, (tid[:12], num, task.avail.level[num], level)
        if cfg.source_slow_start:
            uploads: dict[str, int] = {}
            for tp in task.peers.values():
                for a in tp.inflight.values():
                    if a.source is not None:
                        uploads[a.source.id] = uploads.get(a.source.id, 0) + 1
            for pid, k in uploads.items():
                assert k <= task.peers[pid].held, (tid[:12], pid, k)
        free = {
            tp.peer
            for tp in task.peers.values()
            if tp.is_source
            and tp.held
            and len(tp.peer.serving)
            < (min(cfg.up_limit, tp.held) if cfg.source_slow_start else cfg.up_limit)
        }
        assert set(task.free.items) == free, (tid[:12], task.free.items, free)
        assert task.load_of == {p: len(p.serving) for p in free}, (tid[:12], task.load_of)
        for k, bucket in enumerate(task.by_load):
            assert set(bucket.items) == {p for p in free if len(p.serving) == k}, (tid[:12], k)
        times = list(task.starving.values())
        assert times == sorted(times), (tid[:12], task.starving)
        for pid in task.starving:
            tp = task.peers.get(pid)  # type: ignore[assignment]
            assert tp is not None and tp.is_source, (tid[:12], pid)
            assert tp.held == 0 and not tp.inflight, (tid[:12], tp)
        limit = cfg.origin_limit if task.from_origin else cfg.supernode_limit
        assert fallback == task.fallback_inflight <= limit, (tid[:12], fallback)
        assert task.ready_count == sum(task.cdn_ready)
    assert inflight == inflight_total, (inflight, inflight_total)
    for pid, p in peers.items():
        assert p.serving == serving[pid], (pid, p.serving, serving[pid])
        assert len(p.serving) <= cfg.up_limit, p
