"""Peers and tasks over time: leaving, timeouts, GC, done, failed, reset, bad input, views."""

from __future__ import annotations

import random

import pytest

from damselfly.core.clock import FakeClock
from damselfly.core.errors import BadRequest, ConfigError
from damselfly.core.protocol import PeerInfo, PieceResult, PieceSource
from damselfly.scheduler import IllegalTransition, Scheduler, SchedulerConfig
from tests.unit.scheduler.swarm import PIECE, SUPERNODE, TASK, Swarm


def test_remove_peer_drops_it_everywhere_and_frees_its_slots() -> None:
    sw = Swarm("00", up_limit=1)
    sw.peer("h", have="11")
    sw.peer("r")
    sw.peer("r2")
    assert sw.ask("r", 1) != []  # h's one slot goes to r
    assert sw.ask("r2", 1) == []
    sw.s.remove_peer("r")  # r as a downloader: h's slot is free again
    assert sw.ask("r2", 1) != []
    sw.s.remove_peer("h")  # h as a source: r2's assignment is released, h holds nothing
    assert sw.s.stats()["inflight"] == 0
    assert [p["id"] for p in sw.s.peers_view()] == ["r2"]
    assert sw.ask("r2", 4) == [] and sw.last.message == "waiting for the CDN"
    sw.s.audit()
    with pytest.raises(BadRequest, match="unknown peer r"):
        sw.s.remove_peer("r")


def test_leave_task_keeps_the_peer_but_not_its_pieces() -> None:
    sw = Swarm("0")
    sw.peer("h", have="1")
    sw.peer("r")
    assert sw.ask("r") == [(0, "h")]
    sw.s.leave_task(TASK, "h")
    assert sw.s.stats()["inflight"] == 0
    assert sw.ask("r") == []
    assert sw.s.peers_view()[0]["tasks"] == []
    with pytest.raises(BadRequest, match="not registered"):
        sw.s.leave_task(TASK, "h")
    with pytest.raises(BadRequest, match="not registered"):
        sw.ask("h")


def test_inflight_timeout_releases_slots_and_a_late_success_still_counts() -> None:
    sw = Swarm("0", up_limit=1, inflight_timeout=30.0)
    sw.peer("h", have="1")
    sw.peer("r")
    sw.peer("r2")
    assert sw.ask("r") == [(0, "h")]
    assert sw.ask("r2") == []
    sw.clock.advance(29.0)
    assert sw.s.expire().released == 0
    sw.clock.advance(1.0)
    assert sw.s.expire().released == 1
    assert sw.ask("r2") == [(0, "h")]
    sw.ok("r", (0, "h"))  # the late report: r holds the piece, bytes counted once
    sw.ok("r", (0, "h"))  # a duplicate: ignored
    view = sw.s.task_view(TASK)
    assert view["bytes_by_source"]["peer"] == PIECE - 100
    assert [p["done"] for p in view["peers"]] == [True, True, False]
    assert sw.s.stats()["timeouts"] == 1
    sw.s.audit()


def test_late_failure_after_timeout_is_ignored() -> None:
    sw = Swarm("0", inflight_timeout=5.0)
    sw.peer("h", have="1")
    sw.peer("r")
    sw.ask("r")
    sw.clock.advance(5.0)
    sw.s.expire()
    sw.fail("r", 0, "h")
    assert sw.s.stats()["ignored_results"] == 1
    assert sw.s.peers_view()[0]["failures"] == 0
    assert sw.ask("r") == [(0, "h")]  # not blacklisted


def test_timeout_of_an_earlier_assignment_does_not_release_its_replacement() -> None:
    sw = Swarm("1", inflight_timeout=30.0)
    sw.peer("r")
    assert sw.ask("r") == [(0, "supernode")]  # deadline t+30
    sw.clock.advance(20.0)
    assert sw.fail("r", 0, "supernode", "short", want=1) == [(0, "supernode")]  # deadline t+50
    sw.clock.advance(10.0)
    assert sw.s.expire().released == 0
    sw.clock.advance(20.0)
    assert sw.s.expire().released == 1


