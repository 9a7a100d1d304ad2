"""cdn_pattern "source": every piece of a placed file must be tied to one version of the file.

The pure decision (``plan.off_version``) as a table; the store tagging each piece with the
version it was assigned under (and keeping only the copy's version in its meta); a write whose
caller was cancelled ending before a reset reuses the data file's descriptors; and a download
that finds pieces of another version in its local copy dropping them and fetching them again
instead of placing a mixed file (real origin, real store and upload server, a fake supernode
speaking the source pattern)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
from pathlib import Path
from types import TracebackType

import pytest
from aiohttp import web

from damselfly.core.clock import FakeClock
from damselfly.core.errors import REASON_NONE
from damselfly.core.ids import task_id
from damselfly.peer.plan import off_version
from damselfly.peer.store import LocalStore
from tests.unit.peer.conftest import PIECE, HostFactory, OriginServer
from tests.unit.peer.fake_supernode import FakeSupernode
from tests.unit.peer.test_peer_download import download, sha

TID = "a" * 64
PS = 4096
V1, V2 = '"v1"', '"v2"'


def digest(b: bytes | bytearray) -> str:
    return hashlib.sha256(b).hexdigest()


# -- the decision -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "versions", "version", "want"),
    [
        (3, {0: V1, 1: V1, 2: V1}, V1, []),  # one version throughout: placed
        (3, {0: V1, 1: V2, 2: V1}, V1, [1]),  # a piece of another version
        (3, {0: V1, 2: V1}, V1, [1]),  # a piece held under no version
        (3, {0: V1, 1: V1, 2: V1}, V2, [0, 1, 2]),  # the supernode moved on: nothing fits
        (2, {0: V1, 1: V1, 5: V2}, V1, []),  # beyond the file: not its business
        (2, {0: "", 1: ""}, "", [0, 1]),  # no version named: nothing can be tied to it
        (0, {}, V1, []),  # an empty file
    ],
)
def test_off_version(count: int, versions: dict[int, str], version: str, want: list[int]) -> None:
    assert off_version(count, versions, version) == want


# -- the store ----------------------------------------------------------------------------------


async def test_pieces_carry_the_version_they_were_written_under(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, FakeClock())
    td = await store.open_task(TID, 3 * PS, PS)
    td.origin_version = V2
    for num, version in ((0, V2), (1, V1), (2, V2)):
        await store.write_piece(td, num, bytearray(os.urandom(PS)), "", version)
    assert td.versions == {0: V2, 1: V1, 2: V2}
    await store.write_piece(td, 1, bytearray(PS), "")  # an unversioned write: no tag
    assert 1 not in td.versions and 1 in td.held
    await store.write_piece(td, 1, bytearray(PS), "", V1)
    await store.release(td)
    # the meta lists only the pieces of the copy's version: a later run reads every piece it
    # lists as of that version, so piece 1 must not be laundered into it
    meta = json.loads((tmp_path / (TID + ".meta.json")).read_text())
    assert sorted(meta["held"]) == ["0", "2"] and meta["origin_version"] == V2
    again = LocalStore(tmp_path, FakeClock())
    await again.load()
    assert again.tasks[TID].versions == {0: V2, 2: V2}
    await again.drop_pieces(again.tasks[TID], [2])
    assert again.tasks[TID].held.keys() == again.tasks[TID].versions.keys() == {0}
    await again.close()
    await store.close()


async def test_reset_forgets_the_versions(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, FakeClock())
    td = await store.open_task(TID, PS, PS)
    await store.write_piece(td, 0, bytearray(PS), "", V1)
    await store.reset(td)
    assert td.versions == {} and td.held == {} and td.origin_version == ""
    await store.close()


class Gate:
    """Stands in for a data file's write lock: the write thread stops inside it until opened."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.open = threading.Event()

    def __enter__(self) -> None:
        self.entered.set()
        self.open.wait(30)

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


