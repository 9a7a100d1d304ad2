"""The download plan, driven by events: schedule responses in, decisions out."""

from __future__ import annotations

import pytest

from damselfly.core.pieces import PiecePlan
from damselfly.core.protocol import (
    STATUS_DONE,
    STATUS_PIECES,
    STATUS_WAIT,
    PieceAssignment,
    PieceResult,
    PieceSource,
    ScheduleResponse,
)
from damselfly.peer.plan import DownloadPlan, down_limit_for, source_class

PS = 100
SN = PieceSource("supernode", "supernode", "10.0.0.1", 8001)
PEER = PieceSource("p-1", "peer", "10.0.0.2", 15000)
ORIGIN = PieceSource("origin", "origin")


def plan(count: int = 5, held: str = "", down: int = 3) -> DownloadPlan:
    """``held`` is a string of piece numbers held with digest 'd<n>', e.g. "013"."""
    return DownloadPlan.start(
        PiecePlan(count * PS - 1, PS), {int(c): f"d{c}" for c in held}, down_limit=down
    )


def give(
    *nums: int, src: PieceSource = SN, digest: str = "", status: str = STATUS_PIECES
) -> ScheduleResponse:
    pieces = [
        PieceAssignment(n, n * PS, PS if n < 4 else PS - 1, digest or f"d{n}", src) for n in nums
    ]
    return ScheduleResponse(status, pieces)


@pytest.mark.parametrize(
    ("count", "held", "in_flight", "want"),
    [
        (5, "", "", 3),  # the down limit
        (5, "", "01", 1),  # minus what is in flight
        (5, "0123", "", 1),  # never more than is missing
        (5, "012", "34", 0),
        (5, "01234", "", 3),  # all here: ask anyway, to report them held
    ],
)
def test_want(count: int, held: str, in_flight: str, want: int) -> None:
    p = plan(count, held)
    p.on_response(give(*(int(c) for c in in_flight)))
    assert p.want() == want


def test_want_is_zero_once_the_scheduler_said_done() -> None:
    p = plan(2, "01")
    p.on_response(ScheduleResponse(STATUS_DONE, file_sha256="ab"))
    assert p.want() == 0 and p.file_sha256 == "ab"


def test_long_poll_only_when_nothing_is_in_flight() -> None:
    p = plan()
    assert p.wait_ms(2000) == 2000
    p.on_response(give(0))
    assert p.wait_ms(2000) == 0


def test_assignments_are_fetched_once_and_held_ones_reported_at_once() -> None:
    p = plan(5, "1")
    d = p.on_response(give(0, 1, 2))
    assert [a.num for a in d.fetch] == [0, 2] and not d.stale
    assert p.take_results() == [PieceResult(1, True, "supernode", "", 0)]
    d = p.on_response(give(0, 3))  # 0 is already in flight
    assert [a.num for a in d.fetch] == [3]
    assert repr(p) == (
        "DownloadPlan(held=1/5, in_flight=[0, 2, 3], unreported=0, failures=0, done_seen=False)"
    )


def test_assignments_that_do_not_fit_are_refused() -> None:
    p = plan(5)
    bad = ScheduleResponse(
        STATUS_PIECES,
        [
            PieceAssignment(9, 900, PS, "x", SN),  # no such piece
            PieceAssignment(1, 150, PS, "x", SN),  # wrong start
            PieceAssignment(4, 400, PS, "x", SN),  # the last piece is shorter
        ],
    )
    d = p.on_response(bad)
    assert d.fetch == [] and d.rejected == 3
    assert [(r.piece, r.ok, r.failure) for r in p.take_results()] == [
        (9, False, "other"),
        (1, False, "other"),
        (4, False, "other"),
    ]


