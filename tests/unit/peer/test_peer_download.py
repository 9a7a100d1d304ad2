"""One download driven end to end in-process: a real origin, a fake (honest) supernode, real
stores and upload servers on 127.0.0.1. Each test is a playbook: set the swarm up, download,
check the output, the result (reason, bytes_from) and what the supernode was told."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

from aiohttp import web

from damselfly.core.errors import (
    REASON_DOWNLOAD_ERROR,
    REASON_MD5_MISMATCH,
    REASON_NO_SPACE,
    REASON_NO_SUPERNODE,
    REASON_NONE,
    REASON_SOURCE_ERROR,
    REASON_USER_SOURCE,
)
from damselfly.core.ids import task_id
from damselfly.core.nodes import parse_nodes, rendezvous_order
from damselfly.peer.download import Download, DownloadResult
from damselfly.peer.request import DownloadRequest
from damselfly.peer.store import LocalStore
from tests.procs import free_port
from tests.unit.peer.conftest import PIECE, Host, HostFactory, OriginServer
from tests.unit.peer.fake_supernode import FakeSupernode


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


async def download(host: Host, url: str, nodes: list[str], **kw: Any) -> DownloadResult:
    body = {"url": url, "output": str(host.out / kw.pop("name", "file.bin")), "nodes": nodes}
    body.update(kw)
    req = DownloadRequest.from_json(body)
    events: list[dict[str, Any]] = []
    result = await Download(host.svc, req, events.append).run()
    host.events = events  # type: ignore[attr-defined]
    return result


def leftovers(host: Host) -> list[str]:
    return sorted(n for n in os.listdir(host.out) if n != "file.bin")


async def test_download_through_the_supernode(
    origin: OriginServer, supernode: FakeSupernode, make_host: HostFactory
) -> None:
    src = origin.put("f.bin", 10 * PIECE + 123)
    host = await make_host("a")
    res = await download(host, origin.url("f.bin"), [supernode.addr])
    assert res.ok and res.reason == REASON_NONE, res
    out = host.out / "file.bin"
    assert sha(out) == sha(src) and res.length == src.stat().st_size
    assert res.bytes_from == {"origin": 0, "supernode": src.stat().st_size, "peers": 0}
    assert leftovers(host) == []
    # every piece was reported verified, and the output shares the data file's inode
    assert sorted(r.piece for _, r in supernode.results if r.ok) == list(range(11))
    td = host.svc.store.tasks[task_id(origin.url("f.bin"))]
    assert os.stat(out).st_ino == os.stat(td.path).st_ino
    assert any(e["event"] == "progress" for e in host.events)  # type: ignore[attr-defined]
    assert origin.origin.gets == 0  # the fake supernode served from disk


async def test_second_download_reuses_the_local_copy(
    origin: OriginServer, supernode: FakeSupernode, make_host: HostFactory
) -> None:
    src = origin.put("f.bin", 5 * PIECE)
    host = await make_host("a")
    assert (await download(host, origin.url("f.bin"), [supernode.addr])).ok
    # a supernode that does not know this host yet assigns every piece: all are here already
    fresh = await FakeSupernode(origin.root, PIECE, origin.url("")).start()
    try:
        res = await download(host, origin.url("f.bin"), [fresh.addr], name="again.bin")
    finally:
        await fresh.stop()
    assert res.ok and res.bytes_from == {"origin": 0, "supernode": 0, "peers": 0}, res
    assert sha(host.out / "again.bin") == sha(src)
    assert sorted((r.piece, r.ok, r.bytes) for _, r in fresh.results) == [
        (n, True, 0) for n in range(5)
    ]


async def test_pieces_come_from_a_peer_that_holds_them(
    origin: OriginServer, supernode: FakeSupernode, make_host: HostFactory
) -> None:
    src = origin.put("f.bin", 6 * PIECE + 7)
    a, b = await make_host("a"), await make_host("b")
    assert (await download(a, origin.url("f.bin"), [supernode.addr])).ok
    res = await download(b, origin.url("f.bin"), [supernode.addr])
    assert res.ok and res.bytes_from["peers"] == src.stat().st_size, res
    assert sha(b.out / "file.bin") == sha(src)


async def test_a_corrupt_piece_is_caught_and_fetched_elsewhere(
    origin: OriginServer, supernode: FakeSupernode, make_host: HostFactory
) -> None:
    src = origin.put("f.bin", 8 * PIECE)
    supernode.corrupt = {2, 5}
    host = await make_host("a")
    res = await download(host, origin.url("f.bin"), [supernode.addr])
    assert res.ok and res.reason == REASON_NONE, res
    assert sha(host.out / "file.bin") == sha(src)
    assert sorted(supernode.failures()) == [(2, "supernode", "digest"), (5, "supernode", "digest")]
    assert res.bytes_from["origin"] == 2 * PIECE  # the scheduler sent those two to the origin


async def test_a_stalling_peer_is_abandoned(
    origin: OriginServer, supernode: FakeSupernode, make_host: HostFactory
) -> None:
    src = origin.put("f.bin", 3 * PIECE)
    never = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = PIECE
        await resp.prepare(request)
        await resp.write(b"x" * 100)
        await never.wait()  # then nothing more: a peer that stops mid-piece
        return resp

    app = web.Application()
    app.router.add_get("/pieces/{task_id}/{num}", stall)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        host = await make_host("a")
        # register the staller as a holder of every piece
        staller = await make_host("staller")
        staller.svc.peer_port = runner.addresses[0][1]
        assert (await download(staller, origin.url("f.bin"), [supernode.addr])).ok
        res = await download(host, origin.url("f.bin"), [supernode.addr])
    finally:
        never.set()
        await runner.cleanup()
    assert res.ok, res
    assert sha(host.out / "file.bin") == sha(src)
    kinds = {(s, k) for _, s, k in supernode.failures()}
    assert kinds == {("staller-1-abcd", "timeout")}


async def test_no_supernode_means_back_source(origin: OriginServer, make_host: HostFactory) -> None:
    src = origin.put("f.bin", 3 * PIECE + 1)
    host = await make_host("a")
    res = await download(host, origin.url("f.bin"), [f"127.0.0.1:{free_port()}"])
    assert res.ok and res.reason == REASON_NO_SUPERNODE, res
    assert res.bytes_from["origin"] == src.stat().st_size
    assert sha(host.out / "file.bin") == sha(src) and leftovers(host) == []


async def test_notbs_without_supernode_fails_and_leaves_nothing(
    origin: OriginServer, make_host: HostFactory
) -> None:
    origin.put("f.bin", PIECE)
    host = await make_host("a")
    res = await download(host, origin.url("f.bin"), [f"127.0.0.1:{free_port()}"], notbs=True)
    assert not res.ok and res.reason == REASON_NO_SUPERNODE
    assert "--notbs" in res.message and "did not answer" in res.message
    assert os.listdir(host.out) == [] and origin.origin.gets == 0


async def test_pattern_source_goes_to_the_origin(
    origin: OriginServer, supernode: FakeSupernode, make_host: HostFactory
) -> None:
    src = origin.put("f.bin", 2 * PIECE)
    host = await make_host("a")
    res = await download(host, origin.url("f.bin"), [supernode.addr], pattern="source")
    assert res.ok and res.reason == REASON_USER_SOURCE
    assert sha(host.out / "file.bin") == sha(src) and supernode.registrations == []


async def test_origin_404_is_reported_without_failover(
    origin: OriginServer, supernode: FakeSupernode, make_host: HostFactory
) -> None:
    other = await FakeSupernode(origin.root, PIECE, origin.url("")).start()
    try:
        host = await make_host("a")
        res = await download(host, origin.url("missing.bin"), [supernode.addr, other.addr])
    finally:
        await other.stop()
    assert not res.ok and res.reason == REASON_SOURCE_ERROR
    assert "missing.bin" in res.message and "check the URL" in res.message
    assert len(supernode.registrations) + len(other.registrations) == 1
    assert os.listdir(host.out) == []


async def test_failed_task_at_the_supernode(
    origin: OriginServer, supernode: FakeSupernode, make_host: HostFactory
) -> None:
    origin.put("f.bin", PIECE)
    supernode.fail_task = "origin_auth"
    host = await make_host("a")
    res = await download(host, origin.url("f.bin"), [supernode.addr])
    assert not res.ok and res.reason == REASON_SOURCE_ERROR and "--header" in res.message


async def test_supernode_dying_mid_download_moves_to_the_next(
    origin: OriginServer, make_host: HostFactory
) -> None:
    src = origin.put("f.bin", 12 * PIECE)
    sns = [await FakeSupernode(origin.root, PIECE, origin.url("")).start() for _ in range(2)]
    try:
        url = origin.url("f.bin")
        nodes = [s.addr for s in sns]
        first = rendezvous_order(task_id(url), parse_nodes(nodes))[0].addr
        owner = next(s for s in sns if s.addr == first)
        other = next(s for s in sns if s is not owner)
        owner.die_after = 2
        host = await make_host("a")
        res = await download(host, url, nodes, notbs=True)
    finally:
        for s in sns:
            await s.stop()
    assert res.ok and res.reason == REASON_NONE, res
    assert sha(host.out / "file.bin") == sha(src)
    assert len(owner.registrations) == 1 and len(other.registrations) == 1
    # pieces fetched before the move were kept: the second supernode got them reported as held
    assert any(r.ok and r.bytes == 0 for _, r in other.results)


async def test_pieces_verified_against_the_supernode_stand_for_its_file_digest(
    origin: OriginServer, supernode: FakeSupernode, make_host: HostFactory
) -> None:
    # every piece was verified against the supernode's per-piece sha256 before it was written:
    # the file is the supernode's pieces, so its whole-file digest is not hashed again
    src = origin.put("f.bin", 4 * PIECE)
    supernode.file_sha256_override = "0" * 64
    host = await make_host("a")
    res = await download(host, origin.url("f.bin"), [supernode.addr])
    assert res.ok and res.reason == REASON_NONE, res
    assert sha(host.out / "file.bin") == sha(src) and leftovers(host) == []
    td = host.svc.store.tasks[task_id(origin.url("f.bin"))]
    assert (td.confirmed_sha256, td.file_sha256) == ("0" * 64, "")


async def test_whole_file_mismatch_falls_back_to_the_origin(
    origin: OriginServer, supernode: FakeSupernode, make_host: HostFactory
) -> None:
    # the local copy is complete, but this time the supernode confirms none of its pieces (it
    # knows this host holds them all) and names another file digest: the file is hashed in full
    src = origin.put("f.bin", 4 * PIECE)
    host = await make_host("a")
    assert (await download(host, origin.url("f.bin"), [supernode.addr], name="first.bin")).ok
    supernode.file_sha256_override = "0" * 64
    res = await download(host, origin.url("f.bin"), [supernode.addr])
    assert res.ok and res.reason == REASON_MD5_MISMATCH, res
    assert sha(host.out / "file.bin") == sha(src)
    assert sorted(os.listdir(host.out)) == ["file.bin", "first.bin"]


async def test_pieces_kept_from_an_earlier_run_are_hashed_not_trusted(
    origin: OriginServer, supernode: FakeSupernode, make_host: HostFactory
) -> None:
    # a download stopped half way by a dying supernode leaves verified pieces in the store; after
    # a restart of the engine (a new store reading the metas), one of them rots on disk
    src = origin.put("f.bin", 20 * PIECE)
    host = await make_host("a")
    supernode.die_after = 1  # the first answer assigns 8 pieces (the down limit), then silence
    url = origin.url("f.bin")
    assert (await download(host, url, [supernode.addr], notbs=True)).ok is False
    tid = task_id(url)
    kept = sorted(host.svc.store.tasks[tid].held)
    assert 0 < len(kept) <= 8
    await host.svc.store.close()
    data = host.svc.store.tasks[tid].path
    with open(data, "r+b") as f:
        f.seek(kept[0] * PIECE + 5)
        f.write(b"\x00rot\x00")
    restarted = LocalStore(host.svc.store.dir, host.svc.clock)
    await restarted.load()
    host.svc.store = restarted
    fresh = await FakeSupernode(origin.root, PIECE, origin.url("")).start()
    try:
        res = await download(host, url, [fresh.addr])
    finally:
        await fresh.stop()
        await restarted.close()
    # the fresh supernode assigned every piece; the kept ones were reported held, not refetched,
    # so only the full hash could see the rot: the file came from the origin instead
    assert res.ok and res.reason == REASON_MD5_MISMATCH, res
    assert sha(host.out / "file.bin") == sha(src) and leftovers(host) == []
    assert sorted(r.piece for _, r in fresh.results if r.ok and r.bytes == 0) == kept


async def test_wrong_md5_fails_and_leaves_nothing(
    origin: OriginServer, supernode: FakeSupernode, make_host: HostFactory
) -> None:
    origin.put("f.bin", 4 * PIECE)
    host = await make_host("a")
    res = await download(host, origin.url("f.bin"), [supernode.addr], md5="0" * 32)
    assert not res.ok and res.reason == REASON_MD5_MISMATCH
    assert "md5" in res.message and os.listdir(host.out) == []


async def test_right_md5_is_checked_and_accepted(
    origin: OriginServer, supernode: FakeSupernode, make_host: HostFactory
) -> None:
    src = origin.put("f.bin", 4 * PIECE + 5)
    host = await make_host("a")
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    res = await download(host, origin.url("f.bin"), [supernode.addr], md5=md5)
    assert res.ok and res.reason == REASON_NONE, res


async def test_a_piece_failing_everywhere_means_back_source(
    origin: OriginServer, supernode: FakeSupernode, make_host: HostFactory
) -> None:
    src = origin.put("f.bin", 3 * PIECE)
    supernode.corrupt = {1}
    supernode.no_fallback = True
    host = await make_host("a")
    res = await download(host, origin.url("f.bin"), [supernode.addr])
    assert res.ok and res.reason == REASON_DOWNLOAD_ERROR, res
    assert sha(host.out / "file.bin") == sha(src)
    # five failures make the engine leave for the origin (the last may go unreported)
    assert set(supernode.failures()) == {(1, "supernode", "digest")}
    assert 4 <= len(supernode.failures()) <= 5


async def test_a_changed_file_drops_the_stale_copy_but_not_old_outputs(
    origin: OriginServer, supernode: FakeSupernode, make_host: HostFactory
) -> None:
    first = origin.put("f.bin", 4 * PIECE)
    host = await make_host("a")
    assert (await download(host, origin.url("f.bin"), [supernode.addr], name="old.bin")).ok
    old = first.read_bytes()
    second = origin.put("f.bin", 4 * PIECE)  # same length, new content
    res = await download(host, origin.url("f.bin"), [supernode.addr], name="new.bin")
    assert res.ok and res.reason == REASON_NONE, res
    assert sha(host.out / "new.bin") == sha(second)
    assert (host.out / "old.bin").read_bytes() == old  # the old output was not rewritten


async def test_timeout(
    origin: OriginServer, supernode: FakeSupernode, make_host: HostFactory
) -> None:
    origin.put("f.bin", PIECE)
    supernode.always_wait = True
    host = await make_host("a")
    res = await download(host, origin.url("f.bin"), [supernode.addr], timeout=0.5)
    assert not res.ok and res.reason == REASON_DOWNLOAD_ERROR and "timed out" in res.message
    assert os.listdir(host.out) == []


async def test_no_room_in_the_store_fails_at_once_with_notbs(
    origin: OriginServer, supernode: FakeSupernode, make_host: HostFactory
) -> None:
    origin.put("f.bin", PIECE)
    host = await make_host("a")
    # a supernode that announces a file far bigger than any disk here
    huge = 2**49
    orig_register = supernode.register

    async def register(request: web.Request) -> web.Response:
        resp = await orig_register(request)
        import json

        obj = json.loads(resp.body)  # type: ignore[arg-type]
        obj["length"], obj["piece_size"] = huge, 2**31
        obj["piece_count"] = huge // 2**31
        return web.json_response(obj)

    supernode.register = register  # type: ignore[method-assign]
    await supernode.stop()
    await supernode.start()
    res = await download(host, origin.url("f.bin"), [supernode.addr], notbs=True)
    assert not res.ok and res.reason == REASON_NO_SPACE, res
    assert "free space" in res.message and os.listdir(host.out) == []


async def test_zero_length_file(
    origin: OriginServer, supernode: FakeSupernode, make_host: HostFactory
) -> None:
    origin.put("empty.bin", 0)
    host = await make_host("a")
    res = await download(host, origin.url("empty.bin"), [supernode.addr])
    assert res.ok and res.length == 0, res
    assert (host.out / "file.bin").read_bytes() == b""


async def test_headers_go_to_the_origin_only_on_origin_requests(
    origin: OriginServer, supernode: FakeSupernode, make_host: HostFactory
) -> None:
    origin.put("f.bin", 2 * PIECE)
    supernode.corrupt = {0}  # forces one ranged request to the origin
    host = await make_host("a")
    res = await download(
        host, origin.url("f.bin"), [supernode.addr], headers={"X-Token": "s3cret-value"}
    )
    assert res.ok, res
    want = hashlib.sha256(b"s3cret-value").hexdigest()
    assert [h.get("x-token") for h in origin.origin.header_hashes] == [want]
    assert supernode.registrations[0].headers == {"X-Token": "s3cret-value"}
    assert "s3cret" not in repr(
        DownloadRequest.from_json(
            {"url": origin.url("f.bin"), "output": "/x", "headers": {"X-Token": "s3cret-value"}}
        )
    )
