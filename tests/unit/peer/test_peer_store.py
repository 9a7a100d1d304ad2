"""The engine's local store on a real directory: preallocation, verified writes, what the
upload server may serve, metas across restarts, stale copies, expiry."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from damselfly.core.clock import FakeClock
from damselfly.core.errors import IntegrityError, NoSpaceError
from damselfly.peer.piececlient import BufferPool
from damselfly.peer.store import DIRECT_ALIGN, LocalStore

TID = "a" * 64
PS = 1000


def digest(b: bytes | bytearray) -> str:
    return hashlib.sha256(b).hexdigest()


async def test_a_piece_is_served_only_once_written_verified(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "data", FakeClock())
    await store.load()
    td = await store.open_task(TID, 2500, PS)
    assert td.path.stat().st_size == 2500  # preallocated
    assert await store.locate(TID, 0) is None
    piece = bytearray(os.urandom(PS))
    with pytest.raises(IntegrityError):
        await store.write_piece(td, 0, piece, "0" * 64)
    assert await store.locate(TID, 0) is None
    await store.write_piece(td, 1, piece, digest(piece))
    loc = await store.locate(TID, 1)
    assert loc is not None and (loc.offset, loc.size) == (PS, PS)
    with open(loc.path, "rb") as f:
        f.seek(loc.offset)
        assert f.read(loc.size) == piece
    assert await store.locate(TID, 7) is None and await store.locate("b" * 64, 1) is None
    await store.release(td)
    await store.close()


async def test_pieces_without_a_digest_get_one_and_cdn_tasks_are_not_served(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path, FakeClock())
    td = await store.open_task(TID, PS, PS)
    # a piece fetched from the origin under cdn_pattern "source" comes without a digest: its
    # sha256 is computed, recorded (and reported), and other peers verify against it
    assert await store.write_piece(td, 0, bytearray(PS), "") == digest(bytes(PS))
    assert td.held[0] == digest(bytes(PS))
    assert await store.locate(TID, 0) is not None
    td2 = await store.open_task("c" * 64, PS, PS, upload=False)
    await store.write_piece(td2, 0, bytearray(PS), digest(bytes(PS)))
    assert await store.locate("c" * 64, 0) is None  # pattern cdn: upload nothing
    await store.close()


async def test_metas_survive_a_restart_and_orphans_are_removed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, FakeClock())
    td = await store.open_task(TID, 2 * PS, PS)
    piece = bytearray(os.urandom(PS))
    await store.write_piece(td, 0, piece, digest(piece))
    await store.write_piece(td, 1, bytearray(PS), "")
    assert td.verified_here == {0: digest(piece)}  # piece 1 came without a digest
    td.file_sha256, td.confirmed_sha256 = "f" * 64, "e" * 64
    await store.release(td)
    (tmp_path / ("b" * 64 + ".data")).write_bytes(b"orphan")  # no meta
    (tmp_path / ("c" * 64 + ".meta.json")).write_text("{not json")  # broken meta
    again = LocalStore(tmp_path, FakeClock())
    await again.load()
    assert list(again.tasks) == [TID]
    assert again.tasks[TID].held == {0: digest(piece), 1: digest(bytes(PS))}  # 1: computed
    assert again.tasks[TID].file_sha256 == "f" * 64
    assert again.tasks[TID].confirmed_sha256 == "e" * 64
    assert again.tasks[TID].verified_here == {}  # verified by an earlier process, not this one
    assert sorted(os.listdir(tmp_path)) == [TID + ".data", TID + ".meta.json"]


async def test_reset_starts_a_new_file_and_linked_outputs_keep_theirs(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "data", FakeClock())
    td = await store.open_task(TID, PS, PS)
    old = bytearray(os.urandom(PS))
    await store.write_piece(td, 0, old, digest(old))
    os.link(td.path, tmp_path / "output")
    td.file_sha256 = td.confirmed_sha256 = "f" * 64
    await store.reset(td)
    assert td.held == {} and td.verified_here == {}
    assert td.file_sha256 == td.confirmed_sha256 == ""
    new = bytearray(os.urandom(PS))
    await store.write_piece(td, 0, new, digest(new))
    assert (tmp_path / "output").read_bytes() == old
    assert td.path.read_bytes() == new
    await store.close()


async def test_a_new_geometry_drops_the_old_copy(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, FakeClock())
    td = await store.open_task(TID, PS, PS)
    await store.write_piece(td, 0, bytearray(PS), digest(bytes(PS)))
    await store.release(td)
    td = await store.open_task(TID, 3 * PS, PS)
    assert td.held == {} and td.path.stat().st_size == 3 * PS
    await store.close()


async def test_no_room_fails_at_once(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, FakeClock())
    with pytest.raises(NoSpaceError) as e:
        await store.open_task(TID, 2**50, 2**30)
    assert "free space" in str(e.value) and os.listdir(tmp_path) == []


async def test_expiry_follows_the_last_use(tmp_path: Path) -> None:
    clock = FakeClock()
    store = LocalStore(tmp_path, clock)
    td = await store.open_task(TID, PS, PS)
    await store.write_piece(td, 0, bytearray(PS), digest(bytes(PS)))
    assert store.expired(clock.now() + 999, 10) == []  # in use by a download
    await store.release(td)
    clock.advance(9)
    assert store.expired(clock.now(), 10) == []
    await store.locate(TID, 0)  # an upload counts as use
    clock.advance(9)
    assert store.expired(clock.now(), 10) == []
    clock.advance(1)
    assert store.expired(clock.now(), 10) == [td]
    await store.remove(TID)
    assert os.listdir(tmp_path) == [] and await store.locate(TID, 0) is None


async def test_direct_writes_land_whole_with_unaligned_tails_and_buffers(tmp_path: Path) -> None:
    """Aligned parts go through O_DIRECT (when the file system has it), tails and unaligned
    buffers through the page cache; either way the file holds exactly the verified bytes."""
    ps = 3 * DIRECT_ALIGN
    length = 2 * ps + 1234  # the last piece has an unaligned tail
    store = LocalStore(tmp_path, FakeClock())
    td = await store.open_task(TID, length, ps)
    if td.dfd < 0:
        pytest.skip(f"{tmp_path} has no O_DIRECT: nothing direct to test here")
    data = os.urandom(length)
    pool = BufferPool()
    aligned = pool.get(ps)  # page-aligned: written directly
    aligned[:] = data[:ps]
    await store.write_piece(td, 0, aligned, digest(data[:ps]))
    odd = memoryview(bytearray(ps + 1))[1:]  # misaligned in memory: the kernel refuses O_DIRECT
    odd[:] = data[ps : 2 * ps]
    await store.write_piece(td, 1, odd, digest(data[ps : 2 * ps]))
    tail = pool.get(length - 2 * ps)
    tail[:] = data[2 * ps :]
    await store.write_piece(td, 2, tail, digest(data[2 * ps :]))
    assert td.path.read_bytes() == data
    await store.release(td)
    assert td.fd == td.dfd == -1
    pool.put(aligned)
    pool.put(tail)
    pool.close()


async def test_buffered_only_store_opens_no_direct_descriptor(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, FakeClock(), direct=False)
    td = await store.open_task(TID, PS, PS)
    assert td.dfd == -1 and td.fd >= 0
    piece = bytearray(os.urandom(PS))
    await store.write_piece(td, 0, piece, digest(piece))
    assert td.path.read_bytes() == piece
    await store.close()
