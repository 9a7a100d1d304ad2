"""Failures: blacklists that expire, isolation, failing clients, suspects, lost CDN pieces."""

from __future__ import annotations

import pytest

from tests.unit.scheduler.swarm import TASK, Swarm


def test_failure_blacklists_the_source_for_that_requester_only() -> None:
    sw = Swarm("1")
    sw.peer("h", have="1")
    sw.peer("r")
    sw.peer("r2")
    assert sw.ask("r") == [(0, "h")]
    assert sw.fail("r", 0, "h", "timeout", want=1) == [(0, "supernode")]
    assert sw.ask("r2") == [(0, "h")]  # others still use h


@pytest.mark.parametrize(
    ("advance", "expected"),
    [
        (59.9, "supernode"),  # still blacklisted
        (60.0, "h"),  # expired
    ],
)
def test_blacklist_expiry(advance: float, expected: str) -> None:
    sw = Swarm("1", blacklist_time=60.0)
    sw.peer("h", have="1")
    sw.peer("r")
    sw.ask("r")
    sw.fail("r", 0, "h")
    sw.clock.advance(advance)
    sw.s.heartbeat("h")
    assert sw.ask("r") == [(0, expected)]


@pytest.mark.parametrize(
    ("events", "isolated"),
    [
        ("ff", False),  # isolate_after=3
        ("fff", True),
        ("ffsff", False),  # a success resets the consecutive count
        ("ffsfff", True),
    ],
)
def test_isolation_after_consecutive_failures(events: str, isolated: bool) -> None:
    sw = Swarm("1", isolate_after=3, supernode_limit=1)
    sw.peer("h", have="1")
    for i, e in enumerate(events):
        name = sw.peer(f"r{i}")  # a new requester each time: no blacklist in the way
        assert sw.ask(name) == [(0, "h")]
        if e == "f":
            sw.fail(name, 0, "h", "timeout")
        else:
            sw.ok(name, (0, "h"))
            sw.s.leave_task(TASK, name)  # keep h the only holder
    (h,) = [p for p in sw.s.peers_view() if p["id"] == "h"]
    assert h["isolated"] is isolated
    assert sw.s.stats()["isolated_peers"] == int(isolated)
    sw.peer("new")
    assert sw.ask("new") == [(0, "supernode" if isolated else "h")]
    sw.peer("new2")
    # Isolated: never chosen again, even when the supernode is busy.
    assert sw.ask("new2") == ([] if isolated else [(0, "h")])


def test_isolated_peer_still_downloads_but_never_serves() -> None:
    sw = Swarm("01", isolate_after=1)
    sw.peer("h", have="10")
    got = sw.ask("h", 4)
    assert got == [(1, "supernode")]  # h's own download is in flight when it gets isolated
    sw.peer("r")
    # piece 1 is on its way to h (a healthy source so far): the supernode seeds it once, r waits
    assert sorted(sw.ask("r", 4)) == [(0, "h")]
    sw.fail("r", 0, "h")
    sw.s.audit()  # h's download no longer counts as a future copy
    sw.ok("h", *got)
    sw.peer("r2")
    assert sw.ask("r2", 4) == [(1, "supernode")]  # not piece 0 nor piece 1 from h
    sw.s.audit()


@pytest.mark.parametrize(("failures", "expected"), [(2, "h2"), (3, "supernode")])
def test_a_client_with_too_many_failures_gets_only_the_supernode(
    failures: int, expected: str
) -> None:
    sw = Swarm("1", client_fail_limit=2, isolate_after=10)
    holders = [sw.peer(f"h{i}", have="1") for i in range(4)]
    sw.peer("r")
    for _ in range(failures):
        ((num, src),) = sw.ask("r")
        assert src in holders
        sw.fail("r", num, src)
    ((_, src),) = sw.ask("r")
    assert (src == "supernode") == (expected == "supernode")


@pytest.mark.parametrize(
    ("kind", "still_holder"),
    [
        ("timeout", True),  # maybe the link: h keeps its piece for others
        ("connect", True),
        ("http", False),  # h answered without the piece (e.g. 404): not a holder any more
        ("digest", False),  # h served bad bytes for it
    ],
)
def test_failure_kind_decides_whether_the_source_still_holds(kind: str, still_holder: bool) -> None:
    sw = Swarm("1", supernode_limit=1)
    sw.peer("h", have="1")
    sw.peer("r")
    sw.peer("r2")
    sw.peer("busy")
    sw.ask("r")
    sw.fail("r", 0, "h", kind)
    assert sw.ask("busy") == [(0, "h" if still_holder else "supernode")]
    if still_holder:
        return
    assert sw.ask("r2") == []  # the supernode's only slot is taken and h no longer counts
    assert sw.s.stats()["failures_by_kind"] == {kind: 1}


def test_digest_failure_from_the_supernode_queues_a_suspect_once() -> None:
    sw = Swarm("11")
    for name in ("a", "b", "c"):
        sw.peer(name)
        got = sw.ask(name, 2)
        for num, src in got:
            assert src == "supernode"
            sw.fail(name, num, src, "digest" if name != "c" else "timeout")
    assert sw.s.stats()["suspects_queued"] == 2
    assert sorted(sw.s.drain_suspects()) == [(TASK, 0), (TASK, 1)]
    assert sw.s.drain_suspects() == []


def test_digest_failure_from_a_peer_is_not_a_supernode_suspect() -> None:
    sw = Swarm("1")
    sw.peer("h", have="1")
    sw.peer("r")
    sw.ask("r")
    sw.fail("r", 0, "h", "digest")
    assert sw.s.drain_suspects() == []


def test_piece_lost_stops_the_supernode_serving_it_until_ready_again() -> None:
    sw = Swarm("11")
    sw.peer("r")
    sw.s.piece_lost(TASK, 0)
    sw.s.piece_lost(TASK, 0)  # twice is harmless
    assert sw.ask("r", 4) == [(1, "supernode")]
    sw.peer("r2")
    assert sw.ask("r2", 4) == []  # piece 1 is on its way to r: the supernode seeds it once
    sw.clock.advance(0.5)  # ... until r2 has waited fallback_reuse_delay with nothing to do
    assert sw.ask("r2", 4) == [(1, "supernode")]
    sw.peer("h", have="10")  # a peer holding it can still serve it
    assert sw.ask("r2", 4) == [(0, "h")]
    sw.s.piece_ready(TASK, 0, "00" * 32)
    sw.peer("r3")
    # piece 1 is still on its way to r and r2, so r3 waits for it rather than take a third copy
    # from the supernode
    assert sorted(sw.ask("r3", 4)) == [(0, "h")]
    assert sw.s.task_view(TASK)["pieces_ready"] == 2
    sw.s.audit()
