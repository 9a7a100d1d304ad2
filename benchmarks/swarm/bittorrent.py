"""The BitTorrent baseline: aria2c peers, one aria2c seeder on the supernode's host, opentracker.

opentracker (Debian's build only serves whitelisted info-hashes, and refuses to run as root)
runs as ``nobody`` via ``setpriv`` on the supernode host, port 6969, with a whitelist holding
this run's info-hash. The seeder has the file already (so the origin sends nothing: a head start
over Damselfly, whose supernode starts cold). DHT, peer exchange and local peer discovery are
off, so peers only learn of each other from the tracker. Leechers keep seeding after they are
done (``--seed-ratio=0.0``) until every peer is; each one's completion time is written by its
``--on-bt-download-complete`` hook.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from benchmarks.swarm.methods import FILE_NAME, Bench, measure
from benchmarks.swarm.procs import Proc, proc_cpu_s
from benchmarks.swarm.topology import TopologyError
from benchmarks.swarm.torrent import bdecode, make_torrent

TRACKER_PORT = 6969
BT_PORT = 6881
DEFAULT_PIECE = 256 * 1024
TRACKER_BASE = "/tmp" if os.path.isdir("/tmp") else None


def missing_tools() -> list[str]:
    return [t for t in ("aria2c", "opentracker", "setpriv") if shutil.which(t) is None]


def aria2_args(b: Bench, name: str, directory: Path) -> list[str]:
    return [
        "aria2c",
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--disable-ipv6=true",
        f"--listen-port={BT_PORT}",
        "--seed-ratio=0.0",  # seed until stopped
        "--file-allocation=falloc",
        "--allow-overwrite=true",
        "--auto-file-renaming=false",
        "--summary-interval=0",
        "--console-log-level=warn",
        f"--log={b.procs.logdir / f'{name}.aria2.log'}",
        "--log-level=notice",
        f"--stop-with-process={os.getpid()}",  # a safety net if this harness dies
        f"--dir={directory}",
    ]


def scrape_complete(b: Bench, info_hash: str) -> int:
    """Seeds the tracker knows for the info-hash (asked from a peer host)."""
    sn_ip = b.topo.hosts["supernode"].ip
    q = urllib.parse.quote(bytes.fromhex(info_hash), safe="")
    url = f"http://{sn_ip}:{TRACKER_PORT}/scrape?info_hash={q}"
    r = subprocess.run(
        b.topo.exec_argv(b.topo.peers[0].name, ["curl", "-sS", "--max-time", "2", url]),
        capture_output=True,
        check=False,
    )
    if r.returncode != 0:
        return 0
    try:
        files = bdecode(r.stdout)
    except ValueError:
        return 0
    if not isinstance(files, dict):
        return 0
    entry = files.get(b"files", {})
    if not isinstance(entry, dict):
        return 0
    stats = entry.get(bytes.fromhex(info_hash), {})
    value = stats.get(b"complete", 0) if isinstance(stats, dict) else 0
    return value if isinstance(value, int) else 0


def run_aria2(b: Bench, piece_length: int = DEFAULT_PIECE) -> dict[str, Any]:
    sn_ip = b.topo.hosts["supernode"].ip
    bt = b.rundir / "bt"
    bt.mkdir(parents=True, exist_ok=True)
    torrent, info_hash = make_torrent(
        b.file, f"http://{sn_ip}:{TRACKER_PORT}/announce", piece_length
    )
    tfile = bt / "file.torrent"
    tfile.write_bytes(torrent)
    # the tracker runs as nobody: its directory and whitelist must be where nobody can read
    # them, and a run directory (under pytest's tmp_path, say) may not be
    tracker_dir = Path(tempfile.mkdtemp(prefix="damselfly-swarm-tracker-", dir=TRACKER_BASE))
    tracker_dir.chmod(0o755)
    (tracker_dir / "whitelist").write_text(info_hash + "\n")
    (tracker_dir / "whitelist").chmod(0o644)
    hook = bt / "done-hook.sh"
    hook.write_text(
        '#!/bin/sh\n# aria2: $1 gid, $2 file count, $3 first file\ndate +%s.%N > "$3.done"\n'
    )
    hook.chmod(0o755)

    started: list[Proc] = []

    def stop_infra() -> None:
        for p in reversed(started):
            b.procs.stop(p)
        shutil.rmtree(tracker_dir, ignore_errors=True)

    try:
        started.append(
            b.procs.start(
                "opentracker",
                b.topo.exec_argv(
                    "supernode",
                    [
                        "setpriv",
                        "--reuid=nobody",
                        "--regid=nogroup",
                        "--clear-groups",
                        "opentracker",
                        "-i",
                        sn_ip,
                        "-p",
                        str(TRACKER_PORT),
                        "-P",
                        str(TRACKER_PORT),
                        "-w",
                        str(tracker_dir / "whitelist"),
                        "-d",
                        str(tracker_dir),
                    ],
                ),
            )
        )
        seed_dir = bt / "seed"
        seed_dir.mkdir(exist_ok=True)
        seed_file = seed_dir / FILE_NAME
        seed_file.unlink(missing_ok=True)
        os.link(b.file, seed_file)
        started.append(
            b.procs.start(
                "aria2-seeder",
                b.topo.exec_argv(
                    "supernode",
                    [
                        *aria2_args(b, "aria2-seeder", seed_dir),
                        "--check-integrity=true",
                        str(tfile),
                    ],
                ),
            )
        )
        deadline = time.monotonic() + 60
        while scrape_complete(b, info_hash) < 1:
            for p in started:
                if p.popen.poll() is not None:
                    raise TopologyError(f"{p.name} exited: {p.output()[-800:]}")
            if time.monotonic() > deadline:
                raise TopologyError("the aria2c seeder did not announce itself within 60 s")
            time.sleep(0.1)

        outputs = {h.name: b.peer_dir("aria2", h.name) / FILE_NAME for h in b.topo.peers}
        wall0 = 0.0

        def start() -> dict[str, Proc]:
            nonlocal wall0
            wall0 = time.time()
            return {
                h.name: b.procs.start(
                    f"aria2-{h.name}",
                    b.topo.exec_argv(
                        h.name,
                        [
                            *aria2_args(b, f"aria2-{h.name}", outputs[h.name].parent),
                            f"--on-bt-download-complete={hook}",
                            str(tfile),
                        ],
                    ),
                )
                for h in b.topo.peers
            }

        def completion(clients: dict[str, Proc], t0: float) -> dict[str, float | None]:
            done: dict[str, float | None] = {}
            deadline = t0 + b.timeout
            while len(done) < len(clients) and time.monotonic() < deadline:
                for name, p in clients.items():
                    if name in done:
                        continue
                    marker = Path(str(outputs[name]) + ".done")
                    try:
                        text = marker.read_text().strip()
                    except OSError:
                        text = ""
                    if text:
                        done[name] = float(text) - wall0
                    elif p.popen.poll() is not None:
                        done[name] = None  # exited without finishing
                time.sleep(0.02)
            return {name: done.get(name) for name in clients}

        rec = measure(
            b,
            "aria2",
            start,
            outputs,
            completion=completion,
            stop=stop_infra,
            extra=lambda: {"piece_length": piece_length},
            infra_cpu=lambda: sum(proc_cpu_s(p.pid) for p in started),
        )
    finally:
        stop_infra()
    return rec
