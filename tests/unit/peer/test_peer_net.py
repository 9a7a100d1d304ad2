"""The network edges, against small real servers on 127.0.0.1: piece fetching (failure kinds)
and the supernode client (answers, rejections, silence)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from damselfly.core.clock import FakeClock
from damselfly.core.errors import PieceFetchError
from damselfly.core.nodes import Node
from damselfly.core.protocol import (
    PeerInfo,
    PieceAssignment,
    PieceSource,
    RegisterRequest,
    ScheduleRequest,
)
from damselfly.core.ratelimit import AsyncLimiter
from damselfly.peer.fetch import OriginAccess, PieceFetcher, piece_url
from damselfly.peer.net import local_ip_for
from damselfly.peer.snclient import Rejected, SupernodeClient, SupernodeDown, TaskLost
from tests.procs import free_port

TID = "e" * 64
BODY = bytes(range(256)) * 40  # 10240 bytes

RELEASE = web.AppKey("release", asyncio.Event)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Serve = Callable[[str, str, Handler], Awaitable[int]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def start(method: str, path: str, handler: Handler) -> int:
        app = web.Application()
        app[RELEASE] = asyncio.Event()  # lets stalling handlers end at teardown
        app.router.add_route(method, path, handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return int(runner.addresses[0][1])

    yield start
    for r in runners:
        r.app[RELEASE].set()
        await r.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def assignment(port: int, kind: str = "peer", num: int = 1, size: int = 1024) -> PieceAssignment:
    return PieceAssignment(num, num * size, size, "", PieceSource("p", kind, "127.0.0.1", port))


def fetcher(session: aiohttp.ClientSession, url: str = "", **kw: object) -> PieceFetcher:
    return PieceFetcher(session, TID, OriginAccess(url, {"X-Auth": "tok"}), [], 0.5)


async def piece(request: web.Request) -> web.Response:
    num = int(request.match_info["num"])
    return web.Response(body=BODY[num * 1024 : num * 1024 + 1024])


async def test_fetch_from_a_peer(serve: Serve, session: aiohttp.ClientSession) -> None:
    port = await serve("GET", "/pieces/{task}/{num}", piece)
    got = await fetcher(session).fetch(assignment(port))
    assert bytes(got) == BODY[1024:2048]


async def short(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    resp.content_length = 1024
    await resp.prepare(request)
    await resp.write(b"x" * 10)
    assert request.transport is not None
    request.transport.close()
    return resp


async def too_long(request: web.Request) -> web.Response:
    return web.Response(body=b"x" * 2000)


async def not_found(request: web.Request) -> web.Response:
    return web.Response(status=404)


async def stall(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    resp.content_length = 1024
    await resp.prepare(request)
    await resp.write(b"x" * 10)
    await request.app[RELEASE].wait()  # sends nothing more while the test runs
    return resp


@pytest.mark.parametrize(
    ("handler", "kind"),
    [(short, "short"), (too_long, "http"), (not_found, "http"), (stall, "timeout")],
)
async def test_fetch_failure_kinds(
    serve: Serve, session: aiohttp.ClientSession, handler: Handler, kind: str
) -> None:
    port = await serve("GET", "/pieces/{task}/{num}", handler)
    with pytest.raises(PieceFetchError) as e:
        await fetcher(session).fetch(assignment(port))
    assert e.value.kind == kind


async def test_fetch_connect_failure(session: aiohttp.ClientSession) -> None:
    with pytest.raises(PieceFetchError) as e:
        await fetcher(session).fetch(assignment(free_port()))
    assert e.value.kind == "connect"


async def ranged(request: web.Request) -> web.Response:
    assert request.headers["X-Auth"] == "tok"
    start, end = request.headers["Range"].removeprefix("bytes=").split("-")
    s, e = int(start), int(end)
    if request.query.get("lie"):
        s, e = s + 1, e + 1
    status = 200 if request.query.get("full") else 206
    return web.Response(
        status=status,
        body=BODY[s : e + 1],
        headers={"Content-Range": f"bytes {s}-{e}/{len(BODY)}"},
    )


@pytest.mark.parametrize(("query", "ok"), [("", True), ("?full=1", False), ("?lie=1", False)])
async def test_fetch_a_range_from_the_origin(
    serve: Serve, session: aiohttp.ClientSession, query: str, ok: bool
) -> None:
    port = await serve("GET", "/f.bin", ranged)
    f = fetcher(session, f"http://127.0.0.1:{port}/f.bin{query}")
    a = assignment(0, kind="origin", num=2)
    if ok:
        assert bytes(await f.fetch(a)) == BODY[2048:3072]
    else:
        with pytest.raises(PieceFetchError) as e:
            await f.fetch(a)
        assert e.value.kind == "http"


async def test_fetch_is_paced_by_every_limiter(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    port = await serve("GET", "/pieces/{task}/{num}", piece)
    clock = FakeClock()
    lims = [AsyncLimiter(1_000_000, clock), AsyncLimiter(2_000_000, clock), None]
    f = PieceFetcher(session, TID, OriginAccess(""), lims, 1.0)
    await f.fetch(assignment(port))
    # both buckets were charged for the piece's bytes (the fake clock never refills them)
    assert [round(lim.bucket.tokens) for lim in lims if lim] == [100_000 - 1024, 200_000 - 1024]


async def test_piece_buffers_are_reused_but_not_after_a_cancel(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    port = await serve("GET", "/pieces/{task}/{num}", piece)
    f = fetcher(session)
    async with f.piece(assignment(port)) as buf:
        assert bytes(buf) == BODY[1024:2048]
        first = buf.obj
    async with f.piece(assignment(port, num=2)) as buf:
        assert buf.obj is first and bytes(buf) == BODY[2048:3072]
    holding = asyncio.Event()

    async def cancelled_while_writing() -> None:
        async with f.piece(assignment(port)) as buf:
            assert buf.obj is first
            holding.set()
            await asyncio.Event().wait()  # e.g. a worker thread still reads the buffer

    task = asyncio.create_task(cancelled_while_writing())
    await holding.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    async with f.piece(assignment(port)) as buf:
        assert buf.obj is not first and f.buffers.made == 2
    assert f.pieces.connects == 1  # one kept-alive connection for all four
    await f.close()
    assert f.pieces.closed and f.buffers.free == []


def test_piece_url() -> None:
    assert piece_url("10.0.0.1", 80, TID, 3) == f"http://10.0.0.1:80/pieces/{TID}/3"
    assert piece_url("::1", 80, TID, 3) == f"http://[::1]:80/pieces/{TID}/3"


# -- the supernode client --------------------------------------------------------------------

REG = RegisterRequest("http://o/f", PeerInfo("me-1", "127.0.0.1", 1))


def answer(status: int, body: object) -> Handler:
    async def h(request: web.Request) -> web.Response:
        if isinstance(body, str):
            return web.Response(status=status, text=body)
        return web.json_response(body, status=status)

    return h


async def test_register_answers(serve: Serve, session: aiohttp.ClientSession) -> None:
    ok = {"task_id": TID, "length": 10, "piece_size": 4, "piece_count": 3}
    port = await serve("POST", "/api/v1/register", answer(200, ok))
    reg = await SupernodeClient(session).register(Node("127.0.0.1", port), REG)
    assert (reg.task_id, reg.length, reg.piece_count) == (TID, 10, 3)


@pytest.mark.parametrize(
    ("status", "body", "error", "code"),
    [
        (
            404,
            {"error": "origin_not_found", "message": "no such file"},
            Rejected,
            "origin_not_found",
        ),
        (502, {"error": "origin_error", "message": "origin down"}, Rejected, "origin_error"),
        (500, "Internal Server Error", SupernodeDown, ""),
        (503, {"unexpected": 1}, SupernodeDown, ""),
        (200, {"task_id": "nope"}, SupernodeDown, ""),
        (200, "[1, 2", SupernodeDown, ""),
    ],
)
async def test_register_failures(
    serve, session, status: int, body: object, error: type, code: str
) -> None:
    port = await serve("POST", "/api/v1/register", answer(status, body))
    with pytest.raises(error) as e:
        await SupernodeClient(session).register(Node("127.0.0.1", port), REG)
    if code:
        assert isinstance(e.value, Rejected) and e.value.code == code
        assert "\n" not in str(e.value)


async def test_silence_is_a_down_supernode(session: aiohttp.ClientSession) -> None:
    with pytest.raises(SupernodeDown) as e:
        await SupernodeClient(session).register(Node("127.0.0.1", free_port()), REG)
    assert "did not answer" in str(e.value) and "--node" in str(e.value)


async def test_schedule_for_a_forgotten_task_means_register_again(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    port = await serve(
        "POST",
        "/api/v1/tasks/{tid}/schedule",
        answer(400, {"error": "bad_request", "message": "?"}),
    )
    with pytest.raises(TaskLost):
        await SupernodeClient(session).schedule(
            Node("127.0.0.1", port), TID, ScheduleRequest("me-1", wait_ms=0)
        )


async def test_heartbeat_and_leave_never_raise(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    seen: list[str] = []

    async def h(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"ok": True})

    port = await serve("POST", "/api/v1/{what:.*}", h)
    sn = SupernodeClient(session)
    node = Node("127.0.0.1", port)
    assert await sn.heartbeat(node, "me-1")
    await sn.leave_task(node, TID, "me-1")
    await sn.leave_peer(node, "me-1")
    assert seen == [
        "/api/v1/peers/me-1/heartbeat",
        f"/api/v1/tasks/{TID}/leave",
        "/api/v1/peers/me-1/leave",
    ]
    dead = Node("127.0.0.1", free_port())
    assert not await sn.heartbeat(dead, "me-1")
    await sn.leave_peer(dead, "me-1")


async def test_local_ip_for_loopback() -> None:
    assert await local_ip_for("127.0.0.1", 8002) == "127.0.0.1"