def test_piece_outcomes_are_counted_and_reported() -> None:
    p = plan(5)
    p.on_response(give(0, 1))
    p.on_response(give(2, src=PEER))
    p.on_piece(0, True, nbytes=PS)
    p.on_piece(2, True, nbytes=PS)
    p.on_piece(1, False, "digest")
    p.on_piece(7, True)  # not in flight: ignored
    assert p.held == {0: "d0", 2: "d2"}
    assert p.bytes_from == {"origin": 0, "supernode": PS, "peers": PS}
    assert p.failures == {1: 1}
    assert [(r.piece, r.ok, r.source, r.failure) for r in p.take_results()] == [
        (0, True, "supernode", ""),
        (2, True, "p-1", ""),
        (1, False, "supernode", "digest"),
    ]
    assert p.take_results() == []


def test_requeue_puts_unsent_results_first() -> None:
    p = plan(5)
    p.on_response(give(0, 1))
    p.on_piece(0, True, nbytes=PS)
    sent = p.take_results()
    p.on_piece(1, True, nbytes=PS)
    p.requeue(sent)
    assert [r.piece for r in p.take_results()] == [0, 1]


def test_gives_up_after_too_many_failures_of_one_piece() -> None:
    p = plan(5)
    for _ in range(4):
        p.on_response(give(3))
        p.on_piece(3, False, "digest")
    assert p.gave_up() is None
    p.on_response(give(3, src=ORIGIN))
    p.on_piece(3, False, "http")
    assert p.gave_up() == 3


@pytest.mark.parametrize(
    ("held", "unreported", "done", "sha", "local", "finished"),
    [
        ("01", False, False, "", False, False),  # missing pieces
        ("012", True, True, "", False, False),  # results still to report
        ("012", False, False, "", False, False),  # nobody knows the digest yet
        ("012", False, True, "", False, True),  # the scheduler said done
        ("012", False, False, "ab", False, True),  # the file digest arrived
        ("012", False, False, "", True, True),  # --md5 / URL digest known here
    ],
)
def test_finished(
    held: str, unreported: bool, done: bool, sha: str, local: bool, finished: bool
) -> None:
    p = DownloadPlan.start(PiecePlan(3 * PS, PS), {int(c): "d" for c in held}, down_limit=3)
    if unreported:
        p.results.append(PieceResult(0, True, "supernode"))
    p.done_seen, p.file_sha256 = done, sha
    assert p.finished(local) is finished


def test_a_held_piece_with_another_digest_means_a_stale_copy() -> None:
    p = plan(5, "01")
    p.on_response(give(3))
    d = p.on_response(give(0, 1, 2, digest="new"))
    assert d.stale and d.fetch == [] and p.results == []  # nothing applied
    p.drop_local_copy()
    assert p.held == {} and p.in_flight == {}
    assert [(r.piece, r.ok, r.failure) for r in p.take_results()] == [(3, False, "other")]
    d = p.on_response(give(0, 1, 2, digest="new"))
    assert [a.num for a in d.fetch] == [0, 1, 2] and not d.stale


def test_wait_and_done_responses() -> None:
    p = plan(2, "01")
    assert p.on_response(ScheduleResponse(STATUS_WAIT, retry_ms=50)).fetch == []
    assert not p.done_seen
    p.on_response(ScheduleResponse(STATUS_DONE))
    assert p.done_seen and p.finished(False)


@pytest.mark.parametrize(
    ("piece_size", "limit"),
    [(64 * 1024, 8), (4 << 20, 8), (12 << 20, 4), (15 << 20, 3), (1 << 30, 2)],
)
def test_down_limit_keeps_memory_bounded(piece_size: int, limit: int) -> None:
    assert down_limit_for(piece_size) == limit


@pytest.mark.parametrize(("src", "cls"), [(SN, "supernode"), (PEER, "peers"), (ORIGIN, "origin")])
def test_source_class(src: PieceSource, cls: str) -> None:
    assert source_class(PieceAssignment(0, 0, 1, "", src)) == cls


def test_held_pieces_outside_the_plan_are_dropped_at_start() -> None:
    p = DownloadPlan.start(PiecePlan(2 * PS, PS), {0: "a", 5: "b"})
    assert p.held == {0: "a"} and p.held_bytes == PS
