"""A small HTTP/1.1 client for ``GET /pieces/{task}/{num}`` that receives a piece's body straight
into its buffer, and the pool those buffers come from.

Peers and supernodes answer a piece with ``200`` and a ``Content-Length``; there is nothing else to
negotiate, so the client stays small and strict: it writes one request, reads the status line and
headers (at most ``MAX_HEAD`` bytes; malformed lines, a chunked or encoded body, or a length other
than the piece's fail with kind ``http``), then lets the kernel copy the body into the caller's
buffer with ``recv_into`` (an asyncio ``BufferedProtocol``): no bytes object per chunk and no
copy in Python. This is the engine's hot path; aiohttp's client spent most of the event loop's
time allocating and copying chunks.

- A source that sends nothing for ``stall`` seconds (while not held back by a rate limit) fails
  with kind ``timeout``; one that closes early with ``short``; one that cannot be reached with
  ``connect`` (``timeout`` when connecting takes too long).
- Received bytes are charged to the rate limiters in blocks of ``PACE_BLOCK`` (and at the end);
  a limiter in debt pauses reading until the debt is paid (the socket buffers absorb the rest).
- While a body streams in, the socket's ``SO_RCVLOWAT`` makes the kernel wake the event loop only
  once ``WAKE_BYTES`` have arrived (or the rest of the piece, or EOF): on a paced link, where bytes
  arrive a packet at a time, that is one Python wake-up per 64 KiB instead of one per packet
  (docs/benchmarks.md, swarm section: the engines' CPU bound the swarm). Bytes waiting below the
  mark still count as progress for the stall detector (``FIONREAD``).
- Connections are kept alive and reused per (host, port); an idle one the server closed meanwhile
  is replaced once, transparently, and one with unsolicited bytes waiting is dropped.
  ``close()`` closes the idle ones.

Cluster security: with a cluster token every request carries it (``X-Damselfly-Token``); with a
TLS context connections are HTTPS (``create_connection(..., ssl=ctx)``: asyncio's TLS transport
feeds a ``BufferedProtocol`` too, so the same code reads the decrypted body into the buffer; the
kernel-to-buffer zero copy is then a decrypt-into-buffer).

``BufferPool`` hands out piece buffers backed by anonymous mmaps, reuses them between pieces and
unmaps them at ``close()``, so the engine's memory returns to the system after a transfer and no
piece buffer is zero-filled or faulted in more than once per download.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import ipaddress
import mmap
import re
import socket
import ssl
import termios
from collections.abc import Mapping
from dataclasses import dataclass

from damselfly import __version__
from damselfly.core.errors import PieceFetchError
from damselfly.core.ratelimit import AsyncLimiter

#: the status line and headers of an answer may not exceed this
MAX_HEAD = 16 * 1024
#: received bytes are charged to the rate limiters in blocks at least this big
PACE_BLOCK = 64 * 1024
#: with a rate limit, read at most this much at once (smooth pacing)
PACED_READ = 256 * 1024
#: an unpaced body wakes the event loop once this many bytes are waiting (SO_RCVLOWAT)
WAKE_BYTES = 64 * 1024
_SO_RCVLOWAT = getattr(socket, "SO_RCVLOWAT", None)
CONNECT_TIMEOUT = 5.0
#: idle keep-alive connections kept per (host, port), and for how long
MAX_IDLE_PER_HOST = 8
IDLE_TTL = 30.0

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) (\d{3})(?: [^\r\n]*)?")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_DIGITS = re.compile(rb"[0-9]{1,15}")

_IDLE, _HEAD, _BODY, _BROKEN = "idle", "head", "body", "broken"


@dataclass(frozen=True, slots=True)
class Head:
    """A parsed answer head: the status, HTTP minor version and the header fields we read."""

    minor: int
    status: int
    fields: dict[bytes, bytes]
    length: int  # bytes of the head, CRLFCRLF included


def parse_head(data: bytes | bytearray, start: int, end: int) -> Head | None:
    """Parse the head at ``data[start:end]``; None while it is incomplete.

    Raises PieceFetchError(kind "http") for a malformed head (and for one larger than
    ``MAX_HEAD``, when ``end - start`` reached it). Field names are lowercased; a field given
    twice keeps its last value, except ``Content-Length``, whose copies must agree.
    """
    stop = data.find(b"\r\n\r\n", start, end)
    if stop < 0:
        if end - start >= MAX_HEAD:
            raise PieceFetchError(f"the source's answer head exceeds {MAX_HEAD} bytes", "http")
        return None
    lines = bytes(data[start:stop]).split(b"\r\n")
    m = _STATUS_LINE.fullmatch(lines[0])
    if m is None:
        raise PieceFetchError("the source answered with a malformed status line", "http")
    fields: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise PieceFetchError("the source answered with a malformed header line", "http")
        name = name.lower()
        value = value.strip(b" \t")
        if name == b"content-length" and fields.get(name, value) != value:
            raise PieceFetchError("the source sent conflicting Content-Length headers", "http")
        fields[name] = value
    return Head(int(m.group(1)), int(m.group(2)), fields, stop + 4 - start)


def check_head(head: Head, size: int) -> bool:
    """Check an answer to a piece request of ``size`` bytes; return whether the connection may
    be reused after the body. Raises PieceFetchError(kind "http") when the answer is unusable."""
    if head.status != 200:
        raise PieceFetchError(f"the source answered {head.status}", "http")
    f = head.fields
    if b"transfer-encoding" in f:
        raise PieceFetchError("the source sent a body without Content-Length", "http")
    if f.get(b"content-encoding", b"identity").lower() != b"identity":
        raise PieceFetchError("the source sent an encoded body", "http")
    cl = f.get(b"content-length")
    if cl is None or not _DIGITS.fullmatch(cl):
        raise PieceFetchError("the source did not say how long the piece is", "http")
    if int(cl) != size:
        raise PieceFetchError(f"the source announced {int(cl)} bytes, expected {size}", "http")
    conn = {t.strip() for t in f.get(b"connection", b"").lower().split(b",")}
    return b"close" not in conn if head.minor == 1 else b"keep-alive" in conn


def host_header(host: str, port: int) -> str:
    try:
        literal = ipaddress.ip_address(host).version == 6
    except ValueError:
        literal = False
    return f"[{host}]:{port}" if literal else f"{host}:{port}"


class _Conn(asyncio.BufferedProtocol):
    """One keep-alive connection; one request at a time. Lives on the event loop only."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.state = _IDLE
        self.head = bytearray(MAX_HEAD)
        self.head_view = memoryview(self.head)
        self.head_len = 0
        self.scanned = 0  # bytes of the head already searched for its end
        self.body: memoryview | None = None
        self.size = 0
        self.got = 0
        self.keep_alive = False
        self.waiter: asyncio.Future[None] | None = None
        self.stall = 0.0
        self.last_rx = 0.0
        self.watchdog: asyncio.TimerHandle | None = None
        self.limiters: list[AsyncLimiter] = []
        self.paced = False  # some limiter has a rate: charge received bytes, read less at once
        self.unpaced = 0
        self.paused: asyncio.TimerHandle | None = None
        self.idle_since = 0.0
        self._sink = bytearray(256)
        self.lowat = 1  # the socket's SO_RCVLOWAT now
        self.pending_seen = 0  # bytes FIONREAD reported at the last stall check

    # -- one request ---------------------------------------------------------------------------

    def start(
        self, request: bytes, into: memoryview, stall: float, limiters: list[AsyncLimiter]
    ) -> asyncio.Future[None]:
        assert self.transport is not None and self.state == _IDLE
        self.state = _HEAD
        self.head_len = self.scanned = 0
        self.body = into
        self.size = len(into)
        self.got = 0
        self.stall = stall
        self.limiters = limiters
        self.paced = any(lim.rate is not None for lim in limiters)
        self.unpaced = 0
        self.pending_seen = 0
        self._set_lowat(1)  # the head: whatever arrives
        self.waiter = self.loop.create_future()
        self.last_rx = self.loop.time()
        self.watchdog = self.loop.call_later(stall, self._check_stall)
        self.transport.write(request)
        return self.waiter

    def reusable(self) -> bool:
        """Idle, open, and no unsolicited bytes waiting in the socket (an answer longer than
        announced would otherwise be read as the head of the next one)."""
        if self.state != _IDLE or self.transport is None or self.transport.is_closing():
            return False
        return self._pending() == 0

    @property
    def answered(self) -> bool:
        """Whether the source sent anything for the current request."""
        return self.head_len > 0 or self.got > 0

    def _done(self) -> None:
        self.state = _IDLE
        self.body = None
        self.idle_since = self.loop.time()
        self._stop_timers()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def fail(self, kind: str, message: str) -> None:
        """End the current request with PieceFetchError and drop the connection."""
        self.state = _BROKEN
        self.body = None
        self._stop_timers()
        if self.transport is not None:
            self.transport.abort()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(PieceFetchError(message, kind))

    def abort(self) -> None:
        """Drop the connection (the caller gave up): nothing is read into its buffer any more."""
        self.state = _BROKEN
        self.body = None
        self._stop_timers()
        if self.transport is not None:
            self.transport.abort()

    def _stop_timers(self) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        if self.paused is not None:
            self.paused.cancel()
            self.paused = None

    def _check_stall(self) -> None:
        self.watchdog = None
        if self.state not in (_HEAD, _BODY):
            return
        now = self.loop.time()
        pending = self._pending()
        if pending > self.pending_seen:  # bytes arrived, below the wake-up mark: progress
            self.pending_seen = pending
            self.last_rx = now
        if self.paused is None and now - self.last_rx >= self.stall:
            self.fail("timeout", f"the source sent nothing for {self.stall:g}s (it stalled)")
            return
        due = now + self.stall if self.paused is not None else self.last_rx + self.stall
        self.watchdog = self.loop.call_at(due, self._check_stall)

    def _pending(self) -> int:
        """Bytes waiting in the socket; -1 when that cannot be known."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            return -1
        n = array.array("i", [0])
        try:
            fcntl.ioctl(sock.fileno(), termios.FIONREAD, n)
        except OSError:
            return -1
        return n[0]

    def _set_lowat(self, n: int) -> None:
        """Wake the event loop only once ``n`` bytes are waiting (EOF and errors always wake)."""
        if n == self.lowat or _SO_RCVLOWAT is None or self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is None or self.transport.get_extra_info("sslcontext") is not None:
            return  # TLS: the transport reads records, not our bytes
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVLOWAT, n)
            self.lowat = n
        except OSError:
            pass  # an odd socket: default wake-ups

    def _body_lowat(self) -> None:
        if not self.paced and self.body is not None and self.size > self.got:
            self._set_lowat(min(WAKE_BYTES, self.size - self.got))

    # -- pacing --------------------------------------------------------------------------------

    def _pace(self, n: int) -> None:
        self.unpaced += n
        if self.unpaced < PACE_BLOCK and self.got < self.size:
            return
        delay = 0.0
        for lim in self.limiters:
            if lim.rate is not None:
                d = lim.bucket.reserve(self.unpaced)
                lim.waited += d
                delay = max(delay, d)
        self.unpaced = 0
        if delay > 0 and self.got < self.size and self.transport is not None:
            self.transport.pause_reading()
            self.paused = self.loop.call_later(delay, self._resume)

    def _resume(self) -> None:
        self.paused = None
        self.last_rx = self.loop.time()
        if self.state == _BODY and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # -- asyncio protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview | bytearray:
        if self.state == _BODY and self.body is not None:
            end = min(self.size, self.got + PACED_READ) if self.paced else self.size
            return self.body[self.got : end]
        if self.state == _HEAD:
            return self.head_view[self.head_len :]
        return self._sink  # unsolicited bytes: buffer_updated drops the connection

    def buffer_updated(self, nbytes: int) -> None:
        self.last_rx = self.loop.time()
        if self.state == _BODY:
            self.got += nbytes
            self.pending_seen = 0
            if self.paced:
                self._pace(nbytes)
            if self.got >= self.size:
                self._done()
            elif self.size - self.got < self.lowat:
                self._body_lowat()  # less than the mark is left of the piece
        elif self.state == _HEAD:
            self.head_len += nbytes
            try:
                self._on_head_bytes()
            except PieceFetchError as e:
                self.fail(e.kind, e.message)
        else:
            self.abort()  # bytes nobody asked for: the connection is out of step

    def _on_head_bytes(self) -> None:
        # look for the end of the head only in what is new (a source that trickles its head
        # byte by byte must not make us rescan it each time)
        if self.head.find(b"\r\n\r\n", max(0, self.scanned - 3), self.head_len) < 0:
            self.scanned = self.head_len
            if self.head_len >= MAX_HEAD:
                raise PieceFetchError(f"the source's answer head exceeds {MAX_HEAD} bytes", "http")
            return
        head = parse_head(self.head, 0, self.head_len)
        assert head is not None
        self.keep_alive = check_head(head, self.size)
        extra = self.head_len - head.length
        if extra > self.size:
            raise PieceFetchError("the source sent more bytes than the piece holds", "http")
        assert self.body is not None
        self.body[:extra] = self.head_view[head.length : self.head_len]
        self.got = extra
        self.state = _BODY
        if self.paced and extra:
            self._pace(extra)
        if self.got >= self.size:
            self._done()
        else:
            self._body_lowat()

    def eof_received(self) -> bool:
        if self.state in (_HEAD, _BODY):
            what = "mid-piece" if self.state == _BODY else "before answering"
            self.fail("short", f"the source closed the connection {what} ({self.got} of "
                      f"{self.size} bytes)")  # fmt: skip
        self.state = _BROKEN
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state in (_HEAD, _BODY):
            why = f": {exc.__class__.__name__}" if exc is not None else ""
            self.fail("short", f"the connection to the source was lost mid-piece{why}")
        self.state = _BROKEN
        self.body = None
        self._stop_timers()

    def __repr__(self) -> str:
        return f"_Conn({self.state}, {self.got}/{self.size} bytes)"


class PieceClient:
    """Fetches pieces over kept-alive HTTP/1.1 connections; one per engine."""

    def __init__(
        self,
        connect_timeout: float = CONNECT_TIMEOUT,
        max_idle_per_host: int = MAX_IDLE_PER_HOST,
        idle_ttl: float = IDLE_TTL,
        token: str = "",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.tls = tls
        # sent with every request (validated printable ASCII by core.cluster.read_token_file)
        self._token_line = f"X-Damselfly-Token: {token}\r\n" if token else ""
        self.max_idle_per_host = max_idle_per_host
        self.idle_ttl = idle_ttl
        self.idle: dict[tuple[str, int], list[_Conn]] = {}
        self.connects = 0  # connections opened, for tests and metrics
        self.closed = False

    async def get_into(
        self,
        host: str,
        port: int,
        path: str,
        into: memoryview,
        stall: float,
        limiters: list[AsyncLimiter | None] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """GET ``path`` from ``host:port`` and fill ``into`` with exactly its bytes, or raise
        PieceFetchError (kinds connect, timeout, http, short). ``into`` is no longer written
        once this returns or raises (or is cancelled). ``headers`` (e.g. a grant) are sent
        as given (ASCII, no control characters)."""
        if self.closed:
            raise PieceFetchError("the engine is shutting down", "other")
        extra = ""
        for k, v in (headers or {}).items():
            if any(c in k or c in v for c in "\r\n\x00"):
                raise PieceFetchError("a piece request header holds control characters", "other")
            extra += f"{k}: {v}\r\n"
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host_header(host, port)}\r\n"
            f"User-Agent: damselfly/{__version__}\r\nAccept-Encoding: identity\r\n"
            f"{self._token_line}{extra}\r\n"
        ).encode("ascii")
        lims = [lim for lim in (limiters or []) if lim is not None]
        key = (host, port)
        for attempt in range(2):
            conn = self._take(key)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(host, port, min(self.connect_timeout, stall * 2))
            try:
                await conn.start(request, into, stall, lims)
            except PieceFetchError as e:
                conn.abort()
                if reused and attempt == 0 and e.kind == "short" and not conn.answered:
                    continue  # the server closed this idle connection meanwhile: a new one
                raise
            except BaseException:
                conn.abort()
                raise
            if conn.keep_alive and not self.closed:
                self._put(key, conn)
            else:
                conn.abort()
            return

    async def _connect(self, host: str, port: int, limit: float) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(limit):
                _, conn = await loop.create_connection(
                    lambda: _Conn(loop),
                    host,
                    port,
                    ssl=self.tls,
                    server_hostname=host if self.tls is not None else None,
                )
        except TimeoutError as e:
            raise PieceFetchError(
                f"connecting to the source took longer than {limit:g}s", "timeout"
            ) from e
        except ssl.SSLError as e:
            why = getattr(e, "verify_message", "") or e.reason or e.__class__.__name__
            raise PieceFetchError(f"TLS with the source failed: {why}", "connect") from e
        except OSError as e:
            why = e.strerror or e.__class__.__name__
            raise PieceFetchError(f"cannot connect to the source: {why}", "connect") from e
        self.connects += 1
        return conn

    def _take(self, key: tuple[str, int]) -> _Conn | None:
        conns = self.idle.get(key)
        if not conns:
            return None
        now = asyncio.get_running_loop().time()
        while conns:
            conn = conns.pop()
            if now - conn.idle_since < self.idle_ttl and conn.reusable():
                if not conns:
                    del self.idle[key]
                return conn
            conn.abort()
        del self.idle[key]
        return None

    def _put(self, key: tuple[str, int], conn: _Conn) -> None:
        conns = self.idle.setdefault(key, [])
        conns[:] = [c for c in conns if c.state == _IDLE]
        if len(conns) >= self.max_idle_per_host:
            conns.pop(0).abort()
        conns.append(conn)

    async def close(self) -> None:
        """Close every idle connection; later requests fail."""
        self.closed = True
        for conns in self.idle.values():
            for conn in conns:
                conn.abort()
        self.idle.clear()

    def __repr__(self) -> str:
        n = sum(len(c) for c in self.idle.values())
        return f"PieceClient({n} idle connection(s), {self.connects} opened)"


class BufferPool:
    """Piece buffers backed by anonymous mmaps: reused between pieces, unmapped by ``close()``.

    ``get(size)`` returns a writable memoryview of exactly ``size`` bytes; give it back with
    ``put()`` once nothing (no socket, no worker thread) uses it any more, or just drop it.
    """

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self.free: list[mmap.mmap] = []
        self.made = 0  # buffers mapped so far

    def get(self, size: int) -> memoryview:
        for i, mm in enumerate(self.free):
            if len(mm) >= size:
                del self.free[i]
                return memoryview(mm)[:size]
        self.made += 1
        return memoryview(mmap.mmap(-1, max(size, 1)))[:size]

    def put(self, view: memoryview) -> None:
        mm = view.obj
        view.release()
        if isinstance(mm, mmap.mmap) and not mm.closed and len(self.free) < self.keep:
            self.free.append(mm)

    def close(self) -> None:
        free, self.free = self.free, []
        for mm in free:
            with contextlib.suppress(BufferError):  # still exported: unmapped when released
                mm.close()

    def __repr__(self) -> str:
        return f"BufferPool({len(self.free)} free, {self.made} made)"
