"""Fault trials with real processes on loopback (issue 6, item 1): a quarter of the peers killed
mid-swarm, the origin changing content during a download (through the CDN, and with peers
fetching ranges from the origin), and the engine's data disk full (a tiny tmpfs).

Every trial checks the same three things: no wrong bytes at any output (each output is one
version of the file, whole), nothing half-written at an output path (no temp file left beside it),
and a clear message for every failure (a ``download FAIL`` line, no traceback).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import subprocess
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from damselfly.core.ids import task_id
from damselfly.core.pieces import MiB
from tests.procs import (
    SUCCESS_RE,
    OriginHandle,
    Peer,
    Procs,
    SupernodeHandle,
    sha256,
    start_origin,
    start_supernode,
    wait_until,
)

RUN_TIMEOUT = float(os.environ.get("FAULTS_RUN_TIMEOUT", "180"))


def make_host(procs: Procs, home: Path, out_dir: Path, name: str) -> Peer:
    """One host with its engine's home where the trial wants it (e.g. on a tiny tmpfs)."""
    return Peer(procs, home.parent, name, home=home, out_dir=out_dir, timeout=RUN_TIMEOUT)


def write_random(path: Path, size: int, seed: int) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def stage_replacement(
    path: Path, size: int, seed: int, scratch: Path
) -> tuple[bytes, Callable[[], None]]:
    """New content for ``path``, written now in ``scratch`` with a modification time, hence an
    ETag, surely different; the call returned publishes it in one atomic rename (what a real
    origin publishing a new version does: a request already being answered keeps the old file,
    the next one sees the new). Staged ahead, the change lands the moment a test asks for it:
    writing megabytes of random bytes first takes seconds on a loaded machine, enough for a
    download meant to be caught mid-way to finish the old version."""
    old_mtime = path.stat().st_mtime_ns
    tmp = scratch / f".{path.name}.new"
    data = write_random(tmp, size, seed)
    os.utime(tmp, ns=(old_mtime + 7_000_000_000, old_mtime + 7_000_000_000))
    return data, lambda: os.replace(tmp, path)


def replace_at_origin(path: Path, size: int, seed: int, scratch: Path) -> bytes:
    """``stage_replacement`` published at once."""
    data, publish = stage_replacement(path, size, seed, scratch)
    publish()
    return data


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_clean_failure(code: int, out: str) -> None:
    assert code != 0, out
    assert "download FAIL" in out, out
    assert "Traceback" not in out, out


def assert_only_whole_outputs(
    out_dir: Path, allowed: set[str], versions: dict[str, bytes] | None = None
) -> list[str]:
    """Nothing but finished outputs in ``out_dir`` (no temp file), each one whole version.
    ``versions`` (name → content) only makes a failure say what the output is instead."""
    seen = []
    for name in sorted(os.listdir(out_dir)):
        assert not name.startswith("."), f"left behind in {out_dir}: {name}"
        got = sha256(out_dir / name)
        if got not in allowed:
            pytest.fail(f"{out_dir / name} is {what_is(out_dir / name, versions or {})}")
        seen.append(got)
    return seen


def what_is(path: Path, versions: dict[str, bytes]) -> str:
    """Which known version a file is, whole; else, per MiB, the version each MiB is from
    (``?``: none of them)."""
    data = path.read_bytes()
    for label, content in versions.items():
        if data == content:
            return f"the {label} version whole, not one allowed here"
    marks = "".join(
        next(
            (label[0] for label, c in versions.items() if data[i : i + MiB] == c[i : i + MiB]),
            "?",
        )
        for i in range(0, len(data), MiB)
    )
    return f"no version of the file (mixed or corrupt; {len(data)} bytes, by MiB: {marks})"


# -- a quarter of the peers killed mid-swarm -------------------------------------------------


