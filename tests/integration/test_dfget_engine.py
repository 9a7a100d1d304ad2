"""dfget and the host engine as real processes on 127.0.0.1, with the real supernode and a real
origin: the engine started in the background and reused, one engine per home under a race,
back source, --notbs, secrets kept out of argv and logs, rate limits, idle exit, Ctrl-C."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from damselfly.core.ids import task_id
from damselfly.core.nodes import parse_nodes, rendezvous_order
from damselfly.core.pieces import MiB
from tests.procs import (
    SUCCESS_RE,
    Proc,
    Procs,
    dfget_cmd,
    engine_status,
    free_port,
    http_json,
    sha256,
    start_origin,
    start_supernode,
    wait_until,
)

MakeFile = Callable[[Path, str, int], Path]
FAIL_RE = re.compile(r"download FAIL\((\d+)\) \S")
RUN_TIMEOUT = 90.0


def engine_pids(home: Path) -> list[int]:
    """Every live engine process whose argv names ``home``."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and b"damselfly.peer.engine" in argv and str(home).encode() in argv:
            out.append(int(pid))
    return out


class Host:
    """One host: its --home; dfget runs hand their downloads to its engine."""

    def __init__(self, procs: Procs, root: Path, name: str, *engine_flags: str) -> None:
        self.procs = procs
        self.name = name
        self.home = root / name / "home"
        self.out = root / name / "out"
        self.out.mkdir(parents=True)
        self.flags = engine_flags
        self.runs = 0

    def start(self, url: str, nodes: str, *extra: str, output: str = "file.bin") -> Proc:
        self.runs += 1
        args = dfget_cmd(
            "-u",
            url,
            "-o",
            str(self.out / output),
            "-n",
            nodes,
            "--home",
            str(self.home),
            *self.flags,
            *extra,
        )
        proc = self.procs.start(f"{self.name}-dfget{self.runs}", args)
        return proc

    def finish(self, proc: Proc, timeout: float = RUN_TIMEOUT) -> tuple[int, str]:
        try:
            code = proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{proc.name} did not finish:\n{proc.output()}")
        self.track()
        return code, proc.output()

    def run(self, url: str, nodes: str, *extra: str, output: str = "file.bin") -> tuple[int, str]:
        return self.finish(self.start(url, nodes, *extra, output=output))

    def track(self) -> None:
        for pid in engine_pids(self.home):
            self.procs.track_pid(pid)


def ok(code: int, out: str) -> tuple[float, int, int]:
    assert code == 0, out
    m = SUCCESS_RE.search(out)
    assert m, out
    return float(m.group(1)), int(m.group(2)), int(m.group(3))


def no_temp_files(d: Path) -> bool:
    return not [n for n in os.listdir(d) if n.startswith(".")]


def test_engine_starts_in_the_background_and_is_reused(
    procs: Procs, tmp_path: Path, random_file: MakeFile
) -> None:
    src = random_file(tmp_path / "www", "f.bin", 9 * MiB + 5)
    origin = start_origin(procs, tmp_path / "www")
    sn = start_supernode(procs, tmp_path / "sn")
    host = Host(procs, tmp_path, "h", "--alivetime", "60s")
    _, length, reason = ok(*host.run(origin.url("f.bin"), sn.addr))
    assert (length, reason) == (src.stat().st_size, 0)
    assert sha256(host.out / "file.bin") == sha256(src) and no_temp_files(host.out)
    st = engine_status(host.home)
    assert st is not None and engine_pids(host.home) == [st["pid"]]
    # the engine is a fresh process: its argv names its home, nothing of dfget's
    argv = Path(f"/proc/{st['pid']}/cmdline").read_bytes().split(b"\0")
    assert b"damselfly.peer.engine" in argv and str(host.home).encode() in argv
    assert origin.url("f.bin").encode() not in b" ".join(argv)
    assert (host.home / "engine.sock").stat().st_mode & 0o777 == 0o600
    # a second run uses the same engine (and its local copy: no new origin traffic)
    gets = origin.stats()["gets"]
    ok(*host.run(origin.url("f.bin"), sn.addr, output="again.bin"))
    assert sha256(host.out / "again.bin") == sha256(src)
    assert engine_pids(host.home) == [st["pid"]] and origin.stats()["gets"] == gets
    # a second host gets the pieces from the swarm
    other = Host(procs, tmp_path, "h2", "--alivetime", "60s")
    ok(*other.run(origin.url("f.bin"), sn.addr))
    assert sha256(other.out / "file.bin") == sha256(src)
    assert origin.stats()["gets"] == gets


