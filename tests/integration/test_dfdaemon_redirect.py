"""Blob redirects to object storage, and signed storage URLs through dfdaemon.

Debian's docker-registry 2.8 has distribution's ``redirect`` storage middleware (checked in its
binary: ``registry/storage/driver/middleware/redirect``): with ``baseurl`` it answers blob GETs
with a 307 to ``<baseurl>/docker/registry/v2/blobs/sha256/<ab>/<hex>/data`` (no query). Object
stores sign those URLs (``?Expires=…&OSSAccessKeyId=…&Signature=…``, a new signature for every
redirect), so the test puts a *signing front* at the baseurl: it answers each request with a 307
to the origin (``devtools/origin.py`` over the registry's storage directory) carrying fresh signed
query keys, and refuses requests that carry ``Authorization`` as S3 does ("only one auth mechanism
allowed"): the registry's credentials must not follow the blob to the storage.

- Mirror mode: the supernode's CDN fetch follows both redirects; the task id is the registry URL,
  so the signatures never reach it; N daemons at once make the storage send each layer once.
- Proxy mode (a client that follows the redirect itself and fetches the signed URL through
  dfdaemon): ``-f Expires&OSSAccessKeyId&Signature`` in ``dfget_flags`` keeps the signature keys
  out of the task id — three daemons, three different signatures, one task, one origin fetch;
  a daemon without the filter makes a task of its own (the control).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import secrets
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.integration.test_dfdaemon_images import (
    auth_file,
    build_image,
    needs_htpasswd,
    needs_registry,
    pull_via_mirror,
    push,
    serve_app,
    start_dfdaemon,
    start_registry,
)
from tests.integration.test_dfdaemon_registry import (
    SKOPEO_AGENT,
    assert_same_image,
    mirror_config,
)
from tests.procs import Procs, start_origin, start_supernode, wait_until

SIGNED_KEYS = "Expires&OSSAccessKeyId&Signature"


@dataclass
class SigningFront:
    """Object storage's front door: 307 to the origin with freshly signed query keys."""

    origin_port: int = 0
    requests: Counter[str] = field(default_factory=Counter)  # by method
    with_authorization: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def signed(self, path: str) -> str:
        expires = int(time.time()) + 600
        sig = secrets.token_urlsafe(18)
        return (
            f"http://127.0.0.1:{self.origin_port}{path}?Expires={expires}"
            f"&OSSAccessKeyId=damselfly-test&Signature={sig}"
        )

    async def handle(self, request: web.Request) -> web.Response:
        with self._lock:
            self.requests[request.method] += 1
            if "Authorization" in request.headers:
                self.with_authorization += 1
        if "Authorization" in request.headers:
            return web.Response(status=400, text="Only one auth mechanism allowed\n")
        return web.Response(status=307, headers={"Location": self.signed(request.path)})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self.handle)
        return app


def storage_path(digest: str) -> str:
    hexd = digest.split(":", 1)[1]
    return f"docker/registry/v2/blobs/sha256/{hexd[:2]}/{hexd}/data"


