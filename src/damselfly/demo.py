"""The README's main job: a local swarm on loopback that distributes one file.

Starts a local origin (which counts the bytes it sends), one supernode and several peers — each
peer a separate host engine with its own ``--home`` and upload port — runs ``dfget`` on every
peer at once, checks every output's sha256, and prints per peer the time taken and where its
bytes came from. Everything runs in a temporary directory and every process is stopped at the end.

    python -m damselfly.demo [--size 64M] [--peers 4]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from damselfly.core.errors import ConfigError
from damselfly.core.units import format_size, parse_size
from damselfly.peer.client import EngineClient

SUCCESS_RE = re.compile(r"download SUCCESS cost:([\d.]+)s length:(\d+) reason:(\d+)")
SOURCES_RE = re.compile(r"bytes from origin:(\d+) supernode:(\d+) peers:(\d+)")
READY_TIMEOUT = 30.0
RUN_TIMEOUT = 600.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, pred: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path) -> None:
    """Ask ``pred`` until it says yes (bounded); fail with the process's log if it died."""
    deadline = time.monotonic() + READY_TIMEOUT
    delay = 0.01
    while not pred():
        if proc.poll() is not None:
            raise SystemExit(f"demo: {what} exited:\n{log.read_text(errors='replace')[-2000:]}")
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: {what} did not become ready in {READY_TIMEOUT:.0f}s")
        time.sleep(delay)
        delay = min(2 * delay, 0.2)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 (our http URL)
            return bool(r.status == 200)
    except OSError:
        return False


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Demo:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[subprocess.Popen[bytes]] = []
        self.engine_homes: list[Path] = []

    def spawn(self, name: str, args: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.work / f"{name}.log"
        with log.open("wb") as fh:
            p = subprocess.Popen(
                [sys.executable, "-m", *args],
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.procs.append(p)
        return p, log

    def stop(self) -> None:
        for home in self.engine_homes:
            with contextlib.suppress(Exception):
                EngineClient(home / "engine.sock").shutdown()
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def run(self, size: int, peers: int) -> int:
        www = self.work / "www"
        www.mkdir()
        src = www / "demo.bin"
        print(f"demo: writing a {format_size(size)} file of random bytes ...", flush=True)
        with src.open("wb") as f:
            left = size
            while left:
                n = min(left, 1 << 20)
                f.write(os.urandom(n))
                left -= n
        want = sha256_of(src)

        ready = self.work / "origin.ready"
        origin, olog = self.spawn(
            "origin",
            ["damselfly.devtools.origin", "--dir", str(www), "--ready-file", str(ready)],
        )
        wait_for("the origin", ready.exists, origin, olog)
        oport = json.loads(ready.read_text())["port"]
        sport, dport = free_port(), free_port()
        sn, slog = self.spawn(
            "supernode",
            [
                "damselfly.supernode.cli",
                "--port", str(sport),
                "--download-port", str(dport),
                "--listen", "127.0.0.1",
                "--advertise-ip", "127.0.0.1",
                "--home-dir", str(self.work / "supernode"),
            ],
        )  # fmt: skip
        wait_for("the supernode", lambda: answers(f"http://127.0.0.1:{sport}/_ping"), sn, slog)
        url = f"http://127.0.0.1:{oport}/demo.bin"
        print(f"demo: origin {url}, supernode 127.0.0.1:{sport}; {peers} peers start dfget")

        runs = []
        t0 = time.monotonic()
        for i in range(peers):
            home = self.work / f"peer{i}" / "home"
            self.engine_homes.append(home)
            out = self.work / f"peer{i}" / "demo.bin"
            out.parent.mkdir(parents=True, exist_ok=True)
            p, log = self.spawn(
                f"peer{i}-dfget",
                [
                    "damselfly.dfget.cli",
                    "--url", url,
                    "--output", str(out),
                    "--node", f"127.0.0.1:{sport}",
                    "--home", str(home),
                    "--port", str(free_port()),
                    "--alivetime", "60s",
                    "--console",
                ],
            )  # fmt: skip
            runs.append((i, p, log, out))

        rows = []
        failed = 0
        for i, p, log, out in runs:
            try:
                code = p.wait(RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                code = -1
            text = log.read_text(errors="replace")
            m, s = SUCCESS_RE.search(text), SOURCES_RE.search(text)
            ok = code == 0 and m is not None and out.exists() and sha256_of(out) == want
            if not ok:
                failed += 1
                print(f"demo: peer{i} FAILED:\n{text[-1500:]}", file=sys.stderr)
            o, sb, pb = (int(x) for x in s.groups()) if s else (0, 0, 0)
            rows.append((f"peer{i}", float(m.group(1)) if m else 0.0, o, sb, pb, ok))
        makespan = time.monotonic() - t0

        with urllib.request.urlopen(f"http://127.0.0.1:{oport}/_stats", timeout=5) as r:
            origin_sent = json.loads(r.read())["bytes_sent"]
        print()
        print(f"{'peer':<8}{'time':>9}{'from origin':>14}{'from supernode':>16}"
              f"{'from peers':>13}  sha256")  # fmt: skip
        for name, cost, o, sb, pb, ok in rows:
            print(f"{name:<8}{cost:>8.2f}s{format_size(o):>14}{format_size(sb):>16}"
                  f"{format_size(pb):>13}  {'ok' if ok else 'WRONG'}")  # fmt: skip
        total = sum(r[2] + r[3] + r[4] for r in rows)
        from_peers = sum(r[4] for r in rows)
        print()
        print(
            f"file {format_size(size)} to {peers} peers in {makespan:.2f}s; the origin sent "
            f"{format_size(origin_sent)} ({origin_sent / size:.2f}x the file); "
            f"{from_peers / total:.0%} of piece bytes came from other peers"
            if total
            else "no bytes moved"
        )
        return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="demo", description="Run a local Damselfly swarm on loopback and report on it."
    )
    ap.add_argument("--size", default="64M", help="file size, e.g. 64M, 1G (default 64M)")
    ap.add_argument("--peers", type=int, default=4, help="number of peers (default 4)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    try:
        size = parse_size(args.size, "--size")
    except ConfigError as e:
        ap.error(str(e))
    if not 1 <= args.peers <= 64 or size < 1:
        ap.error("--peers must be 1..64 and --size at least 1 byte")
    work = Path(tempfile.mkdtemp(prefix="damselfly-demo-"))
    demo = Demo(work)
    try:
        return demo.run(size, args.peers)
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130
    finally:
        demo.stop()
        if args.keep:
            print(f"demo: work directory kept at {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