@pytest.mark.parametrize(
    ("results", "ignored"),
    [
        ([PieceResult(1, True, "supernode")], 1),  # never assigned
        ([PieceResult(0, True, "x")], 1),  # assigned, but from another source
        ([PieceResult(0, True, "supernode")] * 2, 1),  # duplicate
        ([PieceResult(99, True, "supernode")], 1),  # not a piece of the task
        ([PieceResult(0, False, "supernode", "timeout")] * 2, 1),
    ],
)
def test_stale_and_duplicate_results_are_ignored(results: list[PieceResult], ignored: int) -> None:
    sw = Swarm("10")
    sw.peer("r")
    assert sw.ask("r", 1) == [(0, "supernode")]
    sw.ask("r", 0, results)
    stats = sw.s.stats()
    assert stats["ignored_results"] == ignored
    assert stats["bytes_by_source"]["supernode"] in (0, PIECE)
    assert (
        sw.s.task_view(TASK)["peers"][0]["pieces"] == stats["bytes_by_source"]["supernode"] // PIECE
    )
    sw.s.audit()


def test_peer_gc_drops_silent_peers_only() -> None:
    sw = Swarm("1", peer_gc_delay=180.0)
    sw.peer("quiet", have="1")
    sw.peer("alive")
    sw.peer("busy")
    sw.ask("busy")  # busy fetches from "quiet"
    sw.clock.advance(100.0)
    sw.s.heartbeat("alive")
    sw.ask("busy", 0)
    sw.clock.advance(80.0)
    report = sw.s.expire()
    assert report.dropped_peers == ["quiet"]
    assert sorted(p["id"] for p in sw.s.peers_view()) == ["alive", "busy"]
    assert sw.s.stats()["inflight"] == 0  # busy's download from quiet is released
    with pytest.raises(BadRequest, match="register again"):
        sw.s.heartbeat("quiet")
    sw.s.audit()


def test_a_silent_holder_is_not_chosen_even_before_gc_runs() -> None:
    sw = Swarm("0", peer_gc_delay=60.0)
    sw.peer("h", have="1")
    sw.peer("r")
    sw.clock.advance(61.0)
    sw.s.heartbeat("r")
    assert sw.ask("r") == []


def test_idle_tasks_are_reported_for_removal() -> None:
    sw = Swarm("1", task_expire=180.0, peer_gc_delay=1000.0)
    sw.peer("r")
    sw.clock.advance(179.0)
    sw.ask("r", 0)
    sw.clock.advance(179.0)
    assert sw.s.expire().idle_tasks == []
    sw.clock.advance(1.0)
    assert sw.s.expire().idle_tasks == [TASK]
    sw.s.remove_task(TASK)
    assert not sw.s.has_task(TASK) and sw.s.task_view(TASK) is None
    assert sw.s.peers_view()[0]["tasks"] == []
    with pytest.raises(BadRequest, match="unknown task"):
        sw.ask("r")
    sw.s.piece_ready(TASK, 0, "")  # a late CDN event for a removed task is ignored
    sw.s.remove_task(TASK)


def test_task_failed_answers_failed_with_code_and_message() -> None:
    sw = Swarm("10")
    sw.peer("r")
    sw.ask("r")
    sw.s.task_failed(TASK, "origin_not_found", "the origin answered 404 for the url")
    sw.ask("r", 4, [PieceResult(0, True, "supernode")])
    assert sw.last.status == "failed"
    assert (sw.last.error_code, sw.last.message) == (
        "origin_not_found",
        "the origin answered 404 for the url",
    )
    assert sw.s.task_view(TASK)["failed"] is True


def test_done_with_file_sha_once_known() -> None:
    sw = Swarm("11")
    sw.peer("a")
    sw.fetch_all("a")
    assert sw.last.file_sha256 == ""
    sw.s.task_complete(TASK, "f" * 64)
    sw.ask("a")
    assert (sw.status, sw.last.file_sha256) == ("done", "f" * 64)
    view = sw.s.task_view(TASK)
    assert view["complete"] and view["peers"][0]["done"] and view["peers"][0]["pieces"] == 2


