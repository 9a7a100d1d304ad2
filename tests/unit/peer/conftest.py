"""Fixtures for the engine's in-process tests: a real origin, a fake supernode, and engine
services (store, HTTP session, upload server) built the way the engine builds them."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from damselfly.core.clock import MonotonicClock
from damselfly.core.ratelimit import AsyncLimiter
from damselfly.devtools.origin import Origin, make_app
from damselfly.peer.download import Services
from damselfly.peer.snclient import SupernodeClient
from damselfly.peer.store import LocalStore
from damselfly.store.pieceserver import PieceServer
from tests.unit.peer.fake_supernode import FakeSupernode

PIECE = 64 * 1024


@dataclass
class OriginServer:
    origin: Origin
    root: Path
    port: int

    def url(self, rel: str) -> str:
        return f"http://127.0.0.1:{self.port}/{rel}"

    def put(self, name: str, size: int) -> Path:
        p = self.root / name
        p.write_bytes(os.urandom(size))
        return p


@pytest.fixture
async def origin(tmp_path: Path) -> AsyncIterator[OriginServer]:
    root = tmp_path / "www"
    root.mkdir()
    o = Origin(root)
    runner = web.AppRunner(make_app(o), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield OriginServer(o, root, runner.addresses[0][1])
    finally:
        await runner.cleanup()


@pytest.fixture
async def supernode(origin: OriginServer) -> AsyncIterator[FakeSupernode]:
    sn = await FakeSupernode(origin.root, PIECE, origin.url("")).start()
    try:
        yield sn
    finally:
        await sn.stop()


@dataclass
class Host:
    """One engine's services, with its upload server listening on 127.0.0.1."""

    svc: Services
    home: Path
    out: Path
    uploads: PieceServer


HostFactory = Callable[[str], Awaitable[Host]]


@pytest.fixture
async def make_host(tmp_path: Path) -> AsyncIterator[HostFactory]:
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def make(name: str) -> Host:
        home = tmp_path / name
        out = home / "out"
        out.mkdir(parents=True)
        clock = MonotonicClock()
        store = LocalStore(home / "data", clock)
        await store.load()
        session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        uploads = PieceServer(store)
        app = web.Application()
        app.add_routes(uploads.routes())
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        svc = Services(
            session=session,
            supernodes=SupernodeClient(session),
            store=store,
            total_limiter=AsyncLimiter(None, clock),
            clock=clock,
            peer_id=f"{name}-1-abcd",
            peer_port=runner.addresses[0][1],
            ip="127.0.0.1",
            stall_timeout=1.0,
            long_poll_ms=200,
        )

        async def close() -> None:
            await runner.cleanup()
            await store.close()
            await svc.pieces.close()
            await session.close()

        cleanups.append(close)
        return Host(svc, home, out, uploads)

    try:
        yield make
    finally:
        for c in reversed(cleanups):
            await c()
