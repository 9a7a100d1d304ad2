"""The CDN against the real test origin (in process, on 127.0.0.1): fetching, single flight,
streaming pieces, rate limits, interrupted and changed downloads, origin errors, secrets."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

import pytest
from aiohttp import web

from damselfly.core.clock import FakeClock
from damselfly.core.errors import (
    BadRequest,
    DamselflyError,
    NoSpaceError,
    OriginAuthError,
    OriginError,
    OriginNotFound,
)
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


def files_under(p: Path) -> list[Path]:
    return sorted(x for x in p.rglob("*") if x.is_file())


async def test_concurrent_ensures_share_one_origin_get(tmp_path: Path) -> None:
    data = make_file(tmp_path / "www" / "f.bin", 9 * MiB + 123)
    rec = Recorder()
    async with (
        running_origin(tmp_path / "www") as (origin, base),
        running_cdn(tmp_path / "home", rec) as cdn,
    ):
        url = f"{base}/f.bin"
        tid = task_id(url)
        views = await asyncio.gather(*(cdn.ensure(tid, url, {}) for _ in range(20)))
        assert {(v.length, v.piece_size, v.piece_count) for v in views} == {(len(data), 4 * MiB, 3)}
        await rec.wait_event("task_complete", tid)
        assert origin.requests == 1 and origin.gets == 1
        assert cdn.stats.fetches_started == 1
        assert rec.ready_digests(tid) == piece_digests(data)
        assert rec.of("task_complete", tid) == [("task_complete", tid, sha256(data))]
        assert cdn.ready_pieces(tid) == sorted(piece_digests(data).items())
        view = cdn.get(tid)
        assert view is not None and view.complete and view.file_sha256 == sha256(data)
        assert view.origin_bytes == len(data) == cdn.stats.origin_bytes
        for num in range(3):  # what the piece server would send
            loc = await cdn.locate(tid, num)
            assert loc is not None
            with open(loc.path, "rb") as f:
                f.seek(loc.offset)
                assert sha256(f.read(loc.size)) == piece_digests(data)[num]
        assert await cdn.locate(tid, 3) is None
        assert await cdn.locate("0" * 64, 0) is None


async def test_pieces_are_announced_while_the_origin_is_still_sending(tmp_path: Path) -> None:
    size = 48 * MiB
    make_file(tmp_path / "www" / "big.bin", size)
    rec = Recorder()
    limiter = CountingLimiter(rate=96 * MiB)  # ~0.4 s for the whole file after a 9.6 MiB burst
    async with (
        running_origin(tmp_path / "www") as (origin, base),
        running_cdn(tmp_path / "home", rec, limiter=limiter) as cdn,
    ):
        url = f"{base}/big.bin"
        tid = task_id(url)
        sent_at_first_piece: list[int] = []
        rec.hooks.append(
            lambda ev: (
                ev[0] == "piece_ready"
                and not sent_at_first_piece
                and sent_at_first_piece.append(origin.bytes_sent)
            )
        )
        await cdn.ensure(tid, url, {})
        await rec.wait_event("task_complete", tid)
        assert rec.index("piece_ready", tid) < rec.index("task_complete", tid)
        # The first piece was announced while most of the file had not even been sent yet
        # (the origin runs ahead of the CDN by the socket buffers, a few MiB, not more).
        assert sent_at_first_piece and sent_at_first_piece[0] < size // 2
        # Every origin byte went through the shared limiter, and it made the fetch wait.
        assert limiter.acquired == size
        assert limiter.waited > 0


async def test_all_origin_fetches_share_one_rate_limit(tmp_path: Path) -> None:
    a = make_file(tmp_path / "www" / "a.bin", 3 * MiB, seed=1)
    b = make_file(tmp_path / "www" / "b.bin", 5 * MiB, seed=2)
    rec = Recorder()
    limiter = CountingLimiter(rate=16 * MiB)  # a burst of 1.6 MiB, then ~0.4 s of pacing
    async with (
        running_origin(tmp_path / "www") as (_, base),
        running_cdn(tmp_path / "home", rec, limiter=limiter) as cdn,
    ):
        ids = [(task_id(f"{base}/{n}"), f"{base}/{n}") for n in ("a.bin", "b.bin")]
        await asyncio.gather(*(cdn.ensure(t, u, {}) for t, u in ids))
        for t, _ in ids:
            await rec.wait_event("task_complete", t)
        assert limiter.acquired == len(a) + len(b)
        assert limiter.waited > 0
    # Without a rate the limiter never waits.
    free = CountingLimiter(rate=None)
    async with (
        running_origin(tmp_path / "www") as (_, base),
        running_cdn(tmp_path / "home2", rec, limiter=free) as cdn,
    ):
        url = f"{base}/a.bin"
        await cdn.ensure(task_id(url), url, {})
        await rec.wait_event("task_complete", task_id(url))
        assert free.acquired == len(a) and free.waited == 0


async def test_a_cut_connection_resumes_with_a_range_request(tmp_path: Path) -> None:
    data = make_file(tmp_path / "www" / "f.bin", 12 * MiB)
    rec = Recorder()
    async with (
        running_origin(tmp_path / "www") as (origin, base),
        running_cdn(tmp_path / "home", rec) as cdn,
    ):
        url = f"{base}/f.bin"
        tid = task_id(url)
        origin.cut_after = 6 * MiB  # in the middle of piece 1
        await cdn.ensure(tid, url, {})
        await rec.wait_event("task_complete", tid)
        assert origin.statuses == [200, 206]
        resumed = origin.header_hashes[1]
        assert resumed["range"] == sha256(f"bytes={4 * MiB}-{12 * MiB - 1}")
        assert "if-range" in resumed
        assert origin.bytes_sent < 2 * len(data)
        assert rec.ready_digests(tid) == piece_digests(data)
        assert rec.of("task_complete", tid)[0][2] == sha256(data)
        assert (tmp_path / "home" / "repo" / tid[:2] / f"{tid}.data").read_bytes() == data
        assert not rec.of("task_reset") and not rec.of("task_failed")


async def test_content_changed_before_resume_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "www" / "f.bin"
    make_file(path, 12 * MiB, seed=1)
    rec = Recorder()
    async with (
        running_origin(tmp_path / "www") as (origin, base),
        running_cdn(tmp_path / "home", rec, retries=0) as cdn,
    ):
        url = f"{base}/f.bin"
        tid = task_id(url)
        origin.cut_after = 6 * MiB
        first = await cdn.ensure(tid, url, {})
        assert first.length == 12 * MiB
        await rec.wait_event("task_failed", tid)
        assert rec.of("piece_ready", tid)  # piece 0 of the old version was cached
        new = replace_file(path, 10 * MiB + 7, seed=2)
        view = await cdn.ensure(tid, url, {})
        assert view.length == len(new)
        await rec.wait_event("task_complete", tid)
        # The resume asked for a range of the old version; the origin said it changed (200).
        assert origin.statuses == [200, 200]
        assert "if-range" in origin.header_hashes[1]
        assert ("task_reset", tid, len(new), 4 * MiB) in rec.events
        assert rec.ready_digests(tid) == piece_digests(new)
        assert rec.of("task_complete", tid)[-1][2] == sha256(new)
        assert (tmp_path / "home" / "repo" / tid[:2] / f"{tid}.data").read_bytes() == new


async def test_an_origin_without_ranges_is_fetched_again_whole(tmp_path: Path) -> None:
    data = make_file(tmp_path / "www" / "f.bin", 10 * MiB)
    rec = Recorder()
    async with (
        running_origin(tmp_path / "www") as (origin, base),
        running_cdn(tmp_path / "home", rec) as cdn,
    ):
        origin.no_ranges = True
        origin.cut_after = 5 * MiB
        url = f"{base}/f.bin"
        tid = task_id(url)
        await cdn.ensure(tid, url, {})
        await rec.wait_event("task_complete", tid)
        assert origin.statuses == [200, 200]
        assert rec.ready_digests(tid) == piece_digests(data)
        assert rec.of("task_complete", tid)[-1][2] == sha256(data)


async def test_chunked_origin_is_spooled_then_announced(tmp_path: Path) -> None:
    data = make_file(tmp_path / "f.bin", 9 * MiB + 5)
    sent = {"bytes": 0}

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"ETag": '"c1"'})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(data), 300_000):
            await resp.write(data[i : i + 300_000])
            sent["bytes"] += len(data[i : i + 300_000])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/f.bin", chunked)
    rec = Recorder()
    async with running_app(app) as base, running_cdn(tmp_path / "home", rec) as cdn:
        url = f"{base}/f.bin"
        tid = task_id(url)
        view = await cdn.ensure(tid, url, {})
        # ensure() answered only once the length was known, i.e. after the whole body.
        assert sent["bytes"] == len(data)
        assert view.length == len(data) and view.piece_count == 3
        await rec.wait_event("task_complete", tid)
        assert rec.ready_digests(tid) == piece_digests(data)
        assert rec.of("task_complete", tid)[0][2] == sha256(data)
        loc = await cdn.locate(tid, 2)
        assert loc is not None and loc.size == len(data) - 8 * MiB


async def test_transient_origin_errors_are_retried_then_reported(tmp_path: Path) -> None:
    make_file(tmp_path / "www" / "f.bin", 1000)
    rec = Recorder()
    async with (
        running_origin(tmp_path / "www") as (origin, base),
        running_cdn(tmp_path / "home", rec, retries=2) as cdn,
    ):
        url = f"{base}/f.bin"
        tid = task_id(url)
        origin.fail = (503, 2)
        view = await cdn.ensure(tid, url, {})
        assert view.length == 1000
        assert origin.statuses[:3] == [503, 503, 200]

        url2 = f"{base}/f.bin?x=1"
        origin.fail = (503, 3)
        with pytest.raises(OriginError) as ei:
            await cdn.ensure(task_id(url2), url2, {})
        assert ei.value.status == 503 and "503" in str(ei.value) and ei.value.hint
        assert cdn.get(task_id(url2)) is None  # nothing kept for a task that never started
        assert rec.of("task_failed", task_id(url2))


async def test_unreachable_origin_is_an_origin_error(tmp_path: Path) -> None:
    async with running_app(web.Application()) as base:
        pass  # the port is closed again: connection refused
    async with running_cdn(tmp_path / "home", Recorder(), retries=1) as cdn:
        url = f"{base}/f.bin?token=sekrit"
        with pytest.raises(OriginError) as ei:
            await cdn.ensure(task_id(url), url, {})
        assert "could not be reached" in str(ei.value) and "sekrit" not in str(ei.value)


async def test_404_is_remembered_for_the_negative_ttl(tmp_path: Path) -> None:
    clock = FakeClock()
    async with (
        running_origin(tmp_path / "www") as (origin, base),
        running_cdn(tmp_path / "home", Recorder(), clock=clock, negative_ttl=180) as cdn,
    ):
        url = f"{base}/missing.bin"
        tid = task_id(url)
        with pytest.raises(OriginNotFound) as ei:
            await cdn.ensure(tid, url, {})
        assert ei.value.status == 404 and "404" in str(ei.value)
        clock.advance(179)
        with pytest.raises(OriginNotFound):
            await cdn.ensure(tid, url, {})
        assert origin.requests == 1  # the second answer came from memory
        clock.advance(2)
        with pytest.raises(OriginNotFound):
            await cdn.ensure(tid, url, {})
        assert origin.requests == 2
        assert not files_under(tmp_path / "home")


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer wrong"}, 403)],
)
async def test_origin_auth_errors(tmp_path: Path, headers: dict[str, str], status: int) -> None:
    make_file(tmp_path / "www" / "f.bin", 100)
    async with (
        running_origin(tmp_path / "www", require=("Authorization", "Bearer right")) as (_, base),
        running_cdn(tmp_path / "home", Recorder()) as cdn,
    ):
        url = f"{base}/f.bin"
        with pytest.raises(OriginAuthError) as ei:
            await cdn.ensure(task_id(url), url, headers)
        assert ei.value.status == status
        assert "--header" in str(ei.value)
        assert "wrong" not in str(ei.value)


async def test_a_refusal_of_someone_elses_credentials_does_not_fail_mine(tmp_path: Path) -> None:
    make_file(tmp_path / "www" / "f.bin", 100)
    async with (
        running_origin(tmp_path / "www", require=("Authorization", "Bearer right")) as (o, base),
        running_cdn(tmp_path / "home", Recorder()) as cdn,
    ):
        url = f"{base}/f.bin"
        tid = task_id(url)
        bad, good = await asyncio.gather(
            cdn.ensure(tid, url, {"Authorization": "Bearer wrong"}),
            cdn.ensure(tid, url, {"Authorization": "Bearer right"}),
            return_exceptions=True,
        )
        assert isinstance(bad, OriginAuthError)
        assert not isinstance(good, BaseException) and good.length == 100
        assert o.statuses[:2] == [403, 200]


async def test_no_space_is_refused_before_fetching_and_leaves_nothing(tmp_path: Path) -> None:
    make_file(tmp_path / "www" / "f.bin", 8 * MiB)
    rec = Recorder()
    async with (
        running_origin(tmp_path / "www") as (_, base),
        running_cdn(
            tmp_path / "home", rec, free_space=lambda p: 5 * MiB, disk_reserve=1 * MiB
        ) as cdn,
    ):
        url = f"{base}/f.bin"
        tid = task_id(url)
        with pytest.raises(NoSpaceError) as ei:
            await cdn.ensure(tid, url, {})
        assert str(8 * MiB) in str(ei.value) and ei.value.hint
        assert cdn.stats.origin_bytes == 0
        assert cdn.get(tid) is None
    assert not files_under(tmp_path / "home")


async def test_headers_reach_the_origin_but_no_file_or_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    make_file(tmp_path / "www" / "f.bin", 5 * MiB)
    secret = "Bearer s3cr3t-t0ken"
    async with (
        running_origin(tmp_path / "www", require=("Authorization", secret)) as (origin, base),
        running_cdn(tmp_path / "home", rec := Recorder()) as cdn,
    ):
        url = f"{base}/f.bin?Signature=sekr1t-sig&Expires=99"
        tid = task_id(url)
        origin.cut_after = 3 * MiB  # also exercise the retry path's logging
        view = await cdn.ensure(tid, url, {"Authorization": secret, "X-Extra": "x-s3cr3t"})
        await rec.wait_event("task_complete", tid)
        assert all(h.get("authorization") == sha256(secret) for h in origin.header_hashes)
        assert all(h.get("x-extra") == sha256("x-s3cr3t") for h in origin.header_hashes)
        assert "sekr1t" not in view.url
        assert "s3cr3t" not in repr(cdn) and "s3cr3t" not in repr(cdn._tasks[tid])
        # An error for someone with a wrong token does not echo it either.
        url2 = f"{base}/f.bin?Signature=sekr1t-2"
        with pytest.raises(OriginAuthError) as ei:
            await cdn.ensure(task_id(url2), url2, {"Authorization": "Bearer s3cr3t-wrong"})
        assert "s3cr3t" not in str(ei.value) and "sekr1t" not in str(ei.value)
    meta = (tmp_path / "home" / "repo" / tid[:2] / f"{tid}.meta").read_text()
    assert "s3cr3t" not in meta and "Authorization" not in meta
    assert caplog.records  # the CDN did log (requests, retries, completion)
    assert "s3cr3t" not in caplog.text and "sekr1t" not in caplog.text
    for f in files_under(tmp_path / "home"):
        assert b"s3cr3t" not in f.read_bytes()


async def test_content_not_matching_the_digest_in_its_url_fails_integrity(
    tmp_path: Path,
) -> None:
    data = make_file(tmp_path / "www" / "blob", 1000)
    wrong = hashlib.sha256(b"something else").hexdigest()
    (tmp_path / "www" / f"sha256:{wrong}").write_bytes(data)
    rec = Recorder()
    async with (
        running_origin(tmp_path / "www") as (_, base),
        running_cdn(tmp_path / "home", rec) as cdn,
    ):
        url = f"{base}/sha256:{wrong}"
        tid = task_id(url)
        await cdn.ensure(tid, url, {})
        await rec.wait_event("task_failed", tid)
        err = rec.of("task_failed", tid)[0][2]
        assert err.code == "integrity"
        assert not rec.of("task_complete", tid)
        assert cdn.get(tid) is None
    assert not files_under(tmp_path / "home")


async def test_bad_ids_and_urls_are_refused_before_anything_happens(tmp_path: Path) -> None:
    async with running_cdn(tmp_path / "home", Recorder()) as cdn:
        for tid, url in [
            ("../../etc/passwd", "http://127.0.0.1:1/f"),
            ("A" * 64, "http://127.0.0.1:1/f"),
            ("a" * 64, "file:///etc/passwd"),
            ("a" * 64, "http://user:pw@127.0.0.1:1/f"),
        ]:
            with pytest.raises(BadRequest):
                await cdn.ensure(tid, url, {})
        with pytest.raises(BadRequest):
            await cdn.drop("../x")
        assert await cdn.locate("../x", 0) is None
    assert not files_under(tmp_path / "home")
    with pytest.raises(DamselflyError, match="not running"):
        await cdn.ensure("a" * 64, "http://127.0.0.1:1/f", {})
