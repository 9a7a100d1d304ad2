"""Logs of real processes: ``--log-format json`` makes every log line of a supernode, of dfget's
background engines and of a dfdaemon one JSON object; each download ends with one line whose
bytes by source add up to the file; ``--header`` credentials appear in no log; and a peer that
goes back to the origin tells the supernode why (``dragonfly_supernode_back_source_total``)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from damselfly.core.ids import task_id
from damselfly.core.pieces import MiB
from damselfly.supernode.cdn import CDNConfig
from tests.integration.test_dfdaemon_images import start_dfdaemon
from tests.integration.test_metrics import scrape, total
from tests.integration.test_swarm import Peer
from tests.procs import SUCCESS_RE, Procs, free_port, start_origin, start_supernode

SECRET = "Bearer s3cr3t-log-token-5e1f"
CDN_RETRIES = next(int(f.default) for f in fields(CDNConfig) if f.name == "retries")  # type: ignore[call-overload]
REASONS = (
    "register_fail",
    "md5_mismatch",
    "download_error",
    "no_space",
    "no_supernode",
    "source_error",
    "user_source",
    "other",
)


def json_lines(text: str, where: str, allowed: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every line of ``text`` parsed as a JSON log object (lines starting with ``allowed``
    prefixes, e.g. a readiness handshake on stdout, are skipped)."""
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith(allowed):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise AssertionError(f"{where}: not a JSON line: {line!r}") from None
        assert isinstance(obj, dict), line
        assert {"time", "level", "logger", "message"} <= obj.keys(), line
        out.append(obj)
    return out


def downloads(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in lines if o.get("event") == "download"]


