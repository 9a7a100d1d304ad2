"""``python -m benchmarks.swarm``: the swarm benchmark in network namespaces (run as root).

    python -m benchmarks.swarm [--peers 8,16] [--size 100M] [--rtt 0,20ms]
        [--seeder-up 200M] [--peer-up 100M] [--peer-down 200M] [--origin-up 200M]
        [--methods damselfly,aria2,direct] [--results benchmarks/results/swarm] [--docs]
    python -m benchmarks.swarm --cleanup     # remove namespaces left by a killed run

Runs every (peers, rtt) scenario in turn, each in a fresh topology; writes one JSON per scenario
to ``--results``, prints a table, and with ``--docs`` writes the "swarm" section of
docs/benchmarks.md and the plot docs/img/swarm.png. Rates are bits/s (K/M/G = 10^3/10^6/10^9),
the size is bytes (K/M/G = 2^10/2^20/2^30). Ctrl-C or SIGTERM stops every process started and
deletes every namespace before exiting.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks._report import write_section
from benchmarks.swarm import report
from benchmarks.swarm.check import ShapingError
from benchmarks.swarm.runner import METHODS, Scenario, run_scenario
from benchmarks.swarm.topology import (
    REPO,
    TopologyError,
    can_make_namespaces,
    cleanup_namespaces,
    leftovers,
)

RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(?:bit|b|bps)?(?:/s)?\s*$", re.IGNORECASE)
SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmg]?)(?:i?b)?\s*$", re.IGNORECASE)
DUR_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$", re.IGNORECASE)


def parse_rate(text: str) -> int:
    """``200M`` / ``200mbit`` → 200_000_000 bits/s."""
    m = RATE_RE.match(text)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"invalid rate {text!r}: use e.g. 100M (Mbit/s)")
    return int(float(m.group(1)) * {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}[m.group(2).lower()])


def parse_size(text: str) -> int:
    """``100M`` → 104857600 bytes."""
    m = SIZE_RE.match(text)
    if not m or int(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use e.g. 100M (MiB)")
    return int(m.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[m.group(2).lower()]


def parse_ms(text: str) -> float:
    """``20ms`` / ``20`` → 20.0; ``0.02s`` → 20.0."""
    m = DUR_RE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid RTT {text!r}: use e.g. 20ms")
    v = float(m.group(1)) * (1000 if (m.group(2) or "ms").lower() == "s" else 1)
    if v > 1000:
        raise argparse.ArgumentTypeError(f"RTT {text!r} is too large (at most 1000 ms)")
    return v


def comma_list(conv: Any) -> Any:
    def parse(text: str) -> list[Any]:
        items = [conv(x) for x in text.split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        return items

    return parse


def peers_count(text: str) -> int:
    n = int(text)
    if not 1 <= n <= 250:
        raise argparse.ArgumentTypeError("peers must be 1..250")
    return n


def methods_list(text: str) -> tuple[str, ...]:
    ms = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [m for m in ms if m not in METHODS]
    if bad or not ms:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {bad}: choose from {', '.join(METHODS)}"
        )
    return ms


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.swarm",
        description="Swarm benchmark in network namespaces: Damselfly vs aria2c vs direct HTTP.",
    )
    ap.add_argument("--peers", type=comma_list(peers_count), default=[8, 16])
    ap.add_argument("--size", type=parse_size, default=100 * 2**20)
    ap.add_argument(
        "--rtt",
        type=comma_list(parse_ms),
        default=[0.0, 20.0],
        help="round-trip times to add, e.g. 0,20ms (default 0,20ms)",
    )
    ap.add_argument(
        "--seeder-up",
        type=parse_rate,
        default=200 * 10**6,
        help="u_s: supernode / seeder upload (default 200M)",
    )
    ap.add_argument("--seeder-down", type=parse_rate, default=200 * 10**6)
    ap.add_argument("--origin-up", type=parse_rate, default=200 * 10**6)
    ap.add_argument("--origin-down", type=parse_rate, default=200 * 10**6)
    ap.add_argument("--peer-up", type=parse_rate, default=100 * 10**6)
    ap.add_argument("--peer-down", type=parse_rate, default=200 * 10**6)
    ap.add_argument("--queue-ms", type=float, default=30.0, help="tbf queue per link (30)")
    ap.add_argument("--methods", type=methods_list, default=METHODS)
    ap.add_argument(
        "--bt-piece",
        type=parse_size,
        default=256 * 1024,
        help="BitTorrent piece length (default 256K)",
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        help="seconds per method (default max(60, 25 × T_min))",
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each method, wait up to this many seconds for the machine's "
        "other load to drop under 15%% (default 0: don't wait)",
    )
    ap.add_argument(
        "--check-seconds",
        type=float,
        default=1.5,
        help="measuring window of each shaping check flow",
    )
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "swarm")
    ap.add_argument(
        "--docs",
        action="store_true",
        help="write docs/benchmarks.md (section 'swarm') and docs/img/swarm.png",
    )
    ap.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where run directories go (default /dev/shm when it has room)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the run directories (logs, files)")
    ap.add_argument(
        "--cleanup", action="store_true", help="remove namespaces left by a killed run, and exit"
    )
    return ap


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


NOTES = [
    "Latency: this kernel has no `netem` (nor `fq`), so the RTT is added by "
    "`benchmarks/swarm/delay.py`: an NFQUEUE program on the bridge's FORWARD chain that holds "
    "every packet RTT/2 and releases them in order (metadata only, GSO packets whole); each run "
    "measures the RTT with TCP handshakes before trusting it.",
    "Work files live on tmpfs (/dev/shm) so that disk write-back is not part of the network "
    "measurement; every client runs as its own process in its own namespace, all on the same "
    "2 cores (the supernode, N engines and N dfget processes compete for CPU).",
    "aria2c's seeder holds the file before the clock starts (the origin sends nothing for it), "
    "while Damselfly's supernode starts with a cold cache and fetches from the origin during the "
    "run. aria2c uses 256 KiB pieces, DHT/PEX/LPD off, and every leecher keeps seeding; "
    "Damselfly cuts 100 MiB into 100 pieces of 1 MiB (the supernode's default piece sizes, "
    "core/pieces.py; v1's rule would give 25 of 4 MiB), and a peer can pass a piece on only once "
    "it holds all of it and has verified it. Each peer host's engine (`dfget server`) runs before "
    "the clock, as on a fleet; each dfget process, Python start-up included, is timed.",
    "CPU s = CPU seconds of the method's own processes (clients, engines, supernode or seeder and "
    "tracker); machine busy = share of both cores busy during the method, whoever used them. "
    "Every host uploading at once with a trivial sender gets ~98–99% of the configured rates, so "
    "links and shaping can carry a swarm at T_min; where a method's row shows the machine ~100% "
    "busy, it was bound by these 2 cores (a Python engine and a dfget process per simulated "
    "host, all sharing them), not by the network.",
]


def ensure_matplotlib() -> None:
    """The plot needs matplotlib, an optional benchmark dependency: install it when missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("installing matplotlib (for the plot) with pip", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "matplotlib"], check=False, timeout=600
        )
        importlib.invalidate_caches()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    why = can_make_namespaces()
    if why:
        print(
            f"swarm benchmark: cannot build namespaces: {why}. Run it as root on Linux.",
            file=sys.stderr,
        )
        return 2
    if args.cleanup:
        names = leftovers()
        cleanup_namespaces(names)
        print(f"removed {len(names)} namespaces: {' '.join(names) or '-'}")
        return 0
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    command = "python -m benchmarks.swarm " + shlex.join(sys.argv[1:] if argv is None else argv)
    results = []
    try:
        for n in args.peers:
            for rtt in args.rtt:
                sc = Scenario(
                    peers=n,
                    size=args.size,
                    seeder_up=args.seeder_up,
                    seeder_down=args.seeder_down,
                    origin_up=args.origin_up,
                    origin_down=args.origin_down,
                    peer_up=args.peer_up,
                    peer_down=args.peer_down,
                    rtt_ms=rtt,
                    queue_ms=args.queue_ms,
                    methods=args.methods,
                    bt_piece=args.bt_piece,
                    check_measure=args.check_seconds,
                    timeout=args.timeout,
                    quiet_wait=args.quiet_wait,
                    workdir=args.workdir,
                    keep=args.keep,
                )
                res = run_scenario(sc)
                res["command"] = command
                path = report.write_json(res, args.results)
                print(
                    f"\n{report.scenario_heading(res)}\n{report.table(res)}\n→ {path}\n", flush=True
                )
                results.append(res)
    except KeyboardInterrupt:
        print("interrupted: every process was stopped and every namespace deleted", file=sys.stderr)
        return 130
    except (ShapingError, TopologyError) as e:
        print(f"swarm benchmark failed: {e}", file=sys.stderr)
        return 1
    if args.docs and results:
        img = REPO / "docs" / "img" / "swarm.png"
        ensure_matplotlib()
        have_plot = report.plot(results, img)
        if not have_plot:
            print("no plot: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        body = report.docs_body(results, "img/swarm.png" if have_plot else None, NOTES)
        write_section(
            REPO / "docs" / "benchmarks.md",
            "swarm",
            "Swarm: Damselfly vs BitTorrent vs direct download (network namespaces)",
            f"`{command}` (as root; `benchmarks/swarm.sh` does the same)",
            body,
        )
        print(f"wrote {REPO / 'docs' / 'benchmarks.md'}" + (f" and {img}" if have_plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
