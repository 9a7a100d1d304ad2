"""benchmarks/pulltrace/analyse: the gaps between a piece's steps and the stream's backlog,
computed from hand-made trace events (the format the hooks write)."""

from __future__ import annotations

from typing import Any

from benchmarks.pulltrace.analyse import per_piece, summary

MB = 1_000_000


def ev(t: float, name: str, pid: int = 7, **kw: Any) -> dict[str, Any]:
    return {"t": t, "ev": name, "pid": pid, "task": "abc", **kw}


def events() -> list[dict[str, Any]]:
    """Two pieces of 1 MB; piece 1 arrives first, so piece 0 and 1 stream together at the end."""
    return [
        ev(0.0, "respond_start"),
        ev(1.0, "cdn_done", pid=1, num=1),
        ev(1.5, "cdn_done", pid=1, num=0),
        ev(1.1, "assigned", nums=[1], kinds=["supernode"], asked=1.0, status="pieces"),
        ev(1.6, "assigned", nums=[0], kinds=["supernode"], asked=1.5, status="pieces"),
        ev(1.1, "fetch_start", num=1),
        ev(1.3, "fetched", num=1),
        ev(1.35, "written", num=1),
        ev(1.6, "fetch_start", num=0),
        ev(1.8, "fetched", num=0),
        ev(1.9, "written", num=0),
        # one read of both pieces after the last one was written
        ev(2.0, "read", offset=0, n=2 * MB, start=1.95, piece_size=MB),
        ev(2.1, "verify_start"),
        ev(2.1, "verify_end"),
        ev(2.2, "respond_end", sent=2 * MB),
    ]


def test_each_piece_gets_its_steps_and_the_supernodes_cdn_time() -> None:
    pieces = per_piece(events())
    p1 = pieces[("abc", 7, 1)]
    assert p1["cdn_done"] == 1.0 and p1["assigned"] == 1.1 and p1["written"] == 1.35
    assert p1["streamed"] == 2.0  # streamed only with piece 0, in order
    assert pieces[("abc", 7, 0)]["streamed"] == 2.0


def test_summary_gaps_tail_and_backlog() -> None:
    s = summary(events())
    assert s["steps"]["fetch_start→fetched"]["median_ms"] == 200.0
    assert s["steps"]["written→streamed"]["max_ms"] == 650.0  # piece 1 waited for piece 0
    (blob,) = s["blobs"]
    assert blob["last_written"] == 1.9 and blob["respond_end"] == 2.2
    # everything was still to be sent when the last piece was written
    assert s["backlog_mb_at_last_piece"]["max"] == 2.0
    assert s["stream_reads"]["mb"] == 2.0
