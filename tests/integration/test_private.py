"""Private content with real processes (issue 6, item 3): an origin that requires a header, a
supernode that checks every peer's own credentials, and piece servers that serve a private task
only to holders of a grant. See docs/protocol.md, "Private tasks"."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from damselfly.core.pieces import MiB
from tests.integration.test_swarm import Peer
from tests.procs import (
    SUCCESS_RE,
    Procs,
    engine_status,
    http_get,
    sha256,
    start_origin,
    start_supernode,
    wait_until,
)

SECRET = "Bearer priv-7c1e-do-not-leak"
MARK = "priv-7c1e"  # what must never show up outside the origin's check
REFUSAL = "the origin refused this host's credentials for a private task"
CHECK_RANGE = hashlib.sha256(b"bytes=0-0").hexdigest()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def register(sn_addr: str, url: str, peer: str, headers: dict[str, str]) -> tuple[int, Any]:
    """Register as a (fake) peer, the way an engine does; the answer carries its grant."""
    body = {
        "url": url,
        "peer": {"id": peer, "ip": "127.0.0.1", "port": 1},
        "headers": headers,
    }
    req = urllib.request.Request(
        f"http://{sn_addr}/api/v1/register",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def forge(grant: str) -> str:
    """The same grant with one bit of its signature flipped."""
    body, sig = grant.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[5] ^= 0x10
    return body + "." + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


def check_requests(origin_stats: dict[str, Any]) -> int:
    """Origin requests that were access checks (GET with Range: bytes=0-0)."""
    return sum(1 for h in origin_stats["header_hashes"] if h.get("range") == CHECK_RANGE)


def assert_refused(peer: Peer, code: int, out: str, name: str = "file.bin") -> None:
    assert code != 0, out
    assert REFUSAL in out, out
    assert "Traceback" not in out
    assert not SUCCESS_RE.search(out)
    assert not (peer.out_dir / name).exists()
    assert list(peer.out_dir.iterdir()) == []  # no partial or temporary file either


def test_private_task_only_for_hosts_whose_credentials_open_the_origin(
    procs: Procs, tmp_path: Path, random_file
):  # type: ignore[no-untyped-def]
    www = tmp_path / "www"
    src = random_file(www, "p.bin", 10 * MiB + 3)
    other_src = random_file(www, "q.bin", 1 * MiB)
    origin = start_origin(procs, www, require_header=f"Authorization: {SECRET}")
    sn = start_supernode(procs, tmp_path / "sn")
    url = origin.url("p.bin")

    a = Peer(procs, tmp_path, "a")
    code, out = a.finish(a.start(url, sn.addr, "--header", f"Authorization: {SECRET}"))
    assert code == 0, out
    assert sha256(a.out_dir / "file.bin") == sha256(src)
    tasks = sn.api("/api/v1/tasks")["tasks"]
    assert len(tasks) == 1 and tasks[0]["private"] is True
    tid = tasks[0]["task_id"]

    # B (a wrong credential) and C (none) are refused, clearly, with nothing at --output
    b = Peer(procs, tmp_path, "b")
    code, out = b.finish(b.start(url, sn.addr, "--header", "Authorization: Bearer wrong"))
    assert_refused(b, code, out)
    c = Peer(procs, tmp_path, "c")
    code, out = c.finish(c.start(url, sn.addr))
    assert_refused(c, code, out)
    # ... and they never even got the task's pieces into their engines' stores
    for p in (b, c):
        assert not list((p.home / "data").glob(f"{tid}*"))

    # raw piece requests to A's engine and to the supernode's piece port
    code, reg = register(sn.addr, url, "tester-1", {"Authorization": SECRET})
    assert code == 200, reg
    assert reg["private"] is True and reg["grant"] and reg["supernode_key"]
    grant = reg["grant"]
    code, other = register(sn.addr, origin.url("q.bin"), "tester-1", {"Authorization": SECRET})
    assert code == 200 and other["grant"], other
    code, refused = register(sn.addr, url, "tester-2", {"Authorization": "Bearer nope"})
    assert code == 403 and refused["error"] == "origin_auth" and REFUSAL in refused["message"]
    assert "nope" not in json.dumps(refused)
    piece0 = src.read_bytes()[: reg["piece_size"]]
    for port in (a.port, sn.download_port):
        piece = f"http://127.0.0.1:{port}/pieces/{tid}/0"
        status, body = get(piece)
        assert status == 403, (port, status, body)
        assert b"grant" in body and piece0[:64] not in body
        for bad in (forge(grant), other["grant"], "garbage", grant + "x"):
            status, body = get(piece, {"X-Damselfly-Grant": bad})
            assert status == 403, (port, bad, body)
        status, body = get(piece, {"X-Damselfly-Grant": grant})
        assert status == 200 and body == piece0, port
    assert other_src.exists()

    # A's engine restarted: the task is still private (from its meta), and with no supernode
    # key learned yet even a valid grant is refused
    st = engine_status(a.home)
    assert st is not None
    os.kill(int(st["pid"]), 15)
    wait_until(lambda: engine_status(a.home, timeout=1) is None, what="A's engine to stop")
    eng = procs.start(
        "a-engine2",
        [
            *(sys.executable, "-m", "damselfly.peer.engine", "--home", str(a.home)),
            *("--port", str(a.port), "--alivetime", "60s"),
        ],
    )
    wait_until(lambda: engine_status(a.home, timeout=1), what="A's engine to restart")
    piece = f"http://127.0.0.1:{a.port}/pieces/{tid}/0"
    status, body = get(piece, {"X-Damselfly-Grant": grant})
    assert status == 403 and b"does not know" in body, body
    assert get(piece)[0] == 403
    # a new download on A teaches it the key again (the data is reused: no origin bytes)
    code, out = a.finish(
        a.start(url, sn.addr, "--header", f"Authorization: {SECRET}", output="again.bin")
    )
    assert code == 0, out
    status, body = get(piece, {"X-Damselfly-Grant": grant})
    assert status == 200 and body == piece0
    procs.stop(eng)

    # the credential and the grants never leave where they belong
    grants = [grant, other["grant"]]
    for proc in procs.procs:
        text = proc.output()
        assert MARK not in text, proc.name
        assert not any(g in text for g in grants), proc.name
    for home in (a.home, b.home, c.home, sn.home):
        for f in home.rglob("*"):
            if f.is_file() and not f.name.endswith(".data") and not f.name.endswith(".sock"):
                data = f.read_bytes()
                assert MARK.encode() not in data, f
                assert not any(g.encode() in data for g in grants), f
    metrics = http_get(f"http://{sn.addr}/metrics")[1]
    assert MARK.encode() not in metrics and grant.encode() not in metrics
    assert MARK not in json.dumps(sn.api("/api/v1/tasks")) + json.dumps(sn.api("/api/v1/peers"))
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            assert MARK.encode() not in cmdline


def test_many_peers_with_one_credential_cause_one_origin_check(
    procs: Procs, tmp_path: Path, random_file
):  # type: ignore[no-untyped-def]
    src = random_file(tmp_path / "www", "p.bin", 6 * MiB)
    origin = start_origin(procs, tmp_path / "www", require_header=f"X-Auth-Token: {SECRET}")
    sn = start_supernode(procs, tmp_path / "sn")
    url = origin.url("p.bin")
    first = Peer(procs, tmp_path, "first")
    code, out = first.finish(first.start(url, sn.addr, "--header", f"X-Auth-Token: {SECRET}"))
    assert code == 0, out
    # the first registration's own fetch was its check: no separate request
    assert check_requests(origin.stats()) == 0
    # a restart: the cache and the task's privacy are kept, the checks are forgotten
    procs.stop(sn.proc)
    sn = start_supernode(procs, sn.home, "supernode2", sn.port, sn.download_port)
    origin.control(reset=True)
    peers = [Peer(procs, tmp_path, f"p{i}") for i in range(4)]
    runs = [p.start(url, sn.addr, "--header", f"X-Auth-Token: {SECRET}") for p in peers]
    for p, r in zip(peers, runs, strict=True):
        code, out = p.finish(r)
        assert code == 0, out
        assert sha256(p.out_dir / "file.bin") == sha256(src)
    stats = origin.stats()
    assert check_requests(stats) == 1, stats["header_hashes"]  # one check for the 4 peers
    assert stats["bytes_sent"] <= 1  # the check's one byte; the file came from the cache
    # still private after the restart: a host without the credential is refused
    anon = Peer(procs, tmp_path, "anon")
    code, out = anon.finish(anon.start(url, sn.addr))
    assert_refused(anon, code, out)


def test_expired_grants_are_refused(procs: Procs, tmp_path: Path, random_file):  # type: ignore[no-untyped-def]
    src = random_file(tmp_path / "www", "p.bin", 2 * MiB)
    origin = start_origin(procs, tmp_path / "www", require_header=f"Authorization: {SECRET}")
    sn = start_supernode(procs, tmp_path / "sn", extra=["--grant-ttl", "2s"])
    url = origin.url("p.bin")
    code, reg = register(sn.addr, url, "tester-1", {"Authorization": SECRET})
    assert code == 200, reg
    piece = f"http://127.0.0.1:{sn.download_port}/pieces/{reg['task_id']}/0"
    wait_until(
        lambda: get(piece, {"X-Damselfly-Grant": reg["grant"]})[0] == 200,
        what="the supernode to hold piece 0",
    )
    status, body = get(piece, {"X-Damselfly-Grant": reg["grant"]})
    assert status == 200 and body == src.read_bytes()[: reg["piece_size"]]

    def expired() -> bool:
        status, body = get(piece, {"X-Damselfly-Grant": reg["grant"]})
        return status == 403 and b"the grant has expired" in body

    wait_until(expired, timeout=10, what="the grant to expire")
    # a peer's download renews its grant as it goes (schedule answers), so a short one is fine
    p = Peer(procs, tmp_path, "p")
    code, out = p.finish(p.start(url, sn.addr, "--header", f"Authorization: {SECRET}"))
    assert code == 0, out
    assert sha256(p.out_dir / "file.bin") == sha256(src)


def test_public_tasks_need_no_grant(procs: Procs, tmp_path: Path, random_file):  # type: ignore[no-untyped-def]
    src = random_file(tmp_path / "www", "pub.bin", 3 * MiB)
    origin = start_origin(procs, tmp_path / "www")
    sn = start_supernode(procs, tmp_path / "sn")
    a = Peer(procs, tmp_path, "a")
    code, out = a.finish(a.start(origin.url("pub.bin"), sn.addr))
    assert code == 0, out
    tasks = sn.api("/api/v1/tasks")["tasks"]
    assert tasks[0]["private"] is False
    tid = tasks[0]["task_id"]
    for port in (a.port, sn.download_port):
        status, body = get(f"http://127.0.0.1:{port}/pieces/{tid}/0")
        assert status == 200 and body == src.read_bytes()[: len(body)] and body
    assert check_requests(origin.stats()) == 0  # no access check for public content
