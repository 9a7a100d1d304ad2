"""Pinning the origin's version under cdn_pattern "source": the pure decisions.

``fetch.origin_answer`` judges one answer to a Range request (table-driven); the plan notices a
schedule answer naming another version, reports held origin pieces with their digest, and
refuses pieces a peer would send with no digest to check them against; the wire fields are
validated.
"""

from __future__ import annotations

import pytest

from damselfly.core.errors import BadRequest
from damselfly.core.pieces import PiecePlan
from damselfly.core.protocol import (
    STATUS_PIECES,
    PieceAssignment,
    PieceResult,
    PieceSource,
    RegisterResponse,
    ScheduleResponse,
)
from damselfly.peer.fetch import origin_answer, strong_validator
from damselfly.peer.plan import DownloadPlan

PS = 100
LEN = 5 * PS - 1
ORIGIN = PieceSource("origin", "origin")
PEER = PieceSource("p-1", "peer", "10.0.0.2", 15000)
V1, V2 = '"v1"', '"v2"'
LM = "Wed, 01 Jan 2025 00:00:00 GMT"


# -- one answer of the origin -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "content_range", "etag", "lm", "pinned", "kind"),
    [
        # the pinned version, by ETag or by Last-Modified
        (206, f"bytes 100-199/{LEN}", V1, LM, (V1, LEN), None),
        (206, f"bytes 100-199/{LEN}", "", LM, (LM, LEN), None),
        # an origin that names no version on its 206 is judged by the length it names
        (206, f"bytes 100-199/{LEN}", "", "", (V1, LEN), None),
        # If-Range refused: the origin's own way of saying the file changed
        (200, "", V2, LM, (V1, LEN), "changed"),
        # a 206 of another version (an origin ignoring If-Range) or of another total length
        (206, f"bytes 100-199/{LEN}", V2, LM, (V1, LEN), "changed"),
        (206, f"bytes 100-199/{LEN + 1}", V1, LM, (V1, LEN), "changed"),
        (206, "bytes 100-199/*", V1, LM, (V1, LEN), "changed"),
        # a weak ETag is no version: Last-Modified is compared instead
        (206, f"bytes 100-199/{LEN}", 'W/"x"', LM, (LM, LEN), None),
        # not the range asked for, or an error: an HTTP failure, not a version change
        (206, f"bytes 0-99/{LEN}", V1, LM, (V1, LEN), "http"),
        (206, "garbage", V1, LM, (V1, LEN), "http"),
        (404, "", "", "", (V1, LEN), "http"),
        # no validator pinned (no If-Range sent): a 200 means no Range support, not a change
        (200, "", "", "", ("", LEN), "http"),
        # nothing pinned yet (the local pattern): the first 206 is accepted and pins
        (206, f"bytes 100-199/{LEN}", V1, LM, None, None),
    ],
)
def test_origin_answer(
    status: int,
    content_range: str,
    etag: str,
    lm: str,
    pinned: tuple[str, int] | None,
    kind: str | None,
) -> None:
    failure, _version = origin_answer(status, content_range, etag, lm, 100, 100, pinned)
    assert (failure[0] if failure else None) == kind


def test_the_first_answer_names_its_version_for_an_unpinned_download() -> None:
    assert origin_answer(206, f"bytes 0-99/{LEN}", V1, LM, 0, 100, None) == (None, (V1, LEN))
    assert origin_answer(206, f"bytes 0-99/{LEN}", 'W/"w"', LM, 0, 100, None)[1] == (LM, LEN)


@pytest.mark.parametrize(
    ("etag", "lm", "want"), [(V1, LM, V1), ('W/"w"', LM, LM), ("", LM, LM), ("", "", "")]
)
def test_strong_validator(etag: str, lm: str, want: str) -> None:
    assert strong_validator(etag, lm) == want


# -- the plan -----------------------------------------------------------------------------------


def plan(held: dict[int, str] | None = None, version: str | None = V1) -> DownloadPlan:
    return DownloadPlan.start(PiecePlan(LEN, PS), held, down_limit=3, origin_validator=version)


