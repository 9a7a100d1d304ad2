"""Pull benchmark: skopeo pulling a multi-layer image straight from Debian's docker-registry vs
through dfdaemon (the registry mirror), for one host and for N hosts at once, with the registry
bytes served.

    python benchmarks/registry_pull.py --netns [--n 4] [--layers 5] [--layer-mb 60]
        [--registry-up 500M] [--repeat 3] [--write]          # as root
    python benchmarks/registry_pull.py [--layers 4] [--layer-mb 40] [--n 3]   # loopback

``--netns`` (the measurement docs/benchmarks.md reports) builds the swarm harness's topology
(``benchmarks.swarm.topology``: one namespace per host on a bridge, tbf shaping checked with
``benchmarks.swarm.check`` before anything is measured): the registry on the "origin" host behind
a shaped uplink, a supernode, and N node hosts, each with its own dfdaemon (own --home, its proxy
on the host's 127.0.0.1) and skopeo. Cases, each ``--repeat`` times (medians reported):

- direct: skopeo pulls from the registry;
- cold: a fresh supernode (empty CDN cache) and fresh dfdaemons;
- cached: the supernode's cache warm (the cold case just filled it), fresh dfdaemons;
- again (1 host): the dfdaemon that pulled cold pulls again (its own store holds the layers).

Registry bytes are what the registry host sent on its veth (kernel counters, headers included)
and the blob GETs in its access log; each dfdaemon's bytes by source come from its /metrics.
Everything started is stopped by pid, and the namespaces are deleted, however the run ends.
The loopback mode (no ``--netns``) is the quick, unshaped variant: dfdaemon's overhead only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import machine, write_section  # noqa: E402

SECTION = ("registry-pull", "Registry pull through dfdaemon")
RESULTS = ROOT / "benchmarks" / "results"
REGISTRY_PORT = 5000
PROXY_PORT = 65001
REPO_NAME = "bench/app"
Mbit = 1_000_000
BLOB_GET_RE = re.compile(
    r'"GET /v2/[^ ]*/blobs/(sha256:[0-9a-f]{64})[^ ]* HTTP/1\.1" (\d{3}) \d+ "[^"]*" "([^"]*)"'
)
METRIC_BYTES_RE = re.compile(
    r'^dragonfly_dfget_download_bytes_total\{source="(\w+)"\} (\S+)$', re.M
)
METRIC_UPLOAD_RE = re.compile(r"^dragonfly_dfget_upload_bytes_total (\S+)$", re.M)


# -- the loopback variant (no namespaces, no shaping) ---------------------------------------


def loopback(a: argparse.Namespace) -> None:
    from tests.integration.test_dfdaemon_images import (
        build_image,
        pull_via_mirror,
        push,
        skopeo,
        start_dfdaemon,
        start_registry,
    )
    from tests.integration.test_dfdaemon_registry import mirror_config
    from tests.procs import Procs, start_supernode

    def blob_bytes(reg: Any, digests: dict[str, int]) -> int:
        gets = reg.blob_gets()
        return sum(gets.get(d, 0) * size for d, size in digests.items())

    work = Path(tempfile.mkdtemp(prefix="registry-pull-"))
    procs = Procs(work)
    rows: list[tuple[str, float, int]] = []
    try:
        img = build_image(work / "img", [a.layer_mb * 1_000_000] * a.layers, seed=7)
        sizes = {
            d: (img.layout / "blobs/sha256" / d.split(":")[1]).stat().st_size for d in img.layers
        }
        reg = start_registry(procs, work / "reg")
        push(img, reg, REPO_NAME)
        base = blob_bytes(reg, sizes)

        def timed(label: str, fn: Any) -> None:
            nonlocal base
            t = time.monotonic()
            fn()
            dt = time.monotonic() - t
            served = blob_bytes(reg, sizes) - base
            base += served
            rows.append((label, dt, served))
            print(f"{label:45s} {dt:7.2f}s  registry blob bytes {served / 1e6:8.1f} MB", flush=True)

        def direct(i: int) -> None:
            r = skopeo(
                "copy",
                "--src-tls-verify=false",
                f"docker://{reg.addr}/{REPO_NAME}:latest",
                f"oci:{work / f'direct{i}'}:latest",
            )
            assert r.returncode == 0, r.stderr

        def many(fn: Any, *args: Any) -> None:
            ts = [threading.Thread(target=fn, args=(i, *args)) for i in range(a.n)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()

        timed("direct from the registry, 1 host", lambda: direct(100))
        sn = start_supernode(procs, work / "sn")
        daemons = [
            start_dfdaemon(procs, work / f"d{i}" / "home", mirror_config(reg, sn.addr), f"dfd{i}")
            for i in range(a.n)
        ]

        def via(i: int, tag: str) -> None:
            r = pull_via_mirror(reg, daemons[i].port, REPO_NAME, work / f"out-{tag}-{i}", work)
            assert r.returncode == 0, r.stderr

        timed("through dfdaemon, 1 host, cold", lambda: via(0, "cold"))
        timed("through dfdaemon, 1 host, again", lambda: via(0, "again"))
        timed(f"direct from the registry, {a.n} hosts at once", lambda: many(direct))
        for p in list(procs.procs):
            if p.name.startswith(("dfd", "supernode")):
                procs.stop(p)
        sn = start_supernode(procs, work / "sn2", name="supernode2")
        daemons = [
            start_dfdaemon(procs, work / f"e{i}" / "home", mirror_config(reg, sn.addr), f"dfe{i}")
            for i in range(a.n)
        ]
        timed(f"through dfdaemon, {a.n} hosts at once, cold", lambda: many(via, "ncold"))
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    print("| run | time (s) | registry blob bytes served (MB) |\n|---|---|---|")
    for label, dt, served in rows:
        print(f"| {label} | {dt:.2f} | {served / 1e6:.1f} |")


# -- the measurement in network namespaces ----------------------------------------------------


@dataclass
class Settings:
    n: int = 4
    layers: int = 5
    layer_mb: int = 60
    registry_up: int = 500 * Mbit
    registry_down: int = 1000 * Mbit
    supernode_up: int = 1000 * Mbit
    supernode_down: int = 1000 * Mbit
    node_up: int = 1000 * Mbit
    node_down: int = 1000 * Mbit
    rtt_ms: float = 0.0
    queue_ms: float = 30.0
    repeat: int = 3
    timeout: float = 600.0
    workdir: str = ""
    trace: bool = False  # per-piece timestamps from the supernode and dfdaemons
    #: an experiment (with trace): the supernode's scheduler uses this piece order
    piece_policy: str = ""


class World:
    """The topology, the processes, and the helpers every case uses."""

    def __init__(self, s: Settings, rundir: Path) -> None:
        from benchmarks.swarm.procs import ProcSet
        from benchmarks.swarm.topology import Topology, new_tag, plan_hosts

        self.s = s
        self.rundir = rundir
        self.procs = ProcSet(rundir / "logs")
        hosts = plan_hosts(
            s.n,
            s.registry_up,
            s.registry_down,
            s.supernode_up,
            s.supernode_down,
            s.node_up,
            s.node_down,
        )
        self.topo = Topology(
            new_tag(), hosts, self.procs, rundir, rtt_ms=s.rtt_ms, queue_ms=s.queue_ms
        )
        self.registry: Any = None
        self.supernode: Any = None
        self.serial = 0
        self.skopeo = shutil.which("skopeo") or "skopeo"
        self.trace = rundir / "trace.jsonl" if s.trace else None
        self.daemons: dict[str, Any] = {}  # host → the dfdaemon running there now

    def traced_env(self) -> contextlib.AbstractContextManager[None]:
        """Processes started in this block load ``benchmarks.pulltrace``'s hooks (--trace)."""
        if self.trace is None:
            return contextlib.nullcontext()
        return _env(
            DAMSELFLY_PULLTRACE=str(self.trace),
            DAMSELFLY_PULLTRACE_PIECES=self.s.piece_policy,
            PYTHONPATH=os.pathsep.join(
                [
                    str(ROOT / "benchmarks" / "pulltrace"),
                    str(ROOT),
                    os.environ.get("PYTHONPATH", ""),
                ]
            ),
        )

    def trace_summary(self, t0: float, t1: float) -> dict[str, Any] | None:
        from benchmarks.pulltrace import analyse

        if self.trace is None or not self.trace.exists():
            return None
        events = [e for e in analyse.load(self.trace) if t0 <= e["t"] <= t1]
        return analyse.summary(events)

    @property
    def reg_addr(self) -> str:
        return f"{self.topo.hosts['origin'].ip}:{REGISTRY_PORT}"

    @property
    def nodes(self) -> list[str]:
        return [h.name for h in self.topo.peers]

    def fresh(self, what: str) -> Path:
        self.serial += 1
        d = self.rundir / f"{self.serial:03d}-{what}"
        d.mkdir(parents=True)
        return d

    def curl(self, host: str, url: str) -> str:
        return self.topo.run_in(host, ["curl", "-fsS", "--max-time", "5", url])

    def wait_http(self, host: str, url: str, proc: Any, what: str, timeout: float = 30) -> None:
        from benchmarks.swarm.topology import TopologyError

        deadline = time.monotonic() + timeout
        while True:
            if proc.popen.poll() is not None:
                raise TopologyError(f"{what} exited at start: {proc.output()[-800:]}")
            r = subprocess.run(
                self.topo.exec_argv(
                    host, ["curl", "-sS", "-o", "/dev/null", "--max-time", "2", url]
                ),
                capture_output=True,
                check=False,
            )
            if r.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise TopologyError(f"{what} did not answer {url} in {timeout:g}s")
            time.sleep(0.1)

    # -- the registry --------------------------------------------------------------------

    def start_registry(self) -> None:
        import yaml

        exe = shutil.which("docker-registry")
        if exe is None:
            raise RuntimeError("needs Debian's docker-registry (apt-get install docker-registry)")
        root = self.rundir / "registry"
        root.mkdir()
        conf = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(root / "storage")}},
            "http": {"addr": f"0.0.0.0:{REGISTRY_PORT}"},
        }
        cfile = root / "registry.yml"
        cfile.write_text(yaml.safe_dump(conf))
        self.registry = self.procs.start(
            "registry", self.topo.exec_argv("origin", [exe, "serve", str(cfile)])
        )
        self.wait_http("origin", f"http://{self.reg_addr}/v2/", self.registry, "the registry")

    def blob_gets(self) -> int:
        """Successful blob GETs in the registry's access log so far."""
        text = self.registry.log.read_text(errors="replace")
        return sum(1 for m in BLOB_GET_RE.finditer(text) if m.group(2) in ("200", "206"))

    def push(self, layout: Path) -> None:
        # from the registry's own namespace: no shaped link, no counted byte
        self.topo.run_in(
            "origin",
            [
                self.skopeo,
                "copy",
                "--dest-tls-verify=false",
                f"oci:{layout}:latest",
                f"docker://{self.reg_addr}/{REPO_NAME}:latest",
            ],
            timeout=600,
        )

    # -- supernode and dfdaemons ---------------------------------------------------------

    def start_supernode(self) -> None:
        from benchmarks.swarm import damselfly_method, methods

        if self.supernode is not None:
            self.procs.stop(self.supernode)
        b = methods.Bench(self.topo, self.procs, self.fresh("supernode"), Path("-"), 0, "", 0)
        with self.traced_env():
            self.supernode = damselfly_method.start_supernode(b)

    def start_dfdaemons(self, hosts: list[str]) -> dict[str, Any]:
        import yaml
        from benchmarks.swarm.damselfly_method import SN_PORT

        sn_ip = self.topo.hosts["supernode"].ip
        conf = {
            "registry_mirror": {"remote": f"http://{self.reg_addr}"},
            "proxies": [{"regx": "blobs/sha256.*"}],
            "node": [f"{sn_ip}:{SN_PORT}"],
        }
        out = {}
        for h in hosts:
            d = self.fresh(f"dfd-{h}")
            cfile = d / "dfdaemon.yml"
            cfile.write_text(yaml.safe_dump(conf))
            with self.traced_env():
                out[h] = self.procs.start(
                    f"dfdaemon-{h}-{self.serial}",
                    self.topo.py_argv(
                        h,
                        "damselfly.dfdaemon.cli",
                        "--config",
                        str(cfile),
                        "--home",
                        str(d / "h"),
                        "--port",
                        str(PROXY_PORT),
                        "--listen",
                        "127.0.0.1",
                    ),
                    env=self.topo.env(),
                )
        for h, p in out.items():
            self.wait_http(h, f"http://127.0.0.1:{PROXY_PORT}/metrics", p, f"dfdaemon on {h}")
        self.daemons = out
        return out

    def dfdaemon_bytes(self, host: str) -> dict[str, int]:
        text = self.curl(host, f"http://127.0.0.1:{PROXY_PORT}/metrics")
        got = {src: int(float(v)) for src, v in METRIC_BYTES_RE.findall(text)}
        up = METRIC_UPLOAD_RE.search(text)
        got["uploaded"] = int(float(up.group(1))) if up else 0
        return got

    # -- one case ------------------------------------------------------------------------

    def pull(self, hosts: list[str], via_mirror: bool, label: str) -> dict[str, Any]:
        """Every host in ``hosts`` pulls the image at once; times, bytes, errors."""
        from benchmarks.swarm.methods import children_cpu_s, cpu_busy, cpu_times, wait_procs
        from benchmarks.swarm.procs import proc_cpu_s

        def infra_cpu() -> tuple[float, float]:
            daemons = [p for h, p in self.daemons.items() if h in hosts] if via_mirror else []
            sn = proc_cpu_s(self.supernode.pid) if via_mirror and self.supernode else 0.0
            return sum(proc_cpu_s(p.pid) for p in daemons), sn

        d = self.fresh(label)
        clients = {}
        before = self.topo.counters()
        gets0 = self.blob_gets()
        load = os.getloadavg()[0]
        cpu0 = cpu_times()
        infra0, ru0 = infra_cpu(), children_cpu_s()
        wall0 = time.time()
        t0 = time.monotonic()
        for h in hosts:
            argv = [self.skopeo]
            if via_mirror:
                conf = d / f"registries-{h}.conf"
                conf.write_text(
                    f'[[registry]]\nlocation = "{self.reg_addr}"\ninsecure = true\n'
                    f'[[registry.mirror]]\nlocation = "127.0.0.1:{PROXY_PORT}"\ninsecure = true\n'
                )
                argv += ["--registries-conf", str(conf)]
            argv += [
                "copy",
                "--src-tls-verify=false",
                f"docker://{self.reg_addr}/{REPO_NAME}:latest",
                f"oci:{d / h}:latest",
            ]
            clients[h] = self.procs.start(f"skopeo-{label}-{h}", self.topo.exec_argv(h, argv))
        waited = wait_procs(clients, t0, self.s.timeout)
        cpu1 = cpu_times()
        infra1, ru1 = infra_cpu(), children_cpu_s()
        after = self.topo.counters()
        self.procs.stop_many(list(clients.values()))
        errors = {}
        for h, (t, rc) in waited.items():
            if t is None or rc != 0:
                errors[h] = f"exit {rc}: {clients[h].output(600).strip()[-300:]}"
        times = [t for t, _rc in waited.values() if t is not None]
        shutil.rmtree(d, ignore_errors=True)  # the pulled layouts: free the space
        trace = self.trace_summary(wall0, time.time()) if via_mirror else None
        return {
            "label": label,
            "hosts": hosts,
            "times_s": {h: (None if t is None else round(t, 3)) for h, (t, _rc) in waited.items()},
            "makespan_s": round(max(times), 3) if len(times) == len(hosts) else None,
            "registry_sent_bytes": after["origin"][0] - before["origin"][0],
            "supernode_sent_bytes": after["supernode"][0] - before["supernode"][0],
            "nodes_sent_bytes": sum(after[h][0] - before[h][0] for h in self.nodes),
            "registry_blob_gets": self.blob_gets() - gets0,
            "loadavg_1m_before": round(load, 2),
            "cpu_busy": cpu_busy(cpu0, cpu1),
            "cpu_s": {
                "skopeo": round(ru1 - ru0, 2),
                "dfdaemons": round(infra1[0] - infra0[0], 2),
                "supernode": round(infra1[1] - infra0[1], 2),
            },
            "errors": errors,
            **({"trace": trace} if trace else {}),
        }


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_netns(s: Settings, log: Any) -> dict[str, Any]:
    from benchmarks.swarm.check import ShapingError, check_rtt, run_checks
    from benchmarks.swarm.runner import signals_held
    from tests.integration.test_dfdaemon_images import build_image

    base = Path(s.workdir) if s.workdir else Path("/var/tmp")
    rundir = Path(tempfile.mkdtemp(prefix="rp-", dir=base))
    w = World(s, rundir)
    result: dict[str, Any] = {
        "settings": asdict(s),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "runs": [],
    }
    try:
        log(f"work dir {rundir}; building the image ({s.layers} × {s.layer_mb} MB)")
        img = build_image(rundir / "img", [s.layer_mb * 1_000_000] * s.layers, seed=7)
        blobs = img.layout / "blobs" / "sha256"
        result["layer_bytes"] = [(blobs / d.split(":")[1]).stat().st_size for d in img.layers]
        result["image_bytes"] = sum((blobs / d.split(":")[1]).stat().st_size for d in img.blobs)
        log(f"image: {result['image_bytes'] / 1e6:.1f} MB of blobs; building the namespaces")
        w.topo.create()
        result["qdiscs"] = w.topo.qdiscs()
        for attempt in (1, 2):
            log("checking the link shaping")
            try:
                result["shaping_check"] = run_checks(w.topo, w.procs, all_at_once=False)
                break
            except ShapingError as e:
                if attempt == 2:
                    raise
                log(f"{e} — trying again")
        w.start_registry()
        w.push(img.layout)
        shutil.rmtree(img.layout, ignore_errors=True)
        if s.rtt_ms > 0:
            result["rtt_check"] = check_rtt(
                w.topo, w.procs, w.nodes[0], "origin", REGISTRY_PORT, s.rtt_ms
            )
        one, all_ = w.nodes[:1], w.nodes
        for rep in range(1, s.repeat + 1):
            runs: list[dict[str, Any]] = []

            def case(
                name: str,
                hosts: list[str],
                mirror: bool,
                rep: int = rep,
                runs: list[dict[str, Any]] = runs,
            ) -> None:
                r = w.pull(hosts, mirror, f"{name}-r{rep}")
                r["case"] = name
                r["repeat"] = rep
                runs.append(r)
                log(
                    f"{name:12s} rep {rep}: {r['makespan_s']} s, registry sent "
                    f"{r['registry_sent_bytes'] / 1e6:.1f} MB, {r['registry_blob_gets']} blob "
                    f"GETs, load {r['loadavg_1m_before']}"
                    + (f" ERR {r['errors']}" if r["errors"] else "")
                )
                if r.get("trace"):
                    from benchmarks.pulltrace import analyse

                    log("trace:\n" + analyse.text(r["trace"]))

            case("direct-1", one, False)
            w.start_supernode()
            ds = w.start_dfdaemons(one)
            case("cold-1", one, True)
            runs[-1]["dfdaemon_bytes"] = {h: w.dfdaemon_bytes(h) for h in one}
            case("again-1", one, True)
            w.procs.stop_many(list(ds.values()))
            ds = w.start_dfdaemons(one)
            case("cached-1", one, True)
            runs[-1]["dfdaemon_bytes"] = {h: w.dfdaemon_bytes(h) for h in one}
            w.procs.stop_many(list(ds.values()))
            case("direct-N", all_, False)
            w.start_supernode()
            ds = w.start_dfdaemons(all_)
            case("cold-N", all_, True)
            runs[-1]["dfdaemon_bytes"] = {h: w.dfdaemon_bytes(h) for h in all_}
            w.procs.stop_many(list(ds.values()))
            ds = w.start_dfdaemons(all_)
            case("cached-N", all_, True)
            runs[-1]["dfdaemon_bytes"] = {h: w.dfdaemon_bytes(h) for h in all_}
            w.procs.stop_many(list(ds.values()))
            result["runs"].extend(runs)
            # the dfdaemons' homes and the supernode's cache: free the space between repeats
            for p in rundir.glob("*-dfd-*"):
                shutil.rmtree(p, ignore_errors=True)
    finally:
        with signals_held():
            w.procs.stop_all()
            w.topo.destroy()
        if w.topo.made:
            log(f"WARNING: could not delete namespaces {w.topo.made}")
        shutil.rmtree(rundir, ignore_errors=True)
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


