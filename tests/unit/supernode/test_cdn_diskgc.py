"""Disk GC victim selection (diskgc.py): least recently used first, only while space is low."""

from __future__ import annotations

from pathlib import Path

import pytest

from damselfly.supernode.diskgc import GCCandidate, GCThresholds, allocated, choose_victims

TH = GCThresholds(young=1000, full=200, min_idle=60.0)
NOW = 10_000.0


def cands(spec: str) -> list[GCCandidate]:
    """'a:idle:size b:idle:size' → candidates last used `idle` seconds ago."""
    out = []
    for item in spec.split():
        tid, idle, size = item.split(":")
        out.append(GCCandidate(tid, NOW - float(idle), int(size)))
    return out


@pytest.mark.parametrize(
    ("free", "spec", "victims"),
    [
        # enough free space: nothing goes, however old
        (1000, "a:9999:100", []),
        (5000, "a:9999:100 b:9999:100", []),
        # young GC: only tasks idle >= min_idle, oldest first, until free >= young
        (900, "a:100:50 b:200:50 c:300:50", ["c", "b"]),
        (900, "a:100:500 b:200:50", ["b", "a"]),
        (900, "a:10:500 b:20:500", []),  # too recent for a young GC
        (900, "a:10:500 b:60:10", ["b"]),  # exactly min_idle counts as idle
        (500, "a:100:100 b:200:100", ["b", "a"]),  # not enough even with all: takes all
        # full GC: any age, least recently used first
        (100, "a:1:500 b:2:500 c:3:500", ["c", "b"]),
        (199, "a:0:900", ["a"]),
        (200, "a:0:900", []),  # 200 is not below full: young rules (a is too recent)
        # ties broken by id, deterministic
        (100, "b:5:1000 a:5:1000", ["a"]),
    ],
)
def test_choose_victims(free: int, spec: str, victims: list[str]) -> None:
    assert choose_victims(cands(spec), free, TH, NOW) == victims


def test_no_candidates() -> None:
    assert choose_victims([], 0, TH, NOW) == []


def test_allocated_counts_real_blocks_not_apparent_size(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse"
    with sparse.open("wb") as f:
        f.truncate(64 * 1024 * 1024)
    dense = tmp_path / "dense"
    dense.write_bytes(b"x" * 64 * 1024)
    assert allocated(sparse) < 1024 * 1024
    assert allocated(dense) >= 64 * 1024
    assert allocated(tmp_path / "missing") == 0
