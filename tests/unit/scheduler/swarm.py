"""A scheduler with one task and named peers, driven only through the public API.

Pieces are described by one-line strings, libtorrent style: ``cdn="1101"`` says which pieces the
CDN holds; ``holders("3102")`` adds peers h0, h1, h2 so that piece i has that many holders.

The ramp-up rules (``SchedulerConfig.source_slow_start``, ``download_slow_start``,
``fresh_first_window``) are off unless a test turns them on: each table here tests one rule,
and those rules change how many pieces a peer holding few gets or serves. Their own tests
(``test_sched_rampup.py``) and the state machine (``test_sched_invariants.py``) turn them on.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from damselfly.core.clock import FakeClock
from damselfly.core.protocol import PeerInfo, PieceResult, PieceSource, ScheduleResponse
from damselfly.scheduler import Scheduler, SchedulerConfig

TASK = "ab" * 32
PIECE = 1024
#: the ramp-up rules off (see the module docstring)
CLASSIC: dict[str, object] = {
    "source_slow_start": False,
    "download_slow_start": False,
    "fresh_first_window": 0.0,
}
SUPERNODE = PieceSource(id="supernode", kind="supernode", ip="10.0.0.1", port=8001)


def digest(num: int) -> str:
    return f"{num:064x}"


def bits(s: str) -> list[int]:
    return [i for i, c in enumerate(s) if c == "1"]


class Swarm:
    def __init__(
        self,
        cdn: str = "1111",
        *,
        pieces: int | None = None,
        cdn_pattern: str = "local",
        seed: int = 1,
        **config: object,
    ) -> None:
        self.clock = FakeClock()
        config = {**CLASSIC, **config}
        self.s = Scheduler(SchedulerConfig(**config), self.clock, random.Random(seed), SUPERNODE)  # type: ignore[arg-type]
        n = len(cdn) if pieces is None else pieces
        self.s.add_task(TASK, n * PIECE - 100 if n else 0, PIECE, cdn_pattern)
        for num in bits(cdn):
            self.s.piece_ready(TASK, num, digest(num))
        self.last: ScheduleResponse | None = None
        self._ports = 20000

    def peer(self, name: str, have: str = "", pattern: str = "p2p") -> str:
        self._ports += 1
        info = PeerInfo(name, f"10.1.0.{self._ports % 250}", self._ports, f"host-{name}")
        self.s.add_peer(TASK, info, pattern, have=bits(have))
        return name

    def holders(self, counts: str) -> list[str]:
        """Peers h0..h(k-1) such that piece i has int(counts[i]) holders."""
        k = max(int(c) for c in counts)
        names = []
        for j in range(k):
            names.append(self.peer(f"h{j}", "".join("1" if int(c) > j else "0" for c in counts)))
        return names

    def ask(
        self, name: str, want: int = 4, results: Iterable[PieceResult] = ()
    ) -> list[tuple[int, str]]:
        self.last = self.s.schedule(TASK, name, list(results), want)
        return [(a.num, a.source.id) for a in self.last.pieces]

    def ok(self, name: str, *done: tuple[int, str], want: int = 0) -> list[tuple[int, str]]:
        return self.ask(name, want, [PieceResult(n, True, src, bytes=PIECE) for n, src in done])

    def fail(
        self, name: str, num: int, src: str, kind: str = "timeout", want: int = 0
    ) -> list[tuple[int, str]]:
        return self.ask(name, want, [PieceResult(num, False, src, failure=kind)])

    def fetch_all(self, name: str, rounds: int = 100) -> None:
        """Let ``name`` download until done, reporting every assignment as a success."""
        pending: list[tuple[int, str]] = []
        for _ in range(rounds):
            pending = self.ok(name, *pending, want=4)
            if self.last is not None and self.last.status == "done":
                return
        raise AssertionError(f"{name} not done after {rounds} rounds: {self.last}")

    @property
    def status(self) -> str:
        assert self.last is not None
        return self.last.status
