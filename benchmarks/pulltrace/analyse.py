"""Gaps between the steps a piece goes through, from a trace file (see the package docstring).

Per piece: CDN done → assigned (the peer's schedule call returned it) → fetch started → fetched →
verified and written → read by the stream for the client. Per blob: the last piece's way, the
whole-file check, placing, the stream's final verification, the response's end.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

STEPS = [
    ("cdn_done", "assigned"),
    ("assigned", "fetch_start"),
    ("fetch_start", "fetched"),
    ("fetched", "written"),
    ("written", "streamed"),
]


def load(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def per_piece(events: list[dict[str, Any]]) -> dict[tuple[str, int, int], dict[str, float]]:
    """(task, peer pid, piece) → step → first time (cdn_done is the supernode's, shared)."""
    cdn: dict[tuple[str, int], float] = {}
    pieces: dict[tuple[str, int, int], dict[str, float]] = defaultdict(dict)
    for e in sorted(events, key=lambda e: e["t"]):
        task, pid = e.get("task", ""), e["pid"]
        ev = e["ev"]
        if ev == "cdn_done":
            cdn.setdefault((task, e["num"]), e["t"])
        elif ev == "assigned":
            for num, kind in zip(e["nums"], e["kinds"], strict=False):
                pieces[(task, pid, num)].setdefault("assigned", e["t"])
                pieces[(task, pid, num)].setdefault("kind", kind)  # type: ignore[arg-type]
        elif ev in ("fetch_start", "fetched", "written"):
            pieces[(task, pid, e["num"])].setdefault(ev, e["t"])
        elif ev == "read" and e.get("piece_size"):
            size, end = e["piece_size"], e["offset"] + e["n"]
            first = e["offset"] // size
            for num in range(first, (end - 1) // size + 1):
                if (num + 1) * size <= end or num == (end - 1) // size:
                    pieces[(task, pid, num)]["streamed"] = e["t"]
    for (task, _pid, num), d in pieces.items():
        if (task, num) in cdn:
            d["cdn_done"] = cdn[(task, num)]
    return pieces


def summary(events: list[dict[str, Any]]) -> dict[str, Any]:
    pieces = per_piece(events)
    gaps: dict[str, list[float]] = defaultdict(list)
    for d in pieces.values():
        for a, b in STEPS:
            if a in d and b in d:
                gaps[f"{a}→{b}"].append(d[b] - d[a])
    steps = {
        k: {
            "n": len(v),
            "median_ms": round(statistics.median(v) * 1000, 1),
            "p90_ms": round(sorted(v)[int(0.9 * (len(v) - 1))] * 1000, 1),
            "max_ms": round(max(v) * 1000, 1),
        }
        for k, v in gaps.items()
        if v
    }
    # per blob on each peer: where its last stretch goes
    tails = []
    by_blob: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
    for e in events:
        if e["ev"] in (
            "whole_start",
            "whole_end",
            "verify_start",
            "verify_end",
            "respond_start",
            "respond_end",
        ):
            by_blob[(e["task"], e["pid"])].setdefault(e["ev"], e["t"])
    for (task, pid), d in by_blob.items():
        ps = {num: p for (t, q, num), p in pieces.items() if t == task and q == pid}

        def last(step: str, ps: dict[int, dict[str, float]] = ps) -> float | None:
            return max((p[step] for p in ps.values() if step in p), default=None)

        start = d.get("respond_start")
        row = {"task": task, "pid": pid, "pieces": len(ps)}
        for name, t in (
            ("last_cdn_done", last("cdn_done")),
            ("last_written", last("written")),
            ("whole_start", d.get("whole_start")),
            ("whole_end", d.get("whole_end")),
            ("verify_start", d.get("verify_start")),
            ("verify_end", d.get("verify_end")),
            ("last_streamed", last("streamed")),
            ("respond_end", d.get("respond_end")),
        ):
            row[name] = round(t - start, 3) if t is not None and start is not None else None
        tails.append(row)
    reads = [e for e in events if e["ev"] == "read"]
    read_s = sum(e["t"] - e["start"] for e in reads)
    read_mb = sum(e["n"] for e in reads) / 1e6
    # the stream's backlog: bytes it still had to send when the blob's last piece was written
    backlog = []
    for row in tails:
        done = row["last_written"]
        if done is None:
            continue
        start = by_blob[(row["task"], row["pid"])].get("respond_start", 0)
        later = sum(
            e["n"]
            for e in reads
            if e["task"] == row["task"] and e["pid"] == row["pid"] and e["start"] >= start + done
        )
        backlog.append(later / 1e6)
    return {
        "steps": steps,
        "blobs": sorted(tails, key=lambda r: (r["pid"], r["task"])),
        "stream_reads": {
            "mb": round(read_mb, 1),
            "seconds_in_read_and_hash": round(read_s, 2),
            "mb_per_s": round(read_mb / read_s, 1) if read_s else None,
        },
        "backlog_mb_at_last_piece": {
            "median": round(statistics.median(backlog), 1) if backlog else None,
            "max": round(max(backlog), 1) if backlog else None,
        },
    }


def text(s: dict[str, Any]) -> str:
    lines = ["step | pieces | median ms | p90 ms | max ms", "---|---|---|---|---"]
    for k, v in s["steps"].items():
        lines.append(f"{k} | {v['n']} | {v['median_ms']} | {v['p90_ms']} | {v['max_ms']}")
    lines.append("")
    lines.append(f"stream reads: {s['stream_reads']}")
    lines.append(
        f"stream backlog when a blob's last piece was written (MB): {s['backlog_mb_at_last_piece']}"
    )
    lines.append("")
    cols = [
        "last_cdn_done",
        "last_written",
        "whole_start",
        "whole_end",
        "verify_start",
        "verify_end",
        "last_streamed",
        "respond_end",
    ]
    lines.append("blob (s from the response's start) | " + " | ".join(cols))
    for r in s["blobs"]:
        lines.append(f"{r['task']} pid {r['pid']} | " + " | ".join(str(r[c]) for c in cols))
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(text(summary(load(Path(sys.argv[1])))))
