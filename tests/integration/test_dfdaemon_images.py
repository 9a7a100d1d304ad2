"""Real parts for dfdaemon's tests: a local image built with no network (an OCI layout written
here: tar layers, config, manifest), Debian's ``docker-registry`` on 127.0.0.1 (anonymous or with
htpasswd basic auth) with its access log, and dfdaemon processes. The tests at the end check the
parts themselves; ``test_dfdaemon_registry.py`` uses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from tests.procs import Proc, Procs, free_port, http_get, wait_until

REGISTRY = shutil.which("docker-registry")
SKOPEO = shutil.which("skopeo")
HTPASSWD = shutil.which("htpasswd")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

needs_registry = pytest.mark.skipif(
    REGISTRY is None or SKOPEO is None,
    reason="needs Debian packages docker-registry and skopeo (apt-get install docker-registry "
    "skopeo)",
)
needs_htpasswd = pytest.mark.skipif(
    HTPASSWD is None, reason="needs htpasswd (Debian package apache2-utils)"
)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Image:
    layout: Path
    layers: list[str]  # "sha256:…" of each layer blob
    config: str
    manifest: str

    @property
    def blobs(self) -> list[str]:
        return [self.config, *self.layers]


def build_image(root: Path, layer_sizes: list[int], seed: int = 0) -> Image:
    """An OCI image layout with one gzipped tar layer per size (random file contents)."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    rnd = __import__("random").Random(seed)

    def put(data: bytes) -> str:
        h = sha256_hex(data)
        (blobs / h).write_bytes(data)
        return f"sha256:{h}"

    layers, diff_ids = [], []
    for i, size in enumerate(layer_sizes):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            payload = rnd.randbytes(size)
            info = tarfile.TarInfo(f"layer{i}/data.bin")
            info.size = size
            info.mtime = 0
            tar.addfile(info, io.BytesIO(payload))
        tar_bytes = buf.getvalue()
        data = gzip.compress(tar_bytes, compresslevel=1, mtime=0)
        d = put(data)
        layers.append({"mediaType": OCI_LAYER, "digest": d, "size": len(data)})
        diff_ids.append(f"sha256:{sha256_hex(tar_bytes)}")
    cfg = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/layer0/data.bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    cfg_d = put(cfg)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": cfg_d,
                "size": len(cfg),
            },
            "layers": layers,
        }
    ).encode()
    man_d = put(manifest)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": man_d,
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }
        ],
    }
    (root / "index.json").write_text(json.dumps(index))
    return Image(root, [str(x["digest"]) for x in layers], cfg_d, man_d)


@dataclass
class Registry:
    proc: Proc
    port: int
    root: Path
    user: str = ""
    password: str = field(default="", repr=False)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    def requests(self) -> list[tuple[str, str, int, str]]:
        """Every request in the access log: (method, path with query, status, User-Agent)."""
        return [
            (m.group(1), m.group(2), int(m.group(3)), m.group(4))
            for m in re.finditer(
                r'"([A-Z]+) (/[^ ]*) HTTP/1\.1" (\d{3}) \d+ "[^"]*" "([^"]*)"', self.proc.output()
            )
        ]

    def blob_gets(self, agent: str = "") -> dict[str, int]:
        """Successful blob GETs per digest (by clients whose User-Agent has ``agent``), from the
        registry's access log."""
        counts: dict[str, int] = {}
        for m in re.finditer(
            r'"GET /v2/[^ ]*/blobs/(sha256:[0-9a-f]{64})[^ ]* HTTP/1\.1" (\d{3}) \d+ "[^"]*" '
            r'"([^"]*)"',
            self.proc.output(),
        ):
            if m.group(2) in ("200", "206") and agent in m.group(3):
                counts[m.group(1)] = counts.get(m.group(1), 0) + 1
        return counts


def start_registry(
    procs: Procs,
    root: Path,
    name: str = "registry",
    auth: bool = False,
    extra: dict[str, Any] | None = None,
) -> Registry:
    """The registry on a free loopback port; ``extra`` adds top-level config sections (``auth``
    for token auth, ``storage.middleware``…), merged one level deep."""
    assert REGISTRY is not None
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    conf: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(root / "storage")}},
        "http": {"addr": f"127.0.0.1:{port}", "debug": {"addr": ""}},
    }
    user = password = ""
    if auth:
        assert HTPASSWD is not None
        user, password = "damsel", "s3cret-" + os.urandom(6).hex()
        hfile = root / "htpasswd"
        subprocess.run(
            [HTPASSWD, "-Bic", str(hfile), user],
            input=password.encode(),
            check=True,
            capture_output=True,
        )
        conf["auth"] = {"htpasswd": {"realm": "damselfly-test", "path": str(hfile)}}
    conf["http"].pop("debug")
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(conf.get(key), dict):
            conf[key] = {**conf[key], **value}
        else:
            conf[key] = value
    cfile = root / f"{name}.yml"
    root.mkdir(parents=True, exist_ok=True)
    cfile.write_text(yaml.safe_dump(conf))
    proc = procs.start(name, [REGISTRY, "serve", str(cfile)])

    def ready() -> bool:
        if not proc.alive():
            raise RuntimeError(f"{name} exited:\n{proc.output()}")
        try:
            return http_get(f"http://127.0.0.1:{port}/v2/", timeout=1)[0] in (200, 401)
        except OSError:
            return False

    wait_until(ready, what=f"{name} /v2/")
    return Registry(proc, port, root, user, password)


