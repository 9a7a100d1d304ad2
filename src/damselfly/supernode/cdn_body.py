"""Turning an origin's body into cached pieces, without ever holding the file in memory.

``stream_pieces`` cuts a body of known length into pieces: each full piece is written (pwrite)
and sha256-hashed in a worker thread while the next one is being received (two piece buffers),
and handed to ``on_piece`` as soon as it is on disk — so the scheduler can hand it to peers while
the origin is still sending. ``spool`` stores a body of unknown length (chunked) block by block,
within a byte budget, and returns its length and sha256; the caller digests the pieces after.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from damselfly.core.errors import DamselflyError, OriginChanged, OriginError
from damselfly.core.pieces import DEFAULT_PIECE_SIZE, PiecePlan
from damselfly.supernode import cdn_disk

#: records a piece on disk and announces it; False when the digest contradicts what was known
OnPiece = Callable[[int, str], bool]


async def stream_pieces(
    chunks: AsyncIterator[bytes],
    plan: PiecePlan,
    first: int,
    last: int,
    path: Path,
    url: str,
    file_hash: Any,
    on_piece: OnPiece,
) -> None:
    """Cut ``chunks`` (exactly pieces first..last) into pieces; raise if the body is short.

    ``file_hash`` (a hashlib object or None) is fed every byte in order. ``url`` is redacted.
    """
    loop = asyncio.get_running_loop()
    size = min(plan.piece_size, plan.start(last) + plan.size(last) - plan.start(first))
    buf, spare = bytearray(size), bytearray(size if last > first else 0)
    num, fill, need = first, 0, plan.size(first)
    pending: tuple[int, asyncio.Future[str]] | None = None

    async def done(job: tuple[int, asyncio.Future[str]]) -> None:
        try:
            digest = await job[1]
        except OSError as e:
            raise cdn_disk.translate_os_error(e, path) from None
        if not on_piece(job[0], digest):
            raise OriginChanged(
                f"piece {job[0]} of {url} changed at the origin under the same ETag",
                "the version is fetched again from the start",
            )

    try:
        async for chunk in chunks:
            if pending is not None:
                # Let the loop see a finished write (buffered chunks arrive without yielding),
                # so that a piece is announced as soon as it is on disk.
                await asyncio.sleep(0)
                if pending[1].done():
                    job, pending = pending, None
                    await done(job)
            view, pos = memoryview(chunk), 0
            while pos < len(view):
                if num > last:
                    raise OriginError(f"the origin sent more bytes than asked for {url}")
                take = min(need - fill, len(view) - pos)
                buf[fill : fill + take] = view[pos : pos + take]
                fill += take
                pos += take
                if fill < need:
                    continue
                if pending is not None:
                    job, pending = pending, None
                    await done(job)
                write = loop.run_in_executor(
                    None,
                    cdn_disk.write_piece,
                    path,
                    plan.start(num),
                    memoryview(buf)[:need],
                    file_hash,
                )
                pending = (num, write)
                buf, spare = spare, buf
                num, fill = num + 1, 0
                need = plan.size(num) if num <= last else 0
        if pending is not None:
            job, pending = pending, None
            await done(job)
    finally:
        if pending is not None:  # a thread still uses a buffer: let it finish, keep its piece
            await asyncio.wait([pending[1]])
            if not pending[1].cancelled() and pending[1].exception() is None:
                on_piece(pending[0], pending[1].result())
    if num <= last:
        raise OriginError(
            f"the origin ended the body of {url} early", "a flaky origin or proxy; it is retried"
        )


async def spool(
    chunks: AsyncIterator[bytes],
    path: Path,
    budget: int,
    too_big: Callable[[int], DamselflyError],
    file_hash: Any,
) -> int:
    """Append ``chunks`` to ``path`` (already created empty); return the length stored.

    More than ``budget`` bytes raises ``too_big(bytes needed)``. Blocks of DEFAULT_PIECE_SIZE are
    written and hashed in a thread while the next one is received.
    """
    loop = asyncio.get_running_loop()
    buf, spare = bytearray(DEFAULT_PIECE_SIZE), bytearray(DEFAULT_PIECE_SIZE)
    fill = written = 0
    job: asyncio.Future[str] | None = None
    try:
        async for chunk in chunks:
            if written + fill + len(chunk) > budget:
                raise too_big(written + fill + len(chunk))
            view, pos = memoryview(chunk), 0
            while pos < len(view):
                take = min(len(buf) - fill, len(view) - pos)
                buf[fill : fill + take] = view[pos : pos + take]
                fill += take
                pos += take
                if fill == len(buf):
                    if job is not None:
                        await job
                    job = loop.run_in_executor(
                        None, cdn_disk.write_piece, path, written, memoryview(buf), file_hash, False
                    )
                    written += fill
                    buf, spare, fill = spare, buf, 0
        if job is not None:
            await job
        job = None
        if fill:
            await asyncio.to_thread(
                cdn_disk.write_piece, path, written, memoryview(buf)[:fill], file_hash, False
            )
            written += fill
    except OSError as e:
        raise cdn_disk.translate_os_error(e, path) from None
    finally:
        if job is not None:
            await asyncio.wait([job])
    return written