def test_a_quarter_of_the_peers_killed_mid_swarm_the_rest_finish(
    procs: Procs, tmp_path: Path
) -> None:
    """8 engines share a 40 MiB file at 4 MiB/s each; once two of them have served pieces to
    others (the supernode's per-peer upload counts say so) and nobody has finished, both are
    SIGKILLed. The six others finish with the right bytes; the two victims' dfget either
    finished before the kill landed or failed cleanly, leaving nothing at their outputs."""
    src = write_random(tmp_path / "www" / "f.bin", 40 * MiB + 777, seed=11)
    origin = start_origin(procs, tmp_path / "www")
    sn = start_supernode(procs, tmp_path / "sn")
    url = origin.url("f.bin")
    tid = task_id(url)
    hosts = [
        make_host(procs, tmp_path / f"h{i}" / "home", tmp_path / f"h{i}" / "out", f"h{i}")
        for i in range(8)
    ]
    runs = [h.start(url, sn.addr, "--locallimit", "4M") for h in hosts]

    def engines() -> list[dict[str, Any]] | None:
        sts = [h.track_engine() for h in hosts]
        return sts if all(sts) else None  # type: ignore[return-value]

    statuses = wait_until(engines, timeout=60, what="8 engines")
    by_peer = {st["peer_id"]: h for st, h in zip(statuses, hosts, strict=True)}

    def two_uploaders() -> list[Peer] | None:
        try:
            view = sn.api(f"/api/v1/tasks/{tid}")
        except urllib.error.HTTPError:
            return None
        if view.get("peers_done", 0):
            pytest.fail("a peer finished before any two had served pieces: nothing to test")
        peers = sn.api("/api/v1/peers")["peers"]
        uploaders = [by_peer[p["id"]] for p in peers if p["id"] in by_peer and p["bytes_served"]]
        return uploaders[:2] if len(uploaders) >= 2 else None

    victims = wait_until(two_uploaders, timeout=60, what="two peers serving pieces")
    for v in victims:
        st = v.track_engine()
        assert st is not None
        os.kill(int(st["pid"]), signal.SIGKILL)
    want = digest(src)
    for h, r in zip(hosts, runs, strict=True):
        code, out = h.finish(r)
        assert "Traceback" not in out, out
        if h in victims:
            if code != 0:
                assert_clean_failure(code, out)
            assert_only_whole_outputs(h.out_dir, {want})
            continue
        assert code == 0, out
        assert SUCCESS_RE.search(out), out
        assert assert_only_whole_outputs(h.out_dir, {want}) == [want]


# -- the origin changing content during a download --------------------------------------------


def start_slow_origin(procs: Procs, root: Path, rate: int) -> OriginHandle:
    origin = start_origin(procs, root)
    origin.control(rate=rate)
    return origin


def progress_at_origin(origin: OriginHandle, at_least: int) -> bool:
    return int(origin.stats()["bytes_sent"]) >= at_least


@pytest.mark.parametrize(
    "new_size", [32 * MiB, 27 * MiB + 5, 36 * MiB + 3], ids=["same-length", "shorter", "longer"]
)
def test_origin_replaced_while_the_cdn_fetches(procs: Procs, tmp_path: Path, new_size: int) -> None:
    """The supernode's CDN is fetching a 32 MiB file from a slow origin (8 MiB/s) for four
    peers that already hold some pieces when the file is replaced (atomic rename, new ETag) and
    the origin cuts the body in flight. The CDN's resume asks for the missing ranges with
    If-Range, gets the new version whole (200), and starts over; peers drop what they hold of the
    old version. Every output is the new file, whole: no output mixes the two versions."""
    www = tmp_path / "www"
    old = write_random(www / "f.bin", 32 * MiB, seed=1)
    origin = start_slow_origin(procs, www, rate=8 * MiB)
    sn = start_supernode(procs, tmp_path / "sn")
    url = origin.url("f.bin")
    tid = task_id(url)
    hosts = [
        make_host(procs, tmp_path / f"h{i}" / "home", tmp_path / f"h{i}" / "out", f"h{i}")
        for i in range(4)
    ]
    runs = [h.start(url, sn.addr) for h in hosts]

    def peers_hold_pieces() -> bool:
        try:
            view = sn.api(f"/api/v1/tasks/{tid}")
        except urllib.error.HTTPError:
            return False
        return sum(p.get("pieces", 0) for p in view.get("peers", [])) >= 2

    wait_until(peers_hold_pieces, timeout=60, what="peers holding old pieces")
    assert not progress_at_origin(origin, 32 * MiB)  # the old version is not all out yet
    new = replace_at_origin(www / "f.bin", new_size, seed=2, scratch=tmp_path)
    origin.control(drop_active=True)
    for h, r in zip(hosts, runs, strict=True):
        code, out = h.finish(r)
        assert "Traceback" not in out, out
        if code != 0:
            assert_clean_failure(code, out)
            assert_only_whole_outputs(h.out_dir, set())
            continue
        m = SUCCESS_RE.search(out)
        assert m and int(m.group(2)) == len(new), out
        assert m.group(3) == "0", out  # the swarm itself moved to the new version (no fallback)
        # the old version never existed whole anywhere: only the new one can be finished
        assert assert_only_whole_outputs(h.out_dir, {digest(new)}) == [digest(new)]
    assert digest(old) != digest(new)
    # the change was seen by the CDN's conditional resume (a 200 to a Range + If-Range)
    assert origin.stats()["statuses"].count(200) >= 2
    view = sn.api(f"/api/v1/tasks/{tid}")
    assert view["length"] == len(new) and view["file_sha256"] == digest(new)