def test_a_whole_swarm_finishes_mostly_from_peers() -> None:
    sw = Swarm("1" * 16, supernode_limit=2)
    names = [sw.peer(f"p{i}") for i in range(12)]
    inflight: dict[str, list[tuple[int, str]]] = {n: [] for n in names}
    for _ in range(200):
        for n in names:
            inflight[n] = sw.ok(n, *inflight[n], want=4)
        if all(p["done"] for p in sw.s.task_view(TASK)["peers"]):
            break
    sw.s.audit()
    b = sw.s.task_view(TASK)["bytes_by_source"]
    assert all(p["done"] for p in sw.s.task_view(TASK)["peers"])
    assert b["peer"] > 3 * b["supernode"]


def test_zero_length_task_is_done_at_once() -> None:
    sw = Swarm("", pieces=0)
    sw.s.task_complete(TASK, "e3" * 32)
    sw.peer("r")
    sw.ask("r")
    assert (sw.status, sw.last.file_sha256) == ("done", "e3" * 32)


def test_origin_source_pattern() -> None:
    sw = Swarm("", pieces=4, cdn_pattern="source", origin_limit=3)
    sw.peer("r")
    got = sw.ask("r", 4)
    assert [src for _, src in got] == ["origin"] * 3
    assert all(a.digest == "" and a.source.kind == "origin" for a in sw.last.pieces)
    size = sum(a.size for a in sw.last.pieces)
    sw.peer("h", have="1111")
    sw.peer("r2")
    assert {src for _, src in sw.ask("r2", 4)} == {"h"}  # peers before the origin
    sw.ok("r", *got)
    assert sw.s.task_view(TASK)["bytes_by_source"]["origin"] == size
    assert sw.s.task_view(TASK)["state"] == "running"


def test_reset_task_forgets_pieces_holders_and_inflight() -> None:
    sw = Swarm("11")
    sw.peer("a")
    sw.fetch_all("a")
    sw.peer("b")
    sw.ask("b", 1)
    sw.s.task_complete(TASK, "a" * 64)
    sw.s.reset_task(TASK, 3 * PIECE, PIECE)
    view = sw.s.task_view(TASK)
    assert (view["piece_count"], view["pieces_ready"], view["file_sha256"]) == (3, 0, "")
    assert [(p["pieces"], p["done"], p["inflight"]) for p in view["peers"]] == [(0, False, 0)] * 2
    assert sw.ask("a", 4) == [] and sw.last.message == "waiting for the CDN"
    sw.s.piece_ready(TASK, 2, "c" * 64)
    assert sw.ask("b", 4) == [(2, "supernode")]
    sw.s.audit()


