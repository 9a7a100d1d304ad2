"""Benchmark: the supernode API's request rate on one core.

Starts a real origin and a real supernode (pinned to CPU 0 with ``taskset`` when available), lets
the CDN fetch one task of 256 pieces, registers ``--peers`` simulated peers, then drives
``schedule`` calls from an aiohttp client (on the other core): every peer asks for pieces and
reports the previous ones as verified, until every peer is done. No piece bytes move; this measures
the API + scheduler path: requests per second and latency percentiles.

    python benchmarks/supernode_api.py [--peers 1000] [--concurrency 64]
        [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


async def main_async(args: argparse.Namespace) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="df-bench-api-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        www = work / "www"
        www.mkdir()
        with (www / "f.bin").open("wb") as f:
            f.truncate(256 * 4 * MiB)  # 256 pieces of 4 MiB
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
            ["taskset", "-c", "0"]
            if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1
            else []
        )  # type: ignore[operator]
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
    ap.add_argument("--write", help="markdown file to update (e.g. docs/benchmarks.md)")
    args = ap.parse_args()
    r = asyncio.run(main_async(args))
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


if __name__ == "__main__":
    main()
