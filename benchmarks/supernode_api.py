"""Benchmark: the supernode API's request rate on one core.

Starts a real origin and a real supernode (pinned to CPU 0 with ``taskset`` when available), lets
the CDN fetch one task of 256 pieces, registers ``--peers`` simulated peers, then drives
``schedule`` calls from an aiohttp client (on the other core): every peer asks for pieces and
reports the previous ones as verified, until every peer is done. No piece bytes move; this measures
the API + scheduler path: requests per second and latency percentiles.

``--duration S`` (the load minute of issue 6): ``--peers`` simulated peers keep the supernode busy
for S seconds over ``--tasks`` tasks of 64 pieces: each peer registers for a task, heartbeats,
asks for and reports pieces until it holds all of them, leaves the task and registers for the
next one, round and round. Every answer is checked (any non-2xx, unreadable body or unknown
status is an error); the p50/p99 latency of each call kind, the supernode's resident memory
(VmRSS sampled every second, VmHWM at the end) and the machine's load average are reported.

    python benchmarks/supernode_api.py [--peers 1000] [--concurrency 64]
        [--duration 60 [--tasks 4]] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section

MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ping(url: str, proc: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(400):  # bounded: ~20 s
            if proc.poll() is not None:
                raise RuntimeError("process exited early")
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} never answered")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(
    api: str, url: str, peers: int, concurrency: int, server_pid: int
) -> dict[str, float]:
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as s:
        tid = ""
        sem = asyncio.Semaphore(concurrency)

        async def reg(i: int) -> None:
            nonlocal tid
            body = {"url": url, "peer": {"id": f"sim-{i}", "ip": "127.0.0.1", "port": 10000 + i}}
            async with sem, s.post(f"{api}/api/v1/register", json=body) as r:
                r.raise_for_status()
                tid = (await r.json())["task_id"]

        await reg(0)
        for _ in range(1200):  # bounded (~60 s): measure only once the CDN holds every piece
            async with s.get(f"{api}/api/v1/tasks/{tid}") as r:
                view = await r.json()
            if view.get("complete"):
                break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("the CDN did not finish the task")
        await asyncio.gather(*(reg(i) for i in range(1, peers)))
        latencies: list[float] = []

        async def peer(i: int) -> None:
            results: list[dict[str, object]] = []
            for _ in range(100_000):  # bounded
                body = {"peer_id": f"sim-{i}", "results": results, "want": 4, "wait_ms": 0}
                async with sem:
                    t0 = time.perf_counter()
                    async with s.post(f"{api}/api/v1/tasks/{tid}/schedule", json=body) as r:
                        resp = await r.json()
                    latencies.append(time.perf_counter() - t0)
                if resp["status"] == "done":
                    return
                results = [
                    {"piece": a["num"], "ok": True, "source": a["source"]["id"], "bytes": a["size"]}
                    for a in resp["pieces"]
                ]
                if not results:
                    await asyncio.sleep(0.001)

        t0, cpu0 = time.perf_counter(), cpu_seconds(server_pid)
        await asyncio.gather(*(peer(i) for i in range(peers)))
        wall, cpu = time.perf_counter() - t0, cpu_seconds(server_pid) - cpu0
    latencies.sort()
    return {
        "requests": len(latencies),
        "seconds": wall,
        "rps": len(latencies) / wall,
        "server_cpu": cpu,
        "per_cpu_s": len(latencies) / cpu if cpu else 0.0,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
    }


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (bytes) of a process, from /proc/PID/status."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def pct(sorted_values: list[float], q: float) -> float:
    return 1000 * sorted_values[int(q * (len(sorted_values) - 1))] if sorted_values else 0.0


class Errors:
    """Every failed call, by kind: the load minute must end with none."""

    def __init__(self) -> None:
        self.count = 0
        self.samples: list[str] = []

    def add(self, what: str) -> None:
        self.count += 1
        if len(self.samples) < 10:
            self.samples.append(what)


async def call(
    s: aiohttp.ClientSession,
    sem: asyncio.Semaphore,
    url: str,
    body: dict[str, object],
    lat: list[float],
    errors: Errors,
) -> dict[str, object] | None:
    """POST ``body``; the JSON answer, or None after counting an error (non-2xx, bad body)."""
    async with sem:
        t0 = time.perf_counter()
        try:
            async with s.post(url, json=body) as r:
                raw = await r.read()
                status = r.status
        except (aiohttp.ClientError, TimeoutError) as e:
            errors.add(f"{url.rsplit('/', 1)[-1]}: {e.__class__.__name__}")
            return None
        lat.append(time.perf_counter() - t0)
    if not 200 <= status < 300:
        errors.add(f"{url.rsplit('/', 1)[-1]}: HTTP {status}: {raw[:200]!r}")
        return None
    try:
        obj = json.loads(raw)
    except ValueError:
        errors.add(f"{url.rsplit('/', 1)[-1]}: a body that is not JSON")
        return None
    if not isinstance(obj, dict):
        errors.add(f"{url.rsplit('/', 1)[-1]}: a JSON body that is not an object")
        return None
    return obj


async def drive_for(
    api: str,
    urls: list[str],
    peers: int,
    concurrency: int,
    duration: float,
    server_pid: int,
) -> dict[str, object]:
    """``peers`` simulated peers cycling through the tasks at ``urls`` for ``duration`` s."""
    conn = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    errors = Errors()
    lat: dict[str, list[float]] = {"register": [], "schedule": [], "heartbeat": [], "leave": []}
    cycles = [0]
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:
        sem = asyncio.Semaphore(concurrency)
        tids: list[str] = []
        for i, url in enumerate(urls):  # warm the CDN: measure only once it holds every piece
            body: dict[str, object] = {
                "url": url,
                "peer": {"id": f"warm-{i}", "ip": "127.0.0.1", "port": 9000 + i},
            }
            reg = await call(s, sem, f"{api}/api/v1/register", body, [], errors)
            if reg is None:
                raise RuntimeError(f"could not register the warm-up peer: {errors.samples}")
            tids.append(str(reg["task_id"]))
        for tid in tids:
            for _ in range(1200):  # bounded (~60 s)
                async with s.get(f"{api}/api/v1/tasks/{tid}") as r:
                    view = await r.json()
                if view.get("complete"):
                    break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("the CDN did not finish a task")
        rss_before = proc_status(server_pid)["VmRSS"]
        rss_samples: list[int] = []
        deadline = time.perf_counter() + duration

        async def sample_rss() -> None:
            while time.perf_counter() < deadline:
                rss_samples.append(proc_status(server_pid)["VmRSS"])
                await asyncio.sleep(1)

        async def peer(i: int) -> None:
            pid = f"sim-{i}"
            info = {"id": pid, "ip": "127.0.0.1", "port": 10000 + i, "hostname": f"sim{i}"}
            n = 0
            while time.perf_counter() < deadline:
                k = (i + n) % len(urls)
                n += 1
                reg = await call(
                    s,
                    sem,
                    f"{api}/api/v1/register",
                    {"url": urls[k], "peer": info},
                    lat["register"],
                    errors,
                )
                if reg is None:
                    await asyncio.sleep(0.1)
                    continue
                tid = str(reg["task_id"])
                await call(
                    s,
                    sem,
                    f"{api}/api/v1/peers/{pid}/heartbeat",
                    {"peer_id": pid},
                    lat["heartbeat"],
                    errors,
                )
                results: list[dict[str, object]] = []
                for _ in range(10_000):  # bounded
                    body = {"peer_id": pid, "results": results, "want": 4, "wait_ms": 0}
                    resp = await call(
                        s, sem, f"{api}/api/v1/tasks/{tid}/schedule", body, lat["schedule"], errors
                    )
                    if resp is None:
                        break
                    status = resp.get("status")
                    if status not in ("pieces", "wait", "done"):
                        errors.add(f"schedule: status {status!r}: {resp.get('message')}")
                        break
                    if status == "done" or time.perf_counter() >= deadline:
                        break
                    pieces = resp.get("pieces")
                    assert isinstance(pieces, list)
                    results = [
                        {
                            "piece": a["num"],
                            "ok": True,
                            "source": a["source"]["id"],
                            "bytes": a["size"],
                        }
                        for a in pieces
                    ]
                    if not results:
                        await asyncio.sleep(0.001)
                else:
                    errors.add("schedule: a peer never finished its task")
                await call(
                    s,
                    sem,
                    f"{api}/api/v1/tasks/{tid}/leave",
                    {"peer_id": pid},
                    lat["leave"],
                    errors,
                )
                cycles[0] += 1

        load_before = os.getloadavg()
        t0, cpu0 = time.perf_counter(), cpu_seconds(server_pid)
        sampler = asyncio.create_task(sample_rss())
        await asyncio.gather(*(peer(i) for i in range(peers)))
        await sampler
        wall, cpu = time.perf_counter() - t0, cpu_seconds(server_pid) - cpu0
        load_after = os.getloadavg()
        mem = proc_status(server_pid)
    total = sum(len(v) for v in lat.values())
    out: dict[str, object] = {
        "requests": total,
        "seconds": wall,
        "rps": total / wall,
        "server_cpu": cpu,
        "errors": errors.count,
        "error_samples": errors.samples,
        "cycles": cycles[0],
        "rss_before": rss_before,
        "rss_max_sampled": max(rss_samples, default=0),
        "rss_end": mem["VmRSS"],
        "hwm": mem["VmHWM"],
        "load_before": load_before,
        "load_after": load_after,
    }
    for kind, values in lat.items():
        values.sort()
        out[f"{kind}_n"] = len(values)
        out[f"{kind}_p50"] = pct(values, 0.50)
        out[f"{kind}_p99"] = pct(values, 0.99)
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="df-bench-api-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        www = work / "www"
        www.mkdir()
        names = [f"t{k}.bin" for k in range(args.tasks)] if args.duration else ["f.bin"]
        for name in names:
            with (www / name).open("wb") as f:
                # 256 pieces of 4 MiB; 64 per task in the load minute (more turns per peer)
                f.truncate((64 if args.duration else 256) * 4 * MiB)
        op, sp, dp = free_port(), free_port(), free_port()
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "damselfly.devtools.origin",
                    "--dir",
                    str(www),
                    "--port",
                    str(op),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        pin = (
            ["taskset", "-c", "0"] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []
        )
        procs.append(
            subprocess.Popen(
                [
                    *pin,
                    sys.executable,
                    "-m",
                    "damselfly.supernode.cli",
                    "--port",
                    str(sp),
                    "--download-port",
                    str(dp),
                    "--listen",
                    "127.0.0.1",
                    "--advertise-ip",
                    "127.0.0.1",
                    "--home-dir",
                    str(work / "sn"),
                    "--max-bandwidth",
                    "0",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        if pin:
            os.sched_setaffinity(0, {1})
        await wait_ping(f"http://127.0.0.1:{op}/_stats", procs[0])
        await wait_ping(f"http://127.0.0.1:{sp}/_ping", procs[1])
        if args.duration:
            return await drive_for(
                f"http://127.0.0.1:{sp}",
                [f"http://127.0.0.1:{op}/{n}" for n in names],
                args.peers,
                args.concurrency,
                args.duration,
                procs[1].pid,
            )
        return await drive(
            f"http://127.0.0.1:{sp}",
            f"http://127.0.0.1:{op}/f.bin",
            args.peers,
            args.concurrency,
            procs[1].pid,
        )
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--peers", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--duration", type=float, default=0, help="the load mode: seconds of load")
    ap.add_argument("--tasks", type=int, default=4, help="tasks the load mode cycles through")
    ap.add_argument("--write", help="markdown file to update (e.g. docs/benchmarks.md)")
    args = ap.parse_args()
    r = asyncio.run(main_async(args))
    if args.duration:
        report_load(args, r)
        return
    table = (
        "| peers | pieces | schedule requests | wall s | requests/s (wall) | supernode CPU s |"
        " requests per supernode CPU-second | p50 ms | p99 ms |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        f"| {args.peers} | 256 | {r['requests']:.0f} | {r['seconds']:.1f} | {r['rps']:.0f} | "
        f"{r['server_cpu']:.1f} | **{r['per_cpu_s']:.0f}** | {r['p50_ms']:.2f} | "
        f"{r['p99_ms']:.2f} |\n"
    )
    print(table)
    if args.write:
        write_section(
            Path(args.write),
            "supernode-api",
            "Supernode API request rate (one core)",
            f"`python benchmarks/supernode_api.py --peers {args.peers}"
            f" --concurrency {args.concurrency}`"
            " — supernode pinned to CPU 0, the load generator on CPU 1; every simulated peer asks"
            " for 4 pieces at a time and reports the previous ones verified until it holds all 256"
            " (no piece bytes move).",
            table,
        )


def report_load(args: argparse.Namespace, r: dict[str, Any]) -> None:
    mb = 1024 * 1024
    lb, la = r["load_before"], r["load_after"]
    table = (
        "| call | requests | p50 ms | p99 ms |\n|---|---|---|---|\n"
        + "".join(
            f"| {k} | {r[f'{k}_n']} | {r[f'{k}_p50']:.2f} | {r[f'{k}_p99']:.2f} |\n"
            for k in ("register", "heartbeat", "schedule", "leave")
        )
        + "\n| peers | tasks | seconds | requests | requests/s | errors | peer-task turns"
        " | supernode CPU s | RSS before | RSS max (sampled) | RSS end | VmHWM |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        f"| {args.peers} | {args.tasks} × 64 pieces | {r['seconds']:.1f} | {r['requests']} | "
        f"{r['rps']:.0f} | **{r['errors']}** | {r['cycles']} | {r['server_cpu']:.1f} | "
        f"{r['rss_before'] / mb:.0f} MiB | {r['rss_max_sampled'] / mb:.0f} MiB | "
        f"{r['rss_end'] / mb:.0f} MiB | **{r['hwm'] / mb:.0f} MiB** |\n"
        f"\nLoad average (1/5/15 min) before: {lb[0]:.2f} / {lb[1]:.2f} / {lb[2]:.2f}; "
        f"after: {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} (other work shared the 2 cores).\n"
    )
    print(table)
    if r["errors"]:
        print("errors (first ones):", *r["error_samples"], sep="\n  ")
    if args.write:
        write_section(
            Path(args.write),
            "supernode-load",
            f"Supernode under {args.peers:,} peers for {args.duration:g} s",
            f"`python benchmarks/supernode_api.py --peers {args.peers} --duration"
            f" {args.duration:g} --tasks {args.tasks} --concurrency {args.concurrency}`"
            " — one real supernode (pinned to CPU 0) and a real origin; the load generator (CPU 1)"
            " runs every simulated peer round and round: register for a task, heartbeat, ask for 4"
            " pieces at a time and report the previous ones verified until it holds all 64, leave"
            " the task, register for the next one. No piece bytes move. An error is any non-2xx"
            " answer, a body that is not a JSON object, an unknown status or a connection error."
            " Latencies are measured by the client (they include the wait for one of the"
            f" {args.concurrency} connections).",
            table,
        )


if __name__ == "__main__":
    main()
