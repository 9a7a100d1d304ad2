"""The supernode as a real process against a real origin process, driven over HTTP the way
peer engines drive it."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from damselfly.core.ids import task_id
from damselfly.core.pieces import MiB, PiecePlan
from tests.procs import (
    Procs,
    SupernodeHandle,
    http_get,
    start_origin,
    start_supernode,
)


def post(url: str, body: Any, timeout: float = 30.0) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


def register(
    sn: SupernodeHandle, url: str, peer: str = "peer-1", headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    body = {
        "url": url,
        "peer": {"id": peer, "ip": "127.0.0.1", "port": 1, "hostname": "test"},
        "headers": headers or {},
    }
    return post(f"http://{sn.addr}/api/v1/register", body)


def schedule(sn: SupernodeHandle, tid: str, peer: str, results: list[dict] | None = None) -> Any:
    body = {"peer_id": peer, "results": results or [], "want": 4, "wait_ms": 2000}
    status, resp = post(f"http://{sn.addr}/api/v1/tasks/{tid}/schedule", body)
    assert status == 200, resp
    return resp


def download_all(
    sn: SupernodeHandle, tid: str, peer: str, plan: PiecePlan, grant: str = ""
) -> bytes:
    """Act as a peer: fetch every piece the scheduler hands out, verify, report; return the file.
    ``grant``: the peer's grant for a private task (from its register answer)."""
    got: dict[int, bytes] = {}
    results: list[dict] = []
    for _ in range(10 * plan.count + 50):  # bounded
        resp = schedule(sn, tid, peer, results)
        results = []
        if resp["status"] == "done":
            break
        assert resp["status"] in ("pieces", "wait"), resp
        for a in resp["pieces"]:
            src = a["source"]
            assert src["kind"] == "supernode"
            url = f"http://{src['ip']}:{src['port']}/pieces/{tid}/{a['num']}"
            if grant:
                req = urllib.request.Request(url, headers={"X-Damselfly-Grant": grant})
                with urllib.request.urlopen(req, timeout=10) as r:
                    code, data = r.status, r.read()
            else:
                code, data = http_get(url)
            ok = code == 200 and hashlib.sha256(data).hexdigest() == a["digest"]
            if ok:
                got[a["num"]] = data
            results.append(
                {
                    "piece": a["num"],
                    "ok": ok,
                    "source": "supernode",
                    "bytes": len(data),
                    "failure": "" if ok else "digest",
                }
            )
    else:
        pytest.fail("download did not finish")
    return b"".join(got[i] for i in range(plan.count))


@pytest.fixture
def swarm(procs: Procs, tmp_path: Path, random_file):  # type: ignore[no-untyped-def]
    root = tmp_path / "www"
    data = random_file(root, "f.bin", 9 * MiB + 123).read_bytes()
    origin = start_origin(procs, root)
    sn = start_supernode(procs, tmp_path / "sn-home")
    return origin, sn, data


