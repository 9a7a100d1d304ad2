"""The whole-file check: which digest to expect, whether the pieces' own checks already cover it,
and a hasher that follows the download.

Expected digest, in order: the user's ``--md5``; else the sha256 an OCI URL names; else the
supernode's ``file_sha256``. Nothing unverified is ever placed at the output:

- ``--md5`` or a sha256 in the URL: an expectation from outside the swarm, so the bytes of the
  data file (the very inode the output becomes a link to) are hashed in full and compared.
- The supernode's digest: every piece is verified against the sha256 the supernode gives for it
  before a byte of it is written (``store.verify_and_write``), and written whole at its offset in
  a file of exactly the task's length. So when *every* piece of the file was verified against
  the supernode's per-piece sha256 — in this download (``Confirmed``), or in an earlier one under
  this very whole-file digest (``TaskData.confirmed_sha256``, kept like ``file_sha256``: a
  complete data file is never rewritten) — the file is, byte for byte, the pieces the supernode
  describes, and ``pieces_suffice`` spares the full hash. Otherwise (pieces kept from an earlier
  run, or not confirmed by the supernode now, or that came without a digest) the data file is
  hashed in full against the supernode's ``file_sha256``, and a mismatch drops the copy. What is
  not checked then is only the supernode's own consistency (its file digest against its piece
  digests). The saving is large: a full sha256 of 1 GiB costs a core ~0.6 s that mostly cannot
  overlap the download (the scheduler hands pieces out rarest first, from a random rotation, so
  the file's prefix is often complete only at the very end).

``PrefixHasher`` hashes the contiguous prefix of the data file in a worker thread as pieces
arrive (overlapping with the download as far as the piece order allows), reading through
read-only mmap windows of the page cache (no copy), so that less is left to hash at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import mmap
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from damselfly.core.pieces import PiecePlan
from damselfly.core.protocol import PieceAssignment

#: bytes of the data file mapped at once while hashing (they count as resident while mapped)
WINDOW = 4 * 1024 * 1024


SUPERNODE = "the supernode"


@dataclass(frozen=True, slots=True)
class Expected:
    algo: str  # "md5" or "sha256"
    hexdigest: str
    origin: str  # where the expectation comes from, for messages: "--md5", "url", "supernode"


def expected_digest(md5: str, url_sha256: str | None, supernode_sha256: str) -> Expected | None:
    if md5:
        return Expected("md5", md5.lower(), "--md5")
    if url_sha256:
        return Expected("sha256", url_sha256.lower(), "the sha256 in the URL")
    if supernode_sha256:
        return Expected("sha256", supernode_sha256.lower(), SUPERNODE)
    return None


def needs_full_hash(md5: str, url_sha256: str | None) -> bool:
    """Whether the file will be hashed in full whatever the pieces say (start hashing at once)."""
    return bool(md5 or url_sha256)


@dataclass(slots=True)
class Confirmed:
    """The pieces this download knows to match the supernode's per-piece sha256: fetched and
    verified against the digest they were assigned with, or verified and written earlier by this
    same engine process and assigned again with that digest. (Pieces read back from the meta of
    an earlier run are not trusted this way: their bytes spent time on disk unwatched.) Pure; fed
    by the download driver."""

    nums: set[int] = field(default_factory=set)

    def on_assigned(self, pieces: Iterable[PieceAssignment], verified: Mapping[int, str]) -> None:
        """The scheduler assigned ``pieces``; ``verified`` maps the pieces this process verified
        and wrote to the digest they were verified against."""
        for a in pieces:
            if a.digest and verified.get(a.num) == a.digest.lower():
                self.nums.add(a.num)

    def on_verified(self, num: int, digest: str) -> None:
        """Piece ``num`` was verified against ``digest`` and written ("" = not verified)."""
        if digest:
            self.nums.add(num)

    def clear(self) -> None:
        self.nums.clear()

    def covers(self, count: int) -> bool:
        return all(n in self.nums for n in range(count))


def pieces_suffice(exp: Expected, confirmed: Confirmed, count: int, confirmed_sha256: str) -> bool:
    """Whether the pieces' own checks stand for the whole-file check (see the module docstring):
    the expectation is the supernode's, and every piece was verified against the supernode's
    sha256 for it — now, or earlier under this same whole-file digest."""
    if exp.origin != SUPERNODE:
        return False
    return confirmed.covers(count) or confirmed_sha256 == exp.hexdigest


def hash_range(fd: int, h: hashlib._Hash, start: int, end: int) -> None:
    """In a worker thread: feed bytes [start, end) of ``fd`` to ``h``. Raises OSError when the
    file is shorter than ``end``.

    While the data file has no other link (no output shares its inode, so nothing but this engine
    can shrink it), it is read through read-only mmap windows of ``WINDOW`` bytes: no copy out of
    the page cache. Otherwise it is read with ``pread`` into one reused buffer, because a mapped
    file that someone truncates kills the reader with SIGBUS.
    """
    if end <= start:
        return
    st = os.fstat(fd)
    if st.st_nlink == 1 and st.st_size >= end:
        _hash_mapped(fd, h, start, end)
    else:
        _hash_read(fd, h, start, end)


def _hash_mapped(fd: int, h: hashlib._Hash, start: int, end: int) -> None:
    pos = start
    while pos < end:
        base = pos - pos % mmap.ALLOCATIONGRANULARITY
        size = min(end, base + WINDOW) - base
        flags = mmap.MAP_SHARED | mmap.MAP_POPULATE
        with mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ, offset=base) as m:
            with memoryview(m) as view:
                h.update(view[pos - base : size])
        pos = base + size


def _hash_read(fd: int, h: hashlib._Hash, start: int, end: int) -> None:
    buf = bytearray(min(WINDOW, end - start))
    with memoryview(buf) as view:
        pos = start
        while pos < end:
            n = os.preadv(fd, [view[: min(len(buf), end - pos)]], pos)
            if n <= 0:
                raise OSError(f"data file shorter than expected at offset {pos}")
            h.update(view[:n])
            pos += n


class PrefixHasher:
    """Hashes pieces 0, 1, 2, … of a data file as soon as each is held, off the event loop.

    The driver calls ``poke()`` after each new piece; ``result()`` waits for the rest and returns
    the hex digest. ``held`` is read on the loop only (the thread gets plain offsets).
    """

    def __init__(self, algo: str, fd: int, plan: PiecePlan, held: Callable[[int], bool]) -> None:
        self.algo = algo
        self.fd = fd
        self.plan = plan
        self.held = held
        self.h = hashlib.new(algo)
        self.next_piece = 0
        self._poked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, name: str) -> None:
        self._task = asyncio.create_task(self._run(), name=name)
        self._poked.set()

    def poke(self) -> None:
        self._poked.set()

    async def _run(self) -> None:
        while self.next_piece < self.plan.count:
            await self._poked.wait()
            self._poked.clear()
            await self._advance()

    async def _advance(self) -> None:
        first = self.next_piece
        last = first
        while last < self.plan.count and self.held(last):
            last += 1
        if last == first:
            return
        start = self.plan.start(first)
        end = self.plan.start(last - 1) + self.plan.size(last - 1)
        await asyncio.to_thread(hash_range, self.fd, self.h, start, end)
        self.next_piece = last
        self._poked.set()  # more may have arrived meanwhile

    async def result(self) -> str:
        """All pieces are held: finish hashing and return the hex digest."""
        if self._task is None:
            self.start("prefix-hasher")
        assert self._task is not None
        self.poke()
        await self._task
        return self.h.hexdigest()

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                if (t := asyncio.current_task()) is not None and t.cancelling():
                    raise

    def __repr__(self) -> str:
        return f"PrefixHasher({self.algo}, {self.next_piece}/{self.plan.count} pieces hashed)"