def test_two_runs_at_once_share_one_engine(
    procs: Procs, tmp_path: Path, random_file: MakeFile
) -> None:
    random_file(tmp_path / "www", "a.bin", 2 * MiB)
    random_file(tmp_path / "www", "b.bin", 3 * MiB)
    origin = start_origin(procs, tmp_path / "www")
    sn = start_supernode(procs, tmp_path / "sn")
    host = Host(procs, tmp_path, "h", "--alivetime", "60s")
    runs = [host.start(origin.url(n), sn.addr, output=n) for n in ("a.bin", "b.bin")]
    for r in runs:
        ok(*host.finish(r))
    for n in ("a.bin", "b.bin"):
        assert sha256(host.out / n) == sha256(tmp_path / "www" / n)
    pids = engine_pids(host.home)
    st = engine_status(host.home)
    assert st is not None and pids == [st["pid"]], pids


def test_source_pattern_back_source_and_notbs(
    procs: Procs, tmp_path: Path, random_file: MakeFile
) -> None:
    src = random_file(tmp_path / "www", "f.bin", 3 * MiB + 1)
    origin = start_origin(procs, tmp_path / "www")
    host = Host(procs, tmp_path, "h", "--alivetime", "60s")
    dead = f"127.0.0.1:{free_port()}"
    # --notbs with no supernode: a clean failure, nothing written, the origin untouched
    code, out = host.run(origin.url("f.bin"), dead, "--notbs")
    m = FAIL_RE.search(out)
    assert code != 0 and m and m.group(1) == "8", out
    assert "Traceback" not in out and "--notbs" in out
    assert os.listdir(host.out) == [] and origin.stats()["gets"] == 0
    # without --notbs: back to the origin, reason 8 (no supernode)
    _, length, reason = ok(*host.run(origin.url("f.bin"), dead))
    assert (length, reason) == (src.stat().st_size, 8)
    assert sha256(host.out / "file.bin") == sha256(src)
    # -p source: straight to the origin, reason 100
    _, _, reason = ok(*host.run(origin.url("f.bin"), dead, "-p", "source", output="s.bin"))
    assert reason == 100 and sha256(host.out / "s.bin") == sha256(src)
    assert no_temp_files(host.out)
    # an origin 404 is reported as such
    code, out = host.run(origin.url("missing.bin"), dead, output="m.bin")
    assert code != 0 and "404" in out and "Traceback" not in out
    assert not (host.out / "m.bin").exists()


def test_header_secret_reaches_the_origin_and_nothing_else(
    procs: Procs, tmp_path: Path, random_file: MakeFile
) -> None:
    token = "tok-5be1d2-do-not-leak"
    secret = f"Bearer {token}"
    src = random_file(tmp_path / "www", "p.bin", 6 * MiB)
    origin = start_origin(procs, tmp_path / "www", require_header=f"Authorization: {secret}")
    sn = start_supernode(procs, tmp_path / "sn")
    host = Host(procs, tmp_path, "h", "--alivetime", "60s", "--verbose")
    run = host.start(
        origin.url("p.bin"),
        sn.addr,
        "--header",
        f"Authorization: {secret}",
        "--locallimit",
        "6M",
        "--console",
    )
    checked = 0
    while run.alive():  # bounded by the download (about a second at 6M/s)
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == run.pid:
                continue  # the user's own dfget carries what the user typed
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            assert token.encode() not in cmdline, cmdline
            checked += 1
        time.sleep(0.1)
    code, out = host.finish(run)
    ok(code, out)
    assert checked and token not in out
    assert sha256(host.out / "file.bin") == sha256(src)
    want = hashlib.sha256(secret.encode()).hexdigest()
    assert any(h.get("authorization") == want for h in origin.stats()["header_hashes"])
    for f in host.home.rglob("*"):
        if f.is_file() and not f.name.endswith(".data"):
            assert token.encode() not in f.read_bytes(), f
    assert (host.home / "logs" / "engine.log").stat().st_size > 0
    # the same header on the back-source path
    code, out = host.run(
        origin.url("p.bin"),
        f"127.0.0.1:{free_port()}",
        "--header",
        f"Authorization: {secret}",
        output="bs.bin",
    )
    assert ok(code, out)[2] == 8 and sha256(host.out / "bs.bin") == sha256(src)
    for f in (host.home / "logs").rglob("*"):
        assert token.encode() not in f.read_bytes(), f


def test_totallimit_is_shared_by_concurrent_downloads(
    procs: Procs, tmp_path: Path, random_file: MakeFile
) -> None:
    for name, size in (("a.bin", 5 * MiB), ("b.bin", 5 * MiB), ("warm.bin", 1024)):
        random_file(tmp_path / "www", name, size)
    origin = start_origin(procs, tmp_path / "www")
    sn = start_supernode(procs, tmp_path / "sn")
    host = Host(procs, tmp_path, "h", "--alivetime", "60s")
    ok(*host.run(origin.url("warm.bin"), sn.addr, output="warm.bin"))  # engine up, CDN warm
    # warm the CDN for a and b through another host, so only piece bytes are paced below
    other = Host(procs, tmp_path, "o", "--alivetime", "60s")
    for n in ("a.bin", "b.bin"):
        ok(*other.run(origin.url(n), sn.addr, "-p", "cdn", output=n))
    limit = 5 * MiB
    runs = [
        host.start(origin.url(n), sn.addr, "--totallimit", "5M", output=n)
        for n in ("a.bin", "b.bin")
    ]
    costs = [ok(*host.finish(r))[0] for r in runs]
    rate = 10 * MiB / max(costs)
    # the bucket lets about 0.1 s of burst through; process start-up adds a little time
    assert 0.85 * limit <= rate <= 1.15 * limit, (rate / MiB, costs)


