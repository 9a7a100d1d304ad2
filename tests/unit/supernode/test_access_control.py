"""The supernode's access control (supernode/access.py) with a hand-written origin probe."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import pytest

from damselfly.core.clock import FakeClock
from damselfly.core.errors import OriginAuthError, OriginError, OriginNotFound
from damselfly.supernode.access import REFUSED, AccessControl, GrantRequired

TID = "ab" * 32
URL = "http://origin/f.bin"
GOOD = {"Authorization": "Bearer good"}


class Origin:
    """Answers 206 to the good credential, 401 without any, 403 otherwise; counts requests."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.status: int | None = None

    async def probe(self, url: str, headers: Mapping[str, str]) -> int:
        self.calls += 1
        await self.gate.wait()
        if self.status is not None:
            return self.status
        got = headers.get("Authorization")
        return 401 if got is None else 206 if got == "Bearer good" else 403


def make(tmp_path: Path, origin: Origin, clock: FakeClock | None = None) -> AccessControl:
    c = clock or FakeClock()
    return AccessControl(tmp_path, origin.probe, c, grant_ttl=100, wall_clock=c)


async def test_concurrent_identical_checks_share_one_origin_request(tmp_path: Path) -> None:
    origin = Origin()
    origin.gate.clear()
    ac = make(tmp_path, origin)
    assert ac.classify(TID, GOOD)
    admits = [asyncio.create_task(ac.admit(TID, URL, dict(GOOD))) for _ in range(20)]
    await asyncio.sleep(0)
    origin.gate.set()
    await asyncio.gather(*admits)
    assert origin.calls == 1 == ac.checks
    await ac.admit(TID, URL, GOOD)  # cached
    assert origin.calls == 1


async def test_a_refused_credential_is_a_403_and_is_cached_briefly(tmp_path: Path) -> None:
    origin, clock = Origin(), FakeClock()
    ac = make(tmp_path, origin, clock)
    ac.classify(TID, GOOD)
    for hdrs in ({"Authorization": "Bearer wrong"}, {}):
        with pytest.raises(OriginAuthError) as ei:
            await ac.admit(TID, URL, hdrs)
        assert ei.value.status == 403 and REFUSED in str(ei.value)
        assert "wrong" not in str(ei.value)
    calls = origin.calls
    with pytest.raises(OriginAuthError):
        await ac.admit(TID, URL, {"Authorization": "Bearer wrong"})
    assert origin.calls == calls  # from the cache
    clock.advance(61)
    with pytest.raises(OriginAuthError):
        await ac.admit(TID, URL, {"Authorization": "Bearer wrong"})
    assert origin.calls == calls + 1  # the entry expired: asked again


async def test_origin_errors_are_not_cached_and_reach_every_waiter(tmp_path: Path) -> None:
    origin = Origin()
    origin.status = 503
    origin.gate.clear()
    ac = make(tmp_path, origin)
    admits = [asyncio.create_task(ac.admit(TID, URL, GOOD)) for _ in range(3)]
    await asyncio.sleep(0)
    origin.gate.set()
    results = await asyncio.gather(*admits, return_exceptions=True)
    assert all(type(r) is OriginError for r in results), results
    origin.status = 404
    with pytest.raises(OriginNotFound):
        await ac.admit(TID, URL, GOOD)
    origin.status = None
    await ac.admit(TID, URL, GOOD)
    assert origin.calls == 3


async def test_private_is_sticky_and_survives_a_restart(tmp_path: Path) -> None:
    origin = Origin()
    ac = make(tmp_path, origin)
    assert not ac.classify("cd" * 32, {})
    assert ac.piece_refusal("cd" * 32, None) is None  # known public: no grant needed
    assert ac.classify(TID, GOOD)
    assert ac.classify(TID, {})  # an anonymous registration does not make it public
    assert ac.piece_refusal(TID, None) is not None
    again = make(tmp_path, origin)
    again.load(lambda tid: True)
    assert again.is_private(TID)
    assert again.piece_refusal(TID, None) is not None
    # a task no longer cached is dropped from the file
    third = make(tmp_path, origin)
    third.load(lambda tid: False)
    assert not third.is_private(TID)
    assert (tmp_path / "private-tasks").read_text() == ""


