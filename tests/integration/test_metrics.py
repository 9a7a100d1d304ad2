"""Metrics after real runs, parsed with prometheus_client's own text parser: a swarm of three
dfget hosts (their bytes by source add up to the file size times the peers, and agree with what
the supernode served and the origin sent), and a dfdaemon's ``dragonfly_dfget_*`` after a dfget
that used its engine."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from damselfly.core.pieces import MiB
from tests.integration.test_dfdaemon_images import start_dfdaemon
from tests.integration.test_swarm import SUCCESS_RE, Peer
from tests.procs import Procs, http_get, start_origin, start_supernode


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = http_get(url)
    assert status == 200, body[:200]
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(
    m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in m.items() if n == name and want <= set(lab))


def test_swarm_bytes_by_source_add_up(procs: Procs, tmp_path: Path, random_file) -> None:  # type: ignore[no-untyped-def]
    size = 20 * MiB + 1234
    random_file(tmp_path / "www", "f.bin", size)
    origin = start_origin(procs, tmp_path / "www")
    sn = start_supernode(procs, tmp_path / "sn")
    peers = [Peer(procs, tmp_path, f"peer{i}") for i in range(3)]
    runs = [p.start(origin.url("f.bin"), sn.addr) for p in peers]
    for p, r in zip(peers, runs, strict=True):
        code, out = p.finish(r)
        assert code == 0 and SUCCESS_RE.search(out), out
    m = scrape(f"http://{sn.addr}/metrics")
    name = "dragonfly_supernode_piece_bytes_reported_total"
    by_source = {s: total(m, name, source=s) for s in ("peer", "supernode", "origin")}
    assert sum(by_source.values()) == 3 * size, by_source
    assert by_source["origin"] == 0
    # the supernode's piece server sent exactly what peers report from it
    assert total(m, "dragonfly_supernode_piece_bytes_served_total") == by_source["supernode"]
    assert (
        total(m, "dragonfly_supernode_origin_bytes_total") == size == origin.stats()["bytes_sent"]
    )
    assert total(m, "dragonfly_supernode_downloads_done_total") == 3
    assert total(m, "dragonfly_supernode_registrations_total", result="ok") == 3
    assert total(m, "dragonfly_supernode_isolated_peers") == 0
    assert total(m, "dragonfly_supernode_peers") == 3
    served = total(m, "dragonfly_supernode_pieces_served_total")
    assert served >= 1
    # one text "download done" line per peer, with its bytes by source adding up to the size
    lines = [ln for ln in sn.proc.output().splitlines() if "download done: task" in ln]
    assert len(lines) == 3, lines
    for ln in lines:
        assert f"total {size} in " in ln, ln


def test_dfdaemon_serves_dfget_metrics(procs: Procs, tmp_path: Path, random_file) -> None:  # type: ignore[no-untyped-def]
    size = 3 * MiB + 5
    random_file(tmp_path / "www", "g.bin", size)
    origin = start_origin(procs, tmp_path / "www")
    sn = start_supernode(procs, tmp_path / "sn")
    home = tmp_path / "host" / "home"
    d = start_dfdaemon(procs, home, {"node": [sn.addr]})
    before = scrape(f"http://127.0.0.1:{d.port}/metrics")
    assert total(before, "dragonfly_dfget_downloads_total") == 0
    assert total(before, "dragonfly_dfget_active_downloads") == 0
    peer = Peer(procs, tmp_path, "host")
    peer.home = home  # dfget hands the download to the daemon's engine
    code, out = peer.finish(peer.start(origin.url("g.bin"), sn.addr))
    assert code == 0 and SUCCESS_RE.search(out), out
    m = scrape(f"http://127.0.0.1:{d.port}/metrics")
    assert total(m, "dragonfly_dfget_downloads_total", result="success", reason="0") == 1
    got = {s: total(m, "dragonfly_dfget_download_bytes_total", source=s) for s in
           ("origin", "supernode", "peers")}  # fmt: skip
    assert sum(got.values()) == size, got
    assert got["supernode"] == size  # the only holder
    assert total(m, "dragonfly_dfget_back_source_total") == 0
    assert total(m, "dragonfly_dfget_download_duration_seconds_count") == 1
    status, _ = http_get(f"http://127.0.0.1:{d.port}/nothing-here")
    assert status == 404


def dashboard_names(prefix: str) -> set[str]:
    import json
    import re

    path = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "damselfly.json"
    exprs = [t["expr"] for p in json.loads(path.read_text())["panels"] for t in p["targets"]]
    return set(re.findall(rf"\b({prefix}_[a-z_]+)", " ".join(exprs)))


def test_dashboard_uses_only_metrics_that_exist(procs: Procs, tmp_path: Path) -> None:
    sn = start_supernode(procs, tmp_path / "sn")
    d = start_dfdaemon(procs, tmp_path / "h" / "home", {"node": [sn.addr]})
    for url, prefix in (
        (f"http://{sn.addr}/metrics", "dragonfly_supernode"),
        (f"http://127.0.0.1:{d.port}/metrics", "dragonfly_dfget"),
    ):
        families = list(text_string_to_metric_families(http_get(url)[1].decode()))
        # a labelled counter with no sample yet still declares its family
        have = {f.name + suffix for f in families for suffix in ("", "_total", "_bucket")}
        missing = dashboard_names(prefix) - have
        assert dashboard_names(prefix) and not missing, missing
