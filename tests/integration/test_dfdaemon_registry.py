"""dfdaemon as a registry mirror in front of a real registry (Debian's docker-registry), pulled
with skopeo: digests match, the blobs really went through the swarm (skopeo quietly falls back
to the registry when a mirror fails, so the registry's access log is checked by User-Agent), N
daemons pulling at once make the registry serve each layer once, and basic auth works with the
credentials given for the mirror only.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

from tests.integration.test_dfdaemon_images import (
    Registry,
    auth_file,
    build_image,
    layout_blobs,
    needs_htpasswd,
    needs_registry,
    pull_via_mirror,
    push,
    start_dfdaemon,
    start_registry,
)
from tests.procs import Procs, start_supernode, wait_until

SKOPEO_AGENT = "skopeo/"


def mirror_config(reg: Registry, supernode: str) -> dict[str, Any]:
    return {
        "registry_mirror": {"remote": f"http://{reg.addr}"},
        "proxies": [{"regx": "blobs/sha256.*"}],
        "dfget_flags": ["--verbose", "-f", "Expires&OSSAccessKeyId&Signature"],
        "node": [supernode],
    }


def assert_same_image(pulled: Path, blobs: list[str]) -> None:
    got = layout_blobs(pulled)
    assert all(k == v for k, v in got.items()), "a pulled blob's content does not match its digest"
    assert set(blobs) <= set(got)


@needs_registry
def test_pull_through_one_dfdaemon_goes_through_the_swarm(procs: Procs, tmp_path: Path) -> None:
    img = build_image(tmp_path / "img", [3_000_000, 1_500_000, 700_000], seed=1)
    reg = start_registry(procs, tmp_path / "reg")
    push(img, reg, "team/app")
    sn = start_supernode(procs, tmp_path / "sn")
    d = start_dfdaemon(procs, tmp_path / "d1" / "home", mirror_config(reg, sn.addr))
    before = reg.blob_gets(SKOPEO_AGENT)
    r = pull_via_mirror(reg, d.port, "team/app", tmp_path / "out", tmp_path)
    assert r.returncode == 0, r.stderr
    assert_same_image(tmp_path / "out", img.blobs)
    # nothing came from the registry to skopeo directly; every layer came to the supernode once
    assert reg.blob_gets(SKOPEO_AGENT) == before
    fetched = reg.blob_gets()
    assert all(fetched.get(layer) == 1 for layer in img.layers), fetched
    # a second pull is served from this host's store (no new registry blob GET)
    r = pull_via_mirror(reg, d.port, "team/app", tmp_path / "out2", tmp_path)
    assert r.returncode == 0, r.stderr
    assert_same_image(tmp_path / "out2", img.blobs)
    assert reg.blob_gets() == fetched
    assert "Authorization" not in d.proc.output()


@needs_registry
def test_three_dfdaemons_at_once_registry_serves_each_layer_once(
    procs: Procs, tmp_path: Path
) -> None:
    img = build_image(tmp_path / "img", [4_000_000, 2_000_000, 1_000_000], seed=2)
    reg = start_registry(procs, tmp_path / "reg")
    push(img, reg, "team/many")
    sn = start_supernode(procs, tmp_path / "sn")
    daemons = [
        start_dfdaemon(procs, tmp_path / f"d{i}" / "home", mirror_config(reg, sn.addr), f"dfd{i}")
        for i in range(3)
    ]
    results: dict[int, Any] = {}

    def pull(i: int) -> None:
        results[i] = pull_via_mirror(
            reg, daemons[i].port, "team/many", tmp_path / f"out{i}", tmp_path
        )

    threads = [threading.Thread(target=pull, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    for i in range(3):
        assert results[i].returncode == 0, results[i].stderr
        assert_same_image(tmp_path / f"out{i}", img.blobs)
    assert reg.blob_gets(SKOPEO_AGENT) == {}
    served = reg.blob_gets()
    assert all(served.get(layer) == 1 for layer in img.layers), served


@needs_registry
@needs_htpasswd
def test_basic_auth_private_registry_credentials_for_the_mirror_only(
    procs: Procs, tmp_path: Path
) -> None:
    img = build_image(tmp_path / "img", [2_000_000, 500_000], seed=3)
    reg = start_registry(procs, tmp_path / "reg", auth=True)
    push(
        img,
        reg,
        "private/app",
        auth_file(tmp_path / "push.json", {reg.addr: (reg.user, reg.password)}),
    )
    sn = start_supernode(procs, tmp_path / "sn")
    d = start_dfdaemon(procs, tmp_path / "d" / "home", mirror_config(reg, sn.addr))
    # skopeo has credentials for the mirror's host only: a pull that bypassed the mirror fails
    creds = auth_file(tmp_path / "pull.json", {f"127.0.0.1:{d.port}": (reg.user, reg.password)})
    r = pull_via_mirror(reg, d.port, "private/app", tmp_path / "out", tmp_path, creds)
    assert r.returncode == 0, r.stderr
    assert_same_image(tmp_path / "out", img.blobs)
    fetched = reg.blob_gets()
    assert all(fetched.get(layer) == 1 for layer in img.layers), fetched
    assert reg.blob_gets(SKOPEO_AGENT) == {}
    # the password is nowhere in the daemon's or the supernode's output, argv or homes
    for text in (d.proc.output(), sn.proc.output()):
        assert reg.password not in text
    for home in (d.home, sn.home):
        for p in home.rglob("*"):
            if p.is_file() and p.stat().st_size < 1 << 20:
                assert reg.password.encode() not in p.read_bytes(), p
    assert reg.password not in json.dumps(Path(f"/proc/{d.proc.pid}/cmdline").read_text())


@needs_registry
def test_a_corrupting_peer_never_yields_a_wrong_layer(procs: Procs, tmp_path: Path) -> None:
    img = build_image(tmp_path / "img", [9_000_000, 300_000], seed=4)
    reg = start_registry(procs, tmp_path / "reg")
    push(img, reg, "team/evil")
    sn = start_supernode(procs, tmp_path / "sn")
    big = img.layers[0]
    ready = tmp_path / "evil.ready"
    procs.start(
        "evil",
        [
            sys.executable,
            "-m",
            "tests.support.evil_peer",
            "--supernode",
            sn.addr,
            "--url",
            f"http://{reg.addr}/v2/team/evil/blobs/{big}",
            "--ready-file",
            str(ready),
        ],
        cwd=Path(__file__).resolve().parents[2],
    )
    wait_until(lambda: ready.exists() and json.loads(ready.read_text()), what="evil peer")
    d = start_dfdaemon(procs, tmp_path / "d" / "home", mirror_config(reg, sn.addr))
    r = pull_via_mirror(reg, d.port, "team/evil", tmp_path / "out", tmp_path)
    if r.returncode == 0:  # a correct layer, or a failed pull — never a wrong one
        assert_same_image(tmp_path / "out", img.blobs)
    else:
        out = tmp_path / "out"
        if out.exists():
            assert all(k == v for k, v in layout_blobs(out).items())
    assert "failed its digest check" in d.proc.output()  # the evil peer was really asked