def test_origin_replaced_while_peers_fetch_ranges_from_it(procs: Procs, tmp_path: Path) -> None:
    """``--cdn-pattern source``: the supernode stores nothing and peers fetch pieces from the
    origin by Range, each with ``If-Range`` set to the version the supernode announced. The file
    is replaced by another of the same length (new ETag) while three peers are downloading it
    (4 MiB/s per origin connection, each host at most 2 MiB/s: 12 s at least for the file, so
    the change lands mid-download however loaded the machine). Their next Range requests get a
    200: they report the piece "changed", the supernode probes the origin again and resets the
    task, and every peer drops the old pieces and finishes with the new file whole, from the
    swarm. A peer that starts after the change gets the new file too."""
    www = tmp_path / "www"
    size = 24 * MiB
    old = write_random(www / "f.bin", size, seed=3)
    new, publish = stage_replacement(www / "f.bin", size, seed=4, scratch=tmp_path)
    assert digest(old) != digest(new)
    both = {"old": old, "new": new}
    origin = start_slow_origin(procs, www, rate=4 * MiB)
    sn = start_supernode(procs, tmp_path / "sn", extra=["--cdn-pattern", "source"])
    url = origin.url("f.bin")
    tid = task_id(url)
    hosts = [
        make_host(procs, tmp_path / f"h{i}" / "home", tmp_path / f"h{i}" / "out", f"h{i}")
        for i in range(4)
    ]
    runs = [h.start(url, sn.addr, "--locallimit", "2M") for h in hosts[:3]]
    wait_until(
        lambda: peers_on(sn, tid) == 3 and pieces_held(sn, tid) >= 2,
        timeout=60,
        what="3 peers registered, pieces fetched from the origin",
    )
    publish()
    origin.control(drop_active=True)
    for h, r in zip(hosts[:3], runs, strict=True):
        code, out = h.finish(r)
        assert code == 0, out
        m = SUCCESS_RE.search(out)
        assert m and m.group(3) == "0", out  # the swarm moved to the new version (no fallback)
        assert assert_only_whole_outputs(h.out_dir, {digest(new)}, both) == [digest(new)]
        # caught mid-download: told the new version, it dropped the old one's pieces
        assert "the file changed at the origin" in (h.home / "logs" / "engine.log").read_text()
    late = hosts[3]
    code, out = late.finish(late.start(url, sn.addr))
    assert code == 0, out
    assert assert_only_whole_outputs(late.out_dir, {digest(new)}, both) == [digest(new)]
    assert "changed at the origin; starting over" in sn.proc.output()


def peers_on(sn: SupernodeHandle, tid: str) -> int:
    """Peers the supernode counts on the task."""
    try:
        return len(sn.api(f"/api/v1/tasks/{tid}").get("peers", []))
    except urllib.error.HTTPError:
        return 0


def pieces_held(sn: SupernodeHandle, tid: str, peer_id: str = "") -> int:
    """Pieces the supernode counts as held by the task's peers (or one of them)."""
    try:
        view = sn.api(f"/api/v1/tasks/{tid}")
    except urllib.error.HTTPError:
        return 0
    return sum(
        p.get("pieces", 0) for p in view.get("peers", []) if not peer_id or p["id"] == peer_id
    )


