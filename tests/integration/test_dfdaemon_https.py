"""dfdaemon as an HTTPS proxy (a real dfdaemon process): a TLS origin with its own test CA is
fetched through CONNECT, once tunnelled untouched (the client sees the origin's certificate) and
once hijacked (the client trusts dfdaemon's CA and sees a leaf dfdaemon issued; dfdaemon checks
the origin against the origin's CA from ``hijack_https.hosts[].certs``)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer
from yarl import URL

from damselfly.dfdaemon.certs import LeafCerts, generate_ca
from tests.integration.test_dfdaemon_images import start_dfdaemon
from tests.procs import Procs

BODY = b"secret payload over TLS " * 1000


@pytest.fixture
async def tls_origin(tmp_path: Path) -> AsyncIterator[tuple[int, Path, list[str]]]:
    ca = tmp_path / "origin-ca.crt"
    generate_ca(ca, tmp_path / "origin-ca.key", "Test Origin CA")
    ctx = LeafCerts(str(ca), str(tmp_path / "origin-ca.key")).context_for("127.0.0.1")
    paths: list[str] = []

    async def handler(request: web.BaseRequest) -> web.Response:
        paths.append(request.path_qs)
        return web.Response(body=BODY)

    srv = RawTestServer(handler, host="127.0.0.1")
    await srv.start_server(ssl=ctx)
    try:
        yield srv.port, ca, paths
    finally:
        await srv.close()


def client_ctx(ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    return ctx


async def fetch(url: str, proxy_port: int, ca: Path) -> tuple[bytes, str]:
    """GET ``url`` through the proxy with CONNECT; (body, the issuer CN of the cert seen)."""
    u = URL(url)
    r, w = await asyncio.open_connection("127.0.0.1", proxy_port)
    try:
        w.write(f"CONNECT {u.host}:{u.port} HTTP/1.1\r\nHost: {u.host}:{u.port}\r\n\r\n".encode())
        async with asyncio.timeout(10):
            head = await r.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            await w.start_tls(client_ctx(ca), server_hostname=u.host)
            cert = w.get_extra_info("peercert")
            issuer = dict(x[0] for x in cert["issuer"])["commonName"]
            w.write(
                f"GET {u.raw_path_qs} HTTP/1.1\r\nHost: {u.host}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            answer = await r.read()
    finally:
        w.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body, issuer


async def test_connect_is_tunnelled_untouched_without_hijack(
    procs: Procs, tmp_path: Path, tls_origin: tuple[int, Path, list[str]]
) -> None:
    port, origin_ca, paths = tls_origin
    d = start_dfdaemon(procs, tmp_path / "d" / "home", {"proxies": [{"regx": "nothing"}]})
    body, issuer = await fetch(f"https://127.0.0.1:{port}/plain?a=1", d.port, origin_ca)
    assert body == BODY and issuer == "Test Origin CA"
    assert paths == ["/plain?a=1"]


async def test_hijacked_connect_is_terminated_with_a_leaf_from_dfdaemons_ca(
    procs: Procs, tmp_path: Path, tls_origin: tuple[int, Path, list[str]]
) -> None:
    port, origin_ca, paths = tls_origin
    dca, dkey = tmp_path / "dfd-ca.crt", tmp_path / "dfd-ca.key"
    generate_ca(dca, dkey, "Damselfly test CA")
    cfg = {
        "hijack_https": {
            "cert": str(dca),
            "key": str(dkey),
            "hosts": [{"regx": r"^127\.0\.0\.1$", "certs": [str(origin_ca)]}],
        }
    }
    d = start_dfdaemon(procs, tmp_path / "d" / "home", cfg)
    body, issuer = await fetch(f"https://127.0.0.1:{port}/hijacked", d.port, dca)
    assert body == BODY and issuer == "Damselfly test CA"
    # a second request on another connection reuses the cached leaf; both reach the origin
    body, _ = await fetch(f"https://127.0.0.1:{port}/again", d.port, dca)
    assert body == BODY
    assert paths == ["/hijacked", "/again"]
    # a client that trusts only the origin's CA refuses dfdaemon's leaf
    with pytest.raises(ssl.SSLCertVerificationError):
        await fetch(f"https://127.0.0.1:{port}/x", d.port, origin_ca)
