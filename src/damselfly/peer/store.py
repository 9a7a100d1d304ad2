"""The engine's local store under ``$HOME/data``: one preallocated data file per task and a small
meta file listing the pieces held (with their sha256) and what is known of the whole file: the
sha256 it was hashed to, or the supernode digest under which all its pieces were confirmed
(``wholefile.py``).

It is the engine's ``PieceProvider``: the upload server asks it where a piece lies, and it answers
only for pieces held *verified* (a piece is marked held after its digest matched). A data file is
never rewritten in place once complete (a finished output may be a hard link to it): dropping a
stale copy unlinks the file and starts a new one. Every disk call runs in a worker thread.

Pieces are written with ``O_DIRECT`` where the file system allows it (``DIRECT_ALIGN``-aligned
ranges from the page-aligned pool buffers; a piece's unaligned tail, and file systems without
``O_DIRECT``, go through the page cache). Why: on the machines measured (docs/benchmarks.md),
dirtying new page-cache pages cost 1.4–2.2 CPU-seconds per GiB (page allocation, dirty
accounting, write-back throttling), more than receiving and hashing the bytes together, while a
direct write costs 0.05 and runs at the disk's 2.8 GB/s. A multi-GiB download also no longer
evicts the host's working set. What it costs: the first upload of a piece and the user's first
read of the output come from the disk, not from memory (3.4 GB/s cold here).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from damselfly.core.clock import Clock
from damselfly.core.errors import IntegrityError, NoSpaceError
from damselfly.core.ids import TASK_ID_RE
from damselfly.core.pieces import PiecePlan
from damselfly.store.pieceserver import PieceLocation

log = logging.getLogger("damselfly.peer.store")

META_SUFFIX = ".meta.json"
DATA_SUFFIX = ".data"
MAX_META = 4 * 1024 * 1024
#: O_DIRECT writes need offsets, lengths and buffer addresses aligned to the device's logical
#: block; 4 KiB covers every common device (512 B and 4 KiB sectors) and the page-aligned buffers
DIRECT_ALIGN = 4096
_O_DIRECT = getattr(os, "O_DIRECT", 0)


@dataclass
class TaskData:
    """One task's local copy. Mutated only on the event loop (one owner: the store)."""

    task_id: str
    length: int
    piece_size: int
    path: Path
    held: dict[int, str] = field(default_factory=dict)  # piece → hex sha256 ("" = unverified)
    file_sha256: str = ""  # set once the whole file was hashed and matched this digest
    #: the supernode's whole-file digest under which every piece was verified against the
    #: supernode's per-piece sha256 (see wholefile.py); "" = not known
    confirmed_sha256: str = ""
    upload: bool = True  # False for pattern "cdn": download only, serve nothing
    #: a private task (docs/protocol.md): served only to requests with a supernode's grant;
    #: kept in the meta, so it stays private after a restart
    private: bool = False
    #: cdn_pattern "source": the origin's version (validator) the held pieces belong to; a
    #: download of another version drops them first
    origin_version: str = ""
    #: cdn_pattern "source": the version each held piece was fetched and verified under (the
    #: one the supernode named when it assigned the piece; pieces read back from a meta: the
    #: copy's ``origin_version``). A download places the file only when every piece carries
    #: the version the supernode names at the end (``plan.off_version``).
    versions: dict[int, str] = field(default_factory=dict)
    last_used: float = 0.0
    active: int = 0  # downloads using it right now
    nodes: set[str] = field(default_factory=set)  # supernode base URLs that know we hold it
    fd: int = -1
    #: the same file opened with O_DIRECT for aligned piece writes; -1 = not supported here
    dfd: int = -1
    #: pieces this engine process verified and wrote itself (not those read back from a meta)
    verified_here: dict[int, str] = field(default_factory=dict)
    #: one piece written at a time (see verify_and_write); taken in worker threads only
    write_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: piece writes whose worker thread may still run (see ``LocalStore.write_piece``)
    writing: set[asyncio.Future[str]] = field(default_factory=set, repr=False)

    @property
    def plan(self) -> PiecePlan:
        return PiecePlan(self.length, self.piece_size)

    @property
    def complete(self) -> bool:
        return len(self.held) >= self.plan.count

    def held_bytes(self) -> int:
        plan = self.plan
        return sum(plan.size(n) for n in self.held if 0 <= n < plan.count)

    def meta(self) -> dict[str, object]:
        # a versioned copy keeps only the pieces of its version: a later run reads every piece
        # listed as of ``origin_version``
        held = {
            n: d
            for n, d in self.held.items()
            if not self.origin_version or self.versions.get(n) == self.origin_version
        }
        return {
            "task_id": self.task_id,
            "length": self.length,
            "piece_size": self.piece_size,
            "held": {str(n): d for n, d in sorted(held.items())},
            "file_sha256": self.file_sha256,
            "confirmed_sha256": self.confirmed_sha256,
            "upload": self.upload,
            "private": self.private,
            "origin_version": self.origin_version,
        }

    def __repr__(self) -> str:
        return (
            f"TaskData({self.task_id[:12]}, {len(self.held)}/{self.plan.count} pieces, "
            f"active={self.active}, upload={self.upload})"
        )


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def verify_and_write(
    fd: int,
    buf: memoryview | bytearray | bytes,
    offset: int,
    digest: str,
    lock: threading.Lock | None = None,
    dfd: int = -1,
) -> str:
    """In a worker thread: check the piece's sha256, then pwrite it all (raises IntegrityError).
    Returns the piece's sha256; with no ``digest`` to check (a piece fetched by Range from the
    origin under cdn_pattern "source") it is computed, so the piece can be reported and served.

    With ``dfd`` (the file opened O_DIRECT) the aligned part of the piece is written directly
    (pieces of one file in parallel: no page-cache pages, no inode-lock convoy); an unaligned
    tail, or a buffer the kernel refuses (EINVAL: not aligned in memory), goes through ``fd``.
    Buffered writes of one file go one at a time under ``lock``: the kernel serialises them
    anyway (its inode lock), and waiting threads would spin on it, burning the CPU the hashing
    needs.
    """
    got = hashlib.sha256(buf).hexdigest()
    if digest and got != digest.lower():
        raise IntegrityError(f"piece digest mismatch: got {got[:16]}…, expected {digest[:16]}…")
    with memoryview(buf) as view:
        done = 0
        if dfd >= 0 and offset % DIRECT_ALIGN == 0:
            done = _pwrite_direct(dfd, view[: len(view) - len(view) % DIRECT_ALIGN], offset)
        if done < len(view):
            with lock if lock is not None else contextlib.nullcontext():
                _pwrite_all(fd, view[done:], offset + done)
    return got


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _pwrite_direct(dfd: int, view: memoryview, offset: int) -> int:
    """Write ``view`` (aligned length) at ``offset`` through the O_DIRECT descriptor; returns
    how many bytes were written (fewer when the kernel refused the buffer's alignment)."""
    done = 0
    while done < len(view):
        try:
            n = os.pwrite(dfd, view[done:], offset + done)
        except OSError as e:
            if e.errno == errno.EINVAL:
                return done  # a buffer not aligned in memory: the rest goes buffered
            raise
        if n <= 0 or n % DIRECT_ALIGN:
            return done + max(n, 0)  # a short direct write (rare): finish it buffered
        done += n
    return done


