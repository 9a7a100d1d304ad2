"""Preheat: request validation, image URLs, bearer challenges and manifests (tables), and the
job table driven by a hand-written ``warm``; one real token-protected registry on loopback
(an aiohttp app) checks the anonymous-token flow end to end."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from damselfly.core.clock import FakeClock
from damselfly.core.errors import BadRequest, OriginError
from damselfly.supernode.preheat import (
    FAILED,
    RUNNING,
    SUCCESS,
    WAITING,
    ImageRef,
    Preheater,
    PreheatRequest,
    manifest_refs,
    parse_challenge,
    parse_image_url,
    token_url,
)

D1, D2, D3 = ("sha256:" + c * 64 for c in "abc")


@pytest.mark.parametrize(
    ("body", "want"),
    [
        ({"url": "http://h/f"}, ("file", "http://h/f", [], "", {})),
        (
            {"type": "file", "url": "http://h/f?a=1&s=2", "filter": "s&x", "identifier": "v1"},
            ("file", "http://h/f?a=1&s=2", ["s", "x"], "v1", {}),
        ),
        ({"url": "http://h/f", "filter": ["s"]}, ("file", "http://h/f", ["s"], "", {})),
        (
            {"url": "http://h/f", "headers": {"Authorization": "Basic eA=="}},
            ("file", "http://h/f", [], "", {"Authorization": "Basic eA=="}),
        ),
        (
            {"url": "http://h/f", "headers": ["X-K: v"]},
            ("file", "http://h/f", [], "", {"X-K": "v"}),
        ),
        (
            {"type": "image", "url": "https://r:5000/v2/lib/alpine/manifests/3.19"},
            ("image", "https://r:5000/v2/lib/alpine/manifests/3.19", [], "", {}),
        ),
    ],
)
def test_request_accepted(body: dict[str, Any], want: tuple[Any, ...]) -> None:
    r = PreheatRequest.from_json(body)
    assert (r.type, r.url, r.filter, r.identifier, r.headers) == want


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"url": "ftp://h/f"},
        {"url": "http://u:p@h/f"},
        {"url": 3},
        {"type": "torrent", "url": "http://h/f"},
        {"type": "image", "url": "http://h/library/alpine:3"},
        {"type": "image", "url": "http://h/v2/Alpine/manifests/x"},
        {"url": "http://h/f", "filter": 7},
        {"url": "http://h/f", "filter": [1]},
        {"url": "http://h/f", "identifier": ["x"]},
        {"url": "http://h/f", "headers": {"A": "b\r\nX: y"}},
        {"url": "http://h/f", "headers": {"A": 1}},
        {"url": "http://h/f", "headers": ["no colon"]},
        {"url": "http://h/f", "headers": {f"h{i}": "v" for i in range(100)}},
    ],
)
def test_request_refused(body: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        PreheatRequest.from_json(body)


def test_headers_never_in_repr_or_job_json() -> None:
    r = PreheatRequest.from_json({"url": "http://h/f?sig=SECRET", "headers": {"A": "TOKEN"}})
    assert "TOKEN" not in repr(r)


def test_image_ref_parts_and_urls() -> None:
    ref = parse_image_url("http://127.0.0.1:5000/v2/team/app/manifests/" + D1)
    assert ref == ImageRef("http://127.0.0.1:5000", "team/app", D1)
    assert ref.blob_url(D2) == f"http://127.0.0.1:5000/v2/team/app/blobs/{D2}"
    assert ref.manifest_url("v2") == "http://127.0.0.1:5000/v2/team/app/manifests/v2"


@pytest.mark.parametrize(
    ("header", "want"),
    [
        (
            'Bearer realm="https://auth.io/token",service="registry.io",scope="repository:a:pull"',
            {
                "realm": "https://auth.io/token",
                "service": "registry.io",
                "scope": "repository:a:pull",
            },
        ),
        ('bearer realm="http://t/x"', {"realm": "http://t/x"}),
        ('Basic realm="registry"', None),
        ('Bearer realm="file:///etc/passwd"', None),
        ("", None),
    ],
)
def test_parse_challenge(header: str, want: dict[str, str] | None) -> None:
    assert parse_challenge(header) == want


def test_token_url_defaults_scope_to_pull() -> None:
    ref = ImageRef("http://r", "a/b", "latest")
    assert (
        token_url({"realm": "http://t/tok"}, ref) == "http://t/tok?scope=repository%3Aa%2Fb%3Apull"
    )
    got = token_url({"realm": "http://t/tok?x=1", "service": "s", "scope": "sc"}, ref)
    assert got == "http://t/tok?x=1&service=s&scope=sc"


def _manifest(config: str, layers: list[str]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"digest": config, "size": 1},
            "layers": [{"digest": d, "size": 1} for d in layers],
        }
    ).encode()


def _index(digests: list[str]) -> bytes:
    return json.dumps(
        {"schemaVersion": 2, "manifests": [{"digest": d, "size": 1} for d in digests]}
    ).encode()


@pytest.mark.parametrize(
    ("body", "ctype", "want"),
    [
        (_manifest(D1, [D2, D3, D2]), "", ("manifest", [D1, D2, D3])),
        (_index([D1, D2]), "", ("index", [D1, D2])),
        (
            json.dumps({"manifests": []}).encode(),
            "application/vnd.docker.distribution.manifest.list.v2+json",
            ("index", []),
        ),
    ],
)
def test_manifest_refs(body: bytes, ctype: str, want: tuple[str, list[str]]) -> None:
    assert manifest_refs(body, ctype) == want


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        json.dumps({"schemaVersion": 1, "fsLayers": []}).encode(),
        _manifest("md5:abc", []),
        _index(["sha256:../../etc"]),
    ],
)
def test_manifest_refs_refused(body: bytes) -> None:
    with pytest.raises(OriginError):
        manifest_refs(body, "")


class FakeWarm:
    """``warm`` that completes when the test says so, and fails URLs ending in 'bad'."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], str, dict[str, str]]] = []
        self.release = asyncio.Event()

    async def __call__(self, url: str, flt: list[str], ident: str, headers: dict[str, str]) -> str:
        self.calls.append((url, flt, ident, headers))
        await self.release.wait()
        if url.endswith("bad"):
            raise OriginError("the origin answered 500")
        return "t" * 64