@needs_registry
@needs_htpasswd
def test_registry_redirects_to_signed_storage_three_daemons(procs: Procs, tmp_path: Path) -> None:
    img = build_image(tmp_path / "img", [3_000_000, 1_200_000], seed=21)
    front = SigningFront()
    with serve_app(front.app(), "signing-front") as front_port:
        reg = start_registry(
            procs,
            tmp_path / "reg",
            auth=True,
            extra={
                "middleware": {
                    "storage": [
                        {
                            "name": "redirect",
                            "options": {"baseurl": f"http://127.0.0.1:{front_port}"},
                        }
                    ]
                }
            },
        )
        push(
            img,
            reg,
            "team/redir",
            auth_file(tmp_path / "push.json", {reg.addr: (reg.user, reg.password)}),
        )
        origin = start_origin(procs, reg.storage)
        front.origin_port = origin.port
        sn = start_supernode(procs, tmp_path / "sn")
        daemons = [
            start_dfdaemon(
                procs, tmp_path / f"d{i}" / "home", mirror_config(reg, sn.addr), f"dfd{i}"
            )
            for i in range(3)
        ]
        results: dict[int, Any] = {}

        def pull(i: int) -> None:
            creds = auth_file(
                tmp_path / f"pull{i}.json",
                {f"127.0.0.1:{daemons[i].port}": (reg.user, reg.password)},
            )
            results[i] = pull_via_mirror(
                reg, daemons[i].port, "team/redir", tmp_path / f"out{i}", tmp_path, creds
            )

        threads = [threading.Thread(target=pull, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        for i in range(3):
            assert results[i].returncode == 0, results[i].stderr
            assert_same_image(tmp_path / f"out{i}", img.blobs)
        # the registry redirected the blobs (it served none of them itself, to anyone)
        blob_answers = [
            (m, s) for m, p, s, _a in reg.requests() if "/blobs/sha256:" in p and m == "GET"
        ]
        assert blob_answers and all(s == 307 for _m, s in blob_answers), blob_answers
        assert reg.blob_gets(SKOPEO_AGENT) == {}
        # the storage sent each layer once in all, and never saw the registry's credentials
        stats = origin.stats()
        for layer, size in zip(img.layers, _sizes(img), strict=True):
            pp = stats["per_path"].get(storage_path(layer))
            # the body once; plus, the layer being private (basic auth), at most one 1-byte
            # ranged GET: the supernode's check of the other hosts' credentials (one
            # credential shared by the hosts: cached)
            assert pp is not None and pp["requests"] <= 2, (layer, pp)
            assert pp["bytes"] == size + pp["requests"] - 1, (layer, pp)
        assert front.with_authorization == 0
        assert all("authorization" not in h for h in stats["header_hashes"])


def _sizes(img: Any) -> list[int]:
    return [(img.layout / "blobs" / "sha256" / d.split(":")[1]).stat().st_size for d in img.layers]


def _proxied_get(proxy_port: int, url: str) -> bytes:
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{proxy_port}"})
    )
    with opener.open(url, timeout=60) as r:
        return bytes(r.read())


def _redirect_of(front_port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", front_port, timeout=10)
    try:
        conn.request("GET", "/" + path)
        r = conn.getresponse()
        r.read()
        assert r.status == 307
        return str(r.getheader("Location"))
    finally:
        conn.close()


def test_signed_urls_through_the_proxy_make_one_task_with_filters(
    procs: Procs, tmp_path: Path
) -> None:
    content = os.urandom(5_000_000)
    want = hashlib.sha256(content).hexdigest()
    rel = storage_path(f"sha256:{want}")  # laid out as the registry's storage lays out blobs
    blob = tmp_path / "store" / rel
    blob.parent.mkdir(parents=True)
    blob.write_bytes(content)
    origin = start_origin(procs, tmp_path / "store")
    front = SigningFront(origin_port=origin.port)
    sn = start_supernode(procs, tmp_path / "sn")

    def config(filters: bool) -> dict[str, Any]:
        flags = ["--verbose", "-f", SIGNED_KEYS] if filters else ["--verbose"]
        return {"proxies": [{"regx": "blobs/sha256.*"}], "dfget_flags": flags, "node": [sn.addr]}

    with serve_app(front.app(), "signing-front") as front_port:
        daemons = [
            start_dfdaemon(procs, tmp_path / f"d{i}" / "home", config(True), f"dfd{i}")
            for i in range(3)
        ]
        urls = [_redirect_of(front_port, rel) for _ in daemons]
        assert len(set(urls)) == 3  # a fresh signature for every client
        got: dict[int, bytes] = {}

        def fetch(i: int) -> None:
            got[i] = _proxied_get(daemons[i].port, urls[i])

        threads = [threading.Thread(target=fetch, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert all(hashlib.sha256(got[i]).hexdigest() == want for i in range(3))
        tasks = sn.api("/api/v1/tasks")["tasks"]
        assert len(tasks) == 1, tasks
        assert origin.stats()["per_path"][rel]["bytes"] == 5_000_000
        for d in daemons:  # the signature is a credential: it is in no log
            for u in urls:
                assert u.split("Signature=")[1] not in d.proc.output()

        # the control: without the filter the signature is part of the task id
        plain = start_dfdaemon(procs, tmp_path / "d9" / "home", config(False), "dfd-nofilter")
        data = _proxied_get(plain.port, _redirect_of(front_port, rel))
        assert hashlib.sha256(data).hexdigest() == want
        assert wait_until(lambda: len(sn.api("/api/v1/tasks")["tasks"]) == 2, what="second task")
        assert origin.stats()["per_path"][rel]["bytes"] == 10_000_000
