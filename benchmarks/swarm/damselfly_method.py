"""The Damselfly method: a supernode (cold CDN) on the supernode host, one engine per peer host
(``dfget server``, started before the clock as on a fleet, where each host's engine or dfdaemon
runs all the time), then on every peer host at once ``dfget --url … --node <supernode>:8002
--home H``, which hands its download to that engine. The clock covers dfget's whole process
(its Python start-up included); the engines' CPU is counted from the clock's start. Engines are
stopped by their pid (whatever is left is swept with the namespace).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks.swarm.methods import FILE_NAME, Bench, measure
from benchmarks.swarm.procs import Proc, proc_cpu_s
from benchmarks.swarm.topology import TopologyError

SN_PORT = 8002
SN_DOWNLOAD_PORT = 8001
ENGINE_PORT = 15000
SUCCESS_RE = re.compile(r"download SUCCESS cost:([\d.]+)s length:(\d+)")


def engine_status(home: Path, timeout: float = 3.0) -> dict[str, Any]:
    """GET /status on an engine's control socket ``home/engine.sock`` ({} when none answers)."""
    sock_path = home / "engine.sock"
    if not sock_path.exists():
        return {}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(sock_path))
            s.sendall(b"GET /status HTTP/1.1\r\nHost: engine\r\nConnection: close\r\n\r\n")
            data = b""
            while len(data) < 65536:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return {}
    _head, _, body = data.partition(b"\r\n\r\n")
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def start_supernode(b: Bench) -> Proc:
    sn = b.topo.hosts["supernode"]
    home = b.rundir / "damselfly" / "supernode-home"
    home.mkdir(parents=True, exist_ok=True)
    proc = b.procs.start(
        "supernode",
        b.topo.py_argv(
            "supernode",
            "damselfly.supernode.cli",
            "--port",
            str(SN_PORT),
            "--download-port",
            str(SN_DOWNLOAD_PORT),
            "--home-dir",
            str(home),
            "--advertise-ip",
            sn.ip,
            "--listen",
            "0.0.0.0",
            "--max-bandwidth",
            "0",
        ),
        env=b.topo.env(),
    )
    deadline = time.monotonic() + 30
    while True:
        if proc.popen.poll() is not None:
            raise TopologyError(f"the supernode exited at start: {proc.output()[-800:]}")
        r = subprocess.run(
            b.topo.exec_argv(
                "supernode",
                ["curl", "-fsS", "--max-time", "2", f"http://127.0.0.1:{SN_PORT}/_ping"],
            ),
            capture_output=True,
            check=False,
        )
        if r.returncode == 0:
            return proc
        if time.monotonic() > deadline:
            raise TopologyError(
                f"the supernode did not answer /_ping in 30s: {proc.output()[-800:]}"
            )
        time.sleep(0.1)


def start_dfget(b: Bench, host: str, name: str, home: Path, alivetime: str, *args: str) -> Proc:
    """``dfget <args> --home H --port 15000 --alivetime A`` in ``host``'s namespace."""
    argv = [*args, "--home", str(home), "--port", str(ENGINE_PORT), "--alivetime", alivetime]
    return b.procs.start(name, b.topo.py_argv(host, "damselfly.dfget.cli", *argv), env=b.topo.env())


def start_engines(b: Bench, homes: dict[str, Path], alivetime: str) -> list[Proc]:
    """``dfget server`` on every peer host; returns once each engine answers on its socket."""
    engines = [
        start_dfget(b, h.name, f"engine-{h.name}", homes[h.name], alivetime, "server")
        for h in b.topo.peers
    ]
    deadline = time.monotonic() + 60
    for (name, home), proc in zip(homes.items(), engines, strict=True):
        while not engine_status(home).get("pid"):
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                raise TopologyError(f"the engine on {name} did not start: {proc.output()[-800:]}")
            time.sleep(0.1)
    return engines


def run_damselfly(b: Bench, *, alivetime: str = "60s") -> dict[str, Any]:
    """A supernode (cold CDN) on the supernode host and an engine on every peer host, started
    before the clock; then dfget on every peer host at once."""
    sn = b.topo.hosts["supernode"]
    supernode = start_supernode(b)
    dirs = {h.name: b.peer_dir("damselfly", h.name) for h in b.topo.peers}
    outputs = {p: d / FILE_NAME for p, d in dirs.items()}
    homes = {p: d / "h" for p, d in dirs.items()}  # short: engine.sock must fit a unix path
    success: dict[str, str] = {}  # peer → the cost its "download SUCCESS cost:…" line reports
    engines = start_engines(b, homes, alivetime)
    engine_cpu0 = sum(proc_cpu_s(e.pid) for e in engines)

    def start() -> dict[str, Proc]:
        node = f"{sn.ip}:{SN_PORT}"
        return {
            h.name: start_dfget(
                b,
                h.name,
                f"damselfly-{h.name}",
                homes[h.name],
                alivetime,
                "--url",
                b.url,
                "--output",
                str(outputs[h.name]),
                "--node",
                node,
            )
            for h in b.topo.peers
        }

    def extra() -> dict[str, Any]:
        engines = {p: engine_status(home) for p, home in homes.items()}
        return {
            "engines": {p: {k: s.get(k) for k in ("pid", "ip", "port")} for p, s in engines.items()}
        }

    def stop() -> None:
        for e in engines:
            b.procs.stop(e)
        b.procs.stop(supernode)

    def infra_cpu() -> float:
        used = sum(proc_cpu_s(e.pid) for e in engines) - engine_cpu0
        return used + proc_cpu_s(supernode.pid)

    try:
        rec = measure(b, "damselfly", start, outputs, stop=stop, extra=extra, infra_cpu=infra_cpu)
    finally:
        stop()  # twice is harmless: nothing left the second time
    for p in outputs:
        log = b.procs.logdir / f"damselfly-{p}.log"
        with contextlib.suppress(OSError):
            m = SUCCESS_RE.search(log.read_text(errors="replace"))
            if m:
                success[p] = m.group(1)
    rec["dfget_cost_s"] = success
    # completion − the cost dfget prints: Python and dfget's imports, before dfget's clock starts
    done = rec["completion_s"]
    rec["startup_s"] = {
        p: round(done[p] - float(c), 3) for p, c in success.items() if done.get(p) is not None
    }
    return rec