def auth_file(path: Path, entries: dict[str, tuple[str, str]]) -> Path:
    import base64

    auths = {
        host: {"auth": base64.b64encode(f"{u}:{p}".encode()).decode()}
        for host, (u, p) in entries.items()
    }
    path.write_text(json.dumps({"auths": auths}))
    path.chmod(0o600)
    return path


def skopeo(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    assert SKOPEO is not None
    return subprocess.run(
        [SKOPEO, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HOME": os.environ.get("HOME", "/root")},
    )


def push(image: Image, reg: Registry, repo: str, creds: Path | None = None) -> None:
    args = ["copy", "--dest-tls-verify=false"]
    if creds is not None:
        args += ["--dest-authfile", str(creds)]
    r = skopeo(*args, f"oci:{image.layout}:latest", f"docker://{reg.addr}/{repo}:latest")
    assert r.returncode == 0, r.stderr


def registries_conf(path: Path, registry: str, mirror: str) -> Path:
    path.write_text(
        f"""
[[registry]]
location = "{registry}"
insecure = true
[[registry.mirror]]
location = "{mirror}"
insecure = true
"""
    )
    return path


def pull_via_mirror(
    reg: Registry, mirror_port: int, repo: str, dest: Path, tmp: Path, creds: Path | None = None
) -> subprocess.CompletedProcess[str]:
    # one file per pull: pulls running at once must not read each other's half-written file
    # (skopeo then sees no mirror and goes to the registry itself)
    conf = registries_conf(
        tmp / f"registries-{mirror_port}-{dest.name}.conf", reg.addr, f"127.0.0.1:{mirror_port}"
    )
    args = ["--registries-conf", str(conf), "copy", "--src-tls-verify=false"]
    if creds is not None:
        args += ["--src-authfile", str(creds)]
    return skopeo(*args, f"docker://{reg.addr}/{repo}:latest", f"oci:{dest}:latest")


def layout_blobs(layout: Path) -> dict[str, str]:
    """Every blob of an OCI layout: digest → sha256 of its content (they must agree)."""
    out = {}
    for p in (layout / "blobs" / "sha256").iterdir():
        out[f"sha256:{p.name}"] = "sha256:" + sha256_hex(p.read_bytes())
    return out


@dataclass
class Daemon:
    proc: Proc
    port: int
    home: Path


def start_dfdaemon(
    procs: Procs,
    home: Path,
    config: dict[str, Any],
    name: str = "dfdaemon",
    extra: list[str] | None = None,
) -> Daemon:
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    cfile = home.parent / f"{name}.yml"
    cfile.write_text(yaml.safe_dump(config))
    args = [sys.executable, "-m", "damselfly.dfdaemon.cli", "--config", str(cfile)]
    args += ["--home", str(home), "--port", str(port), "--listen", "127.0.0.1", *(extra or [])]
    proc = procs.start(name, args)

    def ready() -> bool:
        if not proc.alive():
            raise RuntimeError(f"{name} exited:\n{proc.output()}")
        return f"dfdaemon ready pid={proc.pid} port={port}" in proc.output()

    wait_until(ready, what=f"{name} ready")
    return Daemon(proc, port, home)


@contextlib.contextmanager
def serve_app(app: web.Application, name: str) -> Iterator[int]:
    """Serve a test's own aiohttp app (a token service, a storage front) on a free loopback port
    from a thread with its own event loop; the port, until the block ends."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    port = free_port()

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()

    thread = threading.Thread(target=loop.run_forever, name=name, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(start(), loop).result(10)
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# -- the parts themselves ---------------------------------------------------------------------


def test_built_layout_is_self_consistent(tmp_path: Path) -> None:
    img = build_image(tmp_path / "img", [1000, 200_000])
    blobs = layout_blobs(img.layout)
    assert all(k == v for k, v in blobs.items())
    assert set(img.blobs) | {img.manifest} == set(blobs)


@needs_registry
def test_registry_serves_the_pushed_image_and_logs_blob_gets(procs: Procs, tmp_path: Path) -> None:
    img = build_image(tmp_path / "img", [50_000, 60_000])
    reg = start_registry(procs, tmp_path / "reg")
    push(img, reg, "t/one")
    out = tmp_path / "pulled"
    r = skopeo(
        "copy", "--src-tls-verify=false", f"docker://{reg.addr}/t/one:latest", f"oci:{out}:latest"
    )
    assert r.returncode == 0, r.stderr
    got = layout_blobs(out)
    assert set(img.layers) <= set(got)
    assert wait_until(lambda: all(reg.blob_gets().get(d) for d in img.layers), what="access log")
