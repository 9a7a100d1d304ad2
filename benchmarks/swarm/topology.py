"""Hosts in network namespaces on one Linux bridge, with shaped links; and tearing it all down.

Layout (names carry a per-run tag, so two runs never share anything)::

    <tag>-hub : the bridge br0 and, per host, the bridge-side end v<i> of its veth pair
    <tag>-<host>: one namespace per host (origin, supernode, peer1..peerN), eth0 = its veth end

Addresses are 10.77.0.0/16 and exist only inside these namespaces: nothing is added to the root
namespace (no address, no route, no NAT), so no packet of a run can leave the machine.

Shaping with ``tbf`` (this kernel has no ``netem``): a host's upload rate on its own ``eth0``
egress, its download rate on the bridge side's ``v<i>`` egress toward it. Latency, when asked
for, is added on the bridge: an iptables ``NFQUEUE`` rule in the hub's FORWARD chain and
``benchmarks.swarm.delay`` holding each packet ``rtt/2`` (every packet crosses the bridge once).

Counters: the hub side's ``rx_bytes`` of ``v<i>`` is what host i sent, ``tx_bytes`` what it
received, as the kernel counts packets there: Ethernet + IP + TCP headers once per (GSO) packet,
so within ~1% of the TCP payload.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.swarm.procs import Proc, ProcSet, proc_cpu_s, stop_pids

SUBNET_PREFIX = 16
NETNS_DIR = Path("/run/netns")
TAG_PREFIX = "dsw"  # every namespace of this harness starts with it (see leftovers())
REPO = Path(__file__).resolve().parents[2]


class TopologyError(RuntimeError):
    """Building or using the namespaces failed; the message says what and what to do."""


@dataclass(frozen=True)
class HostSpec:
    name: str  # origin, supernode, peer1..peerN
    role: str  # "origin" | "supernode" | "peer"
    index: int  # v<index> on the bridge
    ip: str
    up_bps: int  # upload (egress) rate, bits/s
    down_bps: int  # download (ingress) rate, bits/s


def plan_hosts(
    peers: int,
    origin_up: int,
    origin_down: int,
    seeder_up: int,
    seeder_down: int,
    peer_up: int,
    peer_down: int,
) -> list[HostSpec]:
    """origin 10.77.0.1, supernode 10.77.0.2, peers 10.77.1.1 … (rates in bits/s)."""
    if not 1 <= peers <= 250:
        raise ValueError("peers must be 1..250")
    hosts = [
        HostSpec("origin", "origin", 1, "10.77.0.1", origin_up, origin_down),
        HostSpec("supernode", "supernode", 2, "10.77.0.2", seeder_up, seeder_down),
    ]
    for i in range(1, peers + 1):
        hosts.append(HostSpec(f"peer{i}", "peer", i + 2, f"10.77.1.{i}", peer_up, peer_down))
    return hosts


def tbf_args(rate_bps: int, queue_ms: float) -> list[str]:
    """A tbf qdisc at ``rate_bps``: a burst of 4 ms of traffic (at least 64 KiB, so TSO packets
    pass whole) and a queue of ``queue_ms`` (a switch port's buffer)."""
    if rate_bps <= 0:
        raise ValueError("a shaped rate must be positive")
    burst = max(64 * 1024, rate_bps // 8 * 4 // 1000)
    return ["tbf", "rate", f"{rate_bps}bit", "burst", str(burst), "latency", f"{queue_ms:g}ms"]


def new_tag() -> str:
    return f"{TAG_PREFIX}{os.getpid() % 100000}"


def leftovers() -> list[str]:
    """Namespaces of earlier runs of this harness (a run killed with SIGKILL leaves them)."""
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(TAG_PREFIX))
    except OSError:
        return []


def cleanup_namespaces(names: list[str]) -> None:
    """Stop every process inside the namespaces (by pid), then delete them (veths go with them)."""
    for ns in names:
        stop_pids(ns_pids(ns))
    for ns in names:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False, timeout=30)


