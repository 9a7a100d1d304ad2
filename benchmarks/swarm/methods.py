"""What the measured methods share — the origin, timing every peer from one start, byte counters
before/after, checking every peer's output against the file's sha256 — and the simplest method,
direct HTTP (Damselfly is in ``damselfly_method.py``, aria2c in ``bittorrent.py``).

Each ``run_*`` starts its infrastructure first (untimed: a supernode, a tracker and seeder are
already running in a real deployment), then starts all N clients at once at t0 and records when
each one finished, then stops everything it started — by pid — before returning a record.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import resource
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.swarm.procs import Proc, ProcSet
from benchmarks.swarm.topology import Topology, wait_file

ORIGIN_PORT = 80
FILE_NAME = "file.bin"


@dataclass
class Bench:
    """One scenario's world: the topology, the file, and where things go."""

    topo: Topology
    procs: ProcSet
    rundir: Path
    file: Path
    size: int
    sha256: str
    timeout: float
    origin: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://{self.topo.hosts['origin'].ip}:{ORIGIN_PORT}/{self.file.name}"

    def peer_dir(self, method: str, peer: str) -> Path:
        d = self.rundir / method / peer
        d.mkdir(parents=True, exist_ok=True)
        return d


# -- the origin ----------------------------------------------------------------------------


def start_origin(b: Bench) -> None:
    ready = b.rundir / "origin.ready"
    ready.unlink(missing_ok=True)
    b.origin = b.procs.start(
        "origin",
        b.topo.py_argv(
            "origin",
            "damselfly.devtools.origin",
            "--dir",
            str(b.file.parent),
            "--host",
            "0.0.0.0",
            "--port",
            str(ORIGIN_PORT),
            "--ready-file",
            str(ready),
        ),
        env=b.topo.env(),
    )
    wait_file(ready, b.origin, 30, "the origin server")


def origin_stats(b: Bench) -> dict[str, Any]:
    out = b.topo.run_in(
        "origin", ["curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{ORIGIN_PORT}/_stats"]
    )
    stats = json.loads(out)
    return stats if isinstance(stats, dict) else {}


def origin_reset(b: Bench) -> None:
    b.topo.run_in(
        "origin",
        [
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-H",
            "Content-Type: application/json",
            "-d",
            '{"reset": true}',
            f"http://127.0.0.1:{ORIGIN_PORT}/_control",
        ],
    )


# -- timing and accounting -----------------------------------------------------------------


def wait_procs(
    procs: dict[str, Proc], t0: float, timeout: float
) -> dict[str, tuple[float | None, int | None]]:
    """peer → (seconds from t0 to its exit, exit code); (None, None) if still running at timeout."""
    deadline = t0 + timeout

    def one(p: Proc) -> tuple[float | None, int | None]:
        try:
            rc = p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return None, None
        return time.monotonic() - t0, rc

    ex = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(procs)))
    try:
        futures = {name: ex.submit(one, p) for name, p in procs.items()}
        return {name: f.result() for name, f in futures.items()}
    finally:
        # on Ctrl-C don't wait here for the clients: the caller stops them, which ends the waits
        ex.shutdown(wait=False, cancel_futures=True)


def children_cpu_s() -> float:
    """CPU seconds of this process's children that have been waited for."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all cores from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def cpu_busy(a: tuple[int, int], b: tuple[int, int]) -> float | None:
    """The share of all cores' time that was busy between two ``cpu_times`` readings."""
    total = b[1] - a[1]
    return round((b[0] - a[0]) / total, 3) if total > 0 else None


def machine_busy(seconds: float = 1.0) -> float | None:
    """The share of all cores busy over the next ``seconds`` (others' load before a method)."""
    a = cpu_times()
    time.sleep(seconds)
    return cpu_busy(a, cpu_times())


def wait_quiet(
    max_wait: float, threshold: float = 0.15, log: Callable[[str], None] = print
) -> float | None:
    """Wait (bounded by ``max_wait``) until the machine is quiet; the last busy share seen
    (None, without measuring, when ``max_wait`` is 0)."""
    if max_wait <= 0:
        return None
    deadline = time.monotonic() + max_wait
    busy = machine_busy()
    while busy is not None and busy > threshold and time.monotonic() < deadline:
        log(f"machine {busy:.0%} busy with other work; waiting for it to calm down")
        time.sleep(5)
        busy = machine_busy()
    return busy


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify_outputs(b: Bench, outputs: dict[str, Path]) -> dict[str, str]:
    """peer → "ok" or what is wrong with its output."""

    def one(p: Path) -> str:
        if not p.is_file():
            return "no output file"
        if p.stat().st_size != b.size:
            return f"size {p.stat().st_size} != {b.size}"
        return "ok" if sha256_file(p) == b.sha256 else "sha256 mismatch"

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as ex:
        futures = {name: ex.submit(one, p) for name, p in outputs.items()}
        return {name: f.result() for name, f in futures.items()}


