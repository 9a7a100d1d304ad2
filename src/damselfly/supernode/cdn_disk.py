"""Blocking work on the CDN's data files: writing and hashing pieces, hashing whole files.

Every function here blocks (disk I/O, sha256 of megabytes); the CDN calls them through
``run_in_executor`` / ``asyncio.to_thread`` so the event loop never waits on them. hashlib releases
the GIL on large buffers, so hashing in threads runs in parallel with the network.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Any

from damselfly.core.errors import DamselflyError, NoSpaceError
from damselfly.core.pieces import PiecePlan

READ_BLOCK = 1024 * 1024
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def prepare_data(path: Path, length: int) -> None:
    """Start a new version's data file: unlink the old one, create it sparse at ``length``.

    Unlinking (rather than truncating) lets a piece upload already reading the old file finish
    with the old bytes instead of seeing the new version's bytes land under it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, length)
    finally:
        os.close(fd)


def ensure_data(path: Path, length: int) -> None:
    """Make sure a partial version's data file exists at its full (sparse) length."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_size < length:
            os.ftruncate(fd, length)
    finally:
        os.close(fd)


def write_piece(
    path: Path, offset: int, data: memoryview, file_hash: Any = None, digest: bool = True
) -> str:
    """pwrite ``data`` at ``offset``; return its sha256 hex (or "" when ``digest`` is False);
    feed ``file_hash`` when given.

    The file is opened per call, so a writer that outlives a cancelled fetch never holds an fd
    that could be closed and reused under it.
    """
    fd = os.open(path, os.O_WRONLY)
    try:
        view = data
        pos = offset
        while view:
            n = os.pwrite(fd, view, pos)
            view = view[n:]
            pos += n
    finally:
        os.close(fd)
    if file_hash is not None:
        file_hash.update(data)
    return hashlib.sha256(data).hexdigest() if digest else ""


def hash_range(path: Path, offset: int, size: int) -> str | None:
    """sha256 hex of ``size`` bytes at ``offset``; None when the file is missing or short."""
    h = hashlib.sha256()
    try:
        with path.open("rb", buffering=0) as f:
            f.seek(offset)
            left = size
            while left > 0:
                block = f.read(min(READ_BLOCK, left))
                if not block:
                    return None
                h.update(block)
                left -= len(block)
    except FileNotFoundError:
        return None
    return h.hexdigest()


def hash_file(path: Path, length: int) -> str | None:
    """sha256 hex of the first ``length`` bytes of the file (None when it is shorter)."""
    return hash_range(path, 0, length)


def digest_pieces(path: Path, plan: PiecePlan) -> list[str] | None:
    """Every piece's sha256 for a file already on disk (after spooling a chunked answer)."""
    out: list[str] = []
    for i in range(plan.count):
        d = hash_range(path, plan.start(i), plan.size(i))
        if d is None:
            return None
        out.append(d)
    return out


def verify_file(path: Path, plan: PiecePlan, digests: list[str | None]) -> tuple[str, list[int]]:
    """Re-read a file whose pieces were fetched in several goes: its sha256 and the pieces whose
    bytes no longer match their digest (or that are missing: the file is short)."""
    whole = hashlib.sha256()
    bad: list[int] = []
    try:
        f = path.open("rb", buffering=0)
    except FileNotFoundError:
        return "", list(range(plan.count))
    with f:
        for i in range(plan.count):
            piece = hashlib.sha256()
            left = plan.size(i)
            while left > 0:
                block = f.read(min(READ_BLOCK, left))
                if not block:
                    break
                piece.update(block)
                whole.update(block)
                left -= len(block)
            if left > 0:
                bad.extend(range(i, plan.count))
                break
            if piece.hexdigest() != digests[i]:
                bad.append(i)
    return whole.hexdigest(), bad


def translate_os_error(e: OSError, where: Path) -> DamselflyError:
    """An OSError from the cache's disk as the one-line error a user sees."""
    if e.errno in _NO_SPACE:
        return NoSpaceError(
            f"the disk holding {where.parent} filled up while caching",
            "free space on the supernode's --home-dir, or let disk GC remove old tasks",
        )
    return DamselflyError(
        f"could not write the CDN cache under {where.parent}: {e.strerror or e}",
        "check the permissions and health of the supernode's --home-dir",
    )
