"""The swarm benchmark harness (benchmarks/swarm), small: its pure parts always, and a whole run
with N=3 peers and a 4 MiB file in real network namespaces when this machine allows (root,
``ip netns``, aria2c + opentracker; latency also needs iptables)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from benchmarks.swarm import report
from benchmarks.swarm.check import (
    TCP_GOODPUT,
    check_rtt,
    judge,
    plan_checks,
    run_round,
    wait_listening,
)
from benchmarks.swarm.delay import (
    NFQA_PACKET_HDR,
    PACKET_TYPE,
    DelayLine,
    parse,
    verdict_batch,
)
from benchmarks.swarm.procs import ProcSet, pid_alive
from benchmarks.swarm.runner import Scenario, run_scenario
from benchmarks.swarm.topology import (
    Topology,
    can_make_namespaces,
    leftovers,
    new_tag,
    plan_hosts,
    tbf_args,
)
from benchmarks.swarm.torrent import bdecode, bencode, make_torrent

M = 1_000_000
MiB = 1024 * 1024


# -- pure parts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "peers", "us", "up", "down", "term"),
    [
        (100 * MiB, 16, 200 * M, 100 * M, 200 * M, "total_upload"),  # 16·F/(200+1600)
        (100 * MiB, 1, 200 * M, 100 * M, 200 * M, "seeder_upload"),  # F/u_s (= F/d here)
        (100 * MiB, 2, 400 * M, 100 * M, 50 * M, "slowest_download"),
    ],
)
def test_t_min_is_the_largest_of_the_three_bounds(size, peers, us, up, down, term):
    t = report.t_min(size, peers, us, up, down)
    assert (
        t["t_min_s"] == t[term] == max(t["seeder_upload"], t["slowest_download"], t["total_upload"])
    )


def test_t_min_of_the_reference_scenario():
    t = report.t_min(100 * MiB, 16, 200 * M, 100 * M, 200 * M)
    assert t["t_min_s"] == pytest.approx(16 * 100 * MiB * 8 / (1800 * M))  # 7.46 s


def test_plan_checks_measures_every_upload_and_every_download():
    hosts = plan_hosts(5, 200 * M, 200 * M, 200 * M, 200 * M, 100 * M, 200 * M)
    rounds = plan_checks(hosts)
    ring = rounds[0] + rounds[1]
    assert sorted(f.senders[0] for f in ring) == sorted(h.name for h in hosts)
    assert all(len(f.senders) == 1 for f in ring)
    # within one round nobody receives twice, and a fan-in receiver never sends in its round
    for flows in rounds:
        receivers = [f.receiver for f in flows]
        assert len(receivers) == len(set(receivers))
    fanin = [f for flows in rounds[2:] for f in flows]
    assert {f.receiver for f in fanin} == {h.name for h in hosts}
    for flows in rounds[2:]:
        takers = {f.receiver for f in flows}
        assert not takers & {s for f in flows for s in f.senders}
    # every download is measured with more upload behind it than it can take
    for f in fanin:
        assert f.bound == f"down {f.receiver}"


def test_judge_counts_tcp_overhead():
    assert judge(100 * M, 100 * M * TCP_GOODPUT, 0.01) == (pytest.approx(1.0), True)
    assert judge(100 * M, 90 * M, 0.05)[1] is False


def test_tbf_args_burst_and_queue():
    assert tbf_args(100 * M, 30) == [
        "tbf",
        "rate",
        "100000000bit",
        "burst",
        "65536",
        "latency",
        "30ms",
    ]
    assert tbf_args(1000 * M, 30)[4] == str(1000 * M // 8 * 4 // 1000)  # 4 ms worth
    with pytest.raises(ValueError):
        tbf_args(0, 30)


def test_plan_hosts_addresses_are_private_and_distinct():
    hosts = plan_hosts(3, 1, 1, 1, 1, 1, 1)
    assert [h.ip for h in hosts] == [
        "10.77.0.1",
        "10.77.0.2",
        "10.77.1.1",
        "10.77.1.2",
        "10.77.1.3",
    ]
    assert len({h.index for h in hosts}) == 5
    with pytest.raises(ValueError):
        plan_hosts(0, 1, 1, 1, 1, 1, 1)


def test_bencode_roundtrip_and_torrent(tmp_path: Path):
    value = {"a": [1, b"x", {"b": -2}], "z": "s"}
    assert bencode(value) == b"d1:ali1e1:xd1:bi-2eee1:z1:se"
    assert bdecode(bencode(value)) == {b"a": [1, b"x", {b"b": -2}], b"z": b"s"}
    for bad in (b"i1", b"l", b"5:ab", b"d1:ae", b"x", b"i1ei2e"):
        with pytest.raises(ValueError):
            bdecode(bad)
    f = tmp_path / "f.bin"
    f.write_bytes(os.urandom(40000))
    data, info_hash = make_torrent(f, "http://10.77.0.2:6969/announce", 16384)
    meta = bdecode(data)
    assert isinstance(meta, dict)
    info = meta[b"info"]
    assert info[b"length"] == 40000 and len(info[b"pieces"]) == 20 * 3
    assert len(info_hash) == 40
    with pytest.raises(ValueError):
        make_torrent(f, "http://x/announce", 1000)


def test_delay_line_releases_in_order_after_the_delay():
    line = DelayLine(0.010)
    assert line.due(0.0) is None and line.next_deadline() is None
    line.arrive(5, 1.000)
    line.arrive(9, 1.004)
    assert line.next_deadline() == pytest.approx(1.010)
    assert line.due(1.0099) is None
    assert line.due(1.0100) == 5
    assert line.due(1.0200) == 9
    assert line.due(2.0) is None


def _packet_msg(packet_id: int) -> bytes:
    attr = (
        struct.pack("=HH", 11, NFQA_PACKET_HDR) + struct.pack("!IHB", packet_id, 0x0800, 2) + b"\0"
    )
    body = struct.pack("!BBH", 2, 0, 0) + attr
    return struct.pack("=IHHII", 16 + len(body), PACKET_TYPE, 0, 0, 0) + body


def test_netlink_parse_finds_packet_ids_and_errors():
    err = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -1) + b"\0" * 16
    data = _packet_msg(7) + _packet_msg(8) + err
    assert parse(data, len(data)) == ([7, 8], [1])
    assert parse(data[:20], 20) == ([], [])  # truncated: nothing invented
    v = verdict_batch(3, 42)
    length, kind = struct.unpack_from("=IH", v)
    assert length == len(v) and kind == (3 << 8) | 3
    assert struct.unpack_from("!II", v, len(v) - 8) == (1, 42)  # NF_ACCEPT up to id 42


# -- in namespaces -------------------------------------------------------------------------

WHY_NOT = can_make_namespaces() if hasattr(os, "geteuid") else "not Linux"
needs_netns = pytest.mark.skipif(bool(WHY_NOT), reason=f"swarm harness: {WHY_NOT}")
BT_MISSING = [t for t in ("aria2c", "opentracker", "setpriv", "curl") if shutil.which(t) is None]


def _our_processes(marker: str) -> list[int]:
    """Pids whose command line mentions ``marker`` (the run's directory)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmd and pid_alive(int(d.name)):
            out.append(int(d.name))
    return out


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A work directory with a short path: engines' unix sockets live below it."""
    d = Path(tempfile.mkdtemp(prefix="dsw-test-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@needs_netns
@pytest.mark.skipif(
    bool(BT_MISSING),
    reason=f"needs {', '.join(BT_MISSING)} (apt-get install aria2 opentracker util-linux curl)",
)
def test_small_swarm_run_all_methods(short_tmp: Path, tmp_path: Path):
    before = set(leftovers())
    lines: list[str] = []
    sc = Scenario(
        peers=3,
        size=4 * MiB,
        check_warm=0.2,
        check_measure=0.4,
        check_tolerance=0.15,
        check_all_at_once=False,
        timeout=60,
        workdir=short_tmp,
        log=lines.append,
    )
    result = run_scenario(sc)

    # everything it made is gone: namespaces, processes, the run directory
    assert set(leftovers()) == before
    assert _our_processes(str(short_tmp)) == []
    assert list(short_tmp.iterdir()) == []

    t = result["t_min"]["t_min_s"]
    assert t == pytest.approx(3 * 4 * MiB * 8 / (500 * M), rel=1e-3)  # N·F/(u_s + Σu_i)
    assert all(f["ok"] for f in result["shaping_check"]["flows"])
    assert result["rtt_check"]["measured_ms"] < 5
    m = result["methods"]
    assert set(m) == {"damselfly", "aria2", "direct"}
    for name, r in m.items():
        assert "error" not in r and "skipped" not in r, (name, r)
        assert r["verified"] == 3, (name, r["output_checks"], r["errors"])
        assert r["makespan_s"] is not None and r["makespan_s"] >= r["first_s"] > 0
        assert r["makespan_s"] >= t  # nothing beats physics
    F = 4 * MiB
    assert m["direct"]["origin_app_bytes"] == 3 * F  # each peer fetched it from the origin
    assert m["direct"]["origin_sent_bytes"] >= 3 * F
    assert m["aria2"]["origin_app_bytes"] == 0  # the seeder had the file
    assert m["aria2"]["supernode_sent_bytes"] + m["aria2"]["peers_sent_bytes"] >= 3 * F
    assert m["aria2"]["supernode_sent_bytes"] >= F
    assert m["damselfly"]["origin_app_bytes"] >= F  # the supernode's CDN fetched it
    assert m["damselfly"]["supernode_sent_bytes"] + m["damselfly"]["peers_sent_bytes"] >= 3 * F

    # the outputs of a run: JSON, table, plot, docs section
    path = report.write_json(result, tmp_path / "results")
    assert path.name == "n3-4mib-rtt0ms.json"
    table = report.table(result)
    assert table.count("\n") == 4 and "| 3/3 |" in table
    body = report.docs_body([result], None, ["note"])
    assert "N = 3 peers" in body and "- note" in body
    pytest.importorskip("matplotlib")
    assert report.plot([result], tmp_path / "swarm.png")
    assert (tmp_path / "swarm.png").stat().st_size > 1000


@needs_netns
@pytest.mark.skipif(shutil.which("iptables") is None, reason="latency needs iptables (NFQUEUE)")
def test_latency_is_added_and_measured(tmp_path: Path):
    """The NFQUEUE delay program gives the configured RTT, and shaping still holds under it."""
    hosts = plan_hosts(2, 200 * M, 200 * M, 200 * M, 200 * M, 100 * M, 200 * M)
    procs = ProcSet(tmp_path / "logs")
    topo = Topology(new_tag(), hosts, procs, tmp_path, rtt_ms=10)
    try:
        topo.create()
        port = 7000
        listener = procs.start(
            "listener",
            topo.py_argv(
                "origin",
                "benchmarks.swarm.probe",
                "sink",
                "--port",
                str(port),
                "--max-seconds",
                "60",
            ),
            env=topo.env(),
        )
        wait_listening(listener, "origin")
        rec = check_rtt(topo, procs, "peer1", "origin", port, 10)
        assert 9 <= rec["measured_ms"] <= 12.5
        procs.stop(listener)
        ring = plan_checks(hosts)[0]  # shaping under the delay program: one ring round
        for rec in run_round(topo, procs, ring, 0.3, 0.6, "t"):
            assert judge(rec["expected_bps"], rec["measured_bps"], 0.15)[1], rec
        assert topo.delay_cpu_s() is not None
    finally:
        procs.stop_all()
        topo.destroy()
    assert topo.made == []
    assert topo.tag not in " ".join(leftovers())
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert topo.tag not in r.stdout