def test_a_peer_holding_old_pieces_from_peers_meets_the_new_version_at_the_origin(
    procs: Procs, tmp_path: Path
) -> None:
    """The late-joining hole of a per-download pin (``--cdn-pattern source``): host A holds the
    whole old file; host C (1 MiB/s) registers and takes old pieces from A only (the origin has
    sent no body since). Then the file is replaced and A's engine killed, so C's next pieces must
    come from the origin: C's *first* Range request to it carries the supernode's old validator
    as If-Range and gets a 200, the supernode resets the task, C drops the old pieces and
    finishes with the new file whole. (A pin taken from C's own first answer would have accepted
    the new version's pieces next to A's old ones: a mixed file.)"""
    www = tmp_path / "www"
    size = 24 * MiB
    old = write_random(www / "f.bin", size, seed=5)
    origin = start_origin(procs, www)
    sn = start_supernode(procs, tmp_path / "sn", extra=["--cdn-pattern", "source"])
    url = origin.url("f.bin")
    tid = task_id(url)
    a = make_host(procs, tmp_path / "a" / "home", tmp_path / "a" / "out", "a")
    c = make_host(procs, tmp_path / "c" / "home", tmp_path / "c" / "out", "c")
    code, out = a.finish(a.start(url, sn.addr))
    assert code == 0, out
    assert assert_only_whole_outputs(a.out_dir, {digest(old)}) == [digest(old)]
    a_engine = a.track_engine()
    assert a_engine is not None
    origin.control(reset=True, rate=4 * MiB)
    run = c.start(url, sn.addr, "--locallimit", "1M")
    c_engine = wait_until(c.track_engine, timeout=30, what="C's engine")
    wait_until(
        lambda: pieces_held(sn, tid, c_engine["peer_id"]) >= 1,
        timeout=60,
        what="C holding a piece from A",
    )
    # every piece C holds came from A: the origin has sent no body since A finished
    assert origin.stats()["gets"] == 0, origin.stats()
    new = replace_at_origin(www / "f.bin", size, seed=6, scratch=tmp_path)
    os.kill(int(a_engine["pid"]), signal.SIGKILL)
    code, out = c.finish(run)
    assert code == 0, out
    m = SUCCESS_RE.search(out)
    assert m and m.group(3) == "0", out  # through the swarm, at the new version
    assert assert_only_whole_outputs(c.out_dir, {digest(new)}) == [digest(new)]
    statuses = origin.stats()["statuses"]
    assert 200 in statuses and 206 in statuses, statuses  # If-Range refused, then new ranges
    assert "changed at the origin; starting over" in sn.proc.output()


def test_a_reset_drops_the_old_pieces_of_running_peers(procs: Procs, tmp_path: Path) -> None:
    """``--cdn-pattern source``: host A (2 MiB/s) holds some pieces of the old version when the
    file is replaced; host D registers right after, which revalidates the task at the origin
    and resets it. A, still running, is told the new version in its next schedule answer and
    drops its old pieces instead of reporting them held (they would have been handed to D with
    no digest to check); both finish with the new file whole."""
    www = tmp_path / "www"
    size = 24 * MiB
    old = write_random(www / "f.bin", size, seed=7)
    origin = start_slow_origin(procs, www, rate=4 * MiB)
    sn = start_supernode(procs, tmp_path / "sn", extra=["--cdn-pattern", "source"])
    url = origin.url("f.bin")
    tid = task_id(url)
    a = make_host(procs, tmp_path / "a" / "home", tmp_path / "a" / "out", "a")
    d = make_host(procs, tmp_path / "d" / "home", tmp_path / "d" / "out", "d")
    run_a = a.start(url, sn.addr, "--locallimit", "2M")
    wait_until(lambda: pieces_held(sn, tid) >= 2, timeout=60, what="A holding old pieces")
    new = replace_at_origin(www / "f.bin", size, seed=8, scratch=tmp_path)
    run_d = d.start(url, sn.addr)
    for h, r in ((a, run_a), (d, run_d)):
        code, out = h.finish(r)
        assert code == 0, out
        m = SUCCESS_RE.search(out)
        assert m and m.group(3) == "0", out
        assert assert_only_whole_outputs(h.out_dir, {digest(new)}) == [digest(new)]
    assert digest(old) != digest(new)
    assert "changed at the origin; starting over" in sn.proc.output()


