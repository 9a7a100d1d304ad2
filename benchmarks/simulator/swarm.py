"""One simulated swarm: N engines, one supernode shell, the real ``Scheduler`` in between.

The scheduler is the production class, driven through its public methods on a ``FakeClock``;
the network is the fluid model of ``fluid.py``. What is modelled of the rest:

* **The engine** (``damselfly.peer.download``): it asks for ``want`` pieces (its own down limit
  minus what is in flight; the scheduler caps it at ``down_limit``), starts every assigned
  transfer at once, and asks again — reporting — as soon as a piece arrives. With pieces in
  flight and room for more it also asks again after ``REASK_S``; with nothing in flight it
  long-polls. It keeps serving after it completes (the host engine outlives dfget).
* **The supernode shell** (``damselfly.supernode.app``): a long poll is re-run each time a
  peer reports a finished piece or the CDN gains one ("wake"), in the order the pollers
  started waiting, and answered after ``LONG_POLL_S`` at the latest. The CDN either holds every
  piece from the start (the v1 "cache hit" case) or gains them one after another at the rate
  it fetches from the origin.
* **Transfers**: whole pieces; a peer serves a piece once it holds all of it.

Two shortcuts keep a wake O(1) instead of O(waiters): waiters are skipped once
``Scheduler.can_assign`` says no peer has a free upload slot and the fallback is full (then
every one of them would hear "wait", exactly), and a wake stops after ``WAKE_MISSES`` waiters
in a row heard "wait" (they stay queued, first in line for the next wake). ``Stats`` counts
the calls the real shell would have made.

Ignored: TCP dynamics, latency (except an optional fixed ``rpc_delay`` between a schedule call
and the start of its transfers), the scheduler's own CPU time, failures and churn.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks.simulator.bounds import t_min, t_piece, t_tree
from benchmarks.simulator.fluid import Network

from damselfly.core.clock import FakeClock
from damselfly.core.pieces import piece_size_for
from damselfly.core.protocol import PeerInfo, PieceResult, PieceSource
from damselfly.peer.download import LONG_POLL_MS, REASK_S
from damselfly.peer.plan import down_limit_for
from damselfly.scheduler import Scheduler, SchedulerConfig

TASK = "5d" * 32
SUPERNODE = PieceSource(id="supernode", kind="supernode", ip="10.0.0.1", port=8001)
LONG_POLL_S = LONG_POLL_MS / 1000
#: a wake stops after this many waiters in a row heard "wait" (see the module docstring)
WAKE_MISSES = 32
#: the simulation gives up (and says so) after this many simulated seconds or events
MAX_SIM_SECONDS = 3600.0
MAX_EVENTS = 50_000_000

# event kinds (simultaneous events run in the order they were made)
_ASK, _START, _READY, _POLL_END = 0, 1, 2, 3


@dataclass
class Setup:
    """One scenario. Rates in bits/s, sizes in bytes."""

    peers: int = 1000
    size: int = 200_000_000
    #: 0: the supernode's rule for the size (core/pieces.py: 2 MiB for 200 MB); another size
    #: is a what-if (the engine's down limit follows it, as in damselfly.peer.plan)
    piece_size: int = 0
    peer_up: float = 200e6
    peer_down: float = 200e6
    supernode_up: float = 1e9
    cdn_rate: float = 0.0  # bits/s the CDN fetches from the origin; 0: it holds every piece
    rpc_delay: float = 0.0  # seconds between a schedule call and the start of its transfers
    join_spread: float = 0.0  # peers start uniformly over [0, join_spread) seconds
    seed: int = 1
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self) -> None:
        if self.peers < 1 or self.size < 1:
            raise ValueError("a swarm needs at least one peer and one byte")
        if self.piece_size == 0:
            self.piece_size = piece_size_for(self.size)
        for name in ("peer_up", "peer_down", "supernode_up"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive rate in bits/s")
        if self.cdn_rate < 0 or self.rpc_delay < 0 or self.join_spread < 0:
            raise ValueError("cdn_rate, rpc_delay and join_spread must not be negative")

    @property
    def pieces(self) -> int:
        return (self.size + self.piece_size - 1) // self.piece_size


@dataclass
class Stats:
    setup: Setup
    done_at: list[float] = field(default_factory=list)  # per peer, seconds after its start
    makespan: float = 0.0
    t_min: float = 0.0
    t_piece: float = 0.0
    t_tree: float = 0.0
    bytes_by_source: dict[str, int] = field(default_factory=dict)
    schedule_calls: int = 0  # calls made in the simulation
    shell_calls: int = 0  # calls the real shell would make (every waiter re-run on a wake)
    scheduler_cpu: float = 0.0  # seconds of CPU inside Scheduler.schedule
    cpu: float = 0.0  # seconds of CPU for the whole simulation
    events: int = 0
    stalled: str = ""  # why the run stopped before every peer finished ("" when it did not)
    #: (t, peers holding a piece, peers done, transfers, share of the peers' download capacity
    #: in use) every ``trace_every`` simulated seconds
    trace: list[tuple[float, int, int, int, float]] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.makespan / self.t_min if self.t_min else 0.0

    @property
    def supernode_share(self) -> float:
        """Bytes the supernode sent, in files."""
        return self.bytes_by_source.get("supernode", 0) / self.setup.size

    @property
    def peer_share(self) -> float:
        total = sum(self.bytes_by_source.values())
        return self.bytes_by_source.get("peer", 0) / total if total else 0.0

    def as_dict(self) -> dict[str, Any]:
        s = self.setup
        return {
            "peers": s.peers,
            "size": s.size,
            "piece_size": s.piece_size,
            "peer_up": s.peer_up,
            "peer_down": s.peer_down,
            "supernode_up": s.supernode_up,
            "cdn_rate": s.cdn_rate,
            "rpc_delay": s.rpc_delay,
            "seed": s.seed,
            "makespan": self.makespan,
            "t_min": self.t_min,
            "t_piece": self.t_piece,
            "t_tree": self.t_tree,
            "ratio": self.ratio,
            "mean_done": sum(self.done_at) / len(self.done_at) if self.done_at else 0.0,
            "supernode_files": self.supernode_share,
            "peer_share": self.peer_share,
            "schedule_calls": self.schedule_calls,
            "shell_calls": self.shell_calls,
            "scheduler_cpu": self.scheduler_cpu,
            "cpu": self.cpu,
            "events": self.events,
            "stalled": self.stalled,
        }


class _Engine:
    __slots__ = ("done", "have", "id", "in_flight", "results", "start", "timer", "waiting")

    def __init__(self, pid: str, start: float) -> None:
        self.id = pid
        self.start = start
        self.have = 0
        self.in_flight: dict[int, str] = {}  # piece -> source id
        self.results: list[PieceResult] = []
        self.done = False  # the scheduler said "done"
        self.timer = 0  # generation of the pending re-ask / long-poll end; older ones are stale
        self.waiting = False  # in a long poll


class Simulation:
    """Runs one ``Setup`` to the end; see the module docstring."""

    def __init__(self, setup: Setup, trace_every: float = 0.0) -> None:
        self.setup = s = setup
        self.clock = FakeClock(0.0)
        self.sched = Scheduler(s.scheduler, self.clock, random.Random(s.seed), SUPERNODE)
        self.net = Network()
        self.net.add_node(SUPERNODE.id, s.supernode_up, float("inf"))
        self.engines: dict[str, _Engine] = {}
        self.waiters: dict[str, None] = {}  # long polls, in the order they started waiting
        self.events: list[tuple[float, int, int, str, int]] = []
        self._seq = itertools.count()
        self.down_limit = down_limit_for(s.piece_size)
        self.count = s.pieces
        self.trace_every = trace_every
        self.stats = Stats(setup=s)
        self._holders = 0

    # ---- the run ----------------------------------------------------------------------------
    def run(self) -> Stats:
        s, st = self.setup, self.stats
        cpu0 = time.process_time()
        rng = random.Random(s.seed + 1)
        self.sched.add_task(TASK, s.size, s.piece_size)
        if s.cdn_rate == 0:
            for n in range(self.count):
                self.sched.piece_ready(TASK, n, f"{n:064x}")
            self.sched.task_complete(TASK, "f" * 64)
        else:
            for n in range(self.count):
                end = min(s.size, (n + 1) * s.piece_size)
                self._push(end * 8 / s.cdn_rate, _READY, "", n)
        for i in range(s.peers):
            pid = f"p{i:05d}"
            start = rng.random() * s.join_spread if s.join_spread else 0.0
            self.engines[pid] = _Engine(pid, start)
            self.net.add_node(pid, s.peer_up, s.peer_down)
            info = PeerInfo(pid, f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 15001)
            self.sched.add_peer(TASK, info)
            self._push(start, _ASK, pid, -1)

        finished = 0
        next_trace = 0.0
        net, events = self.net, self.events
        while finished < s.peers:
            t_net = net.next_time()
            t_ev = events[0][0] if events else float("inf")
            t = min(t_net, t_ev)
            if t == float("inf"):
                st.stalled = "nothing left to happen: no transfer and no pending call"
                break
            if t > MAX_SIM_SECONDS or st.events >= MAX_EVENTS:
                st.stalled = f"gave up after {t:.0f} simulated s and {st.events:,} events"
                break
            st.events += 1
            self.clock.t = t
            if self.trace_every and t >= next_trace:
                busy = net.rate_in_use() / (s.peers * s.peer_down)
                st.trace.append((t, self._holders, finished, net.active, busy))
                next_trace = t + self.trace_every
            if t_net <= t_ev:
                _, x = net.pop_done()
                e = self.engines[x.dst]
                num, src = x.tag
                del e.in_flight[num]
                e.have += 1
                if e.have == 1:
                    self._holders += 1
                e.results.append(PieceResult(num, True, src, "", int(x.size)))
                if e.have == self.count:
                    finished += 1
                    st.done_at.append(t - e.start)
                self._ask(e, t)
                continue
            _, _, kind, pid, arg = heapq.heappop(events)
            if kind == _ASK:
                e = self.engines[pid]
                if arg < 0 or arg == e.timer:  # a re-ask is void once the engine asked anyway
                    self._ask(e, t)
            elif kind == _START:
                e = self.engines[pid]
                src = e.in_flight[arg]
                net.start(src, pid, self._piece_bytes(arg), (arg, src), t)
            elif kind == _POLL_END:
                e = self.engines[pid]
                if e.timer == arg:
                    self.waiters.pop(pid, None)
                    e.waiting = False
                    self._ask(e, t)  # the long poll ended with "wait": the engine asks again
            elif kind == _READY:
                self.sched.piece_ready(TASK, arg, f"{arg:064x}")
                if arg == self.count - 1:
                    self.sched.task_complete(TASK, "f" * 64)
                self._wake(t)

        st.makespan = self.clock.t if not st.stalled else float("inf")
        st.t_min = t_min(s.size, s.peers, s.supernode_up, s.peer_up, s.peer_down)
        st.t_piece = t_piece(s.size, s.piece_size, s.peers, s.supernode_up, s.peer_up, s.peer_down)
        st.t_tree = t_tree(s.size, s.piece_size, s.peers, s.supernode_up, s.peer_up, s.peer_down)
        st.bytes_by_source = dict(self.sched.stats()["bytes_by_source"])
        st.cpu = time.process_time() - cpu0
        return st

    # ---- the engine and the shell -----------------------------------------------------------
    def _ask(self, e: _Engine, t: float) -> None:
        """The engine calls schedule (reporting what arrived); the shell answers or holds it."""
        if e.done:
            return
        results, e.results = e.results, []
        e.timer += 1
        if e.waiting:
            del self.waiters[e.id]
            e.waiting = False
        resp = self._call(e, results)
        if results:
            self._wake(t)  # the shell wakes long polls after any successful report
        self._answer(e, resp, t, poll=True)

    def _answer(self, e: _Engine, resp: Any, t: float, poll: bool) -> None:
        for a in resp.pieces:
            e.in_flight[a.num] = a.source.id
            if self.setup.rpc_delay:
                self._push(t + self.setup.rpc_delay, _START, e.id, a.num)
            else:
                self.net.start(a.source.id, e.id, a.size, (a.num, a.source.id), t)
        if resp.status == "done":
            e.done = True
        elif e.in_flight:
            if self._want(e):  # room for more: ask again after REASK_S unless a piece arrives
                self._push(t + REASK_S, _ASK, e.id, e.timer)
        elif poll:
            e.waiting = True
            self.waiters[e.id] = None
            self._push(t + LONG_POLL_S, _POLL_END, e.id, e.timer)

    def _wake(self, t: float) -> None:
        waiters = self.waiters
        if not waiters:
            return
        self.stats.shell_calls += len(waiters)
        served = []
        misses = 0
        for pid in waiters:
            if not self.sched.can_assign(TASK):
                break
            e = self.engines[pid]
            resp = self._call(e, [])
            if resp.status == "wait":
                misses += 1
                if misses >= WAKE_MISSES:
                    break
                continue
            misses = 0
            served.append((e, resp))
        for e, resp in served:
            del waiters[e.id]
            e.waiting = False
            e.timer += 1
            self._answer(e, resp, t, poll=False)

    def _call(self, e: _Engine, results: list[PieceResult]) -> Any:
        st = self.stats
        st.schedule_calls += 1
        t0 = time.thread_time()
        resp = self.sched.schedule(TASK, e.id, results, self._want(e))
        st.scheduler_cpu += time.thread_time() - t0
        return resp

    def _want(self, e: _Engine) -> int:
        return max(
            0, min(self.down_limit - len(e.in_flight), self.count - e.have - len(e.in_flight))
        )

    def _piece_bytes(self, num: int) -> int:
        s = self.setup
        return min(s.piece_size, s.size - num * s.piece_size)

    def _push(self, t: float, kind: int, pid: str, arg: int) -> None:
        heapq.heappush(self.events, (t, next(self._seq), kind, pid, arg))


def simulate(setup: Setup, trace_every: float = 0.0) -> Stats:
    return Simulation(setup, trace_every).run()
