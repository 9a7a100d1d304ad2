"""The engine process on its own: one per home (the lock), its control channel, `dfget server`
and `dfdaemon` running it in the foreground, expiry of idle task data, the progress bar."""

from __future__ import annotations

import http.client
import json
import os
import pty
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from damselfly.core.pieces import MiB
from tests.procs import (
    Proc,
    Procs,
    dfget_cmd,
    engine_status,
    free_port,
    http_json,
    start_origin,
    start_supernode,
    wait_until,
)

MakeFile = Callable[[Path, str, int], Path]


def engine_cmd(home: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "damselfly.peer.engine", "--home", str(home), *flags]


def wait_ready(proc: Proc, home: Path) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited:\n{proc.output()}")
        return engine_status(home)

    return wait_until(ready, what=f"{proc.name} to answer")


def control(home: Path, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    class Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(str(home / "engine.sock"))
            self.sock = s

    conn = Conn("localhost", timeout=5)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_one_engine_per_home_and_its_control_channel(procs: Procs, tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = procs.start("engine1", engine_cmd(home, "--foreground", "--alivetime", "0"))
    st = wait_ready(first, home)
    assert st["pid"] == first.pid and st["active"] == 0 and st["home"] == str(home)
    assert "engine ready" in first.output()
    # a second engine for the same home says so and leaves the first alone
    second = procs.start("engine2", engine_cmd(home, "--foreground"))
    assert second.popen.wait(30) == 3
    assert "another engine already serves" in second.output()
    assert engine_status(home)["pid"] == first.pid  # type: ignore[index]
    assert (home / "engine.sock").stat().st_mode & 0o777 == 0o600
    # the channel refuses what it does not know, and bad requests, with clear 4xx answers
    assert control(home, "GET", "/nope")[0] == 404
    assert control(home, "GET", "/download")[0] == 405
    status, body = control(home, "POST", "/download", b"{not json")
    assert status == 400 and json.loads(body)["error"] == "bad_request"
    status, body = control(
        home, "POST", "/download", json.dumps({"url": "ftp://x/y", "output": "/tmp/x"}).encode()
    )
    assert status == 400 and "scheme" in json.loads(body)["message"]
    status, _ = control(home, "POST", "/download", b"[" * 100_000)
    assert status == 400
    # the peer port answers only pieces it holds
    port = st["port"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", f"/pieces/{'a' * 64}/0")
    assert conn.getresponse().status == 404
    conn.close()
    # shutdown: the process ends and takes its socket with it
    assert control(home, "POST", "/shutdown")[0] == 200
    assert first.popen.wait(30) == 0
    assert not (home / "engine.sock").exists()


def test_dfget_server_and_dfget_share_the_engine(
    procs: Procs, tmp_path: Path, random_file: MakeFile
) -> None:
    src = random_file(tmp_path / "www", "f.bin", 1 * MiB)
    origin = start_origin(procs, tmp_path / "www")
    home = tmp_path / "home"
    port = free_port()
    server = procs.start("server", dfget_cmd("server", "--home", str(home), "--port", str(port)))
    st = wait_ready(server, home)
    assert st["port"] == port and st["pid"] == server.pid
    run = procs.start(
        "dfget",
        dfget_cmd(
            "-u",
            origin.url("f.bin"),
            "-o",
            str(tmp_path / "out.bin"),
            "--home",
            str(home),
            "-n",
            f"127.0.0.1:{free_port()}",
        ),
    )
    assert run.popen.wait(60) == 0, run.output()
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    assert engine_status(home)["pid"] == server.pid  # type: ignore[index]
    procs.stop(server)
    assert server.popen.returncode == 0


def test_dfdaemon_runs_the_engine_in_the_foreground(procs: Procs, tmp_path: Path) -> None:
    home = tmp_path / "home"
    cfg = tmp_path / "dfdaemon.yml"
    port = free_port()
    cfg.write_text(
        f'dfget_flags: ["--verbose", "-f", "Expires&Signature", "--port", "{port}"]\n'
        "node:\n  - 127.0.0.1:8002\nratelimit: 20M\n"
    )
    d = procs.start(
        "dfdaemon",
        [sys.executable, "-m", "damselfly.dfdaemon.cli", "--config", str(cfg), "--home", str(home)],
    )
    st = wait_ready(d, home)
    assert st["port"] == port and st["pid"] == d.pid
    bad = tmp_path / "bad.yml"
    bad.write_text("registry-mirror: {}\n")
    b = procs.start(
        "dfdaemon-bad",
        [
            sys.executable,
            "-m",
            "damselfly.dfdaemon.cli",
            "--config",
            str(bad),
            "--home",
            str(tmp_path / "h2"),
        ],
    )
    assert b.popen.wait(30) == 2
    assert "unknown key 'registry-mirror'" in b.output() and "Traceback" not in b.output()


def test_idle_task_data_expires_and_the_supernode_is_told(
    procs: Procs, tmp_path: Path, random_file: MakeFile
) -> None:
    random_file(tmp_path / "www", "f.bin", 2 * MiB)
    origin = start_origin(procs, tmp_path / "www")
    sn = start_supernode(procs, tmp_path / "sn")
    home = tmp_path / "home"
    eng = procs.start("engine", engine_cmd(home, "--expiretime", "1s", "--alivetime", "0"))
    st = wait_ready(eng, home)
    run = procs.start(
        "dfget",
        dfget_cmd(
            "-u",
            origin.url("f.bin"),
            "-o",
            str(tmp_path / "out.bin"),
            "--home",
            str(home),
            "-n",
            sn.addr,
        ),
    )
    assert run.popen.wait(60) == 0, run.output()

    def my_tasks() -> list[str]:
        for p in http_json(f"http://{sn.addr}/api/v1/peers")["peers"]:
            if p["id"] == st["peer_id"]:
                return list(p["tasks"])
        return []

    assert my_tasks()
    wait_until(lambda: not list((home / "data").iterdir()), timeout=30, what="expiry")
    wait_until(lambda: not my_tasks(), timeout=10, what="the supernode to be told")
    assert (tmp_path / "out.bin").stat().st_size == 2 * MiB  # the user's output stays


def test_progress_bar_on_a_terminal(procs: Procs, tmp_path: Path, random_file: MakeFile) -> None:
    random_file(tmp_path / "www", "f.bin", 4 * MiB)
    origin = start_origin(procs, tmp_path / "www")
    home = tmp_path / "home"
    master, slave = pty.openpty()
    p = subprocess.Popen(
        dfget_cmd(
            "-u",
            origin.url("f.bin"),
            "-o",
            str(tmp_path / "out.bin"),
            "--home",
            str(home),
            "-n",
            f"127.0.0.1:{free_port()}",
            "-b",
            "--locallimit",
            "4M",
        ),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 1)
            if r:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            elif p.poll() is not None:
                break
        assert p.wait(10) == 0, out
    finally:
        os.close(master)
        st = engine_status(home)
        if st is not None:
            procs.track_pid(int(st["pid"]))
    text = out.decode(errors="replace")
    assert "100%" in text and "MB/s" in text.replace("MiB/s", "MB/s") and "download SUCCESS" in text
