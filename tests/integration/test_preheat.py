"""Preheat with real processes: a file preheat against the test origin, then a dfget that the
CDN serves without the origin sending another byte; an image preheat against a real registry
(Debian's docker-registry), then pulls through dfdaemon that fetch no blob from the registry;
the CLI form; and the "download done" log line in JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from damselfly.core.ids import task_id
from damselfly.core.pieces import MiB
from tests.integration.test_dfdaemon_images import (
    build_image,
    needs_registry,
    pull_via_mirror,
    push,
    start_dfdaemon,
    start_registry,
)
from tests.integration.test_dfdaemon_registry import (
    SKOPEO_AGENT,
    assert_same_image,
    mirror_config,
)
from tests.integration.test_swarm import SUCCESS_RE, Peer, sha256
from tests.procs import Procs, SupernodeHandle, http_get, http_json, start_origin, start_supernode
from tests.procs import wait_until as wait

FINAL = ("SUCCESS", "FAILED")


def preheat(sn: SupernodeHandle, body: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    jid = http_json(f"http://{sn.addr}{prefix}/preheats", body)["id"]
    return dict(
        wait(
            lambda: (j := sn.api(f"{prefix}/preheats/{jid}"))["status"] in FINAL and j,
            timeout=60,
            what="the preheat to finish",
        )
    )


def test_file_preheat_then_dfget_hits_the_cache(procs: Procs, tmp_path: Path, random_file) -> None:  # type: ignore[no-untyped-def]
    src = random_file(tmp_path / "www", "warm.bin", 9 * MiB + 77)
    origin = start_origin(procs, tmp_path / "www")
    sn = start_supernode(procs, tmp_path / "sn", extra=["--log-format", "json"])
    url = origin.url("warm.bin") + "?Signature=SECRETSIG&v=1"
    job = preheat(
        sn,
        {"type": "file", "url": url, "filter": "Signature", "headers": {"X-Tok": "HDRSECRET"}},
        prefix="/api/v1",
    )
    assert job["status"] == "SUCCESS", job
    tid = task_id(url, ["Signature"])
    assert job["tasks"] == [tid]
    size = src.stat().st_size
    assert origin.stats()["bytes_sent"] == size
    assert sn.api(f"/api/v1/tasks/{tid}")["cdn"]["complete"] is True

    peer = Peer(procs, tmp_path, "p1")
    code, out = peer.finish(peer.start(url, sn.addr, "-f", "Signature"))
    assert code == 0, out
    m = SUCCESS_RE.search(out)
    assert m and int(m.group(2)) == size, out
    assert sha256(peer.out_dir / "file.bin") == sha256(src)
    assert origin.stats()["bytes_sent"] == size  # the origin sent nothing more

    # one JSON "download done" line with the task, the peer and bytes by source
    def done_line() -> dict[str, Any] | None:
        for line in sn.proc.output().splitlines():
            if line.startswith("{") and "download done" in line:
                return dict(json.loads(line))
        return None

    rec = wait(done_line, what="the download-done log line")
    assert tid in rec["message"] and f"supernode {size}" in rec["message"], rec
    listing = http_get(f"http://{sn.addr}/preheats")[1].decode()
    for secret in ("SECRETSIG", "HDRSECRET"):
        assert secret not in listing
        assert secret not in sn.proc.output()


def test_preheat_api_refuses_bad_input_and_unknown_ids(procs: Procs, tmp_path: Path) -> None:
    sn = start_supernode(procs, tmp_path / "sn")
    for body in ({"type": "image", "url": "http://h/x"}, {"url": "file:///etc/passwd"}):
        req = json.dumps(body).encode()
        r = subprocess.run(
            [
                "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                "-d", req.decode(), f"http://{sn.addr}/preheats",
            ],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert r.stdout == "400", (body, r.stdout)
    assert http_get(f"http://{sn.addr}/preheats/nope")[0] == 404


def test_failed_file_preheat_says_why(procs: Procs, tmp_path: Path) -> None:
    (tmp_path / "www").mkdir()
    origin = start_origin(procs, tmp_path / "www")
    sn = start_supernode(procs, tmp_path / "sn")
    job = preheat(sn, {"url": origin.url("missing.bin")})
    assert job["status"] == "FAILED"
    assert "404" in job["message"] or "not found" in job["message"].lower(), job


def test_preheat_cli(procs: Procs, tmp_path: Path, random_file) -> None:  # type: ignore[no-untyped-def]
    random_file(tmp_path / "www", "cli.bin", 300_000)
    origin = start_origin(procs, tmp_path / "www")
    sn = start_supernode(procs, tmp_path / "sn")
    cmd = [sys.executable, "-m", "damselfly.supernode.cli", "preheat", "--node", sn.addr]
    r = subprocess.run(
        [*cmd, "--url", origin.url("cli.bin"), "--header", "X-A: SECRETVAL"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "preheat SUCCESS" in r.stdout, r.stdout
    assert origin.stats()["bytes_sent"] == 300_000
    r = subprocess.run(
        [*cmd, "--url", origin.url("absent.bin")], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1
    assert "preheat FAILED" in r.stderr and "Traceback" not in r.stderr


@needs_registry
def test_image_preheat_then_pulls_hit_the_cache(procs: Procs, tmp_path: Path) -> None:
    img = build_image(tmp_path / "img", [2_000_000, 900_000], seed=7)
    reg = start_registry(procs, tmp_path / "reg")
    push(img, reg, "team/warm")
    sn = start_supernode(procs, tmp_path / "sn")
    job = preheat(sn, {"type": "image", "url": f"http://{reg.addr}/v2/team/warm/manifests/latest"})
    assert job["status"] == "SUCCESS", job
    assert len(job["tasks"]) == len(img.blobs)
    fetched = wait(
        lambda: (b := reg.blob_gets()) and all(b.get(d) == 1 for d in img.blobs) and b,
        what="the registry to log the preheat's blob GETs",
    )
    before_skopeo = reg.blob_gets(SKOPEO_AGENT)
    for i in range(2):  # two hosts pull: every blob comes from the swarm
        d = start_dfdaemon(
            procs, tmp_path / f"d{i}" / "home", mirror_config(reg, sn.addr), f"dfd{i}"
        )
        out = tmp_path / f"out{i}"
        r = pull_via_mirror(reg, d.port, "team/warm", out, tmp_path)
        assert r.returncode == 0, r.stderr
        assert_same_image(out, img.blobs)
    assert reg.blob_gets(SKOPEO_AGENT) == before_skopeo  # nothing straight from the registry
    assert reg.blob_gets() == fetched  # and no further blob fetch by anyone
