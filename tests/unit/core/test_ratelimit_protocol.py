import json

import pytest

from damselfly.core.clock import FakeClock
from damselfly.core.errors import BadRequest
from damselfly.core.protocol import RegisterRequest, ScheduleRequest, loads_bounded
from damselfly.core.ratelimit import TokenBucket


def test_unlimited_bucket_never_waits() -> None:
    b = TokenBucket(None, FakeClock())
    assert b.reserve(10**9) == 0.0


def test_bucket_paces_to_its_rate() -> None:
    clock = FakeClock()
    b = TokenBucket(1000, clock, burst=100)
    # the burst is free, then every byte costs 1 ms
    assert b.reserve(100) == 0.0
    assert b.reserve(500) == pytest.approx(0.5)
    clock.advance(0.5)
    assert b.reserve(1000) == pytest.approx(1.0)
    # after a long idle time only the burst is free: the last of 100 reservations made at once
    # waits until rate * t + burst covers them all
    clock.advance(10)
    waits = [b.reserve(100) for _ in range(100)]
    assert waits[0] == 0.0
    assert waits[-1] == pytest.approx((100 * 100 - 100) / 1000)


def test_bucket_rate_change() -> None:
    clock = FakeClock()
    b = TokenBucket(1000, clock, burst=0)
    b.set_rate(None)
    assert b.reserve(10**6) == 0.0
    b.set_rate(100, burst=0)
    assert b.reserve(100) == pytest.approx(1.0)


def _peer() -> dict:
    return {"id": "p1", "ip": "127.0.0.1", "port": 1234}


def test_register_request_validates() -> None:
    ok = RegisterRequest.from_json({"url": "http://h/f", "peer": _peer(), "headers": {"A": "b"}})
    assert ok.headers == {"A": "b"} and ok.pattern == "p2p"
    for bad in (
        {"url": "ftp://h/f", "peer": _peer()},
        {"url": "http://h/f"},
        {"url": "http://h/f", "peer": {**_peer(), "port": 70000}},
        {"url": "http://h/f", "peer": {**_peer(), "id": "../x"}},
        {"url": "http://h/f", "peer": _peer(), "pattern": "bt"},
        {"url": "http://h/f", "peer": _peer(), "headers": {"A": "b\r\nC: d"}},
        {"url": "http://h/f", "peer": _peer(), "md5": "xyz"},
        {"url": "http://h/f", "peer": _peer(), "filter": "a&b"},
    ):
        with pytest.raises(BadRequest):
            RegisterRequest.from_json(bad)


def test_schedule_request_bounds() -> None:
    r = ScheduleRequest.from_json(
        {"peer_id": "p", "results": [{"piece": 1, "ok": True, "source": "supernode"}]}
    )
    assert r.results[0].ok and r.want == 4
    for bad in (
        {"peer_id": "p", "want": 1000},
        {"peer_id": "p", "results": [{"piece": -1, "ok": True, "source": "supernode"}]},
        {"peer_id": "p", "results": [{"piece": 1, "ok": "yes", "source": "supernode"}]},
        {"peer_id": "p", "results": [{"piece": 1, "ok": True, "source": "supernode"}] * 2000},
    ):
        with pytest.raises(BadRequest):
            ScheduleRequest.from_json(bad)


def test_loads_bounded_rejects_deep_and_large_and_non_objects() -> None:
    with pytest.raises(BadRequest):
        loads_bounded("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BadRequest):
        loads_bounded(b"x" * (300 * 1024))
    with pytest.raises(BadRequest):
        loads_bounded("[1]")
    assert loads_bounded(json.dumps({"a": 1})) == {"a": 1}


def test_schedule_response_json_round_trips() -> None:
    from dataclasses import asdict

    from damselfly.core.protocol import PieceAssignment, PieceSource, ScheduleResponse

    r = ScheduleResponse(
        "pieces",
        [PieceAssignment(1, 4, 3, "ab" * 32, PieceSource("p", "peer", "10.0.0.1", 5))],
        retry_ms=7,
        message="m",
        error_code="c",
        file_sha256="f" * 64,
    )
    assert r.to_json() == asdict(r)
    assert ScheduleResponse.from_json(r.to_json()) == r