def test_ping_version_and_http_hygiene(swarm) -> None:  # type: ignore[no-untyped-def]
    _, sn, _ = swarm
    assert http_get(f"http://{sn.addr}/_ping")[0] == 200
    assert "version" in sn.api("/version")
    assert http_get(f"http://{sn.addr}/no/such/route")[0] == 404
    assert http_get(f"http://{sn.addr}/api/v1/register")[0] == 405  # GET on a POST route
    status, body = post(f"http://{sn.addr}/api/v1/register", {"url": "file:///etc/passwd"})
    assert status == 400 and body["error"] == "bad_request"
    req = urllib.request.Request(
        f"http://{sn.addr}/api/v1/register", data=b"[" * 50000 + b"]" * 50000, method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert 400 <= e.value.code < 500
    code, _ = http_get(f"http://127.0.0.1:{sn.download_port}/pieces/../../etc/passwd")
    assert code == 404
    code, _ = http_get(f"http://127.0.0.1:{sn.download_port}/pieces/{'0' * 64}/0")
    assert code == 404


def test_concurrent_registrations_make_one_origin_fetch(swarm) -> None:  # type: ignore[no-untyped-def]
    origin, sn, data = swarm
    url = origin.url("f.bin")
    with concurrent.futures.ThreadPoolExecutor(20) as ex:
        answers = list(ex.map(lambda i: register(sn, url, f"peer-{i}"), range(20)))
    assert all(code == 200 for code, _ in answers), answers
    tid = answers[0][1]["task_id"]
    assert tid == task_id(url)
    assert answers[0][1]["length"] == len(data)
    plan = PiecePlan.for_length(len(data))
    assert download_all(sn, tid, "peer-0", plan) == data
    stats = origin.stats()
    assert stats["gets"] == 1
    assert stats["bytes_sent"] == len(data)
    peers = sn.api("/api/v1/peers")["peers"]
    assert {p["id"] for p in peers} >= {f"peer-{i}" for i in range(20)}
    metrics = http_get(f"http://{sn.addr}/metrics")[1].decode()
    assert "dragonfly_supernode_origin_bytes" in metrics
    assert "dragonfly_supernode_schedule_latency_seconds" in metrics


def test_origin_errors_are_clear_and_404_is_remembered(swarm) -> None:  # type: ignore[no-untyped-def]
    origin, sn, _ = swarm
    code, body = register(sn, origin.url("missing.bin"))
    assert code == 404 and body["error"] == "origin_not_found"
    assert "missing.bin" in body["message"]
    before = origin.stats()["requests"]
    code, _ = register(sn, origin.url("missing.bin"), "peer-2")
    assert code == 404
    assert origin.stats()["requests"] == before  # remembered: the origin is not asked again


def test_origin_auth_error_and_headers_reach_origin(procs: Procs, tmp_path: Path, random_file):  # type: ignore[no-untyped-def]
    root = tmp_path / "www"
    data = random_file(root, "p.bin", 1 * MiB).read_bytes()
    secret = "Bearer s3cr3t-token-for-test"
    origin = start_origin(procs, root, require_header=f"Authorization: {secret}")
    sn = start_supernode(procs, tmp_path / "sn-home")
    code, body = register(sn, origin.url("p.bin"))
    assert code == 401 and body["error"] == "origin_auth"
    code, body = register(sn, origin.url("p.bin"), headers={"Authorization": "Bearer wrong"})
    assert code == 403 and body["error"] == "origin_auth"
    code, body = register(sn, origin.url("p.bin"), headers={"Authorization": secret})
    assert code == 200, body
    tid = body["task_id"]
    plan = PiecePlan.for_length(len(data))
    assert download_all(sn, tid, "peer-1", plan, body["grant"]) == data
    # the secret is nowhere the supernode writes or answers
    listing = json.dumps(sn.api("/api/v1/tasks")) + json.dumps(sn.api(f"/api/v1/tasks/{tid}"))
    listing += http_get(f"http://{sn.addr}/metrics")[1].decode()
    assert "s3cr3t" not in listing
    for f in sn.home.rglob("*"):
        if f.is_file() and not f.name.endswith(".data"):
            assert b"s3cr3t" not in f.read_bytes(), f
    assert "s3cr3t" not in sn.proc.output()


def test_restart_reuses_cache_after_304(swarm, procs: Procs) -> None:  # type: ignore[no-untyped-def]
    origin, sn, data = swarm
    url = origin.url("f.bin")
    code, body = register(sn, url)
    assert code == 200
    tid = body["task_id"]
    plan = PiecePlan.for_length(len(data))
    assert download_all(sn, tid, "peer-1", plan) == data
    procs.stop(sn.proc)
    sn2 = start_supernode(procs, sn.home, "supernode2", sn.port, sn.download_port)
    origin.control(reset=True)
    code, body = register(sn2, url, "peer-2")
    assert code == 200
    assert download_all(sn2, tid, "peer-2", plan) == data
    stats = origin.stats()
    assert stats["bytes_sent"] == 0  # revalidated (304): nothing downloaded again
    assert 304 in stats["statuses"]


def test_interrupted_fetch_resumes_with_range(swarm) -> None:  # type: ignore[no-untyped-def]
    origin, sn, data = swarm
    origin.control(cut_after=5 * MiB + 17)
    code, body = register(sn, origin.url("f.bin"))
    assert code == 200, body
    tid = body["task_id"]
    assert download_all(sn, tid, "peer-1", PiecePlan.for_length(len(data))) == data
    stats = origin.stats()
    assert stats["bytes_sent"] < 2 * len(data)
    assert 206 in stats["statuses"]


def test_corrupted_cache_is_never_served(swarm, procs: Procs) -> None:  # type: ignore[no-untyped-def]
    origin, sn, data = swarm
    url = origin.url("f.bin")
    code, body = register(sn, url)
    tid = body["task_id"]
    plan = PiecePlan.for_length(len(data))
    assert download_all(sn, tid, "peer-1", plan) == data
    procs.stop(sn.proc)
    data_files = [p for p in sn.home.rglob(f"{tid}*") if p.suffix == ".data"]
    assert len(data_files) == 1
    with data_files[0].open("r+b") as f:  # flip a byte in piece 1
        f.seek(plan.start(1) + 100)
        b = f.read(1)
        f.seek(plan.start(1) + 100)
        f.write(bytes([b[0] ^ 0xFF]))
    sn2 = start_supernode(procs, sn.home, "supernode2", sn.port, sn.download_port)
    code, _ = register(sn2, url, "peer-2")
    assert code == 200
    # ask the piece port directly: a corrupt piece must never come back
    status, piece = http_get(f"http://127.0.0.1:{sn2.download_port}/pieces/{tid}/1")
    assert status != 200 or piece == data[plan.start(1) : plan.start(1) + plan.size(1)]
    # and a peer still gets the right file (the piece is fetched again from the origin)
    assert download_all(sn2, tid, "peer-2", plan) == data
