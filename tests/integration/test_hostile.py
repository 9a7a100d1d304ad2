"""Hostile input against a real supernode process (API port and piece port): path traversal,
absurd piece numbers and sizes, huge headers, deeply nested JSON, and hundreds of idle or
slowloris connections while ``/_ping`` still answers.

Every answer must be a clean 4xx (or a closed connection for a request line or header block
aiohttp refuses to parse), never a 500, and the process must stay up.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.procs import Procs, SupernodeHandle, http_get, start_supernode

TID = "a" * 64
IDLE_CONNECTIONS = 300  # the default soft fd limit is 1024; each socket costs one on each side


@pytest.fixture
def sn(procs: Procs, tmp_path: Path) -> SupernodeHandle:
    return start_supernode(procs, tmp_path / "sn")


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes as they are (no client-side path normalisation) and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                break
            if not b:
                break
            chunks.append(b)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    if not answer:
        return 0  # connection closed without an answer
    return int(answer.split(b" ", 2)[1])


def get(port: int, path: str, extra: bytes = b"") -> int:
    req = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode() + extra + b"\r\n"
    return status_of(raw_request(port, req))


TRAVERSALS = [
    f"/pieces/../../../../etc/passwd/{0}",
    f"/pieces/{TID}/../../../etc/passwd",
    "/pieces/..%2f..%2f..%2fetc%2fpasswd/0",
    f"/pieces/{TID}%2f..%2f..%2fetc/0",
    f"/pieces/{TID}/..%2f..%2fetc%2fpasswd",
    "/pieces/%2e%2e/%2e%2e",
    f"/pieces/{TID.upper()}/0",
    f"/pieces/{TID}/-1",
    f"/pieces/{TID}/99999999999999999999999",
    f"/pieces/{TID}/1e9",
    f"/pieces/{TID}/%C2%B2",  # '²' is a digit to str.isdigit but not to int()
    f"/pieces/{TID}/%D9%A1",  # Arabic-Indic one
    f"/pieces/{TID}/0%00",
    "/pieces/" + "a" * 5000 + "/0",
    "//etc/passwd",
    "/pieces/%00/0",
]


@pytest.mark.parametrize("path", TRAVERSALS, ids=[p[:40] for p in TRAVERSALS])
def test_piece_port_rejects_traversal_and_absurd_ids(sn: SupernodeHandle, path: str) -> None:
    status = get(sn.download_port, path)
    assert status in (400, 404), (path, status)
    assert sn.proc.alive()


def test_api_rejects_traversal_in_ids(sn: SupernodeHandle) -> None:
    for path in (
        "/api/v1/tasks/..%2f..%2fetc%2fpasswd",
        f"/api/v1/tasks/{TID}/..",
        "/api/v1/preheats/..%2f..%2fetc%2fpasswd",
        "/console/..%2f..%2f..%2fetc%2fpasswd",
        "/console/../../../../etc/passwd",
    ):
        status = get(sn.port, path)
        assert status in (400, 404), (path, status)
    assert get(sn.port, "/_ping") == 200


def post(port: int, path: str, body: bytes, extra: bytes = b"") -> int:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    ).encode()
    return status_of(raw_request(port, head + extra + b"\r\n" + body))


@pytest.mark.parametrize(
    ("body", "want"),
    [
        (b"[" * 100_000 + b"]" * 100_000, {400, 413}),  # beyond the 256 KiB body bound
        (b"[" * 50_000 + b"]" * 50_000, {400}),  # nested past the JSON recursion limit
        (b'{"a":' * 20_000 + b"1" + b"}" * 20_000, {400}),
        (b'{"url": "http://h/", "peer": ' + b"{" * 3000 + b"}" * 3000 + b"}", {400}),
        (b"\xff\xfe\x00", {400}),
        (b'{"url": "http://[::1", "peer": {"id": "p", "port": 1}}', {400}),
        (b'{"url": "http://h\xef\xbc\x83x/", "peer": {"id": "p", "port": 1}}', {400}),
    ],
    ids=["oversized", "deep-list", "deep-object", "deep-peer", "not-utf8", "bad-ipv6", "nfkc"],
)
def test_register_rejects_hostile_json(sn: SupernodeHandle, body: bytes, want: set[int]) -> None:
    assert post(sn.port, "/api/v1/register", body) in want
    assert post(sn.port, f"/api/v1/tasks/{TID}/schedule", body) in want | {400}
    assert sn.proc.alive()


def test_absurd_content_length_is_refused_without_reading_it(sn: SupernodeHandle) -> None:
    head = (
        b"POST /api/v1/register HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: 99999999999999\r\n\r\n{"
    )
    try:  # refused at once, or the connection is dropped; never read for 99 TB
        answer = raw_request(sn.port, head, timeout=5)
    except TimeoutError:
        answer = b""
    assert status_of(answer) in (0, 400, 413)
    assert sn.proc.alive()


@pytest.mark.parametrize(
    "extra",
    [
        b"X-Big: " + b"a" * 200_000 + b"\r\n",
        b"".join(b"X-H%d: v\r\n" % i for i in range(5000)),
        b"Range: bytes=" + b"0-1," * 20_000 + b"\r\n",
    ],
    ids=["one-huge-header", "5000-headers", "huge-range"],
)
def test_huge_headers_are_refused(sn: SupernodeHandle, extra: bytes) -> None:
    for port, path in ((sn.port, "/_ping"), (sn.download_port, f"/pieces/{TID}/0")):
        status = get(port, path, extra)
        assert status in (0, 400, 404, 413, 431), status
    assert http_get(f"http://127.0.0.1:{sn.port}/_ping")[0] == 200


def test_idle_and_slowloris_connections_do_not_starve_ping(sn: SupernodeHandle) -> None:
    socks: list[socket.socket] = []
    try:
        for i in range(IDLE_CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", sn.port if i % 2 else sn.download_port))
            if i % 3 == 0:  # slowloris: a request line and a header, never finished
                s.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            socks.append(s)
        # both ports still answer a well-behaved client (bounded by the client timeout)
        for _ in range(5):
            assert http_get(f"http://127.0.0.1:{sn.port}/_ping", timeout=5)[0] == 200
            assert (
                http_get(f"http://127.0.0.1:{sn.download_port}/pieces/{TID}/0", timeout=5)[0] == 404
            )
        for s in socks[::3]:
            s.sendall(b"a")  # the slow clients trickle on
        assert http_get(f"http://127.0.0.1:{sn.port}/_ping", timeout=5)[0] == 200
    finally:
        for s in socks:
            s.close()
    assert sn.proc.alive()
    assert http_get(f"http://127.0.0.1:{sn.port}/_ping", timeout=5)[0] == 200