async def test_grants_are_checked_by_the_piece_port_and_renewed_at_half_life(
    tmp_path: Path,
) -> None:
    clock = FakeClock(1_700_000_000.0)
    ac = make(tmp_path, Origin(), clock)
    ac.classify(TID, GOOD)
    token = ac.grant(TID, "peer-1")
    assert ac.piece_refusal(TID, token) is None
    assert ac.piece_refusal("cd" * 32, token) is not None  # unknown task: a grant for it only
    assert ac.renew(TID, "peer-1") == ""
    clock.advance(51)
    renewed = ac.renew(TID, "peer-1")
    assert renewed and renewed != token
    clock.advance(50)
    assert ac.piece_refusal(TID, token) == "the grant has expired"
    assert ac.piece_refusal(TID, renewed) is None
    with pytest.raises(GrantRequired):
        ac.renew(TID, "peer-2")
    ac.drop_peer("peer-1")
    with pytest.raises(GrantRequired):
        ac.renew(TID, "peer-1")


REG = "http://reg:5000/v2"
BLOB = [f"{REG}/private/a/blobs/sha256:{c * 64}" for c in "0123"]
B_BLOB = [f"{REG}/private/b/blobs/sha256:{c * 64}" for c in "0123"]
TOKEN_A = {"Authorization": "Bearer for-a"}
TOKEN_B = {"Authorization": "Bearer for-b"}