def test_engine_exits_after_alivetime(procs: Procs, tmp_path: Path, random_file: MakeFile) -> None:
    random_file(tmp_path / "www", "f.bin", 1024)
    origin = start_origin(procs, tmp_path / "www")
    host = Host(procs, tmp_path, "h", "--alivetime", "1s")
    ok(*host.run(origin.url("f.bin"), f"127.0.0.1:{free_port()}"))
    assert engine_pids(host.home)
    wait_until(lambda: not engine_pids(host.home), timeout=30, what="the idle engine to exit")
    assert not (host.home / "engine.sock").exists()
    # the next run starts a new one
    ok(*host.run(origin.url("f.bin"), f"127.0.0.1:{free_port()}", output="again.bin"))


def test_a_bad_piece_from_a_peer_is_fetched_elsewhere(
    procs: Procs, tmp_path: Path, random_file: MakeFile
) -> None:
    src = random_file(tmp_path / "www", "f.bin", 16 * MiB)
    origin = start_origin(procs, tmp_path / "www")
    sn = start_supernode(procs, tmp_path / "sn")
    a = Host(procs, tmp_path, "a", "--alivetime", "60s")
    ok(*a.run(origin.url("f.bin"), sn.addr))
    # rot one byte in every piece of a's copy behind its back: a still offers them as verified
    data = next((a.home / "data").glob("*.data"))
    with data.open("r+b") as f:
        for off in range(0, 16 * MiB, 4 * MiB):
            f.seek(off + 100)
            b = f.read(1)
            f.seek(off + 100)
            f.write(bytes([b[0] ^ 0xFF]))
    b_host = Host(procs, tmp_path, "b", "--alivetime", "60s")
    _, _, reason = ok(*b_host.run(origin.url("f.bin"), sn.addr))
    assert reason == 0 and sha256(b_host.out / "file.bin") == sha256(src)
    a_id = engine_status(a.home)["peer_id"]  # type: ignore[index]
    peers = {p["id"]: p for p in http_json(f"http://{sn.addr}/api/v1/peers")["peers"]}
    assert peers[a_id]["failures"] >= 1, peers  # b caught a's bad pieces and said so


def test_supernode_dying_mid_download_moves_to_the_next(
    procs: Procs, tmp_path: Path, random_file: MakeFile
) -> None:
    src = random_file(tmp_path / "www", "f.bin", 12 * MiB)
    origin = start_origin(procs, tmp_path / "www")
    sns = [start_supernode(procs, tmp_path / f"sn{i}", f"sn{i}") for i in range(2)]
    nodes = ",".join(s.addr for s in sns)
    url = origin.url("f.bin")
    owner_addr = rendezvous_order(task_id(url), parse_nodes(nodes))[0].addr
    owner = next(s for s in sns if s.addr == owner_addr)
    host = Host(procs, tmp_path, "h", "--alivetime", "60s")
    run = host.start(url, nodes, "--locallimit", "4M", "--notbs")
    wait_until(lambda: owner.api("/api/v1/tasks")["tasks"] or not run.alive(), what="a task")
    procs.stop(owner.proc, sig=signal.SIGKILL)
    _, _, reason = ok(*host.finish(run))
    assert reason == 0 and sha256(host.out / "file.bin") == sha256(src)
    other = next(s for s in sns if s is not owner)
    assert other.api("/api/v1/tasks")["tasks"]


def test_ctrl_c_cancels_and_leaves_nothing(
    procs: Procs, tmp_path: Path, random_file: MakeFile
) -> None:
    random_file(tmp_path / "www", "f.bin", 8 * MiB)
    origin = start_origin(procs, tmp_path / "www")
    sn = start_supernode(procs, tmp_path / "sn")
    host = Host(procs, tmp_path, "h", "--alivetime", "60s")
    run = host.start(origin.url("f.bin"), sn.addr, "--locallimit", "1M")
    wait_until(lambda: engine_status(host.home) and sn.api("/api/v1/tasks")["tasks"], what="start")
    host.track()
    run.popen.send_signal(signal.SIGINT)
    code, out = host.finish(run)
    assert code == 130 and "download FAIL(3) interrupted" in out and "Traceback" not in out
    wait_until(lambda: engine_status(host.home)["active"] == 0, what="the download to stop")  # type: ignore[index]
    assert os.listdir(host.out) == []
