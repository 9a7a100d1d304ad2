"""The proxy port's connection layer: looks at the first bytes of each connection and hands it on.

- A TLS ClientHello on this plain-HTTP port (skopeo and containerd try HTTPS first on "insecure"
  mirrors) is closed at once, so the client falls back to HTTP without waiting for a timeout.
- ``CONNECT host:port`` is tunnelled byte for byte to the target, unless ``hijack`` names the
  host: then the client's TLS is terminated here with a leaf certificate for that host and the
  decrypted requests go to the HTTP handler (which knows the host from ``https_host``).
- Anything else is HTTP: the connection is given to aiohttp's request handler.

Every input is bounded: the first request head of a CONNECT is at most ``MAX_HEAD`` bytes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import weakref
from collections.abc import Callable
from typing import Any

from aiohttp import web

from damselfly.peer.tasks import TaskOwner

log = logging.getLogger("damselfly.dfdaemon.front")

MAX_HEAD = 16 * 1024
TLS_HANDSHAKE = 0x16
CONNECT_TIMEOUT = 30.0
_CONNECT_RE = re.compile(
    rb"CONNECT ([A-Za-z0-9.\-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):(\d{1,5}) HTTP/1\.[01]\r\n"
)

#: (host, port) → the hijack decision: a server SSLContext, or None to tunnel untouched
Hijack = Callable[[str, int], ssl.SSLContext | None]


class Front:
    """Owns the listening socket; ``http`` serves plain requests, ``https`` hijacked ones."""

    def __init__(
        self, http: web.Server, https: web.Server, hijack: Hijack, owner: TaskOwner
    ) -> None:
        self.http = http
        self.https = https
        self.hijack = hijack
        self.owner = owner
        #: the TLS transport of each hijacked connection → (host, port) it was opened for
        self.https_hosts: weakref.WeakKeyDictionary[Any, tuple[str, int]] = (
            weakref.WeakKeyDictionary()
        )
        self.tunnels = 0
        self.tls_hellos = 0

    def protocol(self) -> asyncio.Protocol:
        return _Sniffer(self)

    def https_host(self, request: web.BaseRequest) -> tuple[str, int] | None:
        t = request.transport
        return None if t is None else self.https_hosts.get(t)

    async def _connect(self, transport: asyncio.Transport, head: bytes, rest: bytes) -> None:
        m = _CONNECT_RE.match(head)
        port = int(m.group(2)) if m else 0
        if m is None or not 0 < port < 65536:
            transport.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
            transport.close()
            return
        host = m.group(1).decode().strip("[]")
        ctx = self.hijack(host, port)
        if ctx is not None:
            await self._terminate_tls(transport, host, port, ctx, rest)
            return
        await self._tunnel(transport, host, port, rest)

    async def _tunnel(
        self, transport: asyncio.Transport, host: str, port: int, rest: bytes
    ) -> None:
        loop = asyncio.get_running_loop()
        client = _Pipe()
        transport.set_protocol(client)
        client.connection_made(transport)
        transport.pause_reading()  # nothing to send on until the target answers
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                upstream_t, upstream = await loop.create_connection(_Pipe, host, port)
        except (OSError, TimeoutError) as e:
            log.info("CONNECT %s:%d failed: %s", host, port, e)
            transport.write(
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                + f"dfdaemon could not connect to {host}:{port}\n".encode()
            )
            transport.close()
            return
        self.tunnels += 1
        assert isinstance(upstream, _Pipe)
        transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if rest:
            upstream_t.write(rest)
        client.attach(upstream_t)
        upstream.attach(transport)
        transport.resume_reading()

    async def _terminate_tls(
        self, transport: asyncio.Transport, host: str, port: int, ctx: ssl.SSLContext, rest: bytes
    ) -> None:
        if rest:  # the client must wait for our 200 before its ClientHello
            transport.close()
            return
        loop = asyncio.get_running_loop()
        handoff = _Handoff()
        transport.set_protocol(handoff)
        handoff.connection_made(transport)
        transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                tls = await loop.start_tls(transport, handoff, ctx, server_side=True)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as e:
            log.info("TLS with the client for %s:%d failed: %s", host, port, e)
            transport.abort()
            return
        if tls is None:
            transport.abort()
            return
        self.https_hosts[tls] = (host, port)
        handoff.hand_to(self.https(), tls)


class _Sniffer(asyncio.Protocol):
    def __init__(self, front: Front) -> None:
        self.front = front
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        if self.buf[0] == TLS_HANDSHAKE:
            self.front.tls_hellos += 1
            log.debug("a TLS ClientHello on the plain-HTTP port: closing (use http://)")
            self.transport.abort()
            return
        if len(self.buf) < 8 and b"CONNECT "[: len(self.buf)] == bytes(self.buf):
            return  # could still be a CONNECT
        if self.buf.startswith(b"CONNECT "):
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n")
                    self.transport.close()
                return
            head, rest = bytes(self.buf[: end + 4]), bytes(self.buf[end + 4 :])
            self.transport.pause_reading()
            self.front.owner.spawn(self.front._connect(self.transport, head, rest), "connect")
            return
        handler = self.front.http()
        self.transport.set_protocol(handler)
        handler.connection_made(self.transport)
        handler.data_received(bytes(self.buf))
        self.buf.clear()

    def eof_received(self) -> bool | None:
        return None  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class _Handoff(asyncio.Protocol):
    """Holds what arrives on a new TLS connection until the HTTP handler takes it over."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.eof = False
        self.lost: tuple[Exception | None] | None = None
        self.target: asyncio.Protocol | None = None

    def hand_to(self, target: asyncio.Protocol, transport: asyncio.Transport) -> None:
        transport.set_protocol(target)
        target.connection_made(transport)
        self.target = target
        if self.buf:
            target.data_received(bytes(self.buf))
            self.buf.clear()
        if self.eof:
            target.eof_received()
        if self.lost is not None:
            target.connection_lost(self.lost[0])

    def data_received(self, data: bytes) -> None:
        if self.target is not None:
            self.target.data_received(data)
        elif len(self.buf) + len(data) > MAX_HEAD * 64:
            self.buf.clear()  # a client that sends this much before we listen is not a client
        else:
            self.buf += data

    def eof_received(self) -> bool | None:
        if self.target is not None:
            return self.target.eof_received()
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.target is not None:
            self.target.connection_lost(exc)
        else:
            self.lost = (exc,)


class _Pipe(asyncio.Protocol):
    """One direction of a tunnel: what arrives here is written to ``peer``; back-pressure too."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: asyncio.Transport | None = None
        self.pending = bytearray()  # what came before the other side was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def attach(self, peer: asyncio.Transport) -> None:
        self.peer = peer
        if self.pending:
            peer.write(bytes(self.pending))
            self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.write(data)
        elif len(self.pending) < MAX_HEAD * 64:
            self.pending += data
        elif self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> bool | None:
        if self.peer is not None and self.peer.can_write_eof():
            self.peer.write_eof()
            return True  # half-close: the other direction keeps flowing
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.close()

    def pause_writing(self) -> None:  # our transport's send buffer is full: stop reading the peer
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()