async def _settle(pre: Preheater) -> None:
    for _ in range(100):  # bounded: a few loop turns let the jobs run
        await asyncio.sleep(0)


async def test_jobs_wait_run_and_finish_within_the_concurrency_cap() -> None:
    warm = FakeWarm()
    pre = Preheater(warm, FakeClock(), max_jobs=8, max_running=2)
    await pre.start()
    try:
        jobs = [
            pre.submit(PreheatRequest.from_json({"url": f"http://h/{n}"}))
            for n in ("a", "b", "bad")
        ]
        await _settle(pre)
        assert [j.status for j in jobs] == [RUNNING, RUNNING, WAITING]
        assert len(warm.calls) == 2
        warm.release.set()
        await _settle(pre)
        assert [j.status for j in jobs] == [SUCCESS, SUCCESS, FAILED]
        assert jobs[2].message == "the origin answered 500"
        assert pre.counts == {SUCCESS: 2, FAILED: 1}
        assert pre.get(jobs[0].id) is jobs[0]
        assert jobs[0].to_json()["tasks"] == ["t" * 64]
    finally:
        await pre.close()


async def test_job_table_is_bounded_and_forgets_finished_jobs_first() -> None:
    warm = FakeWarm()
    pre = Preheater(warm, FakeClock(), max_jobs=2, max_running=2)
    await pre.start()
    try:
        req = PreheatRequest.from_json({"url": "http://h/x?sig=SECRET", "headers": {"A": "TOK"}})
        first = pre.submit(req)
        pre.submit(req)
        with pytest.raises(BadRequest):
            pre.submit(req)  # two unfinished jobs: the table is full
        warm.release.set()
        await _settle(pre)
        third = pre.submit(req)  # a finished job makes room
        assert pre.get(first.id) is None and pre.get(third.id) is third
        listed = json.dumps([j.to_json() for j in pre.jobs()])
        assert "SECRET" not in listed and "TOK" not in listed
    finally:
        await pre.close()


async def test_image_preheat_gets_anonymous_token_and_follows_the_index() -> None:
    """A registry that wants a bearer token, an index of two manifests sharing a layer."""
    token = "anon-token-123"
    man_a, man_b = _manifest(D1, [D2]), _manifest(D1, [D3])
    digests = {"sha256:" + "1" * 64: man_a, "sha256:" + "2" * 64: man_b}
    seen: list[tuple[str, str]] = []

    async def manifests(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("Authorization", "")))
        if request.headers.get("Authorization") != f"Bearer {token}":
            realm = f"http://{request.host}/token"
            return web.Response(
                status=401,
                headers={
                    "WWW-Authenticate": f'Bearer realm="{realm}",service="reg",'
                    'scope="repository:team/app:pull"'
                },
            )
        ref = request.match_info["ref"]
        body = _index(list(digests)) if ref == "latest" else digests[ref]
        return web.Response(body=body, content_type="application/vnd.oci.image.index.v1+json")

    async def token_handler(request: web.Request) -> web.Response:
        assert request.query["scope"] == "repository:team/app:pull"
        assert request.query["service"] == "reg"
        assert "Authorization" not in request.headers  # anonymous
        return web.json_response({"token": token})

    app = web.Application()
    app.router.add_get("/v2/team/app/manifests/{ref}", manifests)
    app.router.add_get("/token", token_handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    warm = FakeWarm()
    warm.release.set()
    pre = Preheater(warm, FakeClock())
    await pre.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        job = pre.submit(
            PreheatRequest.from_json(
                {"type": "image", "url": f"{base}/v2/team/app/manifests/latest"}
            )
        )
        for _ in range(500):
            if job.status in (SUCCESS, FAILED):
                break
            await asyncio.sleep(0.01)
        assert job.status == SUCCESS, job.message
        assert [c[0] for c in warm.calls] == [f"{base}/v2/team/app/blobs/{d}" for d in (D1, D2, D3)]
        assert all(c[3] == {"Authorization": f"Bearer {token}"} for c in warm.calls)
        assert "3 blob(s)" in job.message
    finally:
        await pre.close()
        await server.close()


async def test_image_preheat_fails_clearly_on_unknown_tag() -> None:
    async def missing(request: web.Request) -> web.Response:
        return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)

    app = web.Application()
    app.router.add_get("/v2/a/manifests/{ref}", missing)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    pre = Preheater(FakeWarm(), FakeClock())
    await pre.start()
    try:
        url = f"http://127.0.0.1:{server.port}/v2/a/manifests/nope"
        job = pre.submit(PreheatRequest.from_json({"type": "image", "url": url}))
        for _ in range(500):
            if job.status == FAILED:
                break
            await asyncio.sleep(0.01)
        assert job.status == FAILED
        assert "404" in job.message and "a:nope" in job.message
    finally:
        await pre.close()
        await server.close()