class Registry:
    """Authorizes per repository, as a registry's token scopes do: ``Bearer for-<repo>`` opens
    every blob of ``private/<repo>`` (206) and no other (401); a blob listed in ``missing`` is
    404 to the right token. Records the URLs asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.missing: set[str] = set()
        self.gate = asyncio.Event()
        self.gate.set()

    async def probe(self, url: str, headers: Mapping[str, str]) -> int:
        self.asked.append(url)
        await self.gate.wait()
        repo = url.split("/v2/private/", 1)[1].split("/", 1)[0]
        if headers.get("Authorization") != f"Bearer for-{repo}":
            return 401
        return 404 if url in self.missing else 206


async def test_one_check_answers_for_every_blob_of_a_repository(tmp_path: Path) -> None:
    reg, clock = Registry(), FakeClock()
    ac = AccessControl(tmp_path, reg.probe, clock, grant_ttl=100, wall_clock=clock)
    ac.classify(TID, TOKEN_A)
    reg.gate.clear()
    admits = [asyncio.create_task(ac.admit(TID, url, TOKEN_A)) for url in BLOB]
    await asyncio.sleep(0)
    reg.gate.set()
    await asyncio.gather(*admits)  # concurrent: one flight for the repository
    for url in BLOB:
        await ac.admit(TID, url, TOKEN_A)  # later: the cache
    assert reg.asked == [BLOB[0]] and ac.checks == 1
    # a new token is a new check, once for the repository
    for url in BLOB:
        await ac.admit(TID, url, {"Authorization": "Bearer for-a", "X-Other-Token": "t2"})
    assert len(reg.asked) == 2
    # the cache's life is the bound: then one check again
    clock.advance(61)
    for url in BLOB:
        await ac.admit(TID, url, TOKEN_A)
    assert len(reg.asked) == 3 and ac.checks == 3


async def test_a_credential_for_one_repository_is_checked_and_refused_at_another(
    tmp_path: Path,
) -> None:
    reg = Registry()
    ac = make_with(tmp_path, reg)
    await ac.admit(TID, BLOB[0], TOKEN_A)
    ac.record(B_BLOB[1], TOKEN_B, True, 200)  # B's owner fetched B's blob (a CDN fetch)
    # A's token at B's URLs: its allowance for A does not count, the registry is asked for B
    with pytest.raises(OriginAuthError) as ei:
        await ac.admit(TID, B_BLOB[1], TOKEN_A)
    assert REFUSED in str(ei.value) and "for-a" not in str(ei.value)
    assert reg.asked == [BLOB[0], B_BLOB[1]]
    # the refusal holds for the whole of B (no new request), not for A
    with pytest.raises(OriginAuthError):
        await ac.admit(TID, B_BLOB[2], TOKEN_A)
    await ac.admit(TID, BLOB[3], TOKEN_A)
    assert reg.asked == [BLOB[0], B_BLOB[1]]
    # B's own token is let in from the recorded fetch, without a check
    await ac.admit(TID, B_BLOB[3], TOKEN_B)
    assert reg.asked == [BLOB[0], B_BLOB[1]] and ac.refusals == 2


async def test_a_blob_url_with_a_query_is_checked_on_its_own(tmp_path: Path) -> None:
    reg = Registry()
    ac = make_with(tmp_path, reg)
    # with a query (containerd's ns=) the blob is not read as a registry path: its own check
    await ac.admit(TID, BLOB[0], TOKEN_A)
    await ac.admit(TID, BLOB[0] + "?ns=reg", TOKEN_A)
    assert reg.asked == [BLOB[0], BLOB[0] + "?ns=reg"]


async def test_an_error_for_one_blob_is_not_handed_to_waiters_for_another(
    tmp_path: Path,
) -> None:
    reg = Registry()
    reg.missing.add(BLOB[0])
    ac = make_with(tmp_path, reg)
    reg.gate.clear()
    first = asyncio.create_task(ac.admit(TID, BLOB[0], TOKEN_A))
    await asyncio.sleep(0)
    same = [asyncio.create_task(ac.admit(TID, BLOB[0], TOKEN_A)) for _ in range(3)]
    others = [asyncio.create_task(ac.admit(TID, url, TOKEN_A)) for url in BLOB[1:]]
    await asyncio.sleep(0)
    assert reg.asked == [BLOB[0]]  # everyone waits for the one flight
    reg.gate.set()
    results = await asyncio.gather(first, *same, *others, return_exceptions=True)
    # the missing blob's askers get its 404; the others ask again for their own URL (one
    # check, shared), and its success lets every one of them in
    assert all(type(r) is OriginNotFound for r in results[:4]), results
    assert results[4:] == [None, None, None], results
    assert reg.asked == [BLOB[0], BLOB[1]]
    for url in BLOB[1:]:
        await ac.admit(TID, url, TOKEN_A)  # cached for the repository
    assert len(reg.asked) == 2


async def test_a_new_task_is_claimed_for_its_fetch_unless_the_cache_answers(
    tmp_path: Path,
) -> None:
    reg = Registry()
    ac = make_with(tmp_path, reg)
    t1, t2 = "01" * 32, "02" * 32
    assert ac.claim(t1, BLOB[0], TOKEN_A)
    assert not ac.claim(t1, BLOB[0], TOKEN_A)  # claimed already: the caller is checked
    ac.unclaim(t1)
    # A's token was refused one blob of B (a fetch that stood for a check): a new blob of B
    # is not fetched with that token again, the cache refuses it
    ac.record(B_BLOB[0], TOKEN_A, False, 401)
    assert not ac.claim(t2, B_BLOB[1], TOKEN_A)
    with pytest.raises(OriginAuthError):
        await ac.admit(t2, B_BLOB[1], TOKEN_A)
    assert reg.asked == []
    assert ac.claim(t2, B_BLOB[1], TOKEN_B)  # another credential: its own fetch


def make_with(tmp_path: Path, reg: Registry) -> AccessControl:
    c = FakeClock()
    ac = AccessControl(tmp_path, reg.probe, c, grant_ttl=100, wall_clock=c)
    ac.classify(TID, TOKEN_A)
    return ac
