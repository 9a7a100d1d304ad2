"""The probe cache, pure (a fake clock): TTL, cap, what is and is not stored, keys that hold no
credential; and its driver against a real upstream on loopback: identical concurrent probes go
upstream once, different credentials apart, and nothing but the allowed headers comes back."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from aiohttp.test_utils import RawTestServer
from multidict import CIMultiDict

from damselfly.core.clock import FakeClock
from damselfly.dfdaemon.probes import MAX_BODY, PROBE_TTL, ProbeAnswers, ProbeCache, is_probe

SECRET = "Bearer eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2Vu.c2ln"
CHALLENGE = 'Bearer realm="http://auth/token",service="reg"'


def headers(**kw: str) -> CIMultiDict[str]:
    return CIMultiDict({k.replace("_", "-"): v for k, v in kw.items()})


def test_answers_live_for_the_ttl_only() -> None:
    clock = FakeClock()
    c = ProbeCache(clock)
    k = c.key("GET", "http://reg/v2/", None)
    assert c.get(k) is None
    c.put(k, 401, headers(WWW_Authenticate=CHALLENGE), b"{}")
    clock.advance(PROBE_TTL - 1)
    hit = c.get(k)
    assert hit is not None and hit.status == 401
    clock.advance(1)
    assert c.get(k) is None
    assert repr(c) == "ProbeCache(0 answers, 1 hits, 2 misses)"


def test_keys_are_keyed_hashes_apart_by_method_url_and_credential() -> None:
    c = ProbeCache(FakeClock(), secret=b"k" * 32)
    keys = {
        c.key("GET", "http://reg/v2/", None),
        c.key("HEAD", "http://reg/v2/", None),
        c.key("GET", "http://other/v2/", None),
        c.key("GET", "http://reg/v2/", SECRET),
        c.key("GET", "http://reg/v2/", SECRET + "x"),
    }
    assert len(keys) == 5
    assert ProbeCache(FakeClock()).key("GET", "http://reg/v2/", SECRET) not in keys  # per process
    for k in keys:
        assert len(k) == 64 and "Bearer" not in k and "c2VjcmV0" not in k


def test_only_allowed_headers_and_small_200_or_401_answers_are_kept() -> None:
    c = ProbeCache(FakeClock())
    k = c.key("GET", "http://reg/v2/", SECRET)
    p = c.put(
        k,
        200,
        headers(
            Content_Type="application/json",
            Docker_Distribution_Api_Version="registry/2.0",
            Set_Cookie=f"session={SECRET}",
            X_Echo=SECRET,
        ),
        b"{}",
    )
    assert dict(p.headers) == {
        "Content-Type": "application/json",
        "Docker-Distribution-Api-Version": "registry/2.0",
    }
    assert SECRET not in repr(p) and c.keys() == [k]
    for status, body in ((500, b"{}"), (404, b"{}"), (200, b"x" * (MAX_BODY + 1))):
        k2 = c.key("GET", f"http://reg{status}/v2/", None)
        c.put(k2, status, headers(), body)
        assert c.get(k2) is None


def test_the_cap_drops_the_oldest() -> None:
    c = ProbeCache(FakeClock(), cap=2)
    ks = [c.key("GET", f"http://r{i}/v2/", None) for i in range(3)]
    for k in ks:
        c.put(k, 401, headers(), b"")
    assert c.keys() == ks[1:]


def test_what_is_a_probe() -> None:
    assert is_probe("GET", "/v2/", False) and is_probe("HEAD", "/v2", False)
    assert not is_probe("POST", "/v2/", True)
    assert not is_probe("GET", "/v2/x/manifests/1", False)
    assert not is_probe("GET", "/v2/", True)


async def test_concurrent_identical_probes_go_upstream_once() -> None:
    seen: list[str | None] = []
    release = asyncio.Event()

    async def registry(request: web.BaseRequest) -> web.StreamResponse:
        seen.append(request.headers.get("Authorization"))
        await release.wait()
        if request.headers.get("Authorization") == SECRET:
            return web.json_response({})
        return web.json_response(
            {"errors": []},
            status=401,
            headers={"WWW-Authenticate": CHALLENGE, "Set-Cookie": "tracking=1"},
        )

    async with (
        RawTestServer(registry) as up,
        aiohttp.ClientSession(auto_decompress=False) as session,
    ):
        answers = ProbeAnswers(session)
        url = f"http://127.0.0.1:{up.port}/v2/"

        async def front(request: web.BaseRequest) -> web.StreamResponse:
            return await answers.answer(request, url, None)

        async with RawTestServer(front) as mirror, aiohttp.ClientSession() as client:

            async def probe(auth: str | None) -> tuple[int, str, str]:
                h = {"Authorization": auth} if auth else {}
                async with client.get(f"http://127.0.0.1:{mirror.port}/v2/", headers=h) as r:
                    await r.read()
                    return (
                        r.status,
                        r.headers.get("WWW-Authenticate", ""),
                        r.headers.get("Set-Cookie", ""),
                    )

            tasks = [asyncio.create_task(probe(None)) for _ in range(5)]
            tasks += [asyncio.create_task(probe(SECRET)) for _ in range(3)]
            for _ in range(100):  # until both leaders are upstream
                if len(seen) >= 2:
                    break
                await asyncio.sleep(0.01)
            release.set()
            got = await asyncio.gather(*tasks)
            assert got[:5] == [(401, CHALLENGE, "")] * 5
            assert got[5:] == [(200, "", "")] * 3
            assert sorted(seen, key=str) == sorted([None, SECRET], key=str)
            # and from the cache afterwards
            assert await probe(None) == (401, CHALLENGE, "")
            assert len(seen) == 2
    assert answers.cache.hits == 1
