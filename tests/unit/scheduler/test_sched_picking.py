"""Which pieces a peer gets, and from whom: rarest first, holders before the supernode, limits."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.unit.scheduler.swarm import PIECE, SUPERNODE, TASK, Swarm, digest


@pytest.mark.parametrize(
    ("cdn", "holders", "want", "expected"),
    [
        #  pieces 0123   holders per piece
        ("1111", "3102", 4, [2, 1, 3, 0]),  # fewest holders first
        ("1111", "3102", 2, [2, 1]),
        ("0000", "3102", 4, [1, 3, 0]),  # piece 2: nobody can serve it yet
        ("1111", "0000", 0, []),
        ("0001", "0000", 4, [3]),  # only what the CDN has so far
        ("1111", "1111", 4, None),  # all equal: any order (see the tie test)
    ],
)
def test_rarest_first(cdn: str, holders: str, want: int, expected: list[int] | None) -> None:
    sw = Swarm(cdn)
    sw.holders(holders)
    sw.peer("r")
    got = [num for num, _ in sw.ask("r", want)]
    if expected is None:
        assert sorted(got) == [0, 1, 2, 3]
    else:
        assert got == expected


def test_ties_are_broken_by_the_seeded_rng() -> None:
    firsts = set()
    for seed in range(40):
        runs = []
        for _ in range(2):  # the same seed gives the same choice
            sw = Swarm("11111111", seed=seed)
            sw.holders("21111112")
            sw.peer("r")
            runs.append(sw.ask("r", 1))
        assert runs[0] == runs[1]
        firsts.add(runs[0][0][0])
    assert firsts == {1, 2, 3, 4, 5, 6}  # every equally rare piece gets picked by some seed


def test_pieces_in_flight_count_as_copies_so_a_crowd_spreads() -> None:
    sw = Swarm("1111")
    for name in "abcd":
        sw.peer(name)
    firsts = [sw.ask(name, 1)[0][0] for name in "abcd"]
    assert sorted(firsts) == [0, 1, 2, 3]


def test_assignment_carries_range_digest_and_source_address() -> None:
    sw = Swarm("0001")
    sw.peer("r")
    sw.ask("r", 1)
    assert sw.last is not None
    (a,) = sw.last.pieces
    assert (a.num, a.start, a.size, a.digest) == (3, 3 * PIECE, PIECE - 100, digest(3))
    assert a.source == SUPERNODE
    sw.peer("h", have="1000")
    sw.ask("r", 1)
    (a,) = sw.last.pieces
    assert (a.num, a.start, a.size, a.source.id, a.source.kind) == (0, 0, PIECE, "h", "peer")
    assert (a.source.ip, a.source.port) == (
        sw.s.peers_view()[1]["ip"],
        sw.s.peers_view()[1]["port"],
    )


@pytest.mark.parametrize(
    ("h0_busy", "expected"),
    [
        (False, [(0, "h0")]),  # a holder with a free slot beats the supernode
        # its only slot is taken: the supernode serves, once r has waited fallback_reuse_delay
        # for a peer source with nothing else to do (the supernode seeds each piece once)
        (True, [(0, "supernode")]),
    ],
)
def test_holder_with_spare_slot_preferred_over_supernode(
    h0_busy: bool, expected: list[tuple[int, str]]
) -> None:
    sw = Swarm("1", up_limit=1)
    sw.peer("h0", have="1")
    if h0_busy:
        sw.peer("other")
        assert sw.ask("other") == [(0, "h0")]
    sw.peer("r")
    if h0_busy:
        assert sw.ask("r") == []
        sw.clock.advance(0.5)
    assert sw.ask("r") == expected


def test_least_loaded_holder_first() -> None:
    sw = Swarm("0000", up_limit=5)
    sw.peer("h0", have="1111")
    sw.peer("h1", have="1111")
    sw.peer("r")
    got = sw.ask("r", 4)
    assert Counter(src for _, src in got) == {"h0": 2, "h1": 2}


@pytest.mark.parametrize("up_limit", [1, 2, 3])
def test_up_limit_respected(up_limit: int) -> None:
    sw = Swarm("00000000", up_limit=up_limit)
    sw.peer("h0", have="11111111")
    uploads = 0
    for i in range(4):
        sw.peer(f"r{i}")
        uploads += len(sw.ask(f"r{i}", 4))
    assert uploads == up_limit
    assert sw.s.peers_view()[0]["uploads"] == up_limit
    sw.ask("r0", 4)
    assert sw.status == "wait" and sw.last.message == "every source is busy"


@pytest.mark.parametrize(("down_limit", "want", "first"), [(2, 4, 2), (4, 3, 3), (4, 8, 4)])
def test_down_limit_respected(down_limit: int, want: int, first: int) -> None:
    sw = Swarm("1" * 8, down_limit=down_limit)
    sw.peer("r")
    got = sw.ask("r", want)
    assert len(got) == first
    got += sw.ask("r", want)
    assert len(got) == down_limit
    assert sw.ask("r", want) == [] and sw.status == "wait"
    assert len(sw.ok("r", got[0], want=want)) == 1  # one reported, so one more


def test_supernode_limit_per_task() -> None:
    # Changed with the even share of the supernode's slots while it seeds (see
    # SchedulerConfig.supernode_limit): 3 slots over 4 peers is one piece each, and the
    # fourth peer finds the supernode full.
    sw = Swarm("1" * 8, supernode_limit=3)
    for name in ("a", "b", "c", "d"):
        sw.peer(name)
    for name in ("a", "b", "c"):
        assert len(sw.ask(name, 4)) == 1
    assert sw.ask("d", 4) == [] and sw.status == "wait"


@pytest.mark.parametrize(
    ("limit", "peers", "share"), [(16, 1, 4), (16, 4, 4), (16, 8, 2), (16, 40, 1)]
)
def test_supernode_slots_are_shared_out_while_it_seeds(limit: int, peers: int, share: int) -> None:
    sw = Swarm("1" * 64, supernode_limit=limit)
    for i in range(peers):
        sw.peer(f"p{i}")
    assert len(sw.ask("p0", 4)) == share
    assert sw.ask("p0", 4) == []  # its share is in flight


def test_a_rescue_is_not_limited_by_the_share() -> None:
    sw = Swarm("1111", supernode_limit=16)
    sw.holders("1111")  # h0 holds everything but is busy with 5 uploads
    for i in range(40):
        sw.peer(f"x{i}")
    for i in range(5):
        assert sw.ask(f"x{i}", 1)
    sw.peer("r")
    assert sw.ask("r", 4) == [] and sw.status == "wait"
    sw.clock.advance(1.0)  # idle for longer than fallback_reuse_delay: rescued in full
    got = sw.ask("r", 4)
    assert len(got) == 4 and {src for _, src in got} == {"supernode"}


def test_a_peer_becomes_a_source_as_soon_as_it_reports() -> None:
    sw = Swarm("1", supernode_limit=1)
    sw.peer("a")
    sw.peer("b")
    got = sw.ask("a")
    assert got == [(0, "supernode")]
    assert sw.ask("b") == [] and sw.status == "wait"  # supernode busy, nobody else has it
    sw.ok("a", *got)
    assert sw.ask("b") == [(0, "a")]


def test_cdn_pattern_peers_are_never_sources_and_fetch_from_the_supernode_only() -> None:
    sw = Swarm("11", supernode_limit=1)
    sw.peer("h", have="11")
    sw.peer("c", pattern="cdn")
    got = sw.ask("c", 1)
    assert got[0][1] == "supernode"  # even though h holds it and is idle
    assert sw.ask("c", 1) == []  # the supernode's one slot is taken
    sw.ok("c", *got)
    sw.peer("r")
    sw.s.leave_task(TASK, "h")
    got_r = sw.ask("r", 2)
    assert all(src == "supernode" for _, src in got_r)
    assert sw.s.task_view(TASK)["peers"][0]["pattern"] == "cdn"


@pytest.mark.parametrize(
    ("policy", "cdn", "holders", "expected"),
    [
        ("sequential", "1111", "0120", [0, 1, 2, 3]),
        ("sequential", "0011", "0120", [1, 2, 3]),  # piece 0: nobody can serve it yet
        ("random", "1010", "0100", [0, 1, 2]),
    ],
)
def test_other_piece_policies(policy: str, cdn: str, holders: str, expected: list[int]) -> None:
    sw = Swarm(cdn, piece_policy=policy)
    sw.holders(holders)
    sw.peer("r")
    got = [num for num, _ in sw.ask("r", 4)]
    assert (got if policy == "sequential" else sorted(got)) == expected


def test_random_piece_policy_varies_with_the_seed() -> None:
    firsts = set()
    for seed in range(20):
        sw = Swarm("1" * 8, piece_policy="random", seed=seed)
        sw.peer("r")
        firsts.add(sw.ask("r", 1)[0][0])
    assert len(firsts) > 3


def test_random_source_policy_still_respects_limits() -> None:
    sw = Swarm("0000", source_policy="random", up_limit=1)
    sw.peer("h0", have="1111")
    sw.peer("h1", have="1111")
    sw.peer("r")
    assert sorted(src for _, src in sw.ask("r", 4)) == ["h0", "h1"]


def test_free_holders_of_common_pieces_are_found_behind_busy_rare_ones() -> None:
    # Pieces 0..28 are rare and held only by "b", whose one upload slot is taken; piece 29
    # is common and its holders are free. The rarest-first walk gives up after MAX_FRUITLESS
    # busy pieces; the source-first pass must still find a free holder of piece 29.
    sw = Swarm("1" * 30, up_limit=1)
    sw.peer("b", "1" * 29 + "0")
    for name in ("c1", "c2", "c3"):
        sw.peer(name, "0" * 29 + "1")
    sw.peer("x")
    assert sw.ask("x", 1)[0][1] == "b"  # a rare piece: b's only slot is now taken
    sw.peer("r", "0" * 29)  # (it holds nothing yet)
    got = sw.ask("r", 1)
    assert len(got) == 1 and got[0][0] == 29 and got[0][1] in {"c1", "c2", "c3"}