def give(
    *nums: int, src: PieceSource = ORIGIN, digest: str = "", version: str = V1
) -> ScheduleResponse:
    pieces = [PieceAssignment(n, n * PS, PS if n < 4 else PS - 1, digest, src) for n in nums]
    return ScheduleResponse(STATUS_PIECES, pieces, origin_validator=version)


def test_another_version_in_a_schedule_answer_makes_the_copy_stale() -> None:
    p = plan({0: "a" * 64, 1: "b" * 64})
    p.on_response(give(2))
    p.on_piece(2, False, "changed")
    d = p.on_response(give(3, version=V2))
    assert d.stale and d.new_version == V2 and d.fetch == []  # nothing applied
    p.drop_local_copy(d.new_version)
    assert p.held == {} and p.failures == {} and p.origin_validator == V2
    d = p.on_response(give(0, 3, version=V2))
    assert not d.stale and [a.num for a in d.fetch] == [0, 3]


def test_an_origin_that_stops_naming_a_version_is_a_change_too() -> None:
    d = plan().on_response(give(0, version=""))
    assert d.stale and d.new_version == ""


def test_an_unversioned_plan_ignores_validators() -> None:
    """The local pattern: the supernode's digests say everything (no version carried)."""
    d = plan(version=None).on_response(give(0, digest="c" * 64, version=""))
    assert not d.stale and [a.num for a in d.fetch] == [0]


def test_a_held_origin_piece_is_reported_with_its_digest() -> None:
    """Held from an earlier download of the same version: the scheduler has no digest for it
    (cdn_pattern "source"), so the report carries ours; peers it is handed to can check it."""
    p = plan({0: "a" * 64, 1: "b" * 64})
    d = p.on_response(give(0))
    p.on_response(give(1, src=PEER, digest="b" * 64))
    assert d.fetch == []
    assert p.take_results() == [
        PieceResult(0, True, "origin", "", 0, digest="a" * 64),
        PieceResult(1, True, "p-1", "", 0, digest=""),  # the scheduler knows this one's digest
    ]


def test_a_peer_piece_without_a_digest_is_refused() -> None:
    p = plan()
    d = p.on_response(give(0, src=PEER))
    assert d.fetch == [] and d.unverifiable == 1 and not p.in_flight
    assert p.take_results() == [PieceResult(0, False, "p-1", "other", 0)]
    d = p.on_response(give(0, src=PEER, digest="c" * 64))
    assert [a.num for a in d.fetch] == [0]


def test_an_origin_piece_fetched_here_reports_the_digest_computed() -> None:
    p = plan()
    p.on_response(give(2))
    p.on_piece(2, True, nbytes=PS, digest="D" * 64)
    assert p.take_results() == [PieceResult(2, True, "origin", "", PS, digest="d" * 64)]
    assert p.held == {2: "d" * 64}


# -- the wire -----------------------------------------------------------------------------------


def test_the_validator_travels_in_register_and_schedule_answers() -> None:
    reg = RegisterResponse("a" * 64, LEN, PS, 5, cdn_pattern="source", origin_validator=V1)
    assert RegisterResponse.from_json(reg.to_json()).origin_validator == V1
    resp = ScheduleResponse(STATUS_PIECES, origin_validator=LM)
    assert ScheduleResponse.from_json(resp.to_json()).origin_validator == LM
    assert ScheduleResponse.from_json({"status": "wait"}).origin_validator == ""


@pytest.mark.parametrize("bad", ['"a"\r\nX-Evil: 1', "a\x00", "x" * 1025, 7])
def test_a_validator_that_is_no_header_value_is_refused(bad: object) -> None:
    body = RegisterResponse("a" * 64, LEN, PS, 5).to_json()
    body["origin_validator"] = bad
    with pytest.raises(BadRequest):
        RegisterResponse.from_json(body)
    with pytest.raises(BadRequest):
        ScheduleResponse.from_json({"status": "wait", "origin_validator": bad})


def test_changed_is_a_failure_kind_on_the_wire() -> None:
    r = PieceResult.from_json({"piece": 3, "ok": False, "source": "origin", "failure": "changed"})
    assert r.failure == "changed"
