"""The main job with real processes on loopback: an origin that counts bytes, supernodes, and
several host engines (separate --home and --port) driven by dfget at once."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import urllib.error
from pathlib import Path
from typing import Any

from damselfly.core.ids import task_id
from damselfly.core.nodes import parse_nodes, rendezvous_order
from damselfly.core.pieces import MiB
from tests.procs import (
    SUCCESS_RE,
    Peer,
    Procs,
    free_port,
    http_get,
    sha256,
    start_origin,
    start_supernode,
    wait_until,
)

RUN_TIMEOUT = 120.0


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head, value = line.rsplit(" ", 1)
            if head == name or head.startswith(name + "{"):
                total += float(value)
    return total


def test_four_peers_origin_once_most_bytes_from_peers(procs: Procs, tmp_path: Path, random_file):  # type: ignore[no-untyped-def]
    src = random_file(tmp_path / "www", "big.bin", 48 * MiB + 4321)
    origin = start_origin(procs, tmp_path / "www")
    sn = start_supernode(procs, tmp_path / "sn")
    peers = [Peer(procs, tmp_path, f"peer{i}") for i in range(4)]
    url = origin.url("big.bin")
    runs = [p.start(url, sn.addr) for p in peers]
    for p, r in zip(peers, runs, strict=True):
        code, out = p.finish(r)
        assert code == 0, out
        m = SUCCESS_RE.search(out)
        assert m, out
        assert int(m.group(2)) == src.stat().st_size
        assert sha256(p.out_dir / "file.bin") == sha256(src)
    stats = origin.stats()
    assert stats["bytes_sent"] == src.stat().st_size  # the origin sent the file exactly once
    served = metric(
        http_get(f"http://{sn.addr}/metrics")[1].decode(),
        "dragonfly_supernode_piece_bytes_served_total",
    )
    total = 4 * src.stat().st_size
    peer_share = 1 - served / total
    assert peer_share >= 0.5, f"only {peer_share:.0%} of piece bytes came from peers"
    # nothing but the output in each output directory
    for p in peers:
        assert sorted(os.listdir(p.out_dir)) == ["file.bin"]


def start_evil_peer(procs: Procs, tmp_path: Path, sn: str, url: str, *flags: str) -> Any:
    """tests/support/evil_peer.py as a holder of every piece of ``url``; its ready record."""
    ready = tmp_path / f"evil{len(flags)}.ready"
    procs.start(
        f"evil{len(flags)}",
        [sys.executable, "-m", "tests.support.evil_peer", "--supernode", sn, "--url", url,
         "--ready-file", str(ready), *flags],
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    return wait_until(lambda: ready.exists() and json.loads(ready.read_text()), what="evil peer")


def test_corrupting_peer_is_isolated_and_outputs_stay_correct(
    procs: Procs, tmp_path: Path, random_file
):  # type: ignore[no-untyped-def]
    src = random_file(tmp_path / "www", "f.bin", 40 * MiB)
    origin = start_origin(procs, tmp_path / "www")
    sn = start_supernode(procs, tmp_path / "sn")
    url = origin.url("f.bin")
    evil = start_evil_peer(procs, tmp_path, sn.addr, url)
    peers = [Peer(procs, tmp_path, f"peer{i}") for i in range(6)]
    runs = [p.start(url, sn.addr) for p in peers]
    for p, r in zip(peers, runs, strict=True):
        code, out = p.finish(r)
        assert code == 0, out
        assert sha256(p.out_dir / "file.bin") == sha256(src)
    listing = sn.api("/api/v1/peers")["peers"]
    bad = [x for x in listing if x["id"] == evil["peer_id"]]
    assert bad and bad[0]["isolated"], bad


def test_stalling_peer_is_timed_out_avoided_and_outputs_stay_correct(
    procs: Procs, tmp_path: Path, random_file
):  # type: ignore[no-untyped-def]
    """A holder that sends the first 64 KiB of a piece and then nothing: each download times the
    piece out (the engine's stall timeout), fetches it elsewhere, and the supernode stops naming
    that peer; every output is right."""
    src = random_file(tmp_path / "www", "f.bin", 24 * MiB)
    origin = start_origin(procs, tmp_path / "www")
    sn = start_supernode(procs, tmp_path / "sn")
    url = origin.url("f.bin")
    slow = start_evil_peer(procs, tmp_path, sn.addr, url, "--stall")
    peers = [Peer(procs, tmp_path, f"peer{i}") for i in range(3)]
    runs = [p.start(url, sn.addr) for p in peers]
    for p, r in zip(peers, runs, strict=True):
        code, out = p.finish(r)
        assert code == 0, out
        assert sha256(p.out_dir / "file.bin") == sha256(src)
    listing = sn.api("/api/v1/peers")["peers"]
    bad = [x for x in listing if x["id"] == slow["peer_id"]]
    # each download timed it out and then avoided it: one failure per downloader at most
    # (or isolated outright)
    assert bad and bad[0]["failures"] >= 1, bad
    assert bad[0]["isolated"] or bad[0]["failures"] <= len(peers), bad
    assert origin.stats()["bytes_sent"] <= 2 * len(src.read_bytes())  # the CDN, not back source


def test_supernode_killed_mid_download_moves_to_the_next(procs: Procs, tmp_path: Path, random_file):  # type: ignore[no-untyped-def]
    src = random_file(tmp_path / "www", "f.bin", 32 * MiB)
    origin = start_origin(procs, tmp_path / "www")
    sns = [start_supernode(procs, tmp_path / f"sn{i}", f"sn{i}") for i in range(2)]
    nodes = ",".join(s.addr for s in sns)
    url = origin.url("f.bin")
    owner_addr = rendezvous_order(task_id(url), parse_nodes(nodes))[0].addr
    owner = next(s for s in sns if s.addr == owner_addr)
    peers = [Peer(procs, tmp_path, f"peer{i}") for i in range(2)]
    runs = [p.start(url, nodes, "--locallimit", "6M") for p in peers]

    tid = task_id(url)

    def some_progress() -> bool:
        try:
            view = owner.api(f"/api/v1/tasks/{tid}")
        except urllib.error.HTTPError:  # not registered yet
            return False
        return any(pp.get("pieces", 0) > 0 for pp in view.get("peers", []))

    wait_until(some_progress, timeout=60, what="first pieces")
    procs.stop(owner.proc, sig=9)
    for p, r in zip(peers, runs, strict=True):
        code, out = p.finish(r)
        assert code == 0, out
        assert sha256(p.out_dir / "file.bin") == sha256(src)


def test_notbs_without_supernode_fails_cleanly(procs: Procs, tmp_path: Path, random_file):  # type: ignore[no-untyped-def]
    random_file(tmp_path / "www", "f.bin", 1 * MiB)
    origin = start_origin(procs, tmp_path / "www")
    peer = Peer(procs, tmp_path, "peer")
    dead = f"127.0.0.1:{free_port()}"
    code, out = peer.finish(peer.start(origin.url("f.bin"), dead, "--notbs"))
    assert code != 0
    assert "download FAIL" in out and "Traceback" not in out
    assert os.listdir(peer.out_dir) == []
    assert origin.stats()["gets"] == 0
    # without --notbs the same run falls back to the origin
    code, out = peer.finish(peer.start(origin.url("f.bin"), dead))
    assert code == 0, out
    m = SUCCESS_RE.search(out)
    assert m and m.group(3) != "0", out  # a back-source reason


def test_totallimit_holds_across_two_concurrent_runs(procs: Procs, tmp_path: Path, random_file):  # type: ignore[no-untyped-def]
    for name in ("a.bin", "b.bin", "warm.bin"):
        random_file(tmp_path / "www", name, (12 if name != "warm.bin" else 1) * MiB)
    origin = start_origin(procs, tmp_path / "www")
    sn = start_supernode(procs, tmp_path / "sn")
    peer = Peer(procs, tmp_path, "peer")
    # warm the engine and the supernode's cache, so the measured runs move only piece bytes
    code, out = peer.finish(peer.start(origin.url("warm.bin"), sn.addr, output="warm"))
    assert code == 0, out
    limit = 8 * MiB
    t0 = time.monotonic()
    runs = [
        peer.start(origin.url(n), sn.addr, "--totallimit", "8M", output=n)
        for n in ("a.bin", "b.bin")
    ]
    outs = [peer.finish(r) for r in runs]
    elapsed = time.monotonic() - t0
    for code, out in outs:
        assert code == 0, out
    costs = [float(SUCCESS_RE.search(out).group(1)) for _, out in outs]  # type: ignore[union-attr]
    rate = 24 * MiB / max(costs)
    assert 0.85 * limit <= rate <= 1.15 * limit, (rate / MiB, costs, elapsed)


def test_header_secret_stays_out_of_argv_and_logs(procs: Procs, tmp_path: Path, random_file):  # type: ignore[no-untyped-def]
    secret = "Bearer tok-3f9a1c-very-secret"
    src = random_file(tmp_path / "www", "p.bin", 16 * MiB)
    origin = start_origin(procs, tmp_path / "www", require_header=f"Authorization: {secret}")
    sn = start_supernode(procs, tmp_path / "sn")
    peer = Peer(procs, tmp_path, "peer")
    run = peer.start(
        origin.url("p.bin"), sn.addr, "--header", f"Authorization: {secret}", "--locallimit", "8M"
    )
    seen_running = False
    while run.alive():
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == run.pid:
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            assert b"tok-3f9a1c" not in cmdline, cmdline
        seen_running = True
        time.sleep(0.2)
    code, out = peer.finish(run)
    assert code == 0, out
    assert seen_running
    assert sha256(peer.out_dir / "file.bin") == sha256(src)
    # the origin saw the header (it answered 200 only with it) ...
    want = hashlib.sha256(secret.encode()).hexdigest()
    assert any(h.get("authorization") == want for h in origin.stats()["header_hashes"])
    # ... and no file under the homes holds it (the pieces themselves excepted: random bytes)
    for home in (peer.home, sn.home):
        for f in home.rglob("*"):
            if f.is_file() and not f.name.endswith(".data") and not f.name.endswith(".sock"):
                assert b"tok-3f9a1c" not in f.read_bytes(), f
    assert "tok-3f9a1c" not in sn.proc.output()
    assert b"tok-3f9a1c" not in http_get(f"http://{sn.addr}/metrics")[1]


def test_signed_urls_differing_in_filtered_keys_share_one_task(
    procs: Procs, tmp_path: Path, random_file
):  # type: ignore[no-untyped-def]
    src = random_file(tmp_path / "www", "obj.bin", 6 * MiB)
    origin = start_origin(procs, tmp_path / "www")
    sn = start_supernode(procs, tmp_path / "sn")
    flt = "Expires&OSSAccessKeyId&Signature"
    peers = [Peer(procs, tmp_path, f"peer{i}") for i in range(2)]
    for i, p in enumerate(peers):
        url = origin.url(f"obj.bin?Expires={100 + i}&OSSAccessKeyId=k&Signature=sig{i}")
        code, out = p.finish(p.start(url, sn.addr, "-f", flt))
        assert code == 0, out
        assert sha256(p.out_dir / "file.bin") == sha256(src)
    tasks = sn.api("/api/v1/tasks")["tasks"]
    assert len(tasks) == 1  # one task for both signed URLs
    assert origin.stats()["gets"] == 1
    # the listing hides the signature values
    assert "sig0" not in json.dumps(sn.api(f"/api/v1/tasks/{tasks[0]['task_id']}"))


def test_cdn_pattern_source_peers_fetch_ranges_from_the_origin(
    procs: Procs, tmp_path: Path, random_file
):  # type: ignore[no-untyped-def]
    src = random_file(tmp_path / "www", "f.bin", 20 * MiB + 5)
    origin = start_origin(procs, tmp_path / "www")
    sn = start_supernode(procs, tmp_path / "sn", extra=["--cdn-pattern", "source"])
    peers = [Peer(procs, tmp_path, f"peer{i}") for i in range(3)]
    runs = [p.start(origin.url("f.bin"), sn.addr) for p in peers]
    for p, r in zip(peers, runs, strict=True):
        code, out = p.finish(r)
        assert code == 0, out
        assert sha256(p.out_dir / "file.bin") == sha256(src)
    stats = origin.stats()
    assert 206 in stats["statuses"]  # pieces came as Range requests
    assert not list((sn.home / "repo").rglob("*.data"))  # the supernode stored nothing
    # the origin sent fewer bytes than three direct downloads: peers fed each other
    assert stats["bytes_sent"] < 3 * src.stat().st_size
