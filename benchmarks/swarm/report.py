"""The physical floor, and turning run records into a markdown table, a plot and the docs section.

T_min = max(F/u_s, F/d_min, N·F/(u_s + Σu_i)) (Kumar & Ross): the seeder must send every byte
once, the slowest peer must receive every byte, and the N·F bytes the peers receive have to come
out of someone's upload. Rates are the configured link rates (Ethernet frames); TCP/IP headers
alone take 4.4% of a 1514-byte frame, so ~1.046 × T_min is the best any TCP transfer can do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METHOD_LABELS = {"damselfly": "Damselfly", "aria2": "BitTorrent (aria2c)", "direct": "direct HTTP"}
METHOD_ORDER = ("damselfly", "aria2", "direct")


def t_min(size: int, peers: int, seeder_up: int, peer_up: int, peer_down: int) -> dict[str, float]:
    """The floor and its three terms, in seconds (size in bytes, rates in bits/s)."""
    bits = size * 8
    terms = {
        "seeder_upload": bits / seeder_up,
        "slowest_download": bits / peer_down,
        "total_upload": peers * bits / (seeder_up + peers * peer_up),
    }
    return {"t_min_s": max(terms.values()), **terms}


def mbit(bps: int) -> str:
    return f"{bps / 1e6:g}"


def scenario_name(s: dict[str, Any]) -> str:
    return f"n{s['peers']}-{s['size'] // (1024 * 1024)}mib-rtt{s['rtt_ms']:g}ms"


def write_json(result: dict[str, Any], results_dir: Path) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{scenario_name(result['scenario'])}.json"
    path.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return path


def _x(v: float | None, t: float) -> str:
    return "–" if v is None else f"{v:.1f} s ({v / t:.2f}×)"


def _f(v: int | None, size: int) -> str:
    return "–" if v is None else f"{v / size:.2f}"


def _cpu(seconds: float | None, busy: float | None) -> str:
    cpu = "–" if seconds is None else f"{seconds:.0f}"
    return cpu if busy is None else f"{cpu} ({busy:.0%})"


def table(result: dict[str, Any]) -> str:
    s = result["scenario"]
    t = result["t_min"]["t_min_s"]
    rows = [
        "| method | makespan (× T_min) | first done | mean | origin sent ÷ F (app) | "
        "supernode/seeder sent ÷ F | peers sent ÷ F | sha256 ok | CPU s (machine busy) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in METHOD_ORDER:
        r = result["methods"].get(m)
        if r is None:
            continue
        if "skipped" in r:
            rows.append(f"| {METHOD_LABELS[m]} | skipped: {r['skipped']} | | | | | | | |")
            continue
        if "error" in r:
            rows.append(f"| {METHOD_LABELS[m]} | failed: {r['error'][:200]} | | | | | | | |")
            continue
        cpu = r.get("cpu_busy")
        origin = f"{_f(r['origin_sent_bytes'], s['size'])} ({_f(r['origin_app_bytes'], s['size'])})"
        rows.append(
            f"| {METHOD_LABELS[m]} | {_x(r['makespan_s'], t)} | {_x(r['first_s'], t)} | "
            f"{_x(r['mean_s'], t)} | {origin} | {_f(r['supernode_sent_bytes'], s['size'])} | "
            f"{_f(r['peers_sent_bytes'], s['size'])} | {r['verified']}/{s['peers']} | "
            f"{_cpu(r.get('cpu_s'), cpu)} |"
        )
    return "\n".join(rows)


def scenario_heading(result: dict[str, Any]) -> str:
    s = result["scenario"]
    t = result["t_min"]
    rtt = f", RTT {s['rtt_ms']:g} ms" if s["rtt_ms"] else ", no added latency"
    return (
        f"N = {s['peers']} peers, F = {s['size'] / 2**20:g} MiB, u_s = {mbit(s['seeder_up'])} Mbit/s, "
        f"peers {mbit(s['peer_up'])} up / {mbit(s['peer_down'])} down, origin "
        f"{mbit(s['origin_up'])} up{rtt}: T_min = {t['t_min_s']:.2f} s"
    )


def targets(result: dict[str, Any]) -> str:
    """Damselfly against the design targets, from the measured figures ("" without a result)."""
    m = result["methods"]
    d, a = m.get("damselfly") or {}, m.get("aria2") or {}
    if d.get("makespan_s") is None:
        return ""
    t, size = result["t_min"]["t_min_s"], result["scenario"]["size"]
    ratio = d["makespan_s"] / t
    parts = [f"makespan ≤ 1.25 × T_min: {'yes' if ratio <= 1.25 else 'no'} ({ratio:.2f}×)"]
    if d.get("origin_app_bytes") is not None:
        o = d["origin_app_bytes"] / size
        parts.append(f"origin ≤ 1.02 × F: {'yes' if o <= 1.02 else 'no'} ({o:.2f})")
    if a.get("makespan_s"):
        x = a["makespan_s"] / d["makespan_s"]
        parts.append(f"≥ 1.5× shorter than aria2c: {'yes' if x >= 1.5 else 'no'} ({x:.2f}×)")
    line = "Damselfly against its targets — " + "; ".join(parts) + "."
    startup = [v for v in (d.get("startup_s") or {}).values() if isinstance(v, int | float)]
    if startup:
        line += (
            f" Of its time, starting each dfget process (Python and its imports, before dfget's "
            f"own clock starts: completion minus the cost dfget prints) took "
            f"{sum(startup) / len(startup):.2f} s on average "
            f"(at most {max(startup):.2f} s)."
        )
    return line


def failures(result: dict[str, Any]) -> list[str]:
    out = []
    for m in METHOD_ORDER:
        r = result["methods"].get(m) or {}
        for peer, err in sorted((r.get("errors") or {}).items())[:3]:
            out.append(f"{METHOD_LABELS[m]} {peer}: {err}")
        for peer, err in sorted((r.get("output_checks") or {}).items())[:3]:
            out.append(f"{METHOD_LABELS[m]} {peer} output: {err}")
    return out


def plot(results: list[dict[str, Any]], path: Path) -> bool:
    """Peers finished over time per method, one panel per scenario, T_min as a line.
    False (and nothing written) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cols = min(2, len(results))
    rows = (len(results) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[len(results) :]:
        ax.set_visible(False)
    for ax, res in zip(axes.flat, results, strict=False):
        s = res["scenario"]
        t = res["t_min"]["t_min_s"]
        for m in METHOD_ORDER:
            r = res["methods"].get(m)
            if not r or "skipped" in r:
                continue
            times = sorted(v for v in r["completion_s"].values() if v is not None)
            if times:
                ax.step(
                    [0, *times],
                    list(range(len(times) + 1)),
                    where="post",
                    label=METHOD_LABELS[m],
                    marker=".",
                )
        ax.axvline(t, color="black", linestyle="--", label=f"T_min = {t:.1f} s")
        ax.set_title(f"N={s['peers']}, {s['size'] / 2**20:g} MiB, RTT {s['rtt_ms']:g} ms")
        ax.set_xlabel("seconds since start")
        ax.set_ylabel("peers finished")
        ax.set_ylim(0, s["peers"] + 0.5)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def docs_body(results: list[dict[str, Any]], image: str | None, notes: list[str]) -> str:
    parts = [
        "Every host is a network namespace on one Linux bridge (veth pairs, addresses only inside "
        "the namespaces): an origin, a supernode host (Damselfly's supernode; aria2c's seeder and "
        "opentracker for BitTorrent), N peer hosts. Links are shaped with `tbf` (upload on the "
        "host's egress, download on the bridge side's egress toward it); each run first measures "
        "every host's upload and download with timed TCP transfers and refuses to go on when one "
        "is off by more than 6%. Completion = the client process exiting with the file written "
        "(aria2c: its download-complete hook; it keeps seeding); every output is then checked "
        "against the file's sha256. Bytes sent are the bridge-side interface counters (the "
        "kernel counts a GSO packet's headers once, so they are within ~1% of the payload); "
        '"app" is the body bytes the origin server counted. T_min uses the configured link '
        "rates; TCP/IP headers alone make ~1.046 × T_min the best a TCP transfer can do.",
        "",
    ]
    for res in results:
        parts += [f"**{scenario_heading(res)}**", "", table(res), ""]
        chk = res.get("shaping_check") or {}
        if chk:
            line = (
                f"Shaping check: {len(chk.get('flows', []))} flows, measured/expected goodput "
                f"{chk.get('worst_ratio')}–{chk.get('best_ratio')}"
            )
            full = chk.get("all_uploads_at_once") or {}
            if full.get("ratio") is not None:
                line += (
                    f"; every host uploading at once (the load of a swarm at full speed) got "
                    f"{full['ratio']:.1%} of the configured total (worst flow "
                    f"{full['worst_flow_ratio']:.1%})"
                )
            if res.get("rtt_check"):
                line += f"; RTT measured {res['rtt_check']['measured_ms']:.2f} ms"
            parts += [line + ".", ""]
        others = [
            f"{METHOD_LABELS[m]} {r['machine_busy_before']:.0%}"
            for m in METHOD_ORDER
            if isinstance(r := res["methods"].get(m) or {}, dict)
            and isinstance(r.get("machine_busy_before"), float)
        ]
        if others:
            parts += [
                "Other work on the machine in the second before each method (share of both "
                "cores busy): " + ", ".join(others) + ".",
                "",
            ]
        goal = targets(res)
        if goal:
            parts += [goal, ""]
        bad = failures(res)
        if bad:
            parts += ["Failures: " + "; ".join(bad), ""]
    if image:
        parts += [f"![peers finished over time]({image})", ""]
    parts += [f"- {n}" for n in notes]
    return "\n".join(parts)
