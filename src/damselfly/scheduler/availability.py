"""How available each piece of a task is, kept in order at O(1) cost per change.

``Availability`` is libtorrent's piece-picker trick: all pieces sit in one array sorted by a
small integer *level*, with the start index of each level's bucket remembered. A piece moves up
or down one level by swapping it with the last (or first) piece of its bucket and shifting one
boundary — no sort, no scan. The rarest-first policy then walks the array from the lowest
non-empty level and stops as soon as it has enough pieces.

``HolderList`` is the set of peers holding one piece, as a list plus an index map so that adding,
removing and drawing a bounded random sample are all O(1) in the number of holders.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Availability:
    """Pieces ``0..n-1`` ordered by level (0 = not schedulable, then rarer first).

    Invariant: ``order[start[l]:start[l+1]]`` are exactly the pieces of level ``l``;
    ``pos[p]`` is the index of piece ``p`` in ``order``.
    """

    __slots__ = ("level", "order", "pos", "start")

    def __init__(self, n: int, rng: random.Random) -> None:
        order = list(range(n))
        rng.shuffle(order)  # the initial order inside a level is random: no systematic bias
        self.order = order
        self.pos = [0] * n
        for i, p in enumerate(order):
            self.pos[p] = i
        self.level = [0] * n
        self.start = [0, n]  # start[l] for l in 0..max_level+1; the last entry is always n

    def __len__(self) -> int:
        return len(self.order)

    def set_level(self, p: int, target: int) -> None:
        """Move piece ``p`` to ``target``, one bucket at a time (targets move by 1 in practice)."""
        while self.level[p] < target:
            self._up(p)
        while self.level[p] > target:
            self._down(p)

    def _up(self, p: int) -> None:
        lv = self.level[p]
        start, order, pos = self.start, self.order, self.pos
        if lv + 2 >= len(start):
            start.append(len(order))
        last = start[lv + 1] - 1  # p becomes the first piece of bucket lv+1
        q = order[last]
        i = pos[p]
        order[i], order[last] = q, p
        pos[q], pos[p] = i, last
        start[lv + 1] = last
        self.level[p] = lv + 1

    def _down(self, p: int) -> None:
        lv = self.level[p]
        start, order, pos = self.start, self.order, self.pos
        first = start[lv]  # p becomes the last piece of bucket lv-1
        q = order[first]
        i = pos[p]
        order[i], order[first] = q, p
        pos[q], pos[p] = i, first
        start[lv] = first + 1
        self.level[p] = lv - 1

    def buckets(self, from_level: int = 1) -> Iterator[tuple[int, int]]:
        """Index ranges ``[begin, end)`` of the non-empty buckets at ``from_level`` and above,
        lowest level first. The caller must not change levels while iterating."""
        order, level, start = self.order, self.level, self.start
        n = len(order)
        i = start[from_level] if from_level < len(start) else n
        while i < n:
            end = start[level[order[i]] + 1]
            yield i, end
            i = end

    def check(self) -> None:
        """Raise AssertionError if the invariant is broken (tests and audits only)."""
        order, pos, level, start = self.order, self.pos, self.level, self.start
        assert sorted(order) == list(range(len(order)))
        assert start[-1] == len(order) and start[0] == 0
        for i, p in enumerate(order):
            assert pos[p] == i
            lv = level[p]
            assert start[lv] <= i < start[lv + 1], (p, lv, i, start)


class HolderList(Generic[T]):
    """An unordered set with O(1) add, discard and bounded random sampling."""

    __slots__ = ("index", "items")

    def __init__(self) -> None:
        self.items: list[T] = []
        self.index: dict[T, int] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, x: object) -> bool:
        return x in self.index

    def add(self, x: T) -> bool:
        if x in self.index:
            return False
        self.index[x] = len(self.items)
        self.items.append(x)
        return True

    def discard(self, x: T) -> bool:
        i = self.index.pop(x, None)
        if i is None:
            return False
        last = self.items.pop()
        if i < len(self.items):  # move the last item into the hole
            self.items[i] = last
            self.index[last] = i
        return True

    def sample(self, k: int, rng: random.Random) -> list[T]:
        """Up to ``k`` distinct items in random order (all of them, rotated, when few)."""
        items = self.items
        n = len(items)
        if n <= k:
            if n <= 1:
                return list(items)
            r = int(rng.random() * n)  # (randrange costs ~3× as much, on the hot path)
            return items[r:] + items[:r]
        return rng.sample(items, k)
