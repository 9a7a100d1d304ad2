"""The cluster token and TLS between components (issue 6, item 4), with real processes: a swarm
with both on, a client without the token, a client that does not trust the cluster's CA.
See docs/deploy.md, "Cluster token and TLS"."""

from __future__ import annotations

import json
import re
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from damselfly.core.pieces import MiB
from damselfly.dfdaemon.certs import LeafCerts, generate_ca
from tests.integration.test_swarm import Peer
from tests.procs import (
    SUCCESS_RE,
    Procs,
    free_port,
    sha256,
    start_origin,
    wait_until,
)

TOKEN = "ctok-51d0f3e9a7b24c6e8f0a1b2c3d4e5f60"
PEERS_RE = re.compile(r"download success: .* peers (\d+) in ")


class Cluster:
    """A CA, a leaf for 127.0.0.1 and the token file, all under ``root``."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.ca = root / "ca.crt"
        generate_ca(self.ca, root / "ca.key", "Damselfly test cluster CA")
        leaves = LeafCerts(str(self.ca), str(root / "ca.key"))
        leaf = leaves.issue("127.0.0.1")
        self.cert = root / "leaf.crt"
        self.cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + self.ca.read_bytes())
        self.key = root / "leaf.key"
        self.key.write_bytes(
            leaves._leaf_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.key.chmod(0o600)
        self.token_file = root / "token"
        self.token_file.write_text(TOKEN + "\n")
        self.token_file.chmod(0o600)
        self.ctx = ssl.create_default_context(cafile=str(self.ca))

    def flags(self, token: bool = True, ca: Path | None = None) -> list[str]:
        out = ["--tls-cert", str(self.cert), "--tls-key", str(self.key)]
        out += ["--tls-ca", str(ca or self.ca)]
        return out + (["--cluster-token-file", str(self.token_file)] if token else [])

    def get(self, url: str, token: str | None = TOKEN) -> tuple[int, bytes]:
        req = urllib.request.Request(url, headers={"X-Damselfly-Token": token} if token else {})
        try:
            with urllib.request.urlopen(req, timeout=10, context=self.ctx) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()


class SecureSupernode:
    def __init__(self, procs: Procs, home: Path, cluster: Cluster) -> None:
        self.port, self.download_port = free_port(), free_port()
        self.home = home
        args = [sys.executable, "-m", "damselfly.supernode.cli", "--listen", "127.0.0.1"]
        args += ["--port", str(self.port), "--download-port", str(self.download_port)]
        args += ["--advertise-ip", "127.0.0.1", "--home-dir", str(home)]
        args += ["--cluster-token-file", str(cluster.token_file)]
        args += ["--tls-cert", str(cluster.cert), "--tls-key", str(cluster.key)]
        self.proc = procs.start("supernode", args)

        def ready() -> bool:
            if not self.proc.alive():
                raise RuntimeError(f"supernode exited:\n{self.proc.output()}")
            try:
                return cluster.get(f"{self.url}/_ping", token=None)[0] == 200
            except OSError:
                return False

        wait_until(ready, what="the supernode's /_ping over HTTPS")

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.addr}"


def peers_bytes(peer: Peer) -> int:
    text = (peer.home / "logs" / "engine.log").read_text()
    return sum(int(m.group(1)) for m in PEERS_RE.finditer(text))


def test_a_swarm_with_token_and_tls(procs: Procs, tmp_path: Path, random_file):  # type: ignore[no-untyped-def]
    cluster = Cluster(tmp_path / "pki")
    src = random_file(tmp_path / "www", "f.bin", 12 * MiB + 11)
    origin = start_origin(procs, tmp_path / "www")
    sn = SecureSupernode(procs, tmp_path / "sn", cluster)
    peers = [Peer(procs, tmp_path, f"p{i}") for i in range(3)]
    code, out = peers[0].finish(peers[0].start(origin.url("f.bin"), sn.addr, *cluster.flags()))
    assert code == 0, out
    runs = [p.start(origin.url("f.bin"), sn.addr, *cluster.flags()) for p in peers[1:]]
    for p, r in zip(peers[1:], runs, strict=True):
        code, out = p.finish(r)
        assert code == 0, out
    for p in peers:
        assert sha256(p.out_dir / "file.bin") == sha256(src)
    # later peers got pieces from earlier ones: engine-to-engine over TLS with the token
    assert sum(peers_bytes(p) for p in peers[1:]) > 0
    assert origin.stats()["bytes_sent"] == src.stat().st_size  # one origin fetch

    # the API and both kinds of piece port want the token; /_ping does not
    assert cluster.get(f"{sn.url}/_ping", token=None)[0] == 200
    status, body = cluster.get(f"{sn.url}/api/v1/tasks", token=None)
    assert status == 401 and b"cluster requires its token" in body
    assert cluster.get(f"{sn.url}/api/v1/tasks", token="wrong-" + TOKEN)[0] == 401
    status, body = cluster.get(f"{sn.url}/api/v1/tasks")
    assert status == 200
    tid = json.loads(body)["tasks"][0]["task_id"]
    # Prometheus-style "Authorization: Bearer" works on the API too
    req = urllib.request.Request(f"{sn.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10, context=cluster.ctx) as r:
        assert r.status == 200
    data = src.read_bytes()
    for port in (sn.download_port, peers[0].port):
        url = f"https://127.0.0.1:{port}/pieces/{tid}/0"
        status, body = cluster.get(url, token=None)
        assert status == 401 and b"cluster requires its token" in body, (port, body)
        status, body = cluster.get(url)
        assert status == 200 and len(body) > 0 and body == data[: len(body)], port
        # plain HTTP on a TLS port gets nothing
        try:
            urllib.request.urlopen(url.replace("https", "http"), timeout=5)
            raise AssertionError("plain HTTP was answered on a TLS port")
        except (urllib.error.URLError, OSError, ValueError) as e:
            assert not isinstance(e, urllib.error.HTTPError) or e.code == 400

    # the token is in no argv, log or answer
    for proc in procs.procs:
        assert TOKEN not in proc.output(), proc.name
    for p in peers:
        for f in (p.home / "logs").rglob("*"):
            assert TOKEN.encode() not in f.read_bytes(), f
    assert TOKEN.encode() not in cluster.get(f"{sn.url}/metrics")[1]
    for pid in Path("/proc").iterdir():
        if pid.name.isdigit():
            try:
                assert TOKEN.encode() not in (pid / "cmdline").read_bytes()
            except OSError:
                continue


def assert_failed(peer: Peer, code: int, out: str, *wanted: str) -> None:
    assert code != 0, out
    assert not SUCCESS_RE.search(out) and "Traceback" not in out
    for w in wanted:
        assert w in out, out
    assert list(peer.out_dir.iterdir()) == []


def test_a_client_without_the_token_is_refused_clearly(procs: Procs, tmp_path: Path, random_file):  # type: ignore[no-untyped-def]
    cluster = Cluster(tmp_path / "pki")
    random_file(tmp_path / "www", "f.bin", 1 * MiB)
    origin = start_origin(procs, tmp_path / "www")
    sn = SecureSupernode(procs, tmp_path / "sn", cluster)
    p = Peer(procs, tmp_path, "p")
    code, out = p.finish(p.start(origin.url("f.bin"), sn.addr, *cluster.flags(token=False)))
    assert_failed(p, code, out, "refused this host", "cluster requires its token")
    assert origin.stats()["gets"] == 0  # no silent download from the origin instead
    # a wrong token: the same
    bad = tmp_path / "bad-token"
    bad.write_text("x" * 32)
    q = Peer(procs, tmp_path, "q")
    run = q.start(
        origin.url("f.bin"), sn.addr, *cluster.flags(token=False), "--cluster-token-file", str(bad)
    )
    code, out = q.finish(run)
    assert_failed(q, code, out, "cluster requires its token")
    assert "x" * 32 not in out


def test_a_client_that_does_not_trust_the_ca_fails_clearly(
    procs: Procs, tmp_path: Path, random_file
):  # type: ignore[no-untyped-def]
    cluster = Cluster(tmp_path / "pki")
    stranger = Cluster(tmp_path / "other-pki")  # another CA: the supernode's cert is not its
    random_file(tmp_path / "www", "f.bin", 1 * MiB)
    origin = start_origin(procs, tmp_path / "www")
    sn = SecureSupernode(procs, tmp_path / "sn", cluster)
    p = Peer(procs, tmp_path, "p")
    code, out = p.finish(p.start(origin.url("f.bin"), sn.addr, *cluster.flags(ca=stranger.ca)))
    assert_failed(p, code, out, "TLS certificate did not verify", "--tls-ca")
    assert origin.stats()["gets"] == 0
