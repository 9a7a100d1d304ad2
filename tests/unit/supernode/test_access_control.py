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
