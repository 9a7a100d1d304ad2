"""One scenario end to end: build the namespaces, check the shaping, run each method on the same
file, and tear everything down (processes by pid, namespaces, the work directory) whatever
happens. ``run_scenario(Scenario(...))`` returns the run's record (what goes into its JSON)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._report import machine
from benchmarks.swarm import bittorrent, damselfly_method, methods
from benchmarks.swarm.check import ShapingError, check_rtt, run_checks
from benchmarks.swarm.procs import ProcSet
from benchmarks.swarm.report import t_min
from benchmarks.swarm.topology import Topology, new_tag, plan_hosts

METHODS = ("damselfly", "aria2", "direct")
CHECK_ATTEMPTS = 2
Mbit = 1_000_000


@dataclass
class Scenario:
    peers: int = 16
    size: int = 100 * 1024 * 1024
    seeder_up: int = 200 * Mbit  # u_s: the supernode's / seeder's upload
    seeder_down: int = 200 * Mbit
    origin_up: int = 200 * Mbit
    origin_down: int = 200 * Mbit
    peer_up: int = 100 * Mbit
    peer_down: int = 200 * Mbit
    rtt_ms: float = 0.0
    queue_ms: float = 30.0
    methods: tuple[str, ...] = METHODS
    bt_piece: int = bittorrent.DEFAULT_PIECE
    check_warm: float = 0.5
    check_measure: float = 1.5
    check_tolerance: float = 0.06
    check_all_at_once: bool = True  # also record every host uploading at once (not judged)
    timeout: float = 0.0  # per method; 0: max(60 s, 25 × T_min)
    quiet_wait: float = 0.0  # before each method, wait up to this long for others' load to end
    workdir: Path | None = None  # where the run directory goes; None: /dev/shm or $TMPDIR
    keep: bool = False
    log: Callable[[str], None] = field(default=lambda s: print(s, flush=True), repr=False)

    def floor(self) -> dict[str, float]:
        return t_min(self.size, self.peers, self.seeder_up, self.peer_up, self.peer_down)

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("log", "workdir", "keep"):
            d.pop(k)
        d["methods"] = list(self.methods)
        return d


def default_workdir(size: int, peers: int) -> Path:
    """tmpfs when it has room (so disk write-back stays out of the network measurement)."""
    need = size * (2 * peers + 4)
    shm = Path("/dev/shm")
    try:
        st = os.statvfs(shm)
        if os.access(shm, os.W_OK) and st.f_bavail * st.f_frsize > need:
            return shm
    except OSError:
        pass
    return Path(tempfile.gettempdir())


def write_random_file(path: Path, size: int) -> str:
    import hashlib

    h = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        left = size
        while left > 0:
            chunk = os.urandom(min(left, 1 << 20))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return h.hexdigest()


def run_scenario(sc: Scenario) -> dict[str, Any]:
    floor = sc.floor()
    timeout = sc.timeout or max(60.0, 25 * floor["t_min_s"])
    base = sc.workdir or default_workdir(sc.size, sc.peers)
    rundir = Path(tempfile.mkdtemp(prefix=f"dsw-n{sc.peers}-", dir=base))
    procs = ProcSet(rundir / "logs")
    hosts = plan_hosts(
        sc.peers,
        sc.origin_up,
        sc.origin_down,
        sc.seeder_up,
        sc.seeder_down,
        sc.peer_up,
        sc.peer_down,
    )
    topo = Topology(new_tag(), hosts, procs, rundir, rtt_ms=sc.rtt_ms, queue_ms=sc.queue_ms)
    started = time.monotonic()

    def log(msg: str) -> None:
        sc.log(f"[{topo.tag} {time.monotonic() - started:6.1f}s] {msg}")

    result: dict[str, Any] = {
        "scenario": sc.record(),
        "t_min": {k: round(v, 4) for k, v in floor.items()},
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "methods": {},
    }
    try:
        log(f"work dir {rundir}; writing the {sc.size / 2**20:g} MiB file")
        file = rundir / "origin" / methods.FILE_NAME
        sha = write_random_file(file, sc.size)
        log(f"building {len(hosts) + 1} namespaces")
        topo.create()
        result["qdiscs"] = topo.qdiscs()
        for attempt in range(1, CHECK_ATTEMPTS + 1):
            result["machine_busy_before_check"] = methods.wait_quiet(sc.quiet_wait, log=log)
            log("checking the link shaping")
            try:
                result["shaping_check"] = run_checks(
                    topo,
                    procs,
                    warm=sc.check_warm,
                    measure=sc.check_measure,
                    tolerance=sc.check_tolerance,
                    all_at_once=sc.check_all_at_once,
                )
                break
            except ShapingError as e:
                if attempt == CHECK_ATTEMPTS:
                    raise
                log(f"{e} — trying again (other load on the machine may have passed)")
        b = methods.Bench(topo, procs, rundir, file, sc.size, sha, timeout)
        methods.start_origin(b)
        result["rtt_check"] = check_rtt(
            topo, procs, hosts[-1].name, "origin", methods.ORIGIN_PORT, sc.rtt_ms
        )
        log("origin up; RTT checked")
        for m in sc.methods:
            busy_before = methods.wait_quiet(sc.quiet_wait, log=log)
            cpu0 = topo.delay_cpu_s()
            result["methods"][m] = r = run_method(b, m, sc)
            r["machine_busy_before"] = busy_before
            cpu1 = topo.delay_cpu_s()
            if cpu0 is not None and cpu1 is not None:
                r["delay_cpu_s"] = round(cpu1 - cpu0, 2)
            log(
                f"{m}: "
                + (
                    f"makespan {r.get('makespan_s')} s (T_min {floor['t_min_s']:.2f} s), "
                    f"{r.get('verified')}/{sc.peers} verified"
                    if "makespan_s" in r
                    else r.get("skipped") or r.get("error", "")
                )
            )
    finally:
        with signals_held():  # a second Ctrl-C must not cut the cleanup short
            procs.stop_all()
            topo.destroy()
        if topo.made:
            log(f"WARNING: could not delete namespaces {topo.made}")
        if sc.keep:
            log(f"kept {rundir}")
        else:
            shutil.rmtree(rundir, ignore_errors=True)
    return result


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM for the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_method(b: methods.Bench, m: str, sc: Scenario) -> dict[str, Any]:
    if m == "aria2":
        missing = bittorrent.missing_tools()
        if missing:
            return {
                "skipped": f"{', '.join(missing)} not installed (apt-get install aria2 "
                "opentracker util-linux)"
            }
    try:
        if m == "direct":
            rec = methods.run_direct(b)
        elif m == "damselfly":
            rec = damselfly_method.run_damselfly(b)
        elif m == "aria2":
            rec = bittorrent.run_aria2(b, sc.bt_piece)
        else:
            raise ValueError(f"unknown method {m!r}")
    except (OSError, RuntimeError, ValueError) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        shutil.rmtree(b.rundir / m, ignore_errors=True)  # outputs: free the tmpfs
    return rec