def record(
    b: Bench,
    method: str,
    times: dict[str, float | None],
    before: dict[str, tuple[int, int]],
    after: dict[str, tuple[int, int]],
    checks: dict[str, str],
    errors: dict[str, str],
    origin_app_bytes: int | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    sent = {h: after[h][0] - before[h][0] for h in after}
    done = [t for t in times.values() if t is not None]
    peers = [h.name for h in b.topo.peers]
    return {
        "method": method,
        "completion_s": {
            p: (None if times.get(p) is None else round(times[p] or 0, 3)) for p in peers
        },
        "makespan_s": round(max(done), 3) if len(done) == len(peers) else None,
        "first_s": round(min(done), 3) if done else None,
        "mean_s": round(sum(done) / len(done), 3) if done else None,
        "finished": len(done),
        "verified": sum(1 for v in checks.values() if v == "ok"),
        "output_checks": {p: v for p, v in checks.items() if v != "ok"},
        "errors": errors,
        "origin_sent_bytes": sent["origin"],
        "supernode_sent_bytes": sent["supernode"],
        "peers_sent_bytes": sum(sent[p] for p in peers),
        "origin_app_bytes": origin_app_bytes,
        **(extra or {}),
    }


def measure(
    b: Bench,
    method: str,
    start_clients: Callable[[], dict[str, Proc]],
    outputs: dict[str, Path],
    *,
    completion: Callable[[dict[str, Proc], float], dict[str, float | None]] | None = None,
    stop: Callable[[], None] = lambda: None,
    extra: Callable[[], dict[str, Any]] = dict,
    infra_cpu: Callable[[], float] = lambda: 0.0,
) -> dict[str, Any]:
    """Start every client at once, time them, count bytes, stop everything, check outputs.

    CPU seconds of the method = its clients' (reaped children: ``RUSAGE_CHILDREN``) plus what
    ``infra_cpu`` reports for its other processes (engines, supernode, seeder: read from /proc
    before they are stopped)."""
    origin_reset(b)
    before = b.topo.counters()
    errors: dict[str, str] = {}
    clients: dict[str, Proc] = {}
    more: dict[str, Any] = {}
    ru0 = children_cpu_s()
    try:
        cpu0 = cpu_times()
        t0, wall0 = time.monotonic(), time.time()
        clients = start_clients()
        if completion is None:
            waited = wait_procs(clients, t0, b.timeout)
            times = {p: t for p, (t, _rc) in waited.items()}
            for p, (t, rc) in waited.items():
                if t is None:
                    errors[p] = f"not done after {b.timeout:g}s"
                elif rc != 0:
                    tail = clients[p].output(2000).strip().splitlines()[-2:]
                    errors[p] = f"exit {rc}: {' / '.join(tail)[-400:]}"
                    times[p] = None
        else:
            times = completion(clients, t0)
            errors.update(
                {p: f"not done after {b.timeout:g}s" for p, t in times.items() if t is None}
            )
        cpu1 = cpu_times()
        after = b.topo.counters()
        app = origin_stats(b).get("bytes_sent")
        more = {"t0_wall": round(wall0, 3), "cpu_busy": cpu_busy(cpu0, cpu1), **extra()}
        infra = infra_cpu()
    finally:
        b.procs.stop_many(list(clients.values()))
        clients_cpu = children_cpu_s() - ru0
        stop()
    more["cpu_s"] = round(clients_cpu + infra, 2)
    checks = verify_outputs(b, outputs)
    return record(
        b,
        method,
        times,
        before,
        after,
        checks,
        errors,
        int(app) if isinstance(app, int) else None,
        more,
    )


# -- direct HTTP ---------------------------------------------------------------------------


def run_direct(b: Bench) -> dict[str, Any]:
    """Every peer downloads the file from the origin at once (curl)."""
    outputs = {h.name: b.peer_dir("direct", h.name) / FILE_NAME for h in b.topo.peers}

    def start() -> dict[str, Proc]:
        return {
            h.name: b.procs.start(
                f"direct-{h.name}",
                b.topo.exec_argv(
                    h.name,
                    [
                        "curl",
                        "-fsS",
                        "--max-time",
                        str(int(b.timeout)),
                        "-o",
                        str(outputs[h.name]),
                        b.url,
                    ],
                ),
            )
            for h in b.topo.peers
        }

    return measure(b, "direct", start, outputs)
