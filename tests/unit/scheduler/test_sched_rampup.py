"""The ramp-up rules: slow start for sources and downloads, fresh peers first, least-loaded
sources first. Each table turns on only the rule it tests (the Swarm helper starts with all
of them off, see tests/unit/scheduler/swarm.py)."""

from __future__ import annotations

import pytest

from damselfly.core.errors import ConfigError
from damselfly.scheduler import SchedulerConfig
from tests.unit.scheduler.swarm import Swarm

SLOW_UP = {"source_slow_start": True}
SLOW_DOWN = {"download_slow_start": True}
FRESH_FIRST = {"fresh_first_window": 5.0}


@pytest.mark.parametrize(
    ("held", "slow", "uploads"),
    [
        ("10000000", True, 1),  # one piece: one upload at a time, at the full rate
        ("11000000", True, 2),
        ("11110000", True, 4),
        ("11111111", True, 5),  # up_limit still binds
        ("10000000", False, 5),  # without slow start: up_limit
    ],
)
def test_a_source_serves_no_more_pieces_at_once_than_it_holds(
    held: str, slow: bool, uploads: int
) -> None:
    sw = Swarm("00000000", up_limit=5, source_slow_start=slow)
    sw.peer("h", have=held)
    got = 0
    for i in range(8):
        sw.peer(f"r{i}")
        got += len(sw.ask(f"r{i}", 1))
    assert got == uploads
    assert sw.s.peers_view()[0]["uploads"] == uploads
    sw.s.audit()


def test_a_source_gets_slots_back_as_it_gains_pieces() -> None:
    sw = Swarm("11", up_limit=5, source_slow_start=True)
    sw.peer("h", have="10")
    sw.peer("c", have="01")
    sw.peer("a")
    assert sw.ask("a", 1) == [(0, "h")]
    assert sw.ask("c", 1) == [] and sw.status == "wait"  # h holds one piece: one slot, taken
    assert sw.ask("h", 1) == [(1, "c")]
    sw.ok("h", (1, "c"))  # h holds two pieces now: a second slot
    assert sw.ask("c", 1) == [(0, "h")]
    sw.s.audit()


@pytest.mark.parametrize(
    ("held", "slow", "first"),
    [
        ("", True, 1),  # holds nothing: one piece, all of its downlink on it
        ("11", True, 2),
        ("11111", True, 4),  # down_limit still binds
        ("", False, 4),
    ],
)
def test_a_peer_fetches_no_more_pieces_at_once_than_it_holds(
    held: str, slow: bool, first: int
) -> None:
    sw = Swarm("1" * 16, down_limit=4, download_slow_start=slow)
    sw.peer("r", have=held)
    got = sw.ask("r", 8)
    assert len(got) == first
    assert sw.ask("r", 8) == [] and sw.status == "wait"  # no more until one is reported
    if slow and not held:
        assert len(sw.ok("r", got[0], want=8)) == 1  # it holds one now: one at a time still
    sw.s.audit()


def test_a_cdn_pattern_peer_is_not_slowed() -> None:
    # it never serves anyone, so becoming a source early buys nothing
    sw = Swarm("1111", download_slow_start=True)
    sw.peer("c", pattern="cdn")
    assert len(sw.ask("c", 4)) == 4


def _all_busy(**config: object) -> tuple[Swarm, tuple[int, str]]:
    """h0 holds every piece and has one upload slot, taken by x; the supernode's one slot is
    taken by a cdn-pattern peer; f holds nothing and is told "every source is busy"; r holds
    one piece. Returns the swarm and x's assignment."""
    sw = Swarm("1111", up_limit=1, supernode_limit=1, down_limit=4, **config)
    sw.peer("h0", have="1111")
    sw.peer("c", pattern="cdn")
    assert sw.ask("c", 1)[0][1] == "supernode"
    sw.peer("x")
    (xa,) = sw.ask("x", 1)
    assert xa[1] == "h0"
    sw.peer("f")
    assert sw.ask("f", 1) == [] and sw.last is not None
    assert sw.last.message == "every source is busy"
    sw.peer("r", have="1000" if xa[0] else "0100")  # (a free source too, but not for itself)
    return sw, xa


