"""``registry_mirror.namespaces``: one dfdaemon in front of two registries, chosen by containerd's
``?ns=<registry>``. Two of Debian's ``docker-registry`` on loopback hold *different* images under
the same name, so a request sent to the wrong one gets the wrong digests. Checked with plain HTTP
requests (manifests by tag, blobs through the swarm, an unknown ``ns``, no ``ns``) and with
containerd pulling both images through the one mirror.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.integration.test_dfdaemon_containerd import ctr, needs_containerd, start_containerd
from tests.integration.test_dfdaemon_images import (
    OCI_MANIFEST,
    Registry,
    build_image,
    needs_registry,
    push,
    sha256_hex,
    start_dfdaemon,
    start_registry,
)
from tests.procs import Procs, start_supernode


def ns_config(default: Registry, regs: list[Registry], supernode: str) -> dict[str, Any]:
    return {
        "registry_mirror": {
            "remote": f"http://{default.addr}",
            "namespaces": {r.addr: f"http://{r.addr}" for r in regs},
        },
        "proxies": [{"regx": "blobs/sha256.*"}],
        "node": [supernode],
    }


def get(port: int, path: str) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Accept": OCI_MANIFEST})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return int(r.status), bytes(r.read())
    except urllib.error.HTTPError as e:
        return int(e.code), bytes(e.read())


@needs_registry
def test_ns_picks_the_registry(procs: Procs, tmp_path: Path) -> None:
    imgs = [build_image(tmp_path / f"img{i}", [400_000 + i * 1000], seed=30 + i) for i in range(2)]
    regs = [start_registry(procs, tmp_path / f"reg{i}", f"registry{i}") for i in range(2)]
    for img, reg in zip(imgs, regs, strict=True):
        push(img, reg, "team/same")
    sn = start_supernode(procs, tmp_path / "sn")
    d = start_dfdaemon(procs, tmp_path / "d" / "home", ns_config(regs[0], regs, sn.addr))
    for img, reg in zip(imgs, regs, strict=True):
        status, body = get(d.port, f"/v2/team/same/manifests/latest?ns={reg.addr}")
        assert status == 200
        assert f"sha256:{sha256_hex(body)}" == img.manifest  # this registry's image, not the other
        layer = img.layers[0]
        status, blob = get(d.port, f"/v2/team/same/blobs/{layer}?ns={reg.addr}")
        assert status == 200 and f"sha256:{sha256_hex(blob)}" == layer
        assert reg.blob_gets().get(layer) == 1  # fetched by the supernode from this registry
    # no ns (Docker, skopeo): the default remote
    status, body = get(d.port, "/v2/team/same/manifests/latest")
    assert status == 200 and f"sha256:{sha256_hex(body)}" == imgs[0].manifest
    # an ns no remote serves: 404 with the distribution error body, so containerd goes direct
    status, body = get(d.port, "/v2/team/same/manifests/latest?ns=ghcr.io")
    assert status == 404
    assert json.loads(body)["errors"][0]["code"] == "NAME_UNKNOWN"
    for reg in regs:
        assert "ns=" not in reg.proc.output()


@needs_registry
@needs_containerd
def test_containerd_pulls_two_registries_through_one_dfdaemon(procs: Procs, tmp_path: Path) -> None:
    imgs = [
        build_image(tmp_path / f"img{i}", [1_500_000, 300_000 + i], seed=40 + i) for i in range(2)
    ]
    regs = [start_registry(procs, tmp_path / f"reg{i}", f"registry{i}") for i in range(2)]
    for img, reg in zip(imgs, regs, strict=True):
        push(img, reg, "team/ctr")
    sn = start_supernode(procs, tmp_path / "sn")
    d = start_dfdaemon(procs, tmp_path / "d" / "home", ns_config(regs[0], regs, sn.addr))
    sock = start_containerd(procs, tmp_path / "ctd")
    hosts_dir = tmp_path / "certs.d"
    for reg in regs:
        (hosts_dir / reg.addr).mkdir(parents=True)
        (hosts_dir / reg.addr / "hosts.toml").write_text(
            f'server = "http://{reg.addr}"\n\n'
            f'[host."http://127.0.0.1:{d.port}"]\n  capabilities = ["pull", "resolve"]\n'
        )
    for img, reg in zip(imgs, regs, strict=True):
        ref = f"{reg.addr}/team/ctr:latest"
        r = ctr(sock, "image", "pull", "--plain-http", "--hosts-dir", str(hosts_dir), ref)
        assert r.returncode == 0, r.stdout + r.stderr
        content = ctr(sock, "content", "ls", "-q").stdout
        assert all(digest in content for digest in img.blobs)
        assert reg.blob_gets("containerd") == {}  # the layers came through the swarm
        served = reg.blob_gets()
        assert all(served.get(layer) == 1 for layer in img.layers), served
        images = ctr(sock, "image", "ls", "-q").stdout
        assert ref in images
