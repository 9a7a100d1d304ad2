"""Before any result is trusted: measure that the links are shaped as configured (and the RTT).

``plan_checks`` (pure) lays out rounds of timed TCP transfers that run at once:

- two *ring* rounds: every host sends to the next one (even-numbered senders, then odd: half
  the traffic at a time, because on 2 cores a full ring is CPU-bound), so every host's upload is
  measured (the flow gets min(up of the sender, down of the receiver));
- ``DOWNLOAD_ROUNDS`` fan-in rounds: every k-th host receives from its share of the others at
  once, so each host's download is measured with more upload behind it than it can take.

A last round, recorded but not judged, runs every host's upload at once: about the load of a
swarm at full speed, which shows how close this machine's CPUs let any method get to T_min.

``run_checks`` runs them with ``benchmarks.swarm.probe`` and compares the goodput with the
configured rate times the TCP payload share of an Ethernet frame (1448 of 1514 bytes with
timestamps): a flow outside ``tolerance`` fails the run with a ``ShapingError``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.swarm.procs import Proc, ProcSet
from benchmarks.swarm.topology import HostSpec, Topology, TopologyError

TCP_GOODPUT = 1448 / 1514  # payload per frame: MTU 1500 - 20 IP - 32 TCP (timestamps); +14 Ethernet
DOWNLOAD_ROUNDS = 4
PROBE_PORT = 5201


class ShapingError(RuntimeError):
    """A measured link rate or RTT is not what was configured: no result would be trustworthy."""


@dataclass(frozen=True)
class Flow:
    receiver: str
    senders: tuple[str, ...]
    expected_bps: int  # the configured rate that should bound this transfer (frame bits/s)
    bound: str  # which limit that is, e.g. "up peer3" or "down peer1"


def plan_checks(hosts: list[HostSpec], download_rounds: int = DOWNLOAD_ROUNDS) -> list[list[Flow]]:
    n = len(hosts)
    if n < 2:
        return []
    rounds: list[list[Flow]] = [[], []]
    for i, s in enumerate(hosts):
        r = hosts[(i + 1) % n]
        bound = f"up {s.name}" if s.up_bps <= r.down_bps else f"down {r.name}"
        rounds[i % 2].append(Flow(r.name, (s.name,), min(s.up_bps, r.down_bps), bound))
    k = max(2, min(download_rounds, n))
    for phase in range(k):
        receivers = [h for i, h in enumerate(hosts) if i % k == phase]
        senders = [h for i, h in enumerate(hosts) if i % k != phase]
        if not receivers or not senders:
            continue
        groups: list[list[HostSpec]] = [[] for _ in receivers]
        for j, s in enumerate(senders):
            groups[j % len(receivers)].append(s)
        flows = []
        for r, group in zip(receivers, groups, strict=True):
            if not group:
                continue
            up = sum(s.up_bps for s in group)
            bound = (
                f"down {r.name}" if r.down_bps <= up else "up " + "+".join(s.name for s in group)
            )
            flows.append(Flow(r.name, tuple(s.name for s in group), min(up, r.down_bps), bound))
        rounds.append(flows)
    return rounds


def judge(expected_bps: int, measured_bps: float, tolerance: float) -> tuple[float, bool]:
    """measured / (expected × TCP goodput share), and whether that is within ``tolerance``."""
    ratio = measured_bps / (expected_bps * TCP_GOODPUT)
    return ratio, abs(ratio - 1) <= tolerance


def run_round(
    topo: Topology, procs: ProcSet, flows: list[Flow], warm: float, measure: float, tag: str
) -> list[dict[str, Any]]:
    hosts = topo.hosts
    sinks: dict[str, Proc] = {}
    senders: list[Proc] = []
    budget = warm + measure + 20
    try:
        for f in flows:
            sinks[f.receiver] = procs.start(
                f"check-{tag}-sink-{f.receiver}",
                topo.py_argv(
                    f.receiver,
                    "benchmarks.swarm.probe",
                    "sink",
                    "--port",
                    str(PROBE_PORT),
                    "--warm",
                    str(warm),
                    "--measure",
                    str(measure),
                    "--max-seconds",
                    str(budget),
                ),
                env=topo.env(),
            )
        for name, proc in sinks.items():
            wait_listening(proc, name)
        for f in flows:
            to = f"{hosts[f.receiver].ip}:{PROBE_PORT}"
            for s in f.senders:
                senders.append(
                    procs.start(
                        f"check-{tag}-send-{s}",
                        topo.py_argv(
                            s,
                            "benchmarks.swarm.probe",
                            "send",
                            "--to",
                            to,
                            "--max-seconds",
                            str(budget),
                        ),
                        env=topo.env(),
                    )
                )
        out = []
        for f in flows:
            proc = sinks[f.receiver]
            try:
                proc.popen.wait(timeout=budget)
            except Exception as e:
                raise ShapingError(f"shaping check to {f.receiver} did not finish") from e
            last = _last_json(proc)
            if proc.popen.returncode != 0 or "bits_per_s" not in last:
                raise ShapingError(f"shaping check to {f.receiver} failed: {proc.output()[-600:]}")
            out.append({**asdict(f), "measured_bps": last["bits_per_s"]})
        return out
    finally:
        procs.stop_many(senders + list(sinks.values()))


def run_checks(
    topo: Topology,
    procs: ProcSet,
    *,
    warm: float = 0.5,
    measure: float = 1.5,
    tolerance: float = 0.06,
    all_at_once: bool = True,
) -> dict[str, Any]:
    """Measure every round; raise ShapingError when a flow is off. Returns the record."""
    flows_out = []
    for i, flows in enumerate(plan_checks(list(topo.hosts.values()))):
        for rec in run_round(topo, procs, flows, warm, measure, f"r{i}"):
            ratio, ok = judge(rec["expected_bps"], rec["measured_bps"], tolerance)
            flows_out.append({**rec, "ratio": round(ratio, 4), "ok": ok, "round": i})
    # for the record, not judged: every host's upload at once (the ring in one round), which is
    # about what a swarm at full speed asks of the machine; on 2 cores it is CPU-bound
    full: list[dict[str, Any]] = []
    if all_at_once:
        rounds = plan_checks(list(topo.hosts.values()))
        full = run_round(topo, procs, rounds[0] + rounds[1], warm, measure, "all")
    expected = sum(f["expected_bps"] for f in full) * TCP_GOODPUT
    measured = sum(f["measured_bps"] for f in full)
    bad = [f for f in flows_out if not f["ok"]]
    record = {
        "tolerance": tolerance,
        "tcp_goodput_share": round(TCP_GOODPUT, 4),
        "flows": flows_out,
        "worst_ratio": min((f["ratio"] for f in flows_out), default=None),
        "best_ratio": max((f["ratio"] for f in flows_out), default=None),
        "all_uploads_at_once": {
            "expected_bps": round(expected),
            "measured_bps": round(measured),
            "ratio": round(measured / expected, 4) if expected else None,
            "worst_flow_ratio": min(
                (round(judge(f["expected_bps"], f["measured_bps"], 1)[0], 4) for f in full),
                default=None,
            ),
        },
    }
    if bad:
        desc = "; ".join(
            f"{'+'.join(f['senders'])}→{f['receiver']} ({f['bound']}) measured "
            f"{f['measured_bps'] / 1e6:.1f} Mbit/s, expected {f['expected_bps'] * TCP_GOODPUT / 1e6:.1f}"
            for f in bad[:5]
        )
        raise ShapingError(
            f"link shaping does not hold ({len(bad)} of {len(flows_out)} flows off by more than "
            f"{tolerance:.0%}): {desc}. Is the machine overloaded? Nothing was measured."
        )
    return record


def check_rtt(
    topo: Topology, procs: ProcSet, src: str, dst: str, port: int, rtt_ms: float
) -> dict[str, Any]:
    """TCP handshake times from ``src`` to a listening ``dst:port``; must match the set RTT."""
    proc = procs.start(
        f"check-rtt-{src}",
        topo.py_argv(src, "benchmarks.swarm.probe", "rtt", "--to", f"{topo.hosts[dst].ip}:{port}"),
        env=topo.env(),
    )
    try:
        proc.popen.wait(timeout=30)
    except Exception as e:
        procs.stop(proc)
        raise ShapingError(f"the RTT check from {src} to {dst} did not finish") from e
    last = _last_json(proc)
    if "rtt_ms" not in last:
        raise ShapingError(f"the RTT check from {src} to {dst} failed: {proc.output()[-600:]}")
    measured = float(last["rtt_ms"])
    slack = max(1.5, 0.15 * rtt_ms)
    ok = abs(measured - rtt_ms) <= slack
    record = {
        "from": src,
        "to": dst,
        "configured_ms": rtt_ms,
        "measured_ms": round(measured, 3),
        "samples_ms": last.get("samples_ms"),
        "ok": ok,
    }
    if not ok:
        raise ShapingError(
            f"RTT {src}→{dst} is {measured:.2f} ms, configured {rtt_ms:g} ms (±{slack:.1f}): "
            "the delay program is not keeping up, or something else adds delay"
        )
    return record


def wait_listening(proc: Proc, name: str, timeout: float = 20) -> None:
    """Wait (bounded) until a probe sink says it listens."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while '"listening"' not in proc.output():
        if proc.popen.poll() is not None:
            raise TopologyError(f"probe sink on {name} exited: {proc.output()[-600:]}")
        if time.monotonic() > deadline:
            raise TopologyError(f"probe sink on {name} did not listen within {timeout:g}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _last_json(proc: Proc) -> dict[str, Any]:
    for line in reversed(proc.output().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return {}