def ns_pids(ns: str) -> list[int]:
    r = subprocess.run(
        ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False, timeout=30
    )
    return [int(x) for x in r.stdout.split() if x.isdigit()]


def can_make_namespaces() -> str:
    """Why this process cannot build the topology ("" when it can): for skips and errors."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth, tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (Debian package iproute2)"
    probe = f"{TAG_PREFIX}probe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        return f"`ip netns add` failed: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return ""


class Topology:
    def __init__(
        self,
        tag: str,
        hosts: list[HostSpec],
        procs: ProcSet,
        rundir: Path,
        *,
        rtt_ms: float = 0,
        queue_ms: float = 30,
    ) -> None:
        self.tag = tag
        self.hosts = {h.name: h for h in hosts}
        self.procs = procs
        self.rundir = rundir
        self.rtt_ms = rtt_ms
        self.queue_ms = queue_ms
        self.hub = f"{tag}-hub"
        self.made: list[str] = []
        self.delay_proc: Proc | None = None

    def __repr__(self) -> str:
        return f"<Topology {self.tag} hosts={len(self.hosts)} rtt={self.rtt_ms:g}ms made={len(self.made)}>"

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    @property
    def peers(self) -> list[HostSpec]:
        return [h for h in self.hosts.values() if h.role == "peer"]

    # -- running things ------------------------------------------------------------------

    def exec_argv(self, host: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host), *argv]

    def py_argv(self, host: str, module: str, *args: str) -> list[str]:
        return self.exec_argv(host, [sys.executable, "-m", module, *args])

    def run(self, argv: list[str], timeout: float = 30) -> str:
        """Run a setup command; raise with its stderr when it fails."""
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as e:
            raise TopologyError(f"`{' '.join(argv)}` did not finish in {timeout:g}s") from e
        if r.returncode != 0:
            raise TopologyError(
                f"`{' '.join(argv)}` failed: {r.stderr.strip() or r.stdout.strip()}"
            )
        return r.stdout

    def run_in(self, host: str, argv: list[str], timeout: float = 30) -> str:
        return self.run(self.exec_argv(host, argv), timeout)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
        )
        env["PYTHONUNBUFFERED"] = "1"
        return env

    # -- building ------------------------------------------------------------------------

    def create(self) -> None:
        self._add_ns(self.hub)
        self.run(["ip", "-n", self.hub, "link", "add", "name", "br0", "type", "bridge"])
        self.run(["ip", "-n", self.hub, "link", "set", "br0", "up"])
        self.run_in_hub_sysctl(
            "net.bridge.bridge-nf-call-iptables", "1" if self.rtt_ms > 0 else "0"
        )
        for h in self.hosts.values():
            self._add_host(h)
        if self.rtt_ms > 0:
            self._add_latency()

    def run_in_hub_sysctl(self, key: str, value: str) -> None:
        path = "/proc/sys/" + key.replace(".", "/")
        self.run(self.exec_argv_ns(self.hub, ["sh", "-c", f"echo {value} > {path}"]))

    def exec_argv_ns(self, ns: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def _add_ns(self, ns: str) -> None:
        if (NETNS_DIR / ns).exists():
            raise TopologyError(
                f"namespace {ns} already exists (left by a killed run?): "
                "remove it with `python -m benchmarks.swarm --cleanup`"
            )
        self.run(["ip", "netns", "add", ns])
        self.made.append(ns)
        self.run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # no IPv6: no router solicitations or DAD traffic in the byte counters
        self.run(
            self.exec_argv_ns(
                ns,
                [
                    "sh",
                    "-c",
                    "for f in /proc/sys/net/ipv6/conf/all/disable_ipv6 "
                    "/proc/sys/net/ipv6/conf/default/disable_ipv6; do "
                    '[ -e "$f" ] && echo 1 > "$f"; done; true',
                ],
            )
        )

    def _add_host(self, h: HostSpec) -> None:
        ns, port = self.ns(h.name), f"v{h.index}"
        self._add_ns(ns)
        self.run(
            [
                "ip",
                "-n",
                self.hub,
                "link",
                "add",
                "name",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            ]
        )
        self.run(["ip", "-n", self.hub, "link", "set", port, "master", "br0"])
        self.run(["ip", "-n", self.hub, "link", "set", port, "up"])
        self.run(["ip", "-n", ns, "addr", "add", f"{h.ip}/{SUBNET_PREFIX}", "dev", "eth0"])
        self.run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        self.run(
            [
                "tc",
                "-n",
                ns,
                "qdisc",
                "replace",
                "dev",
                "eth0",
                "root",
                *tbf_args(h.up_bps, self.queue_ms),
            ]
        )
        self.run(
            [
                "tc",
                "-n",
                self.hub,
                "qdisc",
                "replace",
                "dev",
                port,
                "root",
                *tbf_args(h.down_bps, self.queue_ms),
            ]
        )

    def _add_latency(self) -> None:
        if shutil.which("iptables") is None:
            raise TopologyError(
                "latency needs `iptables` for its NFQUEUE rule: apt-get install iptables, "
                "or run without --rtt"
            )
        ready = self.rundir / "delay.ready"
        ready.unlink(missing_ok=True)
        self.delay_proc = self.procs.start(
            "delay",
            self.exec_argv_ns(
                self.hub,
                [
                    sys.executable,
                    "-m",
                    "benchmarks.swarm.delay",
                    "--queue",
                    "0",
                    "--ms",
                    f"{self.rtt_ms / 2:g}",
                    "--ready-file",
                    str(ready),
                ],
            ),
            env=self.env(),
        )
        wait_file(ready, self.delay_proc, 20, "the delay program")
        # no --queue-bypass: if the delay program dies, traffic stops and the run fails loudly
        self.run(
            self.exec_argv_ns(
                self.hub, ["iptables", "-A", "FORWARD", "-j", "NFQUEUE", "--queue-num", "0"]
            )
        )

    # -- observing -----------------------------------------------------------------------

    def counters(self) -> dict[str, tuple[int, int]]:
        """host → (bytes it sent, bytes it received), read on the bridge side."""
        out = self.run(["ip", "-n", self.hub, "-s", "-j", "link", "show"])
        by_port = {}
        for link in json.loads(out):
            st = link.get("stats64", {})
            by_port[link["ifname"]] = (int(st["rx"]["bytes"]), int(st["tx"]["bytes"]))
        return {h.name: by_port[f"v{h.index}"] for h in self.hosts.values()}

    def delay_cpu_s(self) -> float | None:
        """CPU seconds the delay program has used so far (None without one)."""
        return None if self.delay_proc is None else proc_cpu_s(self.delay_proc.pid)

    def qdiscs(self) -> str:
        """The shaping as the kernel has it (for the record)."""
        lines = []
        for h in self.hosts.values():
            up = self.run(["tc", "-n", self.ns(h.name), "qdisc", "show", "dev", "eth0"]).strip()
            down = self.run(["tc", "-n", self.hub, "qdisc", "show", "dev", f"v{h.index}"]).strip()
            lines.append(f"{h.name}: up [{up}] down [{down}]")
        return "\n".join(lines)

    # -- tearing down --------------------------------------------------------------------

    def destroy(self) -> None:
        """Stop every process in our namespaces (by pid) and delete them; safe to call twice."""
        if self.delay_proc is not None:
            self.procs.stop(self.delay_proc)
        names = list(reversed(self.made))
        cleanup_namespaces(names)
        self.made = [ns for ns in names if (NETNS_DIR / ns).exists()]


def wait_file(path: Path, proc: Proc, timeout: float, what: str) -> str:
    """Wait (bounded) for a process's ready file; fail early when the process exits."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        with contextlib.suppress(OSError):
            text = path.read_text()
            if text:
                return text
        if proc.popen.poll() is not None:
            raise TopologyError(f"{what} exited early: {proc.output()[-800:]}")
        if time.monotonic() > deadline:
            raise TopologyError(f"{what} was not ready after {timeout:g}s: {proc.output()[-800:]}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
