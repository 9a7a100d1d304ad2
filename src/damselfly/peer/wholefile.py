"""The whole-file check: which digest to expect, and a hasher that follows the download.

Expected digest, in order: the user's ``--md5``; else the sha256 an OCI URL names; else the
supernode's ``file_sha256``. ``PrefixHasher`` hashes the contiguous prefix of the data file in a
worker thread as pieces arrive, so that little is left to hash when the last piece lands.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from damselfly.core.pieces import PiecePlan

READ_CHUNK = 1024 * 1024


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
        return Expected("sha256", supernode_sha256.lower(), "the supernode")
    return None


def hash_range(fd: int, h: hashlib._Hash, start: int, end: int) -> None:
    """In a worker thread: feed bytes [start, end) of ``fd`` to ``h``."""
    pos = start
    while pos < end:
        data = os.pread(fd, min(READ_CHUNK, end - pos), pos)
        if not data:
            raise OSError(f"data file shorter than expected at offset {pos}")
        h.update(data)
        pos += len(data)


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