def all_logs(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.log*") if p.is_file())


def test_json_logs_swarm_one_line_per_download(procs: Procs, tmp_path: Path, random_file) -> None:  # type: ignore[no-untyped-def]
    size = 9 * MiB + 777
    random_file(tmp_path / "www", "f.bin", size)
    origin = start_origin(procs, tmp_path / "www", require_header=f"Authorization: {SECRET}")
    sn = start_supernode(procs, tmp_path / "sn", extra=["--log-format", "json"])
    peers = [Peer(procs, tmp_path, f"peer{i}") for i in range(3)]
    url = origin.url("f.bin") + "?sig=query-secret-value"
    extra = ("--log-format", "json", "--header", f"Authorization: {SECRET}")
    runs = [p.start(url, sn.addr, *extra, *(("--console",) if i == 0 else ())) for i, p in
            enumerate(peers)]  # fmt: skip
    tid = task_id(url, [], "", "")
    for p, r in zip(peers, runs, strict=True):
        code, out = p.finish(r)
        assert code == 0 and SUCCESS_RE.search(out), out
        # dfget's own output: the v1 success line on stdout, JSON log lines (--console) on stderr
        json_lines(out, r.name, allowed=("download SUCCESS",))
    # every engine wrote exactly one JSON download line, its bytes by source adding up
    by_source = {"origin": 0, "supernode": 0, "peers": 0}
    for p in peers:
        log_file = p.home / "logs" / "engine.log"
        lines = json_lines(log_file.read_text(), str(log_file))
        (dl,) = downloads(lines)
        assert dl["result"] == "success" and dl["reason"] == 0, dl
        assert dl["task_id"] == tid and dl["length"] == size, dl
        assert sum(dl["bytes_from"].values()) == size, dl
        assert dl["duration"] >= 0 and dl["peer_id"] and dl["peer"].startswith("127.0.0.1:"), dl
        assert "query-secret-value" not in dl["url"] and dl["url"].startswith("http://"), dl
        assert dl["level"] == "info" and dl["logger"] == "damselfly.peer.download", dl
        for k, v in dl["bytes_from"].items():
            by_source[k] += v
    assert by_source["origin"] == 0, by_source  # the supernode fetched it; peers never did
    # the supernode's console output and its log file: JSON only, one "download done" per peer
    sn_lines = json_lines(sn.proc.output(), "supernode output")
    assert sum("download done: task" in o["message"] for o in sn_lines) == 3
    file_lines = json_lines((sn.home / "logs" / "supernode.log").read_text(), "supernode.log")
    assert len(file_lines) == len(sn_lines)
    # the credential reached the origin, and no log anywhere holds it
    assert origin.stats()["statuses"].count(200) >= 1
    logs = all_logs(tmp_path)
    assert len(logs) >= 4, logs  # supernode.log, three engine.log (+ each process's output)
    for f in logs:
        text = f.read_text(errors="replace")
        assert SECRET not in text and "s3cr3t" not in text, f
        assert "query-secret-value" not in text, f


def test_dfdaemon_json_logs_and_text_default(procs: Procs, tmp_path: Path, random_file) -> None:  # type: ignore[no-untyped-def]
    size = 2 * MiB + 3
    random_file(tmp_path / "www", "g.bin", size)
    origin = start_origin(procs, tmp_path / "www")
    sn = start_supernode(procs, tmp_path / "sn")  # text, the default
    home = tmp_path / "host" / "home"
    d = start_dfdaemon(procs, home, {"node": [sn.addr]}, extra=["--log-format", "json"])
    peer = Peer(procs, tmp_path, "host")
    peer.home = home  # dfget hands the download to the daemon's in-process engine
    code, out = peer.finish(peer.start(origin.url("g.bin"), sn.addr))
    assert code == 0 and SUCCESS_RE.search(out), out
    lines = json_lines(d.proc.output(), "dfdaemon output", allowed=("dfdaemon ready",))
    (dl,) = downloads(lines)
    assert dl["result"] == "success" and dl["bytes_from"]["supernode"] == size, dl
    file_lines = json_lines((home / "logs" / "engine.log").read_text(), "dfdaemon engine.log")
    assert downloads(file_lines) == [dl]
    # the supernode kept the human-readable default: no line of it parses as a JSON object
    sn_out = sn.proc.output().splitlines()
    assert any("download done: task" in ln for ln in sn_out), sn_out
    assert not any(ln.startswith("{") for ln in sn_out), sn_out


def test_back_source_reason_reaches_supernode_metric(
    procs: Procs, tmp_path: Path, random_file
) -> None:  # type: ignore[no-untyped-def]
    size = 1 * MiB + 11
    random_file(tmp_path / "www", "h.bin", size)
    origin = start_origin(procs, tmp_path / "www")
    sn = start_supernode(procs, tmp_path / "sn", extra=["--log-format", "json"])
    metrics = f"http://{sn.addr}/metrics"
    before = scrape(metrics)
    name = "dragonfly_supernode_back_source_total"
    # every reason is declared (at 0) before anything happens
    assert {r: total(before, name, reason=r) for r in REASONS} == dict.fromkeys(REASONS, 0.0)
    peer = Peer(procs, tmp_path, "peer")
    # 1. the origin fails the supernode's fetch and each of its retries: the registration is
    #    refused (origin_error), the peer goes to the origin itself (v1 reason 1) and says so
    origin.control(status=503, times=CDN_RETRIES + 1)
    code, out = peer.finish(peer.start(origin.url("h.bin"), sn.addr, "--log-format", "json"))
    assert code == 0, out
    m = SUCCESS_RE.search(out)
    assert m and m.group(3) == "1", out
    # 2. -p source: the user asked for the origin (v1 reason 100)
    code, out = peer.finish(
        peer.start(origin.url("h.bin"), sn.addr, "-p", "source", output="again.bin")
    )
    m = SUCCESS_RE.search(out)
    assert code == 0 and m and m.group(3) == "100", out
    # 3. no supernode answers and --notbs forbids the origin: a failure (v1 reason 8)
    code, out = peer.finish(
        peer.start(origin.url("h.bin"), f"127.0.0.1:{free_port()}", "--notbs", output="no.bin")
    )
    assert code == 1 and "download FAIL(8)" in out, out
    after = scrape(metrics)
    got = {r: total(after, name, reason=r) for r in REASONS}
    assert got == {**dict.fromkeys(REASONS, 0.0), "register_fail": 1.0, "user_source": 1.0}, got
    # the engine's download lines say where the bytes came from and why
    lines = json_lines((peer.home / "logs" / "engine.log").read_text(), "engine.log")
    dls = downloads(lines)
    assert [(o["result"], o["reason"]) for o in dls] == [
        ("success", 1),
        ("success", 100),
        ("failure", 8),
    ], dls
    for o in dls[:2]:
        assert o["bytes_from"] == {"origin": size, "supernode": 0, "peers": 0}, o
        assert o["error"] == "", o
    assert "--notbs" in dls[2]["error"] and sum(dls[2]["bytes_from"].values()) == 0, dls[2]
    # and the supernode logged each report
    sn_lines = json_lines(sn.proc.output(), "supernode output")
    reports = [o["message"] for o in sn_lines if "from the origin itself" in o["message"]]
    assert len(reports) == 2 and "(register_fail)" in reports[0], reports
    assert "(user_source)" in reports[1], reports
