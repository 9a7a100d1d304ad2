"""The piece client against small scripted servers on 127.0.0.1: strict parsing of the answer
head, bodies received straight into the caller's buffer, keep-alive reuse (and a server that
closed an idle connection), stalls, cancellation, rate limits; and the buffer pool."""

from __future__ import annotations

import asyncio
import mmap
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from damselfly.core.clock import FakeClock
from damselfly.core.errors import PieceFetchError
from damselfly.core.ratelimit import AsyncLimiter
from damselfly.peer.piececlient import (
    MAX_HEAD,
    PACE_BLOCK,
    PACED_READ,
    BufferPool,
    PieceClient,
    _Conn,
    check_head,
    host_header,
    parse_head,
)

BODY = bytes(range(256)) * 64  # 16 KiB
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Serve = Callable[[Script], Awaitable[int]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start a raw TCP server running ``script`` per connection; returns its port."""
    servers: list[asyncio.Server] = []

    async def start(script: Script) -> int:
        async def conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                await script(r, w)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                w.close()

        srv = await asyncio.start_server(conn, "127.0.0.1", 0)
        servers.append(srv)
        return int(srv.sockets[0].getsockname()[1])

    yield start
    for s in servers:
        s.close()
        await s.wait_closed()


@pytest.fixture
async def client() -> AsyncIterator[PieceClient]:
    c = PieceClient()
    yield c
    await c.close()


async def read_request(r: asyncio.StreamReader) -> bytes:
    return await r.readuntil(b"\r\n\r\n")


def ok_head(n: int, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n{extra}\r\n".encode()


def answer(head: bytes, body: bytes, requests: int = 1) -> Script:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        for _ in range(requests):
            await read_request(r)
            w.write(head + body)
            await w.drain()
        await r.read()  # until the client closes

    return script


async def fetch(client: PieceClient, port: int, size: int = len(BODY), **kw: object) -> bytes:
    buf = bytearray(size)
    await client.get_into("127.0.0.1", port, "/pieces/t/1", memoryview(buf), 1.0, **kw)  # type: ignore[arg-type]
    return bytes(buf)


async def test_a_piece_lands_in_the_buffer_and_the_connection_is_reused(
    serve: Serve, client: PieceClient
) -> None:
    seen: list[bytes] = []

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        for _ in range(3):
            seen.append(await read_request(r))
            w.write(ok_head(len(BODY)))
            await w.drain()
            w.write(BODY[:100])  # the body in several writes
            await w.drain()
            w.write(BODY[100:])
            await w.drain()
        await r.read()

    port = await serve(script)
    for _ in range(3):
        assert await fetch(client, port) == BODY
    assert client.connects == 1
    assert seen[0].startswith(b"GET /pieces/t/1 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{port}\r\n".encode() in seen[0]
    assert b"Accept-Encoding: identity\r\n" in seen[0]


async def test_a_body_that_arrives_with_the_head_is_kept(serve: Serve, client: PieceClient) -> None:
    port = await serve(answer(ok_head(len(BODY)), BODY))  # one write: head and body together
    assert await fetch(client, port) == BODY


async def test_an_idle_connection_the_server_closed_is_replaced(
    serve: Serve, client: PieceClient
) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(ok_head(len(BODY)) + BODY)
        await w.drain()
        await read_request(r)  # the second request on this connection: closed unanswered

    port = await serve(script)
    assert await fetch(client, port) == BODY
    assert await fetch(client, port) == BODY
    assert client.connects == 2


@pytest.mark.parametrize(
    ("connection", "reused"),
    [("", True), ("Connection: close\r\n", False), ("Connection: keep-alive, Close\r\n", False)],
)
async def test_connection_close_is_honoured(
    serve: Serve, client: PieceClient, connection: str, reused: bool
) -> None:
    port = await serve(answer(ok_head(len(BODY), connection), BODY, requests=2))
    await fetch(client, port)
    await fetch(client, port)
    assert client.connects == (1 if reused else 2)


@pytest.mark.parametrize(
    ("head", "body", "kind", "fragment"),
    [
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n", b"{}", "http", "answered 404"),
        (ok_head(10), b"x" * 10, "http", "announced 10 bytes"),
        (b"HTTP/1.1 200 OK\r\n\r\n", b"", "http", "did not say how long"),
        (ok_head(len(BODY), "Content-Length: 5\r\n"), b"", "http", "conflicting"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"",
            "http",
            "without Content-Length",
        ),
        (ok_head(len(BODY), "Content-Encoding: gzip\r\n"), b"", "http", "encoded"),
        (ok_head(len(BODY), "Bad Header\r\n"), b"", "http", "malformed header"),
        (ok_head(len(BODY), " folded: x\r\n"), b"", "http", "malformed header"),
        (b"ICY 200 OK\r\n\r\n", b"", "http", "malformed status"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * MAX_HEAD, b"", "http", "exceeds"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", b"", "http", "how long"),
        (ok_head(len(BODY)), BODY[:1000], "short", "mid-piece"),
        (b"HTTP/1.1 200", b"", "short", "before answering"),
    ],
)
async def test_bad_answers_fail_with_a_kind(
    serve: Serve, client: PieceClient, head: bytes, body: bytes, kind: str, fragment: str
) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(head + body)
        await w.drain()  # then close

    port = await serve(script)
    with pytest.raises(PieceFetchError) as e:
        await fetch(client, port)
    assert e.value.kind == kind and fragment in e.value.message, e.value.message
    assert client.idle == {}  # a failed connection is never reused


async def test_more_bytes_than_announced_drop_the_connection(
    serve: Serve, client: PieceClient
) -> None:
    port = await serve(answer(ok_head(len(BODY)), BODY + b"garbage", requests=2))
    assert await fetch(client, port) == BODY
    assert await fetch(client, port) == BODY  # the out-of-step connection was not reused
    assert client.connects == 2


async def test_a_stalled_source_times_out(serve: Serve, client: PieceClient) -> None:
    never = asyncio.Event()

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(ok_head(len(BODY)) + BODY[:10])
        await w.drain()
        await never.wait()  # then nothing more, connection open

    port = await serve(script)
    buf = bytearray(len(BODY))
    try:
        with pytest.raises(PieceFetchError) as e:
            await client.get_into("127.0.0.1", port, "/p", memoryview(buf), 0.2)
    finally:
        never.set()
    assert e.value.kind == "timeout" and "stalled" in e.value.message
    assert client.idle == {}


async def test_cancelling_a_fetch_drops_the_connection(serve: Serve, client: PieceClient) -> None:
    closed = asyncio.Event()

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(ok_head(len(BODY)) + b"a" * 100)
        await w.drain()
        try:
            await r.read()  # returns (or raises) once the client drops the connection
        finally:
            closed.set()

    port = await serve(script)
    buf = bytearray(len(BODY))
    task = asyncio.create_task(client.get_into("127.0.0.1", port, "/p", memoryview(buf), 5.0))
    for _ in range(500):  # bounded wait for the first bytes to land in the buffer
        if buf[99] == ord("a"):
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(closed.wait(), 5)
    assert bytes(buf[:100]) == b"a" * 100 and client.idle == {}


async def test_connect_failures(client: PieceClient) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PieceFetchError) as e:
        await fetch(client, port)
    assert e.value.kind == "connect" and "cannot connect" in e.value.message
    await client.close()
    with pytest.raises(PieceFetchError) as e:
        await fetch(client, port)
    assert e.value.kind == "other"


async def test_received_bytes_are_charged_to_every_limiter(
    serve: Serve, client: PieceClient
) -> None:
    size = 300 * 1024
    body = bytes(size)
    port = await serve(answer(ok_head(size), body))
    clock = FakeClock()  # never refills: every byte beyond the burst is debt
    fast, slow = AsyncLimiter(100_000_000, clock), AsyncLimiter(2_000_000, clock)
    unlimited = AsyncLimiter(None, clock)
    await fetch(client, port, size, limiters=[fast, None, slow, unlimited])
    assert round(fast.bucket.tokens) == 10_000_000 - size
    assert round(slow.bucket.tokens) == 200_000 - size
    # the slow one ran into debt: reading paused for the time it asked
    assert slow.waited > 0 and fast.waited == 0


@pytest.mark.parametrize(
    ("head", "keep"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\ncontent-length:3\r\nConnection: close\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: Keep-Alive\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", True),
    ],
)
def test_check_head_table(head: bytes, keep: bool) -> None:
    h = parse_head(head + b"abc", 0, len(head) + 3)
    assert h is not None and h.length == len(head)
    assert check_head(h, 3) is keep


def test_parse_head_waits_for_the_end_of_the_head() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
    assert parse_head(data, 0, len(data)) is None


def test_host_header() -> None:
    assert host_header("10.0.0.1", 80) == "10.0.0.1:80"
    assert host_header("::1", 8001) == "[::1]:8001"
    assert host_header("peer.example", 8001) == "peer.example:8001"


def test_buffer_pool_reuses_and_unmaps() -> None:
    pool = BufferPool(keep=2)
    a = pool.get(1000)
    assert len(a) == 1000 and isinstance(a.obj, mmap.mmap)
    mm = a.obj
    a[:3] = b"abc"
    pool.put(a)
    b = pool.get(500)  # a smaller piece (the last one) reuses a bigger buffer
    assert b.obj is mm and len(b) == 500 and pool.made == 1
    c = pool.get(2000)  # nothing big enough free: a new one
    assert c.obj is not mm and pool.made == 2
    pool.put(b)
    pool.put(c)
    pool.put(pool.get(10))
    pool.put(memoryview(mmap.mmap(-1, 10)))  # beyond keep: dropped
    assert len(pool.free) == 2
    pool.close()
    assert mm.closed and pool.free == []


# -- the protocol alone, fed by hand (no sockets) ----------------------------------------------


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.reading = True
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def abort(self) -> None:
        self.closing = True

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing


def feed(conn: _Conn, data: bytes, chunks: list[int]) -> None:
    """Deliver ``data`` the way the event loop does: into whatever get_buffer() offers."""
    pos = 0
    for n in [*chunks, len(data)]:
        while n > 0 and pos < len(data):
            buf = conn.get_buffer(-1)
            k = min(n, len(buf), len(data) - pos)
            buf[:k] = data[pos : pos + k]
            conn.buffer_updated(k)
            pos += k
            n -= k


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=5000), max_size=20))
@example([1] * 80)  # a head trickled byte by byte
@example([37, 3, 2])  # the end of the head split across reads
async def test_any_split_of_an_answer_gives_the_same_piece(chunks: list[int]) -> None:
    loop = asyncio.get_running_loop()
    conn = _Conn(loop)
    t = FakeTransport()
    conn.connection_made(t)
    buf = bytearray(len(BODY))
    waiter = conn.start(b"GET / HTTP/1.1\r\n\r\n", memoryview(buf), 5.0, [])
    feed(conn, ok_head(len(BODY), "Server: x\r\n") + BODY, chunks)
    assert waiter.done() and waiter.exception() is None
    assert bytes(buf) == BODY and conn.reusable() is False  # a fake transport has no socket
    assert t.written == b"GET / HTTP/1.1\r\n\r\n" and not t.closing


async def test_a_limiter_in_debt_pauses_reading_until_paid() -> None:
    loop = asyncio.get_running_loop()
    conn = _Conn(loop)
    t = FakeTransport()
    conn.connection_made(t)
    lim = AsyncLimiter(1_000_000, FakeClock())  # burst 100 kB, never refilled
    size = 400 * 1024
    buf = bytearray(size)
    waiter = conn.start(b"GET / HTTP/1.1\r\n\r\n", memoryview(buf), 5.0, [lim])
    assert len(conn.get_buffer(-1)) <= MAX_HEAD
    feed(conn, ok_head(size), [])
    assert len(conn.get_buffer(-1)) == PACED_READ  # paced: read in bounded steps
    feed(conn, bytes(PACE_BLOCK - 1), [])
    assert t.reading  # less than a block is not charged yet
    feed(conn, bytes(1), [])
    assert t.reading and conn.paused is None  # within the burst
    feed(conn, bytes(PACE_BLOCK), [])
    assert not t.reading and conn.paused is not None  # 128 KiB > 100 kB: in debt, paused
    assert lim.waited == pytest.approx((2 * PACE_BLOCK - 100_000) / 1_000_000)
    conn.paused.cancel()
    conn._resume()  # what the timer does when the debt is paid
    assert t.reading
    feed(conn, bytes(size - 2 * PACE_BLOCK), [PACE_BLOCK] * 6)
    assert waiter.done() and round(lim.bucket.tokens) == 100_000 - size


async def test_a_trickling_body_wakes_the_loop_per_64k_not_per_packet(
    serve: Serve, client: PieceClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SO_RCVLOWAT: 512 KiB sent 1 KiB at a time arrive in a handful of reads."""
    body = bytes(range(256)) * 4 * 512  # 512 KiB
    calls = 0
    real = _Conn.buffer_updated

    def counting(self: _Conn, nbytes: int) -> None:
        nonlocal calls
        calls += 1
        real(self, nbytes)

    monkeypatch.setattr(_Conn, "buffer_updated", counting)

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(ok_head(len(body)))
        for off in range(0, len(body), 1024):
            w.write(body[off : off + 1024])
            await w.drain()
            if off % 8192 == 0:
                await asyncio.sleep(0.001)  # separate segments, as a paced link delivers them
        await r.read()

    port = await serve(script)
    buf = bytearray(len(body))
    await client.get_into("127.0.0.1", port, "/p", memoryview(buf), 5.0)
    assert bytes(buf) == body
    assert calls <= 20, calls  # ~8 marks of 64 KiB plus the head (65 without the mark, here)


async def test_a_slow_trickle_below_the_wake_mark_is_not_a_stall(
    serve: Serve, client: PieceClient
) -> None:
    """Bytes waiting under the mark count as progress: no false stall timeout."""

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(ok_head(len(BODY)))
        for off in range(0, len(BODY), 2048):
            w.write(BODY[off : off + 2048])
            await w.drain()
            await asyncio.sleep(0.1)  # 16 KiB over ~0.8 s, under a 0.35 s stall limit
        await r.read()

    port = await serve(script)
    buf = bytearray(len(BODY))
    await client.get_into("127.0.0.1", port, "/p", memoryview(buf), 0.35)
    assert bytes(buf) == BODY