def test_an_origin_naming_no_version_is_never_fetched_by_ranges(
    procs: Procs, tmp_path: Path
) -> None:
    """``--cdn-pattern source`` with an origin that sends neither ETag nor Last-Modified: Range
    requests made at different times could not be tied to one version, so peers download the
    file whole with one GET each (reason 3) instead of piece by piece. The file is replaced
    while two such GETs run: each output is one version whole (the old one, which those GETs
    began with), never a mix; a later download gets the new one; the origin answered no Range
    request with a 206."""
    www = tmp_path / "www"
    size = 16 * MiB
    old = write_random(www / "f.bin", size, seed=9)
    origin = start_slow_origin(procs, www, rate=4 * MiB)
    origin.control(no_validators=True)
    sn = start_supernode(procs, tmp_path / "sn", extra=["--cdn-pattern", "source"])
    url = origin.url("f.bin")
    hosts = [
        make_host(procs, tmp_path / f"h{i}" / "home", tmp_path / f"h{i}" / "out", f"h{i}")
        for i in range(3)
    ]
    runs = [h.start(url, sn.addr) for h in hosts[:2]]
    wait_until(lambda: progress_at_origin(origin, 4 * MiB), timeout=60, what="bodies under way")
    new = replace_at_origin(www / "f.bin", size, seed=10, scratch=tmp_path)
    for h, r in zip(hosts[:2], runs, strict=True):
        code, out = h.finish(r)
        assert code == 0, out
        m = SUCCESS_RE.search(out)
        assert m and m.group(3) == "3", out
        assert assert_only_whole_outputs(h.out_dir, {digest(old)}) == [digest(old)]
    late = hosts[2]
    code, out = late.finish(late.start(url, sn.addr))
    assert code == 0, out
    assert assert_only_whole_outputs(late.out_dir, {digest(new)}) == [digest(new)]
    assert 206 not in origin.stats()["statuses"]