CASES = [
    ("direct-1", "direct from the registry, 1 host"),
    ("cold-1", "through dfdaemon, 1 host, cold (fresh supernode and dfdaemon)"),
    ("cached-1", "through dfdaemon, 1 host, cached (supernode warm, fresh dfdaemon)"),
    ("again-1", "through dfdaemon, 1 host, again (its own store holds the layers)"),
    ("direct-N", "direct from the registry, {n} hosts at once"),
    ("cold-N", "through dfdaemon, {n} hosts at once, cold"),
    ("cached-N", "through dfdaemon, {n} hosts at once, cached (supernode warm)"),
]


def summary(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per case: medians over the repeats."""
    rows = []
    n = res["settings"]["n"]
    direct = {}
    for key, label in CASES:
        rs = [r for r in res["runs"] if r["case"] == key]
        if not rs:
            continue
        ok = [r for r in rs if r["makespan_s"] is not None and not r["errors"]]
        t = statistics.median(r["makespan_s"] for r in ok) if ok else None
        reg = statistics.median(r["registry_sent_bytes"] for r in rs)
        src: dict[str, int] = {}
        for r in rs[-1:]:
            for b in r.get("dfdaemon_bytes", {}).values():
                for k, v in b.items():
                    src[k] = src.get(k, 0) + v
        row = {
            "case": key,
            "label": label.format(n=n),
            "median_s": t,
            "times_s": [r["makespan_s"] for r in rs],
            "registry_sent_mb": round(reg / 1e6, 1),
            "registry_per_image": round(reg / res["image_bytes"], 2),
            "blob_gets": statistics.median(r["registry_blob_gets"] for r in rs),
            "load": [r["loadavg_1m_before"] for r in rs],
            "cpu_busy": statistics.median(r["cpu_busy"] or 0 for r in rs),
            "cpu_s": {
                k: round(statistics.median(r.get("cpu_s", {}).get(k, 0) for r in rs), 2)
                for k in ("skopeo", "dfdaemons", "supernode")
            },
            "sources_mb": {k: round(v / 1e6, 1) for k, v in src.items()},
            "failures": sum(1 for r in rs if r["errors"]),
        }
        if key.startswith("direct"):
            direct[key.split("-")[1]] = t
        base = direct.get(key.split("-")[1])
        row["vs_direct"] = round(t / base, 2) if t and base else None
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| case | median time (s) | the runs (s) | × direct | registry sent (MB) | × image "
        "| blob GETs | dfdaemons' bytes by source, last run (MB) "
        "| CPU s: skopeo / dfdaemons / supernode | machine busy | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        src = ", ".join(f"{k} {v:g}" for k, v in r["sources_mb"].items() if v) or "-"
        t = "failed" if r["median_s"] is None else f"**{r['median_s']:.2f}**"
        out.append(
            f"| {r['label']} | {t} | {' / '.join(str(x) for x in r['times_s'])} "
            f"| {r['vs_direct'] if r['vs_direct'] is not None else '-'} "
            f"| {r['registry_sent_mb']:g} | {r['registry_per_image']:g} | {r['blob_gets']:g} "
            f"| {src} | {' / '.join(f'{v:g}' for v in r['cpu_s'].values())} "
            f"| {r['cpu_busy']:.0%} | {' / '.join(f'{x:.1f}' for x in r['load'])} |"
            + (f" ({r['failures']} failed)" if r["failures"] else "")
        )
    return "\n".join(out)


def docs_body(res: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    s = res["settings"]
    layers = res["layer_bytes"]
    chk = res.get("shaping_check", {})
    return (
        f"Image: {len(layers)} layers of random data (incompressible; gzip level 1 as the tests "
        f"build it), {res['image_bytes'] / 1e6:.1f} MB of blobs. skopeo 1.9 pulls it into an OCI "
        "layout on disk; Debian docker-registry 2.8 serves it. Network namespaces on one bridge "
        "(the swarm harness's `benchmarks/swarm/topology.py`), tbf shaping checked before the run "
        f"(every flow within {chk.get('tolerance', 0.06):.0%} of its rate; worst "
        f"{chk.get('worst_ratio')}): registry uplink **{s['registry_up'] / Mbit:g} Mbit/s** "
        f"(down {s['registry_down'] / Mbit:g}), supernode {s['supernode_up'] / Mbit:g}/"
        f"{s['supernode_down'] / Mbit:g} Mbit/s up/down, {s['n']} node hosts at "
        f"{s['node_up'] / Mbit:g}/{s['node_down'] / Mbit:g} Mbit/s, each with its own dfdaemon "
        f"(own --home on disk, proxy on the host's 127.0.0.1:{PROXY_PORT}) and skopeo using it "
        f"as the mirror (`registries.conf`); RTT {s['rtt_ms']:g} ms added. "
        f"Each case {s['repeat']} times, in order direct → cold → again → cached (1 host), then "
        "direct → cold → cached (N hosts); cold = fresh supernode (empty CDN) and fresh "
        "dfdaemons, cached = the supernode's CDN warm and fresh dfdaemons. Time = skopeo started "
        "→ last skopeo exited (manifests included). Registry sent = bytes out of the registry "
        "host's veth (headers included). Load average (1 min) at each run's start: the 2 cores "
        f"are shared with other work (load {res['loadavg_start'][0]} at the start, "
        f"{res['loadavg_end'][0]} at the end).\n\n" + table(rows) + "\n"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from benchmarks.swarm.__main__ import parse_ms, parse_rate

    ap = argparse.ArgumentParser(prog="python benchmarks/registry_pull.py")
    ap.add_argument("--netns", action="store_true", help="network namespaces, shaped (root)")
    ap.add_argument("--n", type=int, default=None, help="hosts pulling at once (netns: 4)")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--layer-mb", type=int, default=None)
    ap.add_argument("--registry-up", type=parse_rate, default=500 * Mbit)
    ap.add_argument("--registry-down", type=parse_rate, default=1000 * Mbit)
    ap.add_argument("--supernode-up", type=parse_rate, default=1000 * Mbit)
    ap.add_argument("--supernode-down", type=parse_rate, default=1000 * Mbit)
    ap.add_argument("--node-up", type=parse_rate, default=1000 * Mbit)
    ap.add_argument("--node-down", type=parse_rate, default=1000 * Mbit)
    ap.add_argument("--rtt", type=parse_ms, default=0.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per case")
    ap.add_argument("--workdir", default="", help="where the run directory goes (/var/tmp)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--write", action="store_true", help="write docs/benchmarks.md (netns)")
    ap.add_argument("--cleanup", action="store_true", help="remove namespaces of killed runs")
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="summarise these --netns result files together (and --write the section)",
    )
    ap.add_argument("--out", type=Path, help="with --merge: write the merged JSON here")
    ap.add_argument(
        "--piece-policy",
        default="",
        help="an experiment (implies --trace): the supernode's scheduler hands pieces out in "
        "this order (rarest, sequential, random) instead of its configured one",
    )
    ap.add_argument(
        "--trace",
        action="store_true",
        help="per-piece timestamps from the supernode and dfdaemons (benchmarks/pulltrace)",
    )
    return ap.parse_args(argv)


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def merge(paths: list[Path]) -> dict[str, Any]:
    """Several --netns results of the same settings as one (their runs together): runs made
    one after another, interleaved with other variants, share the machine's changing load."""
    parts = [json.loads(p.read_text()) for p in paths]
    first = parts[0]
    key = {k: v for k, v in first["settings"].items() if k not in ("repeat", "trace")}
    for p, r in zip(paths, parts, strict=True):
        other = {k: v for k, v in r["settings"].items() if k not in ("repeat", "trace")}
        if other != key or r["image_bytes"] != first["image_bytes"]:
            raise SystemExit(f"registry_pull --merge: {p} was measured with other settings")
    res = dict(first)
    res["runs"] = []
    for i, r in enumerate(parts, 1):
        for run in r["runs"]:
            res["runs"].append({**run, "repeat": i if len(parts) > 1 else run["repeat"]})
    res["settings"] = {**first["settings"], "repeat": len(parts) * first["settings"]["repeat"]}
    res["loadavg_end"] = parts[-1]["loadavg_end"]
    res["shaping_check"] = {
        "tolerance": first["shaping_check"]["tolerance"],
        "worst_ratio": min(r["shaping_check"]["worst_ratio"] for r in parts),
    }
    res["command"] = " ; ".join(sorted({r["command"] for r in parts}))
    res["merged_from"] = [p.name for p in paths]
    return res


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.merge:
        res = merge(a.merge)
        rows = summary(res)
        res["summary"] = rows
        body = docs_body(res, rows)
        print(body)
        if a.out:
            a.out.write_text(json.dumps(res, indent=1) + "\n")
            print(f"→ {a.out}")
        if a.write:
            how = (
                f"`{res['command']}` (as root), {len(a.merge)} times; `--merge` of their "
                "results wrote this section"
            )
            write_section(ROOT / "docs" / "benchmarks.md", *SECTION, how, body)
            print("wrote docs/benchmarks.md")
        return 0
    if not a.netns and not a.cleanup:
        a.n, a.layers, a.layer_mb = a.n or 3, a.layers or 4, a.layer_mb or 40
        loopback(a)
        return 0
    from benchmarks.swarm.check import ShapingError
    from benchmarks.swarm.topology import (
        TopologyError,
        can_make_namespaces,
        cleanup_namespaces,
        leftovers,
    )

    why = can_make_namespaces()
    if why:
        print(f"registry_pull --netns: cannot build namespaces: {why}", file=sys.stderr)
        return 2
    if a.cleanup:
        names = leftovers()
        cleanup_namespaces(names)
        print(f"removed {len(names)} namespaces: {' '.join(names) or '-'}")
        return 0
    if not 1 <= (a.n or 4) <= 32 or a.repeat < 1:
        print("registry_pull: --n must be 1..32 and --repeat at least 1", file=sys.stderr)
        return 2
    s = Settings(
        n=a.n or 4,
        layers=a.layers or 5,
        layer_mb=a.layer_mb or 60,
        registry_up=a.registry_up,
        registry_down=a.registry_down,
        supernode_up=a.supernode_up,
        supernode_down=a.supernode_down,
        node_up=a.node_up,
        node_down=a.node_down,
        rtt_ms=a.rtt,
        repeat=a.repeat,
        timeout=a.timeout,
        workdir=a.workdir,
        trace=a.trace or bool(a.piece_policy),
        piece_policy=a.piece_policy,
    )
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    command = "python benchmarks/registry_pull.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", flush=True)

    try:
        res = run_netns(s, log)
    except KeyboardInterrupt:
        print("interrupted: every process was stopped and every namespace deleted", file=sys.stderr)
        return 130
    except (ShapingError, TopologyError, RuntimeError, subprocess.SubprocessError) as e:
        print(f"registry_pull failed: {e}", file=sys.stderr)
        return 1
    res["command"] = command
    rows = summary(res)
    res["summary"] = rows
    a.results.mkdir(parents=True, exist_ok=True)
    path = a.results / f"registry-{time.strftime('%Y%m%d-%H%M%S')}-n{s.n}.json"
    path.write_text(json.dumps(res, indent=1) + "\n")
    body = docs_body(res, rows)
    print(body)
    print(f"→ {path}")
    if a.write:
        write_section(ROOT / "docs" / "benchmarks.md", *SECTION, f"`{command}` (as root)", body)
        print("wrote docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
