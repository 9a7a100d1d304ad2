"""The piece order by availability and the holder sets, on their own."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from damselfly.scheduler.availability import Availability, HolderList


def levels_of(av: Availability) -> list[list[int]]:
    """The non-empty buckets from level 1 up, each as a sorted list of pieces."""
    return [sorted(av.order[b:e]) for b, e in av.buckets()]


@pytest.mark.parametrize(
    ("levels", "buckets"),
    [
        # piece:  0123456
        ("0000000", []),  # nothing schedulable
        ("1111111", [[0, 1, 2, 3, 4, 5, 6]]),
        ("7110000", [[1, 2], [0]]),  # libtorrent's example availability
        ("3102", [[1], [3], [0]]),
        ("0300500", [[1], [4]]),
    ],
)
def test_buckets_walk_pieces_from_rarest(levels: str, buckets: list[list[int]]) -> None:
    av = Availability(len(levels), random.Random(0))
    for p, c in enumerate(levels):
        av.set_level(p, int(c))
    av.check()
    assert levels_of(av) == buckets


def test_levels_go_down_as_well() -> None:
    av = Availability(4, random.Random(0))
    for p, c in enumerate("3333"):
        av.set_level(p, int(c))
    av.set_level(2, 1)
    av.set_level(0, 0)
    av.check()
    assert levels_of(av) == [[2], [1, 3]]
    assert list(av.buckets(from_level=3)) == [(2, 4)]
    assert list(av.buckets(from_level=9)) == []


@given(
    n=st.integers(1, 12),
    moves=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 9)), max_size=60),
)
def test_any_sequence_of_moves_keeps_the_order(n: int, moves: list[tuple[int, int]]) -> None:
    av = Availability(n, random.Random(n))
    want = [0] * n
    for p, lv in moves:
        p %= n
        av.set_level(p, lv)
        want[p] = lv
        av.check()
    assert av.level == want
    walked = [p for b, e in av.buckets() for p in av.order[b:e]]
    assert sorted(walked) == [p for p in range(n) if want[p] > 0]
    assert [want[p] for p in walked] == sorted(want[p] for p in walked)


def test_holder_list_add_discard_sample() -> None:
    h: HolderList[str] = HolderList()
    assert h.add("a") and h.add("b") and h.add("c") and not h.add("a")
    assert len(h) == 3 and "b" in h
    assert h.discard("a") and not h.discard("a")
    assert sorted(h.items) == ["b", "c"] and h.index == {x: i for i, x in enumerate(h.items)}
    rng = random.Random(1)
    assert sorted(h.sample(5, rng)) == ["b", "c"]
    for x in "defghijk":
        h.add(x)
    got = h.sample(4, rng)
    assert len(got) == 4 and len(set(got)) == 4 and set(got) <= set(h.items)
    # Small lists come back rotated from a random start: every item leads sometimes.
    small: HolderList[int] = HolderList()
    for x in range(3):
        small.add(x)
    assert {small.sample(8, rng)[0] for _ in range(50)} == {0, 1, 2}
