"""The CDN's cache against the real test origin: restarts, revalidation, corruption, content
addressing, resume after a restart, drop, disk GC and the source pattern."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from damselfly.core.clock import FakeClock
from damselfly.core.ids import task_id
from damselfly.core.pieces import MiB
from tests.integration.cdn_helpers import (
    CountingLimiter,
    Recorder,
    make_file,
    piece_digests,
    replace_file,
    running_app,
    running_cdn,
    running_origin,
    sha256,
)


def data_path(home: Path, tid: str) -> Path:
    return home / "repo" / tid[:2] / f"{tid}.data"


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


async def fetch_once(home: Path, url: str, **cfg: object) -> Recorder:
    """A first supernode run that caches ``url`` completely, then shuts down."""
    rec = Recorder()
    async with running_cdn(home, rec, **cfg) as cdn:  # type: ignore[arg-type]
        await cdn.ensure(task_id(url), url, {})
        await rec.wait_event("task_complete", task_id(url))
    return rec


async def test_restart_revalidates_with_one_conditional_request(tmp_path: Path) -> None:
    data = make_file(tmp_path / "www" / "f.bin", 10 * MiB)
    home = tmp_path / "home"
    async with running_origin(tmp_path / "www") as (origin, base):
        url = f"{base}/f.bin"
        tid = task_id(url)
        await fetch_once(home, url)
        origin.reset()
        clock = FakeClock()
        rec = Recorder()
        async with running_cdn(home, rec, clock=clock, revalidate_window=2.0) as cdn:
            loaded = cdn.get(tid)
            assert loaded is not None and loaded.complete and loaded.file_sha256 == sha256(data)
            views = await asyncio.gather(*(cdn.ensure(tid, url, {}) for _ in range(10)))
            assert all(v.cache_hit and v.complete for v in views)
            assert origin.statuses == [304]  # one conditional request for all ten
            assert origin.bytes_sent == 0 and cdn.stats.origin_bytes == 0
            assert cdn.stats.cache_hits == 10
            assert dict(cdn.ready_pieces(tid)) == piece_digests(data)
            # Within the window: no new request; after it: one more.
            clock.advance(1.5)
            await cdn.ensure(tid, url, {})
            assert origin.requests == 1
            clock.advance(5)
            await cdn.ensure(tid, url, {})
            assert origin.statuses == [304, 304]
            # The pieces are re-hashed on their first serve, then served.
            for num in range(3):
                loc = await cdn.locate(tid, num)
                assert loc is not None
            assert not rec.of("piece_lost")
            assert not rec.of("task_reset")


async def test_revalidation_finds_new_content_and_replaces_it(tmp_path: Path) -> None:
    path = tmp_path / "www" / "f.bin"
    make_file(path, 6 * MiB, seed=1)
    clock = FakeClock()
    rec = Recorder()
    async with (
        running_origin(tmp_path / "www") as (origin, base),
        running_cdn(tmp_path / "home", rec, clock=clock) as cdn,
    ):
        url = f"{base}/f.bin"
        tid = task_id(url)
        await cdn.ensure(tid, url, {})
        await rec.wait_event("task_complete", tid)
        new = replace_file(path, 9 * MiB, seed=2)
        clock.advance(10)
        view = await cdn.ensure(tid, url, {})
        assert view.length == len(new) and not view.cache_hit
        await rec.wait_event("task_complete", tid, count=2)
        assert origin.statuses == [200, 200]
        assert "if-none-match" in origin.header_hashes[1]
        reset = rec.index("task_reset", tid)
        assert rec.events[reset] == ("task_reset", tid, len(new), 4 * MiB)
        assert rec.ready_digests(tid) == piece_digests(new)
        assert rec.of("task_complete", tid)[-1][2] == sha256(new)
        assert data_path(tmp_path / "home", tid).read_bytes() == new
    # The new version is what a restart finds.
    async with running_cdn(tmp_path / "home", Recorder()) as cdn2:
        v = cdn2.get(tid)
        assert v is not None and v.complete and v.file_sha256 == sha256(new)


async def test_a_content_addressed_url_is_never_revalidated(tmp_path: Path) -> None:
    data = make_file(tmp_path / "www" / "tmp", 5 * MiB)
    digest = sha256(data)
    (tmp_path / "www" / "tmp").rename(tmp_path / "www" / f"sha256:{digest}")
    home = tmp_path / "home"
    async with running_origin(tmp_path / "www") as (origin, base):
        url = f"{base}/sha256:{digest}"
        tid = task_id(url)
        await fetch_once(home, url)
        assert origin.requests == 1
        clock = FakeClock()
        async with running_cdn(home, Recorder(), clock=clock) as cdn:
            for _ in range(3):
                clock.advance(1000)
                view = await cdn.ensure(tid, url, {})
                assert view.complete and view.cache_hit
        assert origin.requests == 1


async def test_a_corrupt_cached_piece_is_never_served_and_is_fetched_again(
    tmp_path: Path,
) -> None:
    data = make_file(tmp_path / "www" / "f.bin", 10 * MiB)
    home = tmp_path / "home"
    async with running_origin(tmp_path / "www") as (origin, base):
        url = f"{base}/f.bin"
        tid = task_id(url)
        await fetch_once(home, url)
        flip_byte(data_path(home, tid), 4 * MiB + 1000)  # piece 1, between two runs
        origin.reset()
        rec = Recorder()
        async with running_cdn(home, rec) as cdn:
            await cdn.ensure(tid, url, {})
            assert await cdn.locate(tid, 0) is not None
            assert await cdn.locate(tid, 1) is None  # corrupt: never served
            assert rec.of("piece_lost", tid) == [("piece_lost", tid, 1)]
            assert cdn.stats.pieces_lost == 1
            await rec.wait_event("task_complete", tid)
            # Fetched again from the origin: exactly that piece, by Range.
            assert origin.statuses == [304, 206]
            assert origin.header_hashes[1]["range"] == sha256(f"bytes={4 * MiB}-{8 * MiB - 1}")
            assert rec.of("piece_ready", tid) == [("piece_ready", tid, 1, piece_digests(data)[1])]
            assert await cdn.locate(tid, 1) is not None
            assert data_path(home, tid).read_bytes() == data
            assert rec.of("task_complete", tid)[-1][2] == sha256(data)


async def test_a_peer_reporting_a_bad_piece_triggers_a_check_and_a_refetch(
    tmp_path: Path,
) -> None:
    data = make_file(tmp_path / "www" / "f.bin", 9 * MiB)
    rec = Recorder()
    async with (
        running_origin(tmp_path / "www") as (origin, base),
        running_cdn(tmp_path / "home", rec) as cdn,
    ):
        url = f"{base}/f.bin"
        tid = task_id(url)
        await cdn.ensure(tid, url, {})
        await rec.wait_event("task_complete", tid)
        assert await cdn.report_bad(tid, 2) is False  # the piece is fine
        flip_byte(data_path(tmp_path / "home", tid), 10)
        assert await cdn.locate(tid, 0) is not None  # verified in this run: not re-hashed
        assert await cdn.report_bad(tid, 0) is True
        assert await cdn.locate(tid, 0) is None
        await rec.wait_event("task_complete", tid, count=2)
        assert origin.statuses == [200, 206]
        assert data_path(tmp_path / "home", tid).read_bytes() == data
        assert await cdn.locate(tid, 0) is not None
        assert await cdn.report_bad(tid, 99) is False


async def test_a_fetch_stopped_by_a_shutdown_resumes_after_restart(tmp_path: Path) -> None:
    data = make_file(tmp_path / "www" / "f.bin", 16 * MiB)
    home = tmp_path / "home"
    async with running_origin(tmp_path / "www") as (origin, base):
        url = f"{base}/f.bin"
        tid = task_id(url)
        rec = Recorder()
        async with running_cdn(home, rec, limiter=CountingLimiter(rate=16 * MiB)) as cdn:
            await cdn.ensure(tid, url, {})
            await rec.wait_event("piece_ready", tid, count=2)
        # close() cancelled the fetch and flushed the meta: two or three pieces are kept,
        # and no task of the CDN is left running.
        assert not cdn._bg
        assert not [x for x in asyncio.all_tasks() if x.get_name().startswith("cdn-")]
        rec2 = Recorder()
        async with running_cdn(home, rec2) as cdn2:
            view = cdn2.get(tid)
            assert view is not None and 2 <= view.pieces_ready < 4 and not view.complete
            await cdn2.ensure(tid, url, {})
            await rec2.wait_event("task_complete", tid)
            # (the first GET was cut by the shutdown, so the origin logged no status for it)
            assert origin.gets == 2 and origin.statuses[-1] == 206
            assert "if-range" in origin.header_hashes[1]
            assert cdn2.stats.origin_bytes == len(data) - view.pieces_ready * 4 * MiB
            assert origin.bytes_sent < 2 * len(data)
            assert rec2.of("task_complete", tid)[0][2] == sha256(data)
        assert data_path(home, tid).read_bytes() == data


async def test_drop_deletes_the_files_but_not_during_a_fetch(tmp_path: Path) -> None:
    make_file(tmp_path / "www" / "a.bin", 1 * MiB, seed=1)
    make_file(tmp_path / "www" / "slow.bin", 8 * MiB, seed=2)
    home = tmp_path / "home"
    rec = Recorder()
    async with (
        running_origin(tmp_path / "www") as (_, base),
        running_cdn(home, rec, limiter=CountingLimiter(rate=4 * MiB)) as cdn,
    ):
        a, slow = f"{base}/a.bin", f"{base}/slow.bin"
        ta, ts = task_id(a), task_id(slow)
        await cdn.ensure(ta, a, {})
        await rec.wait_event("task_complete", ta)
        await cdn.ensure(ts, slow, {})
        assert await cdn.drop(ts) is False  # being fetched
        assert await cdn.drop(ta) is True
        assert cdn.get(ta) is None and not data_path(home, ta).exists()
        assert not data_path(home, ta).with_suffix(".meta").exists()
        assert await cdn.drop(ts, force=True) is True
        assert cdn.get(ts) is None and not data_path(home, ts).exists()
        # A dropped task can be registered again.
        await cdn.ensure(ta, a, {})
        await rec.wait_event("task_complete", ta, count=2)


async def test_disk_gc_removes_least_recently_used_unused_tasks(tmp_path: Path) -> None:
    for name in "abcd":
        make_file(tmp_path / "www" / name, 1 * MiB, seed=ord(name))
    free = {"bytes": 100 * MiB}
    clock = FakeClock()
    rec = Recorder()
    async with (
        running_origin(tmp_path / "www") as (_, base),
        running_cdn(
            tmp_path / "home",
            rec,
            clock=clock,
            free_space=lambda p: free["bytes"],
            disk_gc_young=50 * MiB,
            disk_gc_full=10 * MiB,
            disk_gc_min_idle=60.0,
        ) as cdn,
    ):
        ids = {}
        for name in "abcd":  # a is used first (least recently), d last
            url = f"{base}/{name}"
            ids[name] = task_id(url)
            await cdn.ensure(ids[name], url, {})
            await rec.wait_event("task_complete", ids[name])
            clock.advance(100)
        in_use = {ids["a"]}
        assert await cdn.gc_once(lambda t: t in in_use) == []  # plenty of space
        free["bytes"] = 48 * MiB  # young GC: idle ≥ 60 s, oldest first, until 50 MiB free
        removed = await cdn.gc_once(lambda t: t in in_use)
        assert removed == [ids["b"], ids["c"]]
        assert cdn.get(ids["a"]) is not None and cdn.get(ids["d"]) is not None
        assert not data_path(tmp_path / "home", ids["b"]).exists()
        free["bytes"] = 1 * MiB  # full GC: anything not in use
        assert await cdn.gc_once(lambda t: t in in_use) == [ids["d"]]
        assert cdn.get(ids["a"]) is not None


async def test_source_pattern_stores_nothing_and_announces_every_piece(tmp_path: Path) -> None:
    make_file(tmp_path / "www" / "f.bin", 9 * MiB)
    rec = Recorder()
    clock = FakeClock()
    async with (
        running_origin(tmp_path / "www") as (origin, base),
        running_cdn(tmp_path / "home", rec, clock=clock, pattern="source") as cdn,
    ):
        url = f"{base}/f.bin"
        tid = task_id(url)
        view = await cdn.ensure(tid, url, {"Authorization": "Bearer x"})
        assert (view.length, view.piece_count, view.complete) == (9 * MiB, 3, True)
        assert origin.gets == 0 and origin.bytes_sent == 0  # a HEAD only
        assert origin.header_hashes[0]["authorization"] == sha256("Bearer x")
        assert rec.ready_digests(tid) == {0: "", 1: "", 2: ""}
        assert rec.of("task_complete", tid) == [("task_complete", tid, "")]
        assert cdn.ready_pieces(tid) == [(0, ""), (1, ""), (2, "")]
        assert await cdn.locate(tid, 0) is None
        clock.advance(10)
        await cdn.ensure(tid, url, {})  # re-probed, unchanged: nothing new announced
        assert origin.requests == 2 and len(rec.of("task_complete", tid)) == 1
    assert not (tmp_path / "home" / "repo").exists() or not any(
        (tmp_path / "home" / "repo").rglob("*")
    )


async def test_source_pattern_falls_back_to_a_one_byte_range_get(tmp_path: Path) -> None:
    async def no_head(request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD":
            return web.Response(status=405)
        assert request.headers["Range"] == "bytes=0-0"
        return web.Response(status=206, body=b"x", headers={"Content-Range": "bytes 0-0/5000"})

    app = web.Application()
    app.router.add_route("*", "/f", no_head)
    async with running_app(app) as base, running_cdn(tmp_path, Recorder(), pattern="source") as cdn:
        url = f"{base}/f"
        view = await cdn.ensure(task_id(url), url, {})
        assert view.length == 5000 and view.piece_count == 1
