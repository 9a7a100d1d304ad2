"""Random event sequences never break the scheduler's invariants (a hypothesis state machine).

After every step ``Scheduler.audit`` recomputes all derived state from scratch (holder counts,
pending counts, availability order, upload slots ≤ up_limit, in flight ≤ down_limit, the
supernode's per-task limit, nothing in flight that the peer holds, and with the ramp-up rules
on: uploads per task ≤ pieces held, downloads ≤ max(1, pieces held), the least-loaded buckets
and the fresh peers waiting in time order). Each answer is also checked
here: no piece the peer holds or is already fetching, never itself as a source.
"""

from __future__ import annotations

import random

from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from damselfly.core.protocol import FAILURE_KINDS, PieceResult
from tests.unit.scheduler.swarm import PIECE, TASK, Swarm

PEERS = ("a", "b", "c", "d", "e")
N = 6
LIMITS = {
    "up_limit": 2,
    "down_limit": 3,
    "supernode_limit": 2,
    "origin_limit": 2,
    "isolate_after": 2,
    "client_fail_limit": 2,
    "inflight_timeout": 10.0,
    "peer_gc_delay": 40.0,
    "blacklist_time": 15.0,
    "task_expire": 60.0,
}
#: the scheduler's own defaults for the ramp-up rules (the Swarm helper turns them off)
RAMPUP = {"source_slow_start": True, "download_slow_start": True, "fresh_first_window": 5.0}
OUTCOMES = st.lists(st.sampled_from(["ok", "ok", "fail", "fail", "junk", "keep"]), max_size=4)
NAME = st.sampled_from(PEERS)
# Each step is one event, drawn with these weights: mostly schedule calls, some churn.
ACTIONS = {
    "ask": (
        20,
        {
            "name": NAME,
            "want": st.integers(0, 5),
            "outcomes": OUTCOMES,
            "failure": st.sampled_from(FAILURE_KINDS[1:]),
        },
    ),
    "join": (
        5,
        {
            "name": NAME,
            "pattern": st.sampled_from(["p2p", "p2p", "p2p", "cdn"]),
            "have": st.lists(st.integers(0, N - 1), max_size=2),
        },
    ),
    "advance": (3, {"seconds": st.sampled_from([1.0, 5.0, 11.0, 16.0, 41.0])}),
    "expire": (3, {}),
    "ready": (4, {"num": st.integers(0, N - 1)}),
    "heartbeat": (2, {"name": NAME}),
    "leave": (2, {"name": NAME}),
    "remove": (1, {"name": NAME}),
    "lost": (1, {"num": st.integers(0, N - 1)}),
    "reset": (3, {}),
    "failed": (1, {}),
}


class SchedulerMachine(RuleBasedStateMachine):
    sw: Swarm

    @initialize(
        cdn=st.text(alphabet="01", min_size=N, max_size=N),
        origin=st.booleans(),
        policy=st.sampled_from(["rarest", "rarest", "sequential", "random"]),
        seed=st.integers(0, 2**16),
        rampup=st.sampled_from([True, True, False]),
    )
    def setup(self, cdn: str, origin: bool, policy: str, seed: int, rampup: bool = True) -> None:
        # rampup: the scheduler's defaults (slow start both ways, fresh peers first), which
        # the audit checks too; otherwise the classic rules of tests/unit/scheduler/swarm.py
        limits = {**LIMITS, **(RAMPUP if rampup else {})}
        if origin:
            self.sw = Swarm(
                "", pieces=len(cdn), cdn_pattern="source", piece_policy=policy, seed=seed, **limits
            )  # type: ignore[arg-type]
        else:
            self.sw = Swarm(cdn, piece_policy=policy, seed=seed, **limits)  # type: ignore[arg-type]
        self.assigned: dict[str, list[tuple[int, str]]] = {}
        self.n = len(cdn)
        for name in PEERS[:4]:
            self.sw.peer(name)

    @property
    def task(self):  # type: ignore[no-untyped-def]
        return self.sw.s._tasks.get(TASK)

    def joined(self, name: str) -> bool:
        return self.task is not None and name in self.task.peers

    def join(self, name: str, pattern: str, have: list[int]) -> None:
        if self.task is not None:
            self.sw.peer(name, "".join("1" if i in have else "0" for i in range(self.n)), pattern)

    def ask(self, name: str, want: int, outcomes: list[str], failure: str) -> None:
        if not self.joined(name):
            return
        results, kept = [], []
        mine = self.assigned.get(name, [])
        for (num, src), what in zip(mine, outcomes + ["ok"] * len(mine), strict=False):
            if what == "ok":
                results.append(PieceResult(num, True, src))
            elif what == "fail":
                results.append(PieceResult(num, False, src, failure))
            elif what == "junk":
                results.append(PieceResult((num + 1) % self.n, True, "e"))
            else:
                kept.append((num, src))
        tp = self.task.peers[name]
        have_before = bytes(tp.have)
        # A piece in flight and not mentioned in any report stays in flight: never re-assigned.
        still_fetching = set(tp.inflight) - {r.piece for r in results}
        got = self.sw.ask(name, want, results)
        event(f"answer {self.sw.status}")
        assert len(got) <= want
        assert len({num for num, _ in got}) == len(got)
        for num, src in got:
            assert src != name
            assert not have_before[num] and num not in still_fetching
            assert tp.inflight[num].source_id == src
            event(f"source {src if src in ('supernode', 'origin') else 'peer'}")
        self.assigned[name] = kept + got

    def leave(self, name: str) -> None:
        if self.joined(name):
            self.sw.s.leave_task(TASK, name)

    def remove(self, name: str) -> None:
        if name in {p["id"] for p in self.sw.s.peers_view()}:
            self.sw.s.remove_peer(name)

    def heartbeat(self, name: str) -> None:
        if name in {p["id"] for p in self.sw.s.peers_view()}:
            self.sw.s.heartbeat(name)

    def advance(self, seconds: float) -> None:
        self.sw.clock.advance(seconds)

    def expire(self) -> None:
        report = self.sw.s.expire()
        if report.released:
            event("timeout released")
        for tid in report.idle_tasks:
            self.sw.s.remove_task(tid)

    def ready(self, num: int) -> None:
        if self.task is not None and self.task.state != "failed":
            self.sw.s.piece_ready(TASK, num, "")

    def lost(self, num: int) -> None:
        self.sw.s.piece_lost(TASK, num)

    def reset(self) -> None:
        if self.task is not None:
            self.sw.s.reset_task(TASK, self.task.plan.length, self.task.plan.piece_size)

    def failed(self) -> None:
        if self.task is not None:
            self.sw.s.task_failed(TASK, "origin_error", "the origin failed")

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        action = data.draw(st.sampled_from([a for a, (w, _) in ACTIONS.items() for _ in range(w)]))
        args = {k: data.draw(v, label=k) for k, v in ACTIONS[action][1].items()}
        getattr(self, action)(**args)

    @invariant()
    def consistent(self) -> None:
        if hasattr(self, "sw"):
            self.sw.s.audit()

    def teardown(self) -> None:
        if hasattr(self, "sw"):
            stats = self.sw.s.stats()
            event(f"isolations {min(stats['isolations'], 1)}")
            event(f"ignored results {min(stats['ignored_results'], 1)}")


