"""The CDN's pure decisions, as tables (cdn_policy.py)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from damselfly.core.clock import FakeClock
from damselfly.core.errors import (
    ConfigError,
    NoSpaceError,
    OriginAuthError,
    OriginChanged,
    OriginError,
    OriginNotFound,
)
from damselfly.core.pieces import MiB, PiecePlan
from damselfly.supernode.cdn import CDNConfig
from damselfly.supernode.cdn_policy import (
    Action,
    Cached,
    CacheState,
    Head,
    Kind,
    NegativeCache,
    Verdict,
    backoff,
    check_space,
    clean_headers,
    conditional_headers,
    decide,
    if_range_validator,
    is_retriable,
    judge,
    missing_runs,
    parse_content_length,
    parse_content_range,
    range_header,
    status_error,
)


def state(**kw: object) -> CacheState:
    base: dict[str, object] = dict(
        known=True,
        complete=True,
        pieces_held=3,
        busy=False,
        content_addressed=False,
        can_revalidate=True,
        can_resume=True,
        last_validated=None,
    )
    base.update(kw)
    return CacheState(**base)  # type: ignore[arg-type]


NOW, WINDOW = 1000.0, 2.0

DECIDE_TABLE = [
    # (what the cache holds, expected action)
    (state(busy=True), Action.JOIN),
    (state(busy=True, known=False), Action.JOIN),
    (state(known=False, complete=False, pieces_held=0), Action.FETCH),
    (state(content_addressed=True), Action.REUSE),
    (state(content_addressed=True, can_revalidate=False), Action.REUSE),
    (state(last_validated=NOW - 1.0), Action.REUSE),
    (state(last_validated=NOW - WINDOW), Action.REUSE),
    (state(last_validated=NOW - WINDOW - 0.01), Action.REVALIDATE),
    (state(last_validated=None), Action.REVALIDATE),
    (state(last_validated=NOW + 5), Action.REVALIDATE),  # a clock that went back: ask again
    (state(can_revalidate=False, can_resume=False), Action.FETCH),
    (state(complete=False, pieces_held=2), Action.RESUME),
    (state(complete=False, pieces_held=0), Action.FETCH),
    (state(complete=False, pieces_held=2, can_resume=False), Action.FETCH),
    (state(complete=False, pieces_held=2, content_addressed=True), Action.RESUME),
]


@pytest.mark.parametrize(("st_", "want"), DECIDE_TABLE)
def test_decide(st_: CacheState, want: Action) -> None:
    assert decide(st_, NOW, WINDOW) is want


@pytest.mark.parametrize(
    ("etag", "lm", "want"),
    [
        ('"abc"', "Mon, 01 Jan 2024 00:00:00 GMT", '"abc"'),
        ('W/"abc"', "Mon, 01 Jan 2024 00:00:00 GMT", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ('W/"abc"', "", ""),
        ("", "Mon, 01 Jan 2024 00:00:00 GMT", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ("", "", ""),
    ],
)
def test_if_range_validator(etag: str, lm: str, want: str) -> None:
    assert if_range_validator(etag, lm) == want


def test_conditional_headers() -> None:
    assert conditional_headers("", "") == {}
    assert conditional_headers('W/"x"', "") == {"If-None-Match": 'W/"x"'}
    assert conditional_headers('"x"', "D") == {"If-None-Match": '"x"', "If-Modified-Since": "D"}


def test_clean_headers_keeps_credentials_and_drops_what_the_cdn_controls() -> None:
    got = clean_headers(
        {
            "Authorization": "Bearer s3cret",
            "X-Token": "t",
            "Range": "bytes=0-1",
            "if-none-match": '"x"',
            "Accept-Encoding": "gzip",
            "Host": "evil",
            "Connection": "close",
        }
    )
    assert got == {"Authorization": "Bearer s3cret", "X-Token": "t"}


@pytest.mark.parametrize(
    ("held", "runs"),
    [
        ("", []),
        ("111", []),
        ("000", [(0, 2)]),
        ("100", [(1, 2)]),
        ("0110", [(0, 0), (3, 3)]),
        ("1010101", [(1, 1), (3, 3), (5, 5)]),
        ("1100011", [(2, 4)]),
    ],
)
def test_missing_runs(held: str, runs: list[tuple[int, int]]) -> None:
    assert missing_runs([c == "1" for c in held]) == runs


@given(st.lists(st.booleans(), max_size=64))
def test_missing_runs_cover_exactly_the_missing_pieces(held: list[bool]) -> None:
    runs = missing_runs(held)
    covered = [i for a, b in runs for i in range(a, b + 1)]
    assert covered == [i for i, ok in enumerate(held) if not ok]
    assert all(b + 1 < c for (_, b), (c, _) in itertools.pairwise(runs))


def test_range_header() -> None:
    plan = PiecePlan(10 * MiB + 5, 4 * MiB)  # pieces of 4 MiB: 0, 1, and a short 2
    assert range_header(plan, 0, 0) == (f"bytes=0-{4 * MiB - 1}", 0, 4 * MiB - 1)
    assert range_header(plan, 1, 2) == (f"bytes={4 * MiB}-{10 * MiB + 4}", 4 * MiB, 10 * MiB + 4)


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("bytes 0-9/10", (0, 9, 10)),
        ("bytes 5-5/100", (5, 5, 100)),
        (" bytes 1-2/3 ", (1, 2, 3)),
        ("bytes */10", None),
        ("bytes 5-4/10", None),
        ("bytes 0-10/10", None),
        ("bytes 0-9/*", None),
        ("items 0-9/10", None),
        ("bytes 0-99999999999999999/1", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_content_range(value: str | None, want: tuple[int, int, int] | None) -> None:
    assert parse_content_range(value) == want


@pytest.mark.parametrize(
    ("value", "want"),
    [("0", 0), ("123", 123), (" 7 ", 7), ("-1", None), ("1e3", None), ("", None), (None, None)],
)
def test_parse_content_length(value: str | None, want: int | None) -> None:
    assert parse_content_length(value) == want


C = Cached(length=100, etag='"v1"', last_modified="D1")
WANT = (40, 99)
JUDGE_TABLE = [
    # (request kind, answer, expected verdict)
    (Kind.FULL, Head(200, 100), Verdict.FULL_BODY),
    (Kind.FULL, Head(200, None), Verdict.FULL_BODY),  # chunked
    (Kind.FULL, Head(206, 100, (0, 99, 100)), Verdict.ERROR),  # not asked for
    (Kind.FULL, Head(304), Verdict.ERROR),
    (Kind.FULL, Head(404), Verdict.ERROR),
    (Kind.CONDITIONAL, Head(304), Verdict.NOT_MODIFIED),
    (Kind.CONDITIONAL, Head(200, 100, etag='"v2"'), Verdict.FULL_BODY),
    (Kind.CONDITIONAL, Head(200, 100, etag='"v1"'), Verdict.UNCHANGED),  # ignored If-None-Match
    (Kind.CONDITIONAL, Head(200, 101, etag='"v1"'), Verdict.FULL_BODY),
    (Kind.CONDITIONAL, Head(200, 100, etag='W/"v1"'), Verdict.FULL_BODY),  # weak: not proof
    (Kind.CONDITIONAL, Head(500), Verdict.ERROR),
    (Kind.RANGE, Head(206, 60, (40, 99, 100), '"v1"'), Verdict.PARTIAL),
    (Kind.RANGE, Head(206, 60, (40, 99, 100)), Verdict.PARTIAL),  # no ETag on the 206
    (Kind.RANGE, Head(206, 60, (40, 99, 100), '"v2"'), Verdict.START_OVER),
    (Kind.RANGE, Head(206, 60, (40, 99, 120), '"v1"'), Verdict.START_OVER),  # other length
    (Kind.RANGE, Head(206, 10, (40, 49, 100), '"v1"'), Verdict.START_OVER),  # not what we asked
    (Kind.RANGE, Head(206, 60, None), Verdict.START_OVER),
    (Kind.RANGE, Head(200, 100, etag='"v1"'), Verdict.FULL_BODY),  # no ranges: take it all
    (Kind.RANGE, Head(200, 120, etag='"v2"'), Verdict.FULL_BODY),  # If-Range failed
    (Kind.RANGE, Head(416), Verdict.START_OVER),
    (Kind.RANGE, Head(403), Verdict.ERROR),
]


@pytest.mark.parametrize(("kind", "head", "want"), JUDGE_TABLE)
def test_judge(kind: Kind, head: Head, want: Verdict) -> None:
    assert judge(kind, head, C, WANT if kind is Kind.RANGE else None) is want


def test_judge_unchanged_by_last_modified_only_without_etags() -> None:
    c = Cached(100, "", "D1")
    assert judge(Kind.CONDITIONAL, Head(200, 100, last_modified="D1"), c) is Verdict.UNCHANGED
    assert judge(Kind.CONDITIONAL, Head(200, 100, last_modified="D2"), c) is Verdict.FULL_BODY


@pytest.mark.parametrize(
    ("status", "cls", "retriable"),
    [
        (404, OriginNotFound, False),
        (410, OriginNotFound, False),
        (401, OriginAuthError, False),
        (407, OriginAuthError, False),
        (403, OriginAuthError, False),
        (500, OriginError, True),
        (503, OriginError, True),
        (429, OriginError, True),
        (400, OriginError, False),
        (204, OriginError, False),
    ],
)
def test_status_error(status: int, cls: type, retriable: bool) -> None:
    e = status_error(status, "http://o/f?sig=…", 180)
    assert type(e) is cls
    assert e.status == status
    assert str(status) in str(e) and "http://o/f?sig=…" in str(e)
    assert e.hint  # says what to do
    assert is_retriable(e) is retriable


def test_transport_errors_and_others_retriable_or_not() -> None:
    assert is_retriable(OriginError("connection reset"))
    assert is_retriable(OriginChanged("changed"))
    assert not is_retriable(NoSpaceError("full"))


@pytest.mark.parametrize(
    ("attempt", "want"), [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 5.0), (9, 5.0)]
)
def test_backoff(attempt: int, want: float) -> None:
    assert backoff(attempt, 0.5) == want


@pytest.mark.parametrize(
    ("free", "needed", "reserve", "ok"),
    [
        (1000, 500, 100, True),
        (1000, 900, 100, True),
        (1000, 901, 100, False),
        (0, 0, 0, True),
        (50, 0, 100, False),  # already under the reserve
    ],
)
def test_check_space(free: int, needed: int, reserve: int, ok: bool) -> None:
    err = check_space(free, needed, reserve, "/home/sn", "http://o/f")
    assert (err is None) is ok
    if err is not None:
        assert isinstance(err, NoSpaceError)
        assert "/home/sn" in str(err) and str(needed) in str(err) and err.hint


def test_negative_cache_expires_with_the_clock() -> None:
    clock = FakeClock()
    neg = NegativeCache(ttl=180)
    err = OriginNotFound("gone")
    neg.remember("a", err, clock.now())
    assert neg.lookup("a", clock.now()) is err
    assert neg.lookup("b", clock.now()) is None
    clock.advance(179.9)
    assert neg.lookup("a", clock.now()) is err
    clock.advance(0.1)
    assert neg.lookup("a", clock.now()) is None
    assert len(neg) == 0


def test_negative_cache_is_bounded_and_can_be_off() -> None:
    neg = NegativeCache(ttl=10, cap=3)
    for k in "abcd":
        neg.remember(k, OriginNotFound(k), 0.0)
    assert len(neg) == 3
    assert neg.lookup("a", 0.0) is None  # the oldest went first
    assert neg.lookup("d", 0.0) is not None
    neg.forget("d")
    assert neg.lookup("d", 0.0) is None
    off = NegativeCache(ttl=0)
    off.remember("a", OriginNotFound("a"), 0.0)
    assert off.lookup("a", 0.0) is None


@pytest.mark.parametrize(
    "kw",
    [
        {"pattern": "p2p"},
        {"rate": 0},
        {"rate": -5},
        {"negative_ttl": -1},
        {"connect_timeout": 0},
        {"retries": -1},
        {"disk_gc_young": 10, "disk_gc_full": 20},
    ],
)
def test_cdn_config_is_validated_at_start_up(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        CDNConfig(home=Path("/tmp/x"), **kw)  # type: ignore[arg-type]


def test_cdn_config_defaults() -> None:
    c = CDNConfig(home="/tmp/x")  # type: ignore[arg-type]
    assert c.home == Path("/tmp/x") and c.rate is None and c.pattern == "local"
    assert c.negative_ttl == 180.0 and c.disk_gc_full < c.disk_gc_young
