"""Back source: download the whole file straight from the origin (v1's fallback, and ``-p source``).

One GET with the user's headers, streamed to a temp file beside the output in blocks that are
written and hashed in a worker thread; the expected digest (``--md5`` or the URL's sha256) is
checked before the temp file is ``os.replace``d onto the output. A failure leaves nothing behind.

``reported`` tells a supernode, while the origin download runs, that this peer went to the
origin and why (``dragonfly_supernode_back_source_total{reason}``): best effort, never delaying
the download by more than ``REPORT_GRACE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
from collections.abc import AsyncIterator, Callable

import aiohttp

from damselfly.core.errors import (
    DamselflyError,
    IntegrityError,
    NoSpaceError,
    OriginAuthError,
    OriginError,
    OriginNotFound,
)
from damselfly.core.ids import redact_url
from damselfly.core.nodes import Node
from damselfly.core.protocol import back_source_reason
from damselfly.core.ratelimit import AsyncLimiter, acquire_all
from damselfly.peer.fetch import OriginAccess
from damselfly.peer.output import check_room, temp_path
from damselfly.peer.snclient import SupernodeClient
from damselfly.peer.wholefile import Expected

BLOCK = 1024 * 1024
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0
#: the report runs beside the origin download; once that ends, it gets this much more time
REPORT_GRACE = 1.0


def origin_status_error(status: int, url: str) -> OriginError:
    """The error a user sees for an origin's HTTP error status."""
    u = redact_url(url)
    if status == 404:
        return OriginNotFound(f"the origin answered 404 Not Found for {u}", "check the URL", 404)
    if status in (401, 403, 407):
        return OriginAuthError(
            f"the origin refused access ({status}) to {u}",
            "pass the right credentials with --header",
            status,
        )
    return OriginError(f"the origin answered status {status} for {u}", "try again later", status)


def _write_and_hash(fd: int, block: bytes, hashers: list[hashlib._Hash]) -> None:
    view = memoryview(block)
    while view:
        n = os.write(fd, view)
        view = view[n:]
    for h in hashers:
        h.update(block)


async def back_source(
    session: aiohttp.ClientSession,
    origin: OriginAccess,
    output: str,
    expected: list[Expected],
    limiters: list[AsyncLimiter | None],
    on_bytes: Callable[[int, int | None], None],
) -> int:
    """Download ``origin.url`` to ``output`` atomically; return its length.

    ``expected`` digests are all checked. ``on_bytes(done, total)`` reports progress.
    """
    out_dir = os.path.dirname(output)
    tmp = temp_path(output)
    fd = -1
    try:
        fd = await asyncio.to_thread(
            os.open, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644
        )
        hashers = {e.algo: hashlib.new(e.algo) for e in expected}
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
        )
        headers = dict(origin.headers)
        headers["Accept-Encoding"] = "identity"
        try:
            async with session.get(
                origin.url,
                headers=headers,
                timeout=timeout,
                ssl=origin.ssl if origin.ssl is not None else True,
                auto_decompress=False,
            ) as resp:
                if resp.status != 200:
                    raise origin_status_error(resp.status, origin.url)
                total = resp.content_length
                if total is not None:
                    await asyncio.to_thread(check_room, out_dir, total, "the download")
                    if total > 0:
                        await asyncio.to_thread(_fallocate, fd, total)
                done = 0
                block = bytearray()
                async for chunk in resp.content.iter_chunked(256 * 1024):
                    block += chunk
                    done += len(chunk)
                    await acquire_all(limiters, len(chunk))
                    if len(block) >= BLOCK:
                        data, block = bytes(block), bytearray()
                        await asyncio.to_thread(_write_and_hash, fd, data, list(hashers.values()))
                        on_bytes(done, total)
                if block:
                    await asyncio.to_thread(
                        _write_and_hash, fd, bytes(block), list(hashers.values())
                    )
                if total is not None and done != total:
                    raise OriginError(f"the origin sent {done} of {total} bytes", "try again later")
                on_bytes(done, total)
        except (TimeoutError, aiohttp.ClientError) as e:
            raise OriginError(
                f"could not download {redact_url(origin.url)} from the origin: "
                f"{e.__class__.__name__}",
                "check the URL and the network",
            ) from e
        for want in expected:
            got = hashers[want.algo].hexdigest()
            if got != want.hexdigest:
                raise IntegrityError(
                    f"the file's {want.algo} is {got}, but {want.origin} says {want.hexdigest}",
                    "check --md5" if want.origin == "--md5" else "the origin serves other content",
                )
        os.close(fd)
        fd = -1
        await asyncio.to_thread(os.replace, tmp, output)
        return done
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpaceError(
                f"not enough free space in {out_dir}", "free some space and try again"
            ) from e
        raise DamselflyError(f"could not write {output}: {e.strerror or e}") from e
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _fallocate(fd: int, length: int) -> None:
    try:
        os.posix_fallocate(fd, 0, length)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
            raise


@contextlib.asynccontextmanager
async def reported(
    supernodes: SupernodeClient, node: Node | None, task_id: str, peer_id: str, reason: int
) -> AsyncIterator[None]:
    """Report the back source (v1 ``reason`` code) to ``node`` while the body downloads."""
    if node is None:  # no supernode answered: nobody to tell (the engine's metrics count it)
        yield
        return
    report = asyncio.create_task(
        supernodes.report_back_source(node, task_id, peer_id, back_source_reason(reason)),
        name=f"backsource-report-{task_id[:8]}",
    )
    try:
        yield
    except asyncio.CancelledError:
        report.cancel()  # the download is being cancelled: so is its report
        raise
    finally:
        if not report.done():
            await asyncio.wait({report}, timeout=REPORT_GRACE)
        if not report.done():
            report.cancel()
            await asyncio.wait({report})