@pytest.mark.parametrize(
    ("window", "advance", "r_served"),
    [
        (5.0, 1.0, False),  # f asked 1 s ago: h0's freed slot is kept for f
        (5.0, 6.0, True),  # f has not asked for longer than the window: it may be gone
        (0.0, 0.0, True),  # the rule off: first come, first served
    ],
)
def test_fresh_peers_first(window: float, advance: float, r_served: bool) -> None:
    sw, xa = _all_busy(fresh_first_window=window)
    sw.clock.advance(advance)
    sw.fail("x", xa[0], "h0")  # h0's slot is free again (and x holds nothing still)
    got = sw.ask("r", 4)
    if r_served:
        assert [src for _, src in got] == ["h0"]
    else:
        assert got == [] and sw.status == "wait"
        assert sw.ask("f", 1)[0][1] == "h0"  # the fresh peer gets it
    sw.s.audit()


def test_fresh_peers_first_hands_out_the_slots_beyond_theirs() -> None:
    sw, xa = _all_busy(fresh_first_window=5.0)
    sw.ok("x", xa)  # h0's slot frees and x becomes a source: two free peers, one fresh waiting
    assert len(sw.ask("r", 4)) == 1  # r may take one of them, not both
    assert len(sw.ask("f", 1)) == 1  # and f still finds a source
    sw.s.audit()


def test_a_fresh_peer_stops_counting_once_it_holds_a_piece() -> None:
    sw, xa = _all_busy(fresh_first_window=5.0)
    assert len(sw.s._tasks[next(iter(sw.s._tasks))].starving) == 1
    sw.fail("x", xa[0], "h0")
    (fa,) = sw.ask("f", 1)
    sw.ok("f", fa)
    assert not sw.s._tasks[next(iter(sw.s._tasks))].starving
    assert len(sw.ask("r", 4)) >= 1  # nobody fresh is waiting: r is served as usual
    sw.s.audit()


def test_sources_are_drawn_least_loaded_first() -> None:
    # Piece 0 is rare (h0 only), but h0 already sends two pieces; piece 1 is common and its
    # twenty other holders are idle. Rarest first alone would load h0 a third time; drawing
    # the candidate sources least-loaded first sends r to an idle holder of piece 1.
    sw = Swarm("00", up_limit=5)
    sw.peer("h0", have="11")
    idle = [sw.peer(f"i{k}", have="01") for k in range(20)]
    for name in ("a", "b"):
        sw.peer(name, have="01")
        assert sw.ask(name, 1) == [(0, "h0")]
    sw.peer("r")
    assert [(num, src in idle) for num, src in sw.ask("r", 1)] == [(1, True)]
    sw.s.audit()


def test_a_busy_rare_holder_is_still_used_when_the_idle_ones_lack_the_piece() -> None:
    sw = Swarm("00", up_limit=5)
    sw.peer("h0", have="11")
    for k in range(20):
        sw.peer(f"i{k}", have="01")
    for name in ("a", "b"):
        sw.peer(name, have="01")
        assert sw.ask(name, 1) == [(0, "h0")]
    sw.peer("r", have="01")  # needs piece 0, which only h0 holds
    assert sw.ask("r", 1) == [(0, "h0")]
    sw.s.audit()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("fresh_first_window", -1.0),
        ("fresh_first_window", True),
        ("source_slow_start", 1),
        ("download_slow_start", "yes"),
    ],
)
def test_bad_rampup_config_is_refused(field: str, value: object) -> None:
    with pytest.raises(ConfigError):
        SchedulerConfig(**{field: value})  # type: ignore[arg-type]


def test_defaults_turn_every_rampup_rule_on() -> None:
    cfg = SchedulerConfig()
    assert cfg.source_slow_start and cfg.download_slow_start and cfg.fresh_first_window > 0
