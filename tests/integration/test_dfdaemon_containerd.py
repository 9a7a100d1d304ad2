"""containerd (Debian package, its own root, state and socket) pulls an image through dfdaemon
with ``ctr image pull --plain-http --hosts-dir DIR``: the layers come through the swarm (the
registry sees no blob GET from containerd) and the content store holds the right digests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_dfdaemon_images import (
    build_image,
    needs_registry,
    push,
    start_dfdaemon,
    start_registry,
)
from tests.integration.test_dfdaemon_registry import mirror_config
from tests.procs import Procs, start_supernode, wait_until

CONTAINERD = shutil.which("containerd")
CTR = shutil.which("ctr")

needs_containerd = pytest.mark.skipif(
    CONTAINERD is None or CTR is None,
    reason="needs the Debian package containerd (apt-get install containerd)",
)


def ctr(sock: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    assert CTR is not None
    return subprocess.run(
        [CTR, "--address", str(sock), "--namespace", "damselfly-test", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_containerd(procs: Procs, root: Path) -> Path:
    """containerd with its own root, state and socket under ``root`` (skips the test if it
    cannot run here); its socket."""
    sock = root / "containerd.sock"
    config = root / "config.toml"
    root.mkdir()
    config.write_text(
        f"""version = 2
root = "{root / "root"}"
state = "{root / "state"}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = "{root / "debug.sock"}"
"""
    )
    assert CONTAINERD is not None
    ctd = procs.start("containerd", [CONTAINERD, "--config", str(config)])

    def up() -> bool:
        if not ctd.alive():
            pytest.skip(f"containerd cannot run on this machine:\n{ctd.output()[-2000:]}")
        return sock.exists() and ctr(sock, "version", timeout=10).returncode == 0

    wait_until(up, what="containerd")
    return sock


@needs_registry
@needs_containerd
def test_ctr_pull_through_dfdaemon(procs: Procs, tmp_path: Path) -> None:
    img = build_image(tmp_path / "img", [3_000_000, 800_000], seed=5)
    reg = start_registry(procs, tmp_path / "reg")
    push(img, reg, "team/ctr")
    sn = start_supernode(procs, tmp_path / "sn")
    d = start_dfdaemon(procs, tmp_path / "d" / "home", mirror_config(reg, sn.addr))

    sock = start_containerd(procs, tmp_path / "ctd")
    hosts = tmp_path / "certs.d" / reg.addr
    hosts.mkdir(parents=True)
    (hosts / "hosts.toml").write_text(
        f"""server = "http://{reg.addr}"

[host."http://127.0.0.1:{d.port}"]
  capabilities = ["pull", "resolve"]
"""
    )
    ref = f"{reg.addr}/team/ctr:latest"
    r = ctr(sock, "image", "pull", "--plain-http", "--hosts-dir", str(tmp_path / "certs.d"), ref)
    assert r.returncode == 0, r.stdout + r.stderr
    content = ctr(sock, "content", "ls", "-q")
    assert content.returncode == 0
    for digest in img.blobs:
        assert digest in content.stdout
    assert reg.blob_gets("containerd") == {}
    served = reg.blob_gets()
    assert all(served.get(layer) == 1 for layer in img.layers), served
    assert "ns=" not in reg.proc.output()  # the mirror drops containerd's ?ns= parameter
