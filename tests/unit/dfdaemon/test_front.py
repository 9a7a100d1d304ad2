"""The proxy port in-process, on loopback, without an engine (every request goes direct):
TLS ClientHello closed at once, repeated Accept headers kept, registry 401s passed through,
absolute-URL proxying, unknown paths answered 404, CONNECT to a dead target answered 502."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer

from damselfly.dfdaemon.front import Front
from damselfly.dfdaemon.handler import DownloadDefaults, ProxyHandler
from damselfly.dfdaemon.rules import parse_rules
from damselfly.peer.tasks import TaskOwner


@dataclass
class Setup:
    port: int
    upstream: RawTestServer
    seen: list[web.BaseRequest]
    front: Front


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    seen: list[web.BaseRequest] = []

    async def origin(request: web.BaseRequest) -> web.StreamResponse:
        seen.append(request)
        if request.path.endswith("/private"):
            return web.Response(
                status=401, headers={"WWW-Authenticate": 'Bearer realm="http://auth/token"'}
            )
        accepts = ",".join(f"[{a}]" for a in request.headers.getall("Accept", []))
        return web.Response(text=f"{request.method} {request.path_qs} accepts={accepts}")

    async with RawTestServer(origin) as up:
        rules = parse_rules(
            [{"regx": "blobs/sha256.*"}], {"remote": f"http://127.0.0.1:{up.port}"}, {}
        )
        owner = TaskOwner("test")
        session = aiohttp.ClientSession(auto_decompress=False)
        handler = ProxyHandler(rules, DownloadDefaults(), lambda: None, session, owner, tmp_path)
        http, https = web.Server(handler), web.Server(handler)
        front = Front(http, https, lambda h, p: None, owner)
        handler.https_host = front.https_host
        server = await asyncio.get_running_loop().create_server(front.protocol, "127.0.0.1", 0)
        try:
            yield Setup(server.sockets[0].getsockname()[1], up, seen, front)
        finally:
            server.close()
            await http.shutdown(1)
            await owner.close()
            await session.close()


async def test_tls_client_hello_is_closed_at_once(setup: Setup) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", setup.port)
    w.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    async with asyncio.timeout(5):
        assert await r.read() == b""
    w.close()
    assert setup.front.tls_hellos == 1


async def test_repeated_accept_headers_stay_separate(setup: Setup) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", setup.port)
    w.write(
        b"GET /v2/lib/app/manifests/latest?ns=docker.io HTTP/1.1\r\nHost: x\r\n"
        b"Accept: application/vnd.oci.image.index.v1+json\r\n"
        b"Accept: application/vnd.oci.image.manifest.v1+json\r\nConnection: close\r\n\r\n"
    )
    async with asyncio.timeout(5):
        answer = await r.read()
    w.close()
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.endswith(
        b"GET /v2/lib/app/manifests/latest accepts=[application/vnd.oci.image.index.v1+json],"
        b"[application/vnd.oci.image.manifest.v1+json]"
    )


async def test_registry_401_and_its_challenge_pass_through(setup: Setup) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{setup.port}/v2/lib/private") as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"] == 'Bearer realm="http://auth/token"'
        async with s.head(f"http://127.0.0.1:{setup.port}/v2/lib/app/manifests/1") as r:
            assert r.status == 200 and setup.seen[-1].method == "HEAD"


async def test_absolute_url_requests_are_proxied(setup: Setup) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(
            f"http://127.0.0.1:{setup.upstream.port}/files/a?x=1",
            proxy=f"http://127.0.0.1:{setup.port}",
        ) as r:
            assert r.status == 200 and (await r.text()).startswith("GET /files/a?x=1")
    assert "Proxy-Connection" not in setup.seen[-1].headers


async def test_unknown_paths_are_404_with_a_hint(setup: Setup) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{setup.port}/etc/passwd") as r:
            assert r.status == 404
            body = await r.json()
            assert "registry-mirror requests" in body["errors"][0]["message"]
    assert setup.seen == []


async def test_connect_to_a_closed_port_is_502_and_bad_connect_400(setup: Setup) -> None:
    for line, status in (
        (b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n", b"502"),
        (b"CONNECT no-port HTTP/1.1\r\n\r\n", b"400"),
    ):
        r, w = await asyncio.open_connection("127.0.0.1", setup.port)
        w.write(line)
        async with asyncio.timeout(5):
            answer = await r.read()
        w.close()
        assert answer.split(b" ")[1] == status
