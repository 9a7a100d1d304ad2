"""The piece plan: how a file of a given length is cut into pieces (Dragonfly v1's rule)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

MiB = 1024 * 1024
DEFAULT_PIECE_SIZE = 4 * MiB
PIECE_SIZE_LIMIT = 15 * MiB


#: below v1's size, files are cut into about this many pieces ...
TARGET_PIECES = 100
#: ... but no piece is smaller than this (per-piece requests would cost more than they save)
MIN_PIECE_SIZE = 1 * MiB


def v1_piece_size(length: int) -> int:
    """v1: 4 MiB up to 200 MiB; above, ``length/100MiB + 2`` MiB, capped at 15 MiB.

    (``supernode/daemon/mgr/cdn``: ``computePieceSize``.) An unknown length (< 0) gets 4 MiB.
    """
    if length <= 200 * MiB:
        return DEFAULT_PIECE_SIZE
    mb = length // (100 * MiB) + 2
    return min(mb * MiB, PIECE_SIZE_LIMIT)


def piece_size_for(length: int) -> int:
    """The piece size for a file of ``length`` bytes: v1's size at most, and below it small
    enough that the file has about ``TARGET_PIECES`` pieces, in whole MiB, at least 1 MiB.

    Why smaller than v1 for files under ~1.3 GiB: a peer serves a piece only once it holds all of
    it, so a swarm's start-up costs a few piece-times per doubling of the holders (log2 N). With
    v1's 4 MiB a 100–200 MB file has 25–50 pieces and that start-up is 15–30% of the whole
    distribution; with ~100 pieces it is under 10% (docs/benchmarks.md: the scale simulator's
    whole-piece floor and its runs with 1, 2 and 4 MiB pieces). Big files keep v1's big pieces:
    each piece costs a request and a schedule call, which bounds a single host's rate on a fast
    link. An unknown length (< 0) gets 4 MiB (the size is chosen before the length is known).
    """
    if length < 0:
        return DEFAULT_PIECE_SIZE
    want = -(-length // TARGET_PIECES)  # ceil(length / TARGET_PIECES)
    want = -(-want // MiB) * MiB  # whole MiB
    return min(v1_piece_size(length), max(MIN_PIECE_SIZE, want))


#: the piece-size rules a supernode can be configured with (``--piece-sizes``), by name
PIECE_RULES = {"swarm": piece_size_for, "v1": v1_piece_size}


def piece_rule(name: str) -> Callable[[int], int]:
    """The rule called ``name``; ValueError names the known ones."""
    try:
        return PIECE_RULES[name]
    except KeyError:
        raise ValueError(
            f"unknown piece-size rule {name!r}: use {' or '.join(PIECE_RULES)}"
        ) from None


@dataclass(frozen=True, slots=True)
class PiecePlan:
    length: int
    piece_size: int

    @classmethod
    def for_length(cls, length: int, rule: str = "swarm") -> PiecePlan:
        return cls(length, piece_rule(rule)(length))

    @property
    def count(self) -> int:
        if self.length <= 0:
            return 0
        return (self.length + self.piece_size - 1) // self.piece_size

    def start(self, num: int) -> int:
        self._check(num)
        return num * self.piece_size

    def size(self, num: int) -> int:
        self._check(num)
        return min(self.piece_size, self.length - num * self.piece_size)

    def range(self, num: int) -> tuple[int, int]:
        """Inclusive byte range (start, end) as in an HTTP Range header."""
        s = self.start(num)
        return s, s + self.size(num) - 1

    def _check(self, num: int) -> None:
        if not 0 <= num < self.count:
            raise IndexError(f"piece {num} out of range 0..{self.count - 1}")