# -- the engine's data disk full --------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str, procs: Procs) -> Iterator[Path]:
    """A tiny tmpfs at ``path``, unmounted at the end (after every process using it stopped)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root (no loop device either without it)")
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        procs.stop_all()  # the engines hold files on it
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def data_files(home: Path) -> list[Path]:
    d = home / "data"
    return sorted(p for p in d.iterdir() if p.name.endswith(".data")) if d.is_dir() else []


def test_engine_disk_too_small_fails_before_downloading(procs: Procs, tmp_path: Path) -> None:
    """The engine's home is an 8 MiB tmpfs; the file is 16 MiB. With --notbs, dfget fails at
    once with "not enough free space" (before any piece is fetched: no data file, no byte from
    the supernode's piece port), nothing at --output; with the output on the same tiny disk and
    back source allowed, the fallback to the origin is refused for the same reason. The engine
    stays up and a following 1 MiB download through it works."""
    write_random(tmp_path / "www" / "big.bin", 16 * MiB, seed=5)
    small = write_random(tmp_path / "www" / "small.bin", 1 * MiB, seed=6)
    origin = start_origin(procs, tmp_path / "www")
    sn = start_supernode(procs, tmp_path / "sn")
    with tmpfs(tmp_path / "tiny", "8m", procs) as tiny:
        host = make_host(procs, tiny / "home", tmp_path / "out", "h")
        code, out = host.finish(host.start(origin.url("big.bin"), sn.addr, "--notbs"))
        assert_clean_failure(code, out)
        assert "not enough free space" in out, out
        assert os.listdir(host.out_dir) == []
        assert data_files(host.home) == []
        tid = task_id(origin.url("big.bin"))
        view = sn.api(f"/api/v1/tasks/{tid}")
        assert all(p.get("pieces", 0) == 0 for p in view.get("peers", []))
        assert view["bytes_by_source"].get("supernode", 0) == 0, view

        # output on the tiny disk too, back source allowed: refused before downloading as well
        tiny_out = make_host(procs, tiny / "home", tiny / "out", "h")
        tiny_out.port = host.port
        gets_before = origin.stats()["per_path"].get("big.bin", {}).get("bytes", 0)
        code, out = tiny_out.finish(tiny_out.start(origin.url("big.bin"), sn.addr))
        assert_clean_failure(code, out)
        assert "not enough free space" in out, out
        assert os.listdir(tiny_out.out_dir) == []
        # the peer's own origin GET stopped at the headers (the body never came)
        assert origin.stats()["per_path"]["big.bin"]["bytes"] - gets_before < 16 * MiB

        st = host.track_engine()
        assert st is not None and not st["stopping"]
        code, out = host.finish(host.start(origin.url("small.bin"), sn.addr, output="small"))
        assert code == 0, out
        assert assert_only_whole_outputs(host.out_dir, {digest(small)}) == [digest(small)]
        after = host.track_engine()
        assert after is not None and after["pid"] == st["pid"]  # the same engine, never restarted


def test_two_downloads_racing_for_the_last_space(procs: Procs, tmp_path: Path) -> None:
    """One engine whose home is an 8 MiB tmpfs gets two 5 MiB downloads at once (--notbs): the
    disk holds one. The engine reserves a task's whole length before its first piece, so exactly
    one download wins; the other fails with "not enough free space" and leaves nothing at its
    output. The engine then still serves a small download."""
    a = write_random(tmp_path / "www" / "a.bin", 5 * MiB, seed=7)
    b = write_random(tmp_path / "www" / "b.bin", 5 * MiB, seed=8)
    small = write_random(tmp_path / "www" / "s.bin", 512 * 1024, seed=9)
    origin = start_origin(procs, tmp_path / "www")
    sn = start_supernode(procs, tmp_path / "sn")
    with tmpfs(tmp_path / "tiny", "8m", procs) as tiny:
        host = make_host(procs, tiny / "home", tmp_path / "out", "h")
        # start the engine first, so that both downloads race inside one engine
        code, out = host.finish(host.start(origin.url("s.bin"), sn.addr, output="warm"))
        assert code == 0, out
        runs = [host.start(origin.url(n), sn.addr, "--notbs", output=n) for n in ("a.bin", "b.bin")]
        results = [host.finish(r) for r in runs]
        oks = [code == 0 for code, _ in results]
        assert sum(oks) == 1, results
        for (code, out), name, data in zip(results, ("a.bin", "b.bin"), (a, b), strict=True):
            if code == 0:
                assert sha256(host.out_dir / name) == digest(data)
            else:
                assert_clean_failure(code, out)
                assert "not enough free space" in out, out
                assert not (host.out_dir / name).exists()
        assert_only_whole_outputs(host.out_dir, {digest(a), digest(b), digest(small)})
        code, out = host.finish(host.start(origin.url("s.bin"), sn.addr, output="again"))
        assert code == 0, out
        assert sha256(host.out_dir / "again") == digest(small)


def test_output_disk_filling_during_the_download(procs: Procs, tmp_path: Path) -> None:
    """The output directory is a 12 MiB tmpfs with room for the 8 MiB file when dfget starts
    (the engine's home is elsewhere, so the output is a copy, not a link). While the download
    runs (1 MiB/s), another writer fills that disk. Placing the file then fails with "not enough
    free space": exit code non-zero, no file and no temp file at the output. The engine stays
    healthy: once space is freed, the same download succeeds (from its local copy)."""
    data = write_random(tmp_path / "www" / "f.bin", 8 * MiB, seed=10)
    origin = start_origin(procs, tmp_path / "www")
    sn = start_supernode(procs, tmp_path / "sn")
    with tmpfs(tmp_path / "tiny", "12m", procs) as tiny:
        host = make_host(procs, tmp_path / "home", tiny / "out", "h")
        run = host.start(origin.url("f.bin"), sn.addr, "--notbs", "--locallimit", "1M")
        wait_until(lambda: host.track_engine(), timeout=30, what="the engine")
        tid = task_id(origin.url("f.bin"))

        def started() -> bool:
            try:
                view = sn.api(f"/api/v1/tasks/{tid}")
            except urllib.error.HTTPError:
                return False
            return any(p.get("pieces", 0) > 0 for p in view.get("peers", []))

        wait_until(started, timeout=60, what="the first piece")
        assert run.alive(), run.output()
        filler = tiny / "filler"
        with filler.open("wb") as f:
            with contextlib.suppress(OSError):  # ENOSPC: the disk is full
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
        assert os.statvfs(tiny).f_bavail * os.statvfs(tiny).f_frsize < 8 * MiB
        code, out = host.finish(run)
        assert_clean_failure(code, out)
        assert "not enough free space" in out, out
        assert os.listdir(host.out_dir) == []
        filler.unlink()
        code, out = host.finish(host.start(origin.url("f.bin"), sn.addr, "--notbs"))
        assert code == 0, out
        assert assert_only_whole_outputs(host.out_dir, {digest(data)}) == [digest(data)]