def test_reregistering_with_held_pieces_makes_a_source_at_once() -> None:
    sw = Swarm("0000")
    sw.peer("moved", have="1010")  # e.g. it came from a supernode that failed
    sw.peer("r")
    assert sorted(sw.ask("r", 4)) == [(0, "moved"), (2, "moved")]
    sw.peer("moved", have="0100")  # a second registration adds what it reports
    assert sw.s.task_view(TASK)["peers"][0]["pieces"] == 3
    with pytest.raises(BadRequest, match="not a piece"):
        sw.peer("moved", have="00001")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda sw: sw.s.schedule("cd" * 32, "r", [], 4), "unknown task"),
        (lambda sw: sw.s.schedule(TASK, "nobody", [], 4), "not registered"),
        (lambda sw: sw.s.add_peer("cd" * 32, PeerInfo("x", "1.2.3.4", 1)), "unknown task"),
        (lambda sw: sw.s.add_peer(TASK, PeerInfo("x", "1.2.3.4", 1), "source"), "'source'"),
        (lambda sw: sw.s.add_peer(TASK, PeerInfo("supernode", "1.2.3.4", 1)), "reserved"),
        (lambda sw: sw.s.heartbeat("nobody"), "unknown peer"),
        (lambda sw: sw.s.add_task("cd" * 32, 1 << 40, 1), "more than"),
    ],
)
def test_bad_requests(call, match: str) -> None:  # type: ignore[no-untyped-def]
    sw = Swarm("1")
    sw.peer("r")
    with pytest.raises(BadRequest, match=match) as e:
        call(sw)
    assert e.value.hint  # says what to do


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"piece_policy": "fastest"}, "unknown piece policy 'fastest'"),
        ({"source_policy": "closest"}, "unknown source policy 'closest'"),
        ({"up_limit": 0}, "up_limit"),
        ({"down_limit": True}, "down_limit"),
        ({"inflight_timeout": 0}, "inflight_timeout"),
        ({"client_fail_limit": -1}, "client_fail_limit"),
    ],
)
def test_bad_config(config: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SchedulerConfig(**config)  # type: ignore[arg-type]


def test_unknown_policy_set_after_construction_fails_at_scheduler_start() -> None:
    cfg = SchedulerConfig()
    cfg.piece_policy = "nope"
    with pytest.raises(ConfigError, match="choose one of rarest"):
        Scheduler(cfg, FakeClock(), random.Random(0), SUPERNODE)
    with pytest.raises(ValueError, match="kind"):
        Scheduler(SchedulerConfig(), FakeClock(), random.Random(0), PieceSource("s", "peer"))


def test_illegal_transition_names_role_state_and_event() -> None:
    sw = Swarm("1")
    sw.s.task_failed(TASK, "origin_error", "boom")
    with pytest.raises(IllegalTransition, match=r"task abab.* 'complete' in state 'failed'"):
        sw.s.task_complete(TASK, "")
    sw.s.reset_task(TASK, PIECE, PIECE)  # a reset leaves the failure behind
    sw.s.task_complete(TASK, "")


def test_views_stats_and_repr() -> None:
    sw = Swarm("11")
    sw.peer("a")
    sw.ok("a", *sw.ask("a", 2))
    sw.peer("b")
    got = sw.ask("b", 2)
    assert repr(sw.s) == (
        "<Scheduler tasks=1 peers=2 isolated=0 inflight=2 policy=rarest/least_loaded>"
    )
    stats = sw.s.stats()
    assert stats["assignments_by_source"] == {"peer": 2, "supernode": 2, "origin": 0}
    assert stats["bytes_by_source"] == {"peer": 0, "supernode": 2 * PIECE - 100, "origin": 0}
    (t,) = sw.s.tasks_view()
    assert (t["task_id"], t["peer_count"], t["peers_done"], "peers" in t) == (TASK, 2, 1, False)
    a = sw.s.peers_view()[0]
    assert (a["id"], a["hostname"], a["uploads"], a["isolated"]) == ("a", "host-a", 2, False)
    sw.ok("b", *got)
    assert sw.s.peers_view()[0]["bytes_served"] == 2 * PIECE - 100
    assert "Task" in repr(sw.s._tasks[TASK]) and "held=2/2" in repr(sw.s._tasks[TASK].peers["a"])


def test_cdn_pattern_source_first_origin_copy_defines_the_digest() -> None:
    sw = Swarm("", pieces=2, cdn_pattern="source")
    sw.peer("a")
    got = sw.ask("a", 1)
    assert got[0][1] == "origin" and sw.last is not None and sw.last.pieces[0].digest == ""
    num = got[0][0]
    sw.ask("a", 0, [PieceResult(num, True, "origin", bytes=PIECE, digest="ab" * 32)])
    sw.peer("b")
    sw.ask("b", 2)
    assert sw.last is not None
    by_num = {p.num: p for p in sw.last.pieces}
    assert by_num[num].source.id == "a" and by_num[num].digest == "ab" * 32
    # a digest reported for a piece from a peer never overrides anything
    sw.ask("b", 0, [PieceResult(num, True, "a", bytes=PIECE, digest="cd" * 32)])
    sw.peer("c")
    sw.ask("c", 2)
    assert all(p.digest in ("", "ab" * 32) for p in sw.last.pieces)
