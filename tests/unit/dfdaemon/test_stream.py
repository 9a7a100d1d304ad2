"""SwarmStream against a hand-written fake download: bytes go out in order as pieces are
verified, the last bytes wait for verification, a wrong digest or a failed download cuts the
connection (the client never gets a complete wrong body), and a download that failed before any
byte lets the caller fall back."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer

from damselfly.core.clock import MonotonicClock
from damselfly.core.pieces import PiecePlan
from damselfly.dfdaemon.stream import (
    CHUNK,
    PieceFeed,
    SwarmFailed,
    SwarmStream,
    contiguous_prefix,
)
from damselfly.peer.download import Download, DownloadResult, Services
from damselfly.peer.request import DownloadRequest
from damselfly.peer.store import TaskData
from damselfly.peer.tasks import TaskOwner

PIECE = 64 * 1024


@pytest.mark.parametrize(
    ("held", "start", "expect"),
    [
        ("", 0, (0, 0)),
        ("0", 0, (PIECE, 1)),
        ("0 2", 0, (PIECE, 1)),
        ("0 1 2", 0, (2 * PIECE + 100, 3)),
        ("1 2", 0, (0, 0)),
        ("0 1", 1, (2 * PIECE, 2)),
    ],
)
def test_contiguous_prefix(held: str, start: int, expect: tuple[int, int]) -> None:
    plan = PiecePlan(2 * PIECE + 100, PIECE)
    assert contiguous_prefix(plan, {int(n): "d" for n in held.split()}, start) == expect


def test_feed_follows_the_task_and_restarts_on_a_new_copy(tmp_path: Path) -> None:
    feed = PieceFeed()
    td = TaskData("t" * 64, 3 * PIECE, PIECE, tmp_path / "x")
    feed.update(td)
    assert feed.prefix == 0 and feed.changed.is_set()
    td.held.update({1: "d"})
    feed.update(td)
    assert feed.prefix == 0
    td.held.update({0: "d"})
    feed.update(td)
    assert feed.prefix == 2 * PIECE
    assert "131072/196608" in repr(feed)


class FakeDownload:
    """Writes given pieces into a data file one by one when the test says so."""

    def __init__(self, tmp: Path, body: bytes, output: str, fail_at: int | None = None) -> None:
        self.tid = "f" * 64
        self.on_piece = None
        self.td = TaskData(self.tid, len(body), PIECE, tmp / "task.data")
        self.td.path.write_bytes(b"\0" * len(body))
        self.body = body
        self.output = output
        self.fail_at = fail_at
        self.steps: asyncio.Queue[None] = asyncio.Queue()
        self.open_task = True

    async def run(self) -> DownloadResult:
        plan = self.td.plan
        if self.fail_at == -1:
            return DownloadResult(False, 3, "the swarm failed")
        assert self.on_piece is not None
        if self.open_task:
            self.on_piece(self.td)
        for n in range(plan.count):
            await self.steps.get()
            if n == self.fail_at:
                return DownloadResult(False, 3, "the swarm failed")
            if self.open_task:
                with open(self.td.path, "r+b") as f:
                    f.seek(plan.start(n))
                    f.write(self.body[plan.start(n) : plan.start(n) + plan.size(n)])
                self.td.held[n] = "d"
                self.on_piece(self.td)
        if self.open_task:
            os.link(self.td.path, self.output)
        else:
            Path(self.output).write_bytes(self.body)  # back source: straight into the output
        return DownloadResult(True, 0, "ok", len(self.body))


def make_handler(fake: FakeDownload, url: str, log: list[str]):  # type: ignore[no-untyped-def]
    owner = TaskOwner("test")

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        req = DownloadRequest(url=url, output=fake.output)
        stream = SwarmStream(None, req, owner, download=fake)
        try:
            return await stream.respond(request, {"Content-Type": "application/octet-stream"})
        except SwarmFailed as e:
            log.append(e.result.message)
            return web.Response(status=502, text="fallback")

    return handler


def blob_url(body: bytes) -> str:
    return f"http://registry/v2/r/blobs/sha256:{hashlib.sha256(body).hexdigest()}"


async def test_streams_in_order_before_the_download_ends(tmp_path: Path) -> None:
    body = os.urandom(3 * PIECE + 7)
    fake = FakeDownload(tmp_path, body, str(tmp_path / "out"))
    async with RawTestServer(make_handler(fake, blob_url(body), [])) as srv:
        async with aiohttp.ClientSession() as s, s.get(srv.make_url("/b")) as r:
            assert r.status == 200 and r.content_length == len(body)
            fake.steps.put_nowait(None)
            first = await r.content.readexactly(PIECE)  # piece 0 arrives before piece 1 exists
            assert first == body[:PIECE]
            for _ in range(3):
                fake.steps.put_nowait(None)
            rest = await r.content.read()
            assert first + rest == body
    assert not os.path.exists(fake.output), "the scratch output is removed"


async def test_wrong_digest_cuts_the_body_before_its_end(tmp_path: Path) -> None:
    body = os.urandom(2 * PIECE + 5)
    fake = FakeDownload(tmp_path, body, str(tmp_path / "out"))
    wrong = blob_url(b"something else")
    async with RawTestServer(make_handler(fake, wrong, [])) as srv:
        async with aiohttp.ClientSession() as s, s.get(srv.make_url("/b")) as r:
            for _ in range(3):
                fake.steps.put_nowait(None)
            got = bytearray()
            with pytest.raises(aiohttp.ClientPayloadError):
                async for chunk in r.content.iter_any():
                    got += chunk
            assert len(got) < len(body)


async def test_failure_after_the_first_bytes_cuts_the_body(tmp_path: Path) -> None:
    body = os.urandom(3 * PIECE)
    fake = FakeDownload(tmp_path, body, str(tmp_path / "out"), fail_at=1)
    async with RawTestServer(make_handler(fake, blob_url(body), [])) as srv:
        async with aiohttp.ClientSession() as s, s.get(srv.make_url("/b")) as r:
            fake.steps.put_nowait(None)
            assert await r.content.readexactly(PIECE) == body[:PIECE]
            fake.steps.put_nowait(None)
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.content.read()


async def test_failure_before_any_byte_lets_the_caller_fall_back(tmp_path: Path) -> None:
    body = os.urandom(100)
    fake = FakeDownload(tmp_path, body, str(tmp_path / "out"), fail_at=-1)
    log: list[str] = []
    async with RawTestServer(make_handler(fake, blob_url(body), log)) as srv:
        async with aiohttp.ClientSession() as s, s.get(srv.make_url("/b")) as r:
            assert r.status == 502 and await r.text() == "fallback"
    assert log == ["the swarm failed"]


async def test_back_source_output_is_streamed_whole(tmp_path: Path) -> None:
    body = os.urandom(PIECE + 1)
    fake = FakeDownload(tmp_path, body, str(tmp_path / "out"))
    fake.open_task = False
    for _ in range(2):
        fake.steps.put_nowait(None)
    async with RawTestServer(make_handler(fake, blob_url(body), [])) as srv:
        async with aiohttp.ClientSession() as s, s.get(srv.make_url("/b")) as r:
            assert r.content_length == len(body)
            assert await r.read() == body


async def test_empty_blob(tmp_path: Path) -> None:
    fake = FakeDownload(tmp_path, b"", str(tmp_path / "out"))
    async with RawTestServer(make_handler(fake, blob_url(b""), [])) as srv:
        async with aiohttp.ClientSession() as s, s.get(srv.make_url("/b")) as r:
            assert r.status == 200 and await r.read() == b""


async def test_a_body_of_many_chunks_streams_whole_and_in_order(tmp_path: Path) -> None:
    # several read-ahead steps, pieces arriving while earlier chunks are still being sent
    body = os.urandom(3 * CHUNK + 5 * PIECE + 11)
    fake = FakeDownload(tmp_path, body, str(tmp_path / "out"))
    async with RawTestServer(make_handler(fake, blob_url(body), [])) as srv:
        async with aiohttp.ClientSession() as s, s.get(srv.make_url("/b")) as r:
            got = bytearray()
            for _ in range(fake.td.plan.count):
                fake.steps.put_nowait(None)
                await asyncio.sleep(0)
                got += await r.content.read(PIECE // 2)
            got += await r.content.read()
            assert got == body


async def test_a_wrong_digest_on_a_body_of_many_chunks_cuts_it(tmp_path: Path) -> None:
    body = os.urandom(2 * CHUNK + 3 * PIECE)
    fake = FakeDownload(tmp_path, body, str(tmp_path / "out"))
    for _ in range(fake.td.plan.count):
        fake.steps.put_nowait(None)
    async with RawTestServer(make_handler(fake, blob_url(body[:-1] + b"x"), [])) as srv:
        async with aiohttp.ClientSession() as s, s.get(srv.make_url("/b")) as r:
            got = bytearray()
            with pytest.raises(aiohttp.ClientPayloadError):
                async for chunk in r.content.iter_any():
                    got += chunk
            assert len(got) < len(body) and got == body[: len(got)]


def test_the_stream_checks_the_url_digest_itself_so_the_download_does_not(
    tmp_path: Path,
) -> None:
    """The blob's digest is verified on the bytes sent (the tests above); the engine's download
    is not asked to hash its data file against it a second time."""
    svc = Services(
        session=None,  # type: ignore[arg-type]
        supernodes=None,  # type: ignore[arg-type]
        store=None,  # type: ignore[arg-type]
        total_limiter=None,  # type: ignore[arg-type]
        clock=MonotonicClock(),
        peer_id="p",
        peer_port=1,
    )
    owner = TaskOwner("test")
    body = b"layer"
    with_digest = SwarmStream(svc, DownloadRequest(url=blob_url(body), output="o"), owner)
    assert with_digest.expected == hashlib.sha256(body).hexdigest()
    assert isinstance(with_digest.dl, Download)
    assert with_digest.dl.url_sha256 is None
    # ... an attribute the download itself uses: on its own it takes the digest from the URL
    alone = Download(svc, DownloadRequest(url=blob_url(body), output="o"), lambda _e: None)
    assert alone.url_sha256 == with_digest.expected
    plain = SwarmStream(svc, DownloadRequest(url="http://h/file.bin", output="o"), owner)
    assert plain.expected is None and isinstance(plain.dl, Download)