SchedulerMachine.TestCase.settings = settings(
    max_examples=120, stateful_step_count=80, deadline=None
)
TestSchedulerInvariants = SchedulerMachine.TestCase


def _random_args(rng: random.Random, action: str, peers: list[str], n: int) -> dict[str, object]:
    name = rng.choice(peers)
    num = rng.randrange(n)
    return {
        "ask": lambda: {
            "name": name,
            "want": rng.randint(0, 5),
            "outcomes": rng.choices(["ok", "ok", "fail", "fail", "junk", "keep"], k=4),
            "failure": rng.choice(FAILURE_KINDS[1:]),
        },
        "join": lambda: {
            "name": name,
            "pattern": rng.choice(["p2p", "p2p", "p2p", "cdn"]),
            "have": rng.sample(range(n), rng.randint(0, 2)),
        },
        "advance": lambda: {"seconds": rng.choice([1.0, 5.0, 11.0, 16.0, 41.0])},
        "ready": lambda: {"num": num},
        "lost": lambda: {"num": num},
        "heartbeat": lambda: {"name": name},
        "leave": lambda: {"name": name},
        "remove": lambda: {"name": name},
    }.get(action, dict)()


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    origin=st.booleans(),
    policy=st.sampled_from(["rarest", "sequential", "random"]),
    rampup=st.booleans(),
)
def test_long_random_runs_keep_every_invariant(
    seed: int, origin: bool, policy: str, rampup: bool
) -> None:
    """The state machine above shrinks well but its runs are short; these are long ones
    (hundreds of events, the same weights) from a seed that hypothesis draws and reports."""
    rng = random.Random(seed)
    n = 24
    peers = [f"p{i}" for i in range(12)]
    machine = SchedulerMachine()
    machine.setup("".join(rng.choice("01") for _ in range(n)), origin, policy, seed, rampup)
    for name in peers:
        machine.join(name, "p2p", [])
    actions = [a for a, (w, _) in ACTIONS.items() for _ in range(w)]
    for _ in range(600):
        action = rng.choice(actions)
        args = _random_args(rng, action, peers, n)
        s = machine.sw.s
        if not s.has_task(TASK):  # dropped as idle: the next registration brings it back
            s.add_task(TASK, n * PIECE - 100, PIECE, "source" if origin else "local")
            for num in range(n):
                if rng.random() < 0.5:
                    s.piece_ready(TASK, num, "")
        if action == "ask" and args["name"] not in machine.task.peers:
            machine.join(str(args["name"]), "p2p", [])  # an engine re-registers after a 4xx
        getattr(machine, action)(**args)
        task = machine.task
        if task is not None and action == "ask" and task.state == "failed":
            machine.reset()  # the origin came back: keep the run busy
        if task is not None and rng.random() < 0.05:
            # Churn: a finished peer leaves and a fresh one takes its name.
            done = [pid for pid, tp in task.peers.items() if tp.state == "done"]
            if done:
                pid = rng.choice(done)
                machine.sw.s.leave_task(TASK, pid)
                machine.join(pid, "p2p", [])
        machine.consistent()
    stats = machine.sw.s.stats()
    event(f"isolations {min(stats['isolations'], 1)}")
    event(f"peer assignments {min(stats['assignments_by_source']['peer'] // 20, 3) * 20}+")
