"""Shared fixtures: a per-test process owner that stops everything it started, by pid."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import Procs


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    owner = Procs(tmp_path)
    try:
        yield owner
    finally:
        owner.stop_all()


@pytest.fixture
def random_file(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Factory: write ``size`` random bytes to ``dir/name`` and return the path."""

    def make(directory: Path, name: str, size: int) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        p = directory / name
        with p.open("wb") as f:
            left = size
            while left:
                n = min(left, 1 << 20)
                f.write(os.urandom(n))
                left -= n
        return p

    return make
