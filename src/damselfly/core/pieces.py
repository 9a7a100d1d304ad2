"""The piece plan: how a file of a given length is cut into pieces (Dragonfly v1's rule)."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024
DEFAULT_PIECE_SIZE = 4 * MiB
PIECE_SIZE_LIMIT = 15 * MiB


def piece_size_for(length: int) -> int:
    """v1: 4 MiB up to 200 MiB; above, ``length/100MiB + 2`` MiB, capped at 15 MiB.

    (``supernode/daemon/mgr/cdn``: ``computePieceSize``.) An unknown length (< 0) gets 4 MiB.
    """
    if length <= 200 * MiB:
        return DEFAULT_PIECE_SIZE
    mb = length // (100 * MiB) + 2
    return min(mb * MiB, PIECE_SIZE_LIMIT)


@dataclass(frozen=True, slots=True)
class PiecePlan:
    length: int
    piece_size: int

    @classmethod
    def for_length(cls, length: int) -> PiecePlan:
        return cls(length, piece_size_for(length))

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
