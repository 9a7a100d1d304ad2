"""``python -m benchmarks.simulator``: makespan against the floor for swarms of up to 10,000 peers.

    python -m benchmarks.simulator                      # the v1 setup, 200..7,000 peers
    python -m benchmarks.simulator --peers 200,1000 --supernode-up 10G
    python -m benchmarks.simulator --peers 1000 --piece-mib 1   # what if pieces were 1 MiB
    python -m benchmarks.simulator --docs               # also write docs/benchmarks.md

The v1 setup (Dragonfly's README, 2016): a 200 MB file, clients with 200 Mbit/s links, the
supernode's CDN already holding the file. The supernode's uplink is not published; 1 Gbit/s is
assumed (``--supernode-up``). Rates take K/M/G (10^3/10^6/10^9 bits/s). Each run prints one
line; ``--json`` writes every run's figures to a file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks._report import write_section
from benchmarks.simulator.swarm import Setup, Stats, simulate

from damselfly.core.pieces import piece_size_for
from damselfly.scheduler import SchedulerConfig

REPO = Path(__file__).resolve().parents[2]
_UNITS = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9}


def rate(text: str) -> float:
    t = text.strip().upper().removesuffix("BIT/S").removesuffix("BPS")
    unit = t[-1:] if t[-1:] in _UNITS and not t[-1:].isdigit() else ""
    try:
        v = float(t[: len(t) - len(unit)]) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate such as 200M or 1G") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"a rate must be positive, not {text!r}")
    return v


def counts(text: str) -> list[int]:
    try:
        out = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list such as 200,1000") from None
    if not out or min(out) < 1 or max(out) > 100_000:
        raise argparse.ArgumentTypeError("peer counts must be between 1 and 100,000")
    return out


def row(st: Stats) -> str:
    d = st.as_dict()
    return (
        f"| {st.setup.peers:,} | {st.makespan:.2f} | {d['mean_done']:.2f} | {st.t_min:.2f} "
        f"| **{st.ratio:.3f}** | {st.t_tree:.2f} ({st.t_tree / st.t_min:.3f}) "
        f"| {st.supernode_share:.2f} | {100 * st.peer_share:.1f}% "
        f"| {st.schedule_calls:,} / {st.shell_calls:,} | {st.scheduler_cpu:.1f} | {st.cpu:.1f} |"
    )


HEADER = (
    "| peers | makespan (s) | mean done (s) | T_min (s) | makespan / T_min "
    "| whole-piece floor (s, / T_min) | supernode bytes / F | bytes from peers "
    "| schedule calls: simulated / a real shell | scheduler CPU (s) | simulation CPU (s) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--peers", type=counts, default=counts("200,1000,2000,7000"))
    ap.add_argument("--size", type=int, default=200_000_000, help="file size in bytes")
    ap.add_argument("--peer-up", type=rate, default=200e6)
    ap.add_argument("--peer-down", type=rate, default=200e6)
    ap.add_argument("--supernode-up", type=rate, default=1e9)
    ap.add_argument(
        "--cdn-rate", type=rate, default=None, help="CDN fetch rate (default: cache hit)"
    )
    ap.add_argument("--rpc-delay", type=float, default=0.0, help="seconds per schedule call")
    ap.add_argument(
        "--piece-mib",
        type=float,
        default=0.0,
        help="piece size (default: the supernode's rule, core/pieces.py)",
    )
    ap.add_argument(
        "--supernode-limit",
        type=int,
        default=0,
        help="the supernode's slots per task (default: SchedulerConfig's)",
    )
    ap.add_argument(
        "--classic",
        action="store_true",
        help="the ramp-up rules off (no slow start, no fresh-peers-first), for comparison",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", metavar="FILE", help="write every run's figures to FILE")
    ap.add_argument("--docs", action="store_true", help="write the section of docs/benchmarks.md")
    args = ap.parse_args(argv)
    if args.piece_mib < 0 or args.supernode_limit < 0:
        ap.error("--piece-mib and --supernode-limit must not be negative")
    sched: dict[str, object] = {}
    if args.supernode_limit:
        sched["supernode_limit"] = args.supernode_limit
    if args.classic:
        sched.update(source_slow_start=False, download_slow_start=False, fresh_first_window=0.0)

    runs: list[Stats] = []
    print(HEADER)
    for n in args.peers:
        setup = Setup(
            peers=n,
            size=args.size,
            peer_up=args.peer_up,
            peer_down=args.peer_down,
            supernode_up=args.supernode_up,
            cdn_rate=args.cdn_rate or 0.0,
            rpc_delay=args.rpc_delay,
            seed=args.seed,
            piece_size=round(args.piece_mib * 2**20),
            scheduler=SchedulerConfig(**sched),  # type: ignore[arg-type]
        )
        st = simulate(setup)
        runs.append(st)
        print(row(st) + (f" STALLED: {st.stalled}" if st.stalled else ""), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in runs], indent=1) + "\n")
    if args.docs:
        how = "`python -m benchmarks.simulator " + " ".join(argv or sys.argv[1:]) + "`"
        table = HEADER + "\n" + "\n".join(row(r) for r in runs)
        write_section(REPO / "docs" / "benchmarks.md", "simulator", TITLE, how, _body(args, table))
    return 1 if any(r.stalled for r in runs) else 0


TITLE = "Scale simulator: the real scheduler, a fluid network, up to 10,000 peers"


def _body(args: argparse.Namespace, table: str) -> str:
    body = (REPO / "benchmarks" / "simulator" / "REPORT.md").read_text()
    return body.replace("{{table}}", table).replace(
        "{{setup}}",
        f"F = {args.size / 1e6:,.0f} MB, peers {args.peer_up / 1e6:,.0f} Mbit/s up and "
        f"{args.peer_down / 1e6:,.0f} Mbit/s down, supernode {args.supernode_up / 1e6:,.0f} "
        f"Mbit/s up, "
        + (f"CDN fetching at {args.cdn_rate / 1e6:,.0f} Mbit/s" if args.cdn_rate else "cache hit")
        + f", RPC delay {args.rpc_delay * 1000:.0f} ms, seed {args.seed}"
        + (
            f", pieces of {args.piece_mib:g} MiB"
            if args.piece_mib
            else f", pieces of {piece_size_for(args.size) / 2**20:g} MiB (core/pieces.py)"
        )
        + (f", supernode limit {args.supernode_limit}" if args.supernode_limit else "")
        + (", ramp-up rules off" if args.classic else ""),
    )


if __name__ == "__main__":
    sys.exit(main())
