"""Small policies chosen by name in the config: the order of pieces, and the choice of source.

A piece policy yields, best first, the pieces a downloader could fetch now (schedulable, not
held, not already in flight for it) at ``from_level`` or above (see ``Task.relevel``: level 1
is a piece only the supernode has, which the scheduler skips when the supernode has no room);
the scheduler stops the walk once it has enough. A source
policy picks one peer among a bounded random sample of eligible holders. An unknown name is a
ConfigError at start-up.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from damselfly.core.errors import ConfigError
from damselfly.scheduler.model import Peer, Task, TaskPeer


class PiecePolicy(Protocol):
    name: str

    def candidates(
        self, task: Task, tp: TaskPeer, rng: random.Random, from_level: int = 1
    ) -> Iterator[int]: ...


class SourcePolicy(Protocol):
    name: str

    def choose(
        self, eligible: Sequence[Peer], load: Callable[[Peer], int], rng: random.Random
    ) -> Peer: ...


class RarestFirst:
    """Fewest copies first (holders plus downloads in flight), ties in random order.

    Counting downloads in flight as copies-to-be spreads a crowd that arrives together over
    different pieces instead of sending everyone after the same rare one.
    """

    name = "rarest"

    def candidates(
        self, task: Task, tp: TaskPeer, rng: random.Random, from_level: int = 1
    ) -> Iterator[int]:
        order = task.avail.order
        have, inflight = tp.have, tp.inflight
        for begin, end in task.avail.buckets(from_level):
            # A random rotation of each bucket breaks ties between equally rare pieces.
            mid = begin + int(rng.random() * (end - begin))
            for i in range(mid, end):
                p = order[i]
                if not have[p] and p not in inflight:
                    yield p
            for i in range(begin, mid):
                p = order[i]
                if not have[p] and p not in inflight:
                    yield p


class Sequential:
    """File order: for a consumer that streams the file while it downloads."""

    name = "sequential"

    def candidates(
        self, task: Task, tp: TaskPeer, rng: random.Random, from_level: int = 1
    ) -> Iterator[int]:
        level = task.avail.level
        have, inflight = tp.have, tp.inflight
        for p in range(len(have)):
            if level[p] >= from_level and not have[p] and p not in inflight:
                yield p


class RandomOrder:
    """Uniformly random order (a baseline for the simulator; O(pieces) per call)."""

    name = "random"

    def candidates(
        self, task: Task, tp: TaskPeer, rng: random.Random, from_level: int = 1
    ) -> Iterator[int]:
        level = task.avail.level
        have, inflight = tp.have, tp.inflight
        for p in rng.sample(range(len(have)), len(have)):
            if level[p] >= from_level and not have[p] and p not in inflight:
                yield p


class LeastLoaded:
    """The holder with the fewest uploads in flight; the sample's random order breaks ties."""

    name = "least_loaded"

    def choose(
        self, eligible: Sequence[Peer], load: Callable[[Peer], int], rng: random.Random
    ) -> Peer:
        return min(eligible, key=load)


class AnyHolder:
    """Any eligible holder, at random (a baseline)."""

    name = "random"

    def choose(
        self, eligible: Sequence[Peer], load: Callable[[Peer], int], rng: random.Random
    ) -> Peer:
        return rng.choice(eligible)


PIECE_POLICIES: dict[str, Callable[[], PiecePolicy]] = {
    RarestFirst.name: RarestFirst,
    Sequential.name: Sequential,
    RandomOrder.name: RandomOrder,
}
SOURCE_POLICIES: dict[str, Callable[[], SourcePolicy]] = {
    LeastLoaded.name: LeastLoaded,
    AnyHolder.name: AnyHolder,
}


def piece_policy(name: str) -> PiecePolicy:
    try:
        return PIECE_POLICIES[name]()
    except KeyError:
        raise ConfigError(
            f"unknown piece policy {name!r}", f"choose one of {', '.join(PIECE_POLICIES)}"
        ) from None


def source_policy(name: str) -> SourcePolicy:
    try:
        return SOURCE_POLICIES[name]()
    except KeyError:
        raise ConfigError(
            f"unknown source policy {name!r}", f"choose one of {', '.join(SOURCE_POLICIES)}"
        ) from None