def _forget_write(td: TaskData) -> Callable[[asyncio.Future[str]], None]:
    def done(fut: asyncio.Future[str]) -> None:
        td.writing.discard(fut)
        if not fut.cancelled():
            fut.exception()  # retrieved: a write whose caller was cancelled may have failed

    return done


async def _quiesce(td: TaskData) -> None:
    """Wait until no worker thread writes through the task's descriptors any more."""
    while td.writing:
        await asyncio.wait(list(td.writing))


def _take_fds(td: TaskData) -> tuple[int, int]:
    fds = (td.fd, td.dfd)
    td.fd = td.dfd = -1
    return fds


def _close_fds(fds: tuple[int, int]) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)


class LocalStore:
    """Task data under one directory; implements ``PieceProvider.locate`` for the upload server."""

    def __init__(self, data_dir: Path, clock: Clock, direct: bool = True) -> None:
        self.dir = data_dir
        self.clock = clock
        self.direct = direct and bool(_O_DIRECT)  # False: every write through the page cache
        self.tasks: dict[str, TaskData] = {}

    # -- start-up --------------------------------------------------------------------------

    async def load(self) -> None:
        """Read the metas left by an earlier engine; drop data files without a valid meta."""
        found = await asyncio.to_thread(self._scan)
        now = self.clock.now()
        for td in found:
            td.last_used = now
            self.tasks[td.task_id] = td
        if found:
            log.info("store: %d task(s) kept from an earlier run", len(found))

    def _scan(self) -> list[TaskData]:
        self.dir.mkdir(parents=True, exist_ok=True)
        out: list[TaskData] = []
        metas: set[str] = set()
        for entry in os.scandir(self.dir):
            name = entry.name
            if name.endswith(META_SUFFIX):
                tid = name[: -len(META_SUFFIX)]
                td = self._read_meta(tid, Path(entry.path))
                if td is not None:
                    out.append(td)
                    metas.add(tid)
        for entry in os.scandir(self.dir):
            name = entry.name
            tid = name[: -len(DATA_SUFFIX)] if name.endswith(DATA_SUFFIX) else ""
            if (not tid or tid not in metas) and not name.endswith(META_SUFFIX):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)  # orphan data or a leftover temp file
        return out

    def _read_meta(self, tid: str, meta_path: Path) -> TaskData | None:
        data_path = self.dir / (tid + DATA_SUFFIX)
        try:
            if not TASK_ID_RE.match(tid) or meta_path.stat().st_size > MAX_META:
                raise ValueError("bad meta")
            obj = json.loads(meta_path.read_bytes())
            length, piece_size = int(obj["length"]), int(obj["piece_size"])
            if obj["task_id"] != tid or length < 0 or piece_size <= 0:
                raise ValueError("bad meta")
            if data_path.stat().st_size != length:
                raise ValueError("data file has the wrong size")
            held = {int(k): str(v) for k, v in dict(obj["held"]).items()}
            plan = PiecePlan(length, piece_size)
            held = {n: d for n, d in held.items() if 0 <= n < plan.count}
            version = str(obj.get("origin_version") or "")
            return TaskData(
                tid,
                length,
                piece_size,
                data_path,
                held=held,
                file_sha256=str(obj.get("file_sha256") or ""),
                confirmed_sha256=str(obj.get("confirmed_sha256") or ""),
                upload=bool(obj.get("upload", True)),
                private=obj.get("private", False) is not False,  # anything odd: private
                origin_version=version,
                versions=dict.fromkeys(held, version) if version else {},
            )
        except (OSError, ValueError, KeyError, TypeError):
            for p in (meta_path, data_path):
                with contextlib.suppress(OSError):
                    p.unlink()
            return None

    # -- tasks -----------------------------------------------------------------------------

    async def open_task(
        self, task_id: str, length: int, piece_size: int, upload: bool = True
    ) -> TaskData:
        """The task's local copy, created (preallocated) when new or when its geometry changed;
        in use (never expired) until ``release()``.

        Raises NoSpaceError when ``$HOME/data`` has no room for it.
        """
        td = self.tasks.get(task_id)
        if td is not None and (td.length != length or td.piece_size != piece_size):
            log.info("store: task %s changed size at the origin; dropping the old copy", task_id)
            await self._drop_files(td)
            td = None
        if td is None:
            td = TaskData(task_id, length, piece_size, self.dir / (task_id + DATA_SUFFIX))
            self.tasks[task_id] = td
        td.upload = upload
        td.last_used = self.clock.now()
        if td.fd < 0:
            td.fd, td.dfd = await asyncio.to_thread(self._open_file, td)
        td.active += 1  # until release()
        return td

    def _open_file(self, td: TaskData) -> tuple[int, int]:
        """The data file, created and preallocated if new: (fd, O_DIRECT fd or -1)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        exists = td.path.exists()
        if not exists and free_bytes(self.dir) < td.length:
            raise NoSpaceError(
                f"not enough free space in {self.dir} for {td.length} bytes",
                "free some space or use --home on a bigger disk",
            )
        fd = os.open(td.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not exists and td.length > 0:
                os.posix_fallocate(fd, 0, td.length)
            elif os.fstat(fd).st_size != td.length:
                os.ftruncate(fd, td.length)
        except OSError as e:
            os.close(fd)
            if not exists:
                with contextlib.suppress(OSError):
                    td.path.unlink()
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpaceError(
                    f"not enough free space in {self.dir} for {td.length} bytes",
                    "free some space or use --home on a bigger disk",
                ) from e
            raise
        dfd = -1
        if self.direct:
            try:
                dfd = os.open(td.path, os.O_WRONLY | _O_DIRECT)
            except OSError:
                dfd = -1  # the file system has no O_DIRECT (tmpfs on old kernels, some FUSE)
        return fd, dfd

    async def reset(self, td: TaskData) -> None:
        """Drop a stale copy and start an empty one (a new inode: linked outputs keep theirs)."""
        # forgotten first: the upload server must not hand out a piece of a file being dropped
        td.held.clear()
        td.versions.clear()
        td.verified_here.clear()
        td.file_sha256 = ""
        td.confirmed_sha256 = ""
        td.origin_version = ""
        await self._drop_files(td)
        td.fd, td.dfd = await asyncio.to_thread(self._open_file, td)

    async def write_piece(
        self, td: TaskData, num: int, buf: memoryview | bytearray, digest: str, version: str = ""
    ) -> str:
        """Verify ``buf`` against ``digest`` and write it, off the loop; then mark it held,
        under ``version`` (cdn_pattern "source": the origin's version it was assigned under).
        Returns the piece's sha256 (computed when no digest was given).

        The write runs to its end in its worker thread even when the caller is cancelled (a
        thread cannot be stopped), and the data file's descriptors are closed only once every
        such write has ended (``_quiesce``): a write outliving a reset would otherwise land,
        through a descriptor number the new data file reused, in the new version's file."""
        start = td.plan.start(num)
        fut = asyncio.get_running_loop().run_in_executor(
            None, verify_and_write, td.fd, buf, start, digest, td.write_lock, td.dfd
        )
        td.writing.add(fut)
        fut.add_done_callback(_forget_write(td))
        got = await asyncio.shield(fut)
        td.held[num] = got
        if version:
            td.versions[num] = version
        else:
            td.versions.pop(num, None)
        if digest:
            td.verified_here[num] = got
        td.last_used = self.clock.now()
        return got

    async def drop_pieces(self, td: TaskData, nums: list[int]) -> None:
        """Forget pieces held (their bytes stay until rewritten); the meta is saved."""
        for n in nums:
            td.held.pop(n, None)
            td.versions.pop(n, None)
            td.verified_here.pop(n, None)
        td.file_sha256 = ""
        td.confirmed_sha256 = ""
        await self.save_meta(td)

    def touch(self, task_id: str) -> None:
        td = self.tasks.get(task_id)
        if td is not None:
            td.last_used = self.clock.now()

    async def release(self, td: TaskData) -> None:
        """A download is done with the task: save its meta; close the file when unused."""
        td.active = max(0, td.active - 1)
        td.last_used = self.clock.now()
        await self.save_meta(td)
        if td.active == 0 and td.fd >= 0:
            await _quiesce(td)
            if td.active == 0 and td.fd >= 0:  # (no download took it meanwhile)
                await asyncio.to_thread(_close_fds, _take_fds(td))

    async def save_meta(self, td: TaskData) -> None:
        if self.tasks.get(td.task_id) is not td:
            return
        await asyncio.to_thread(self._write_meta, td.task_id, json.dumps(td.meta()))

    def _write_meta(self, tid: str, text: str) -> None:
        path = self.dir / (tid + META_SUFFIX)
        tmp = self.dir / f".{tid}.{secrets.token_hex(4)}.tmp"
        try:
            tmp.write_text(text)
            os.replace(tmp, path)
        except OSError as e:
            log.warning("store: could not save the meta of task %s: %s", tid, e)
            with contextlib.suppress(OSError):
                tmp.unlink()

    async def remove(self, task_id: str) -> None:
        td = self.tasks.pop(task_id, None)
        if td is not None:
            await self._drop_files(td)

    async def _drop_files(self, td: TaskData) -> None:
        await _quiesce(td)
        fds = _take_fds(td)
        meta = self.dir / (td.task_id + META_SUFFIX)

        def drop() -> None:
            _close_fds(fds)
            for p in (td.path, meta):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

        await asyncio.to_thread(drop)

    def expired(self, now: float, ttl: float) -> list[TaskData]:
        """Tasks nobody used for ``ttl`` seconds (no download, no upload)."""
        return [td for td in self.tasks.values() if td.active == 0 and now - td.last_used >= ttl]

    async def close(self) -> None:
        for td in list(self.tasks.values()):
            await self.save_meta(td)
            if td.fd >= 0:
                await _quiesce(td)
                await asyncio.to_thread(_close_fds, _take_fds(td))

    def is_private(self, task_id: str) -> bool:
        td = self.tasks.get(task_id)
        return td is not None and td.private

    # -- PieceProvider ---------------------------------------------------------------------

    async def locate(self, task_id: str, num: int) -> PieceLocation | None:
        td = self.tasks.get(task_id)
        if td is None or not td.upload or not td.held.get(num):
            return None  # not held, or held without a verified digest
        plan = td.plan
        if not 0 <= num < plan.count:
            return None
        td.last_used = self.clock.now()
        return PieceLocation(str(td.path), plan.start(num), plan.size(num))

    def __repr__(self) -> str:
        return f"LocalStore({self.dir}, {len(self.tasks)} task(s))"
