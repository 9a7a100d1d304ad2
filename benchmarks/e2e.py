"""Benchmark: one host, loopback, end to end through dfget and the host engine.

Measures, in one run on the same machine:
- a cached file (default 1 GiB) end to end with a warm engine: dfget start → verified output in
  place (target ≥ 1 GB/s), next to ``curl`` fetching the same pieces from the supernode's piece port;
- a 1 KiB file end to end with the engine running (target ≤ 0.3 s), median of several runs, cold
  at the CDN (a new file each time) and cached;
- the engine's peak resident memory (VmHWM) while it moved the big file (target < 100 MB), and
  its CPU time (user + system) for the big file, which, unlike wall time, another engineer's
  load on the same box barely moves;
- the CPU time of the supernode (serving the pieces) and of the dfget process itself;
- a calibration: the CPU cost of writing into new page cache on this machine. On a VM whose
  host backs guest memory lazily (and takes freed pages back: virtio-balloon free page
  reporting), first touches of memory cost several times what they cost on bare metal; this is
  why the engine's store writes pieces with O_DIRECT (peer/store.py).

The cached measurement runs ``--repeat`` times, each on a fresh engine (a new ``--home``), and
reports the median; RSS is the highest of those engines. ``--profile DIR`` samples each of those
engines with ``py-spy record`` (collapsed stacks, ``pip install py-spy``) while it downloads.

    python benchmarks/e2e.py [--size 1G] [--small-runs 9] [--repeat 3] [--profile DIR]
                             [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _report import write_section
from tests.procs import Procs, dfget_cmd, free_port, start_origin, start_supernode

from damselfly.core.ids import task_id
from damselfly.core.pieces import PiecePlan
from damselfly.core.units import parse_size
from damselfly.peer.client import EngineClient


def write_random(path: Path, size: int) -> None:
    with path.open("wb") as f:
        left = size
        block = os.urandom(1 << 20)
        while left:
            n = min(left, len(block))
            # vary blocks cheaply so pieces differ
            f.write(block[:n] if left % 3 else os.urandom(n))
            left -= n


def run_dfget(url: str, out: Path, node: str, home: Path, port: int) -> float:
    return run_dfget_cpu(url, out, node, home, port)[0]


def run_dfget_cpu(url: str, out: Path, node: str, home: Path, port: int) -> tuple[float, float]:
    """dfget's wall time and its own CPU time (user + system)."""
    c0 = os.times()
    t0 = time.perf_counter()
    r = subprocess.run(
        dfget_cmd("--url", url, "--output", str(out), "--node", node, "--home", str(home),
                  "--port", str(port), "--alivetime", "120s"),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    dt = time.perf_counter() - t0
    c1 = os.times()
    if r.returncode != 0 or "download SUCCESS" not in r.stdout:
        raise SystemExit(f"dfget failed: {r.stdout}\n{r.stderr}")
    return dt, c1.children_user + c1.children_system - c0.children_user - c0.children_system


def vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (load-independent, unlike wall time)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def page_cache_write_cost(path: Path, size: int = 256 * 2**20) -> float:
    """CPU seconds per GiB to pwrite into pages the page cache never held (a calibration: on a
    VM whose host backs guest memory lazily, first touches are far dearer than on bare metal)."""
    block = os.urandom(8 * 2**20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t0 = os.times()
        for off in range(0, size, len(block)):
            os.pwrite(fd, block, off)
        t1 = os.times()
    finally:
        os.close(fd)
        path.unlink()
    return (t1.user + t1.system - t0.user - t0.system) * 2**30 / size


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` (all threads, idle frames dropped) until stopped."""
    exe = shutil.which("py-spy")
    if exe is None:
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    args = [exe, "record", "-p", str(pid), "-o", str(out)]
    args += ["--format", "raw", "--rate", "250", "--threads"]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profiler(p: subprocess.Popen[bytes]) -> None:
    p.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", default="1G")
    ap.add_argument("--small-runs", type=int, default=9)
    ap.add_argument("--repeat", type=int, default=3, help="cached runs, each on a fresh engine")
    ap.add_argument("--profile", help="directory for py-spy collapsed stacks of the cached runs")
    ap.add_argument("--write", help="markdown file to update (e.g. docs/benchmarks.md)")
    args = ap.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="df-bench-e2e-"))
    procs = Procs(work)
    try:
        www = work / "www"
        www.mkdir()
        write_random(www / "big.bin", size)
        for i in range(args.small_runs):
            (www / f"small{i}.bin").write_bytes(os.urandom(1024))
        origin = start_origin(procs, www)
        sn = start_supernode(procs, work / "sn", extra=["--max-bandwidth", "0"])
        url = origin.url("big.bin")
        # cold: the CDN fetches from the origin while the first peer downloads
        warm_home, warm_port = work / "warm" / "home", free_port()
        (work / "warm").mkdir()
        cold = run_dfget(url, work / "warm" / "big.bin", sn.addr, warm_home, warm_port)
        procs.track_pid(int(EngineClient(warm_home / "engine.sock").status()["pid"]))
        (work / "warm" / "big.bin").unlink()
        # the cached runs below must get the file from the supernode's cache: a live engine
        # holding it would be preferred as a source (the scheduler spares the supernode)
        EngineClient(warm_home / "engine.sock").shutdown()

        # curl from the supernode's piece port, the same pieces, 4 at once
        tid = task_id(url)
        plan = PiecePlan.for_length(size)
        urls = [f"http://127.0.0.1:{sn.download_port}/pieces/{tid}/{n}" for n in range(plan.count)]
        cfg = work / "curl.cfg"
        cfg.write_text("".join(f'url = "{u}"\noutput = "/dev/null"\n' for u in urls))
        t0 = time.perf_counter()
        curl = ["curl", "-sSf", "--no-progress-meter", "--parallel", "--parallel-max", "4"]
        subprocess.run([*curl, "-K", str(cfg)], check=True)
        curl_s = time.perf_counter() - t0

        # warm engine on a fresh host: start it with one small download, then the big one;
        # each repetition on a new host (an engine that holds the file would not download it)
        cached_runs: list[float] = []
        cached_cpu: list[float] = []
        sn_cpu: list[float] = []
        dfget_cpu: list[float] = []
        hwm_before = hwm = 0
        for rep in range(args.repeat):
            host = work / f"host{rep}"
            home, port = host / "home", free_port()
            host.mkdir()
            run_dfget(origin.url("small0.bin"), host / "s0", sn.addr, home, port)
            pid = int(EngineClient(home / "engine.sock").status()["pid"])
            procs.track_pid(pid)
            hwm_before = max(hwm_before, vm_hwm_kb(pid))
            prof = None
            if args.profile:
                Path(args.profile).mkdir(parents=True, exist_ok=True)
                prof = start_profiler(pid, Path(args.profile) / f"engine-cached-{rep}.txt")
            cpu0, sn0 = cpu_seconds(pid), cpu_seconds(sn.proc.pid)
            try:
                dt, dcpu = run_dfget_cpu(url, host / "big.bin", sn.addr, home, port)
                cached_runs.append(dt)
                dfget_cpu.append(dcpu)
            finally:
                if prof is not None:
                    stop_profiler(prof)
            cached_cpu.append(cpu_seconds(pid) - cpu0)
            sn_cpu.append(cpu_seconds(sn.proc.pid) - sn0)
            hwm = max(hwm, vm_hwm_kb(pid))
            (host / "big.bin").unlink()
            if rep < args.repeat - 1:
                EngineClient(home / "engine.sock").shutdown()
        cached = statistics.median(cached_runs)

        # the same file from a peer instead: the last engine above holds it (written with
        # O_DIRECT, so it serves from the disk, not from memory) and the scheduler prefers it
        ph = work / "from-peer"
        ph.mkdir()
        from_peer = run_dfget(url, ph / "big.bin", sn.addr, ph / "home", free_port())
        procs.track_pid(int(EngineClient(ph / "home" / "engine.sock").status()["pid"]))
        EngineClient(ph / "home" / "engine.sock").shutdown()
        (ph / "big.bin").unlink()

        # 1 KiB: cold at the CDN (new file each run), then cached (same file again, new output)
        small_cold = [
            run_dfget(origin.url(f"small{i}.bin"), host / f"c{i}", sn.addr, home, port)
            for i in range(1, args.small_runs)
        ]
        small_cached = [
            run_dfget(origin.url("small1.bin"), host / f"w{i}", sn.addr, home, port)
            for i in range(args.small_runs)
        ]
        fresh_write = page_cache_write_cost(work / "calibrate.bin")
        with urllib.request.urlopen(f"http://127.0.0.1:{origin.port}/_stats") as r:
            origin_sent = json.loads(r.read())["bytes_sent"]
        EngineClient(home / "engine.sock").shutdown()
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)

    gb = size / 1e9
    rows = [
        ("cold (CDN fetches from the origin meanwhile), fresh engine", f"{cold:.2f} s", f"{gb / cold:.2f} GB/s"),
        (f"cached at the supernode, warm engine: dfget → verified output in place (median of {len(cached_runs)})", f"{cached:.2f} s", f"{gb / cached:.2f} GB/s"),
        ("cached at another peer instead (it serves from its disk), fresh engine", f"{from_peer:.2f} s", f"{gb / from_peer:.2f} GB/s"),
        ("curl, same pieces from the supernode's piece port (4 parallel)", f"{curl_s:.2f} s", f"{gb / curl_s:.2f} GB/s"),
        (f"1 KiB, warm engine, cold at the CDN (median of {len(small_cold)})", f"{statistics.median(small_cold):.3f} s", ""),
        (f"1 KiB, warm engine, cached (median of {len(small_cached)})", f"{statistics.median(small_cached):.3f} s", ""),
        ("engine peak RSS (VmHWM) after moving the big file", f"{hwm / 1024:.0f} MB", f"(before: {hwm_before / 1024:.0f} MB)"),
        ("engine CPU (user + system) while moving the big file, median", f"{statistics.median(cached_cpu):.2f} s", f"{statistics.median(cached_cpu) / (size / 2**30):.2f} s per GiB"),
        ("supernode CPU while serving it, median", f"{statistics.median(sn_cpu):.2f} s", ""),
        ("dfget process CPU (start-up, control socket, output), median", f"{statistics.median(dfget_cpu):.2f} s", ""),
    ]  # fmt: skip
    table = "| what | time / size | rate |\n|---|---|---|\n" + "".join(
        f"| {a} | {b} | {c} |\n" for a, b, c in rows
    )
    table += f"\nFile {args.size} ({size} bytes); the origin sent {origin_sent} bytes in all. "
    table += f"Cached runs: {', '.join(f'{gb / t:.2f}' for t in cached_runs)} GB/s. "
    table += (
        f"Load average at the end: {os.getloadavg()[0]:.1f} (wall times suffer on a busy box). "
    )
    table += (
        f"Calibration: writing into new page cache costs {fresh_write:.2f} CPU-s per GiB here "
        "(the engine's store writes its pieces with O_DIRECT instead; curl writes to /dev/null).\n"
    )
    print(table)
    if args.write:
        write_section(
            Path(args.write), "e2e", "One host on loopback: end to end through dfget",
            f"`python benchmarks/e2e.py --size {args.size} --small-runs {args.small_runs}"
            f" --repeat {args.repeat}`"
            " — times are dfget's whole process lifetime (Python start-up included).",
            table,
        )  # fmt: skip


if __name__ == "__main__":
    main()