async def test_a_write_outliving_its_download_never_lands_in_the_new_copy(tmp_path: Path) -> None:
    """A piece write runs in a worker thread, which a cancelled download cannot stop. A reset
    (the file changed at the origin) must wait for it: closing the data file's descriptors
    first lets the new copy's file reuse their numbers, and the old version's bytes land in it,
    under a piece later marked held with the new version's digest (a mixed output)."""
    store = LocalStore(tmp_path, FakeClock(), direct=False)  # every write under the lock
    td = await store.open_task(TID, 2 * PS, PS)
    gate = Gate()
    td.write_lock = gate  # type: ignore[assignment]
    old = bytearray(os.urandom(PS))
    write = asyncio.create_task(store.write_piece(td, 1, old, digest(old), V1))
    assert await asyncio.to_thread(gate.entered.wait, 30)  # hashed, about to write
    write.cancel()  # the download dropped the old version's copy
    with pytest.raises(asyncio.CancelledError):
        await write
    reset = asyncio.create_task(store.reset(td))
    done, _ = await asyncio.wait([reset], timeout=1.0)
    assert not done  # the reset waits for the write still running
    gate.open.set()
    await reset
    assert td.held == {} and td.versions == {}
    assert td.path.read_bytes() == bytes(2 * PS)  # the new copy: untouched
    await store.close()


# -- a download ---------------------------------------------------------------------------------


class SourceSupernode(FakeSupernode):
    """The fake supernode speaking cdn_pattern "source": it names the file's version in every
    answer, knows no digest (of the file, or of a piece: the origin's first answer for each
    would define it), and forgets what a peer held when it leaves."""

    validator = V1

    async def register(self, request: web.Request) -> web.Response:
        resp = await super().register(request)
        return self._versioned(resp)

    async def schedule(self, request: web.Request) -> web.StreamResponse:
        resp = await super().schedule(request)
        return self._versioned(resp) if isinstance(resp, web.Response) else resp

    async def leave(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        tid = request.match_info.get("task_id", "")
        task = self.tasks.get(tid)
        if task is not None:
            for holders in task.holders.values():
                holders.discard(str(body.get("peer_id")))
        return await super().leave(request)

    def _versioned(self, resp: web.Response) -> web.Response:
        if resp.status != 200 or resp.text is None:
            return resp
        body = json.loads(resp.text)
        body["origin_validator"] = self.validator
        if "piece_count" in body:
            body["cdn_pattern"] = "source"
        body.pop("file_sha256", None)  # the source pattern's supernode never has the file
        for a in body.get("pieces", []):
            a["digest"] = ""  # nor, before a peer reports one, a piece's digest
        return web.json_response(body)


async def test_a_piece_of_another_version_is_fetched_again_not_placed(
    origin: OriginServer, make_host: HostFactory
) -> None:
    """The local copy says it is of the version the supernode names, but one piece in it was
    written under another (what a write outliving a reset, or any bookkeeping slip, leaves).
    No whole-file digest would catch the mix: the version check before placing does; the
    piece is dropped, the download registers again and fetches it, the output is whole."""
    src = origin.put("f.bin", 6 * PIECE + 17)
    sn = await SourceSupernode(origin.root, PIECE, origin.url("")).start()
    try:
        host = await make_host("a")
        url = origin.url("f.bin")
        tid = task_id(url)
        store = host.svc.store
        td = await store.open_task(tid, src.stat().st_size, PIECE)
        td.origin_version = V1
        stale = bytearray(os.urandom(PIECE))
        await store.write_piece(td, 2, stale, "", V2)
        await store.release(td)
        res = await download(host, url, [sn.addr])
        assert res.ok and res.reason == REASON_NONE, res
        assert sha(host.out / "file.bin") == sha(src)
        assert [r.url for r in sn.registrations] == [url, url]  # registered again once
        assert sn.left == [(f"/api/v1/tasks/{tid}/leave", host.svc.peer_id)]
        assert store.tasks[tid].versions == dict.fromkeys(range(7), V1)
    finally:
        await sn.stop()
