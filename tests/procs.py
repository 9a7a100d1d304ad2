"""Real processes for integration tests: start, wait until ready (by asking, never by sleeping
blindly), and stop by pid. Used by tests/conftest.py fixtures and the demo's tests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

READY_TIMEOUT = 20.0
#: dfget's v1 success line
SUCCESS_RE = re.compile(r"download SUCCESS cost:([\d.]+)s length:(\d+) reason:(\d+)")


def sha256(p: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with p.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def http_json(url: str, body: Any = None, timeout: float = 5.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def wait_until(pred: Any, timeout: float = READY_TIMEOUT, what: str = "condition") -> Any:
    """Poll ``pred`` (bounded) until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


class Procs:
    """Owns every process a test starts; ``stop_all`` kills them by pid (and their groups)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []
        self.extra_pids: list[int] = []

    def start(
        self, name: str, args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> Proc:
        log = self.workdir / f"{name}.log"
        fh = log.open("ab")
        full_env = dict(os.environ)
        full_env.update(env or {})
        p = subprocess.Popen(
            args,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
        fh.close()
        proc = Proc(name, p, log)
        self.procs.append(proc)
        return proc

    def track_pid(self, pid: int) -> None:
        """A process started indirectly (e.g. an engine dfget spawned): stop it too."""
        self.extra_pids.append(pid)

    def stop(self, proc: Proc, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(sig)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.popen.wait(5)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        for pid in self.extra_pids:
            _kill_pid(pid)


def _kill_pid(pid: int, timeout: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # reap if it is our child
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@dataclass
class OriginHandle:
    proc: Proc
    port: int
    root: Path

    def url(self, rel: str) -> str:
        return f"http://127.0.0.1:{self.port}/{rel}"

    def stats(self) -> dict[str, Any]:
        return dict(http_json(f"http://127.0.0.1:{self.port}/_stats"))

    def control(self, **kw: Any) -> None:
        http_json(f"http://127.0.0.1:{self.port}/_control", kw)


def start_origin(
    procs: Procs, root: Path, name: str = "origin", require_header: str = ""
) -> OriginHandle:
    ready = procs.workdir / f"{name}.ready"
    args = [sys.executable, "-m", "damselfly.devtools.origin", "--dir", str(root)]
    args += ["--ready-file", str(ready)]
    if require_header:
        hfile = procs.workdir / f"{name}.header"
        hfile.write_text(require_header)
        args += ["--require-header-file", str(hfile)]
    proc = procs.start(name, args)
    info = wait_until(
        lambda: (ready.exists() and json.loads(ready.read_text())) or (not proc.alive() and {}),
        what=f"{name} to be ready",
    )
    if not proc.alive() or not info:
        raise RuntimeError(f"{name} did not start:\n{proc.output()}")
    return OriginHandle(proc, int(info["port"]), root)


@dataclass
class SupernodeHandle:
    proc: Proc
    port: int
    download_port: int
    home: Path

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def api(self, path: str) -> Any:
        return http_json(f"http://127.0.0.1:{self.port}{path}")


def start_supernode(
    procs: Procs,
    home: Path,
    name: str = "supernode",
    port: int | None = None,
    download_port: int | None = None,
    extra: list[str] | None = None,
) -> SupernodeHandle:
    port = port or free_port()
    download_port = download_port or free_port()
    args = [
        sys.executable,
        "-m",
        "damselfly.supernode.cli",
        "--port",
        str(port),
        "--download-port",
        str(download_port),
        "--listen",
        "127.0.0.1",
        "--advertise-ip",
        "127.0.0.1",
        "--home-dir",
        str(home),
        *(extra or []),
    ]
    proc = procs.start(name, args)

    def ready() -> bool:
        if not proc.alive():
            raise RuntimeError(f"{name} exited:\n{proc.output()}")
        try:
            return http_get(f"http://127.0.0.1:{port}/_ping", timeout=1)[0] == 200
        except OSError:
            return False

    wait_until(ready, what=f"{name} /_ping")
    return SupernodeHandle(proc, port, download_port, home)


def engine_status(home: Path, timeout: float = 5.0) -> dict[str, Any] | None:
    """``GET /status`` on the engine's control socket ``home/engine.sock``; None if none answers."""
    import http.client

    class _UnixConn(http.client.HTTPConnection):
        def connect(self) -> None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.connect(str(home / "engine.sock"))
            self.sock = s

    conn = _UnixConn("localhost", timeout=timeout)
    try:
        conn.request("GET", "/status")
        r = conn.getresponse()
        if r.status != 200:
            return None
        return dict(json.loads(r.read()))
    except OSError:
        return None
    finally:
        conn.close()


def dfget_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "damselfly.dfget.cli", *args]


class Peer:
    """One host for tests: its own engine (``--home``, upload ``--port``) and output directory;
    dfget runs hand their work to that engine, which is tracked so ``stop_all`` stops it."""

    def __init__(
        self,
        procs: Procs,
        root: Path,
        name: str,
        *,
        home: Path | None = None,
        out_dir: Path | None = None,
        timeout: float = 120.0,
    ) -> None:
        self.procs = procs
        self.name = name
        self.home = home if home is not None else root / name / "home"
        self.out_dir = out_dir if out_dir is not None else root / name / "out"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.timeout = timeout
        self.runs = 0

    def start(self, url: str, nodes: str, *extra: str, output: str = "file.bin") -> Proc:
        self.runs += 1
        args = dfget_cmd(
            "--url", url, "--output", str(self.out_dir / output), "--node", nodes,
            "--home", str(self.home), "--port", str(self.port), "--alivetime", "60s", *extra,
        )  # fmt: skip
        return self.procs.start(f"{self.name}-dfget{self.runs}", args)

    def finish(self, proc: Proc, timeout: float | None = None) -> tuple[int, str]:
        """dfget's exit code and output (the test fails if it does not end in time)."""
        try:
            code = proc.popen.wait(timeout if timeout is not None else self.timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{proc.name} did not finish:\n{proc.output()}") from None
        self.track_engine()
        return code, proc.output()

    def track_engine(self) -> dict[str, Any] | None:
        """The engine's status (None when none answers); its pid is stopped with the test."""
        st = engine_status(self.home)
        if st is not None:
            self.procs.track_pid(int(st["pid"]))
        return st
