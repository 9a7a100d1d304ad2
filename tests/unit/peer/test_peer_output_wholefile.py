"""Atomic placement of the output, room checks, and the whole-file digest."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from damselfly.core.errors import DamselflyError, NoSpaceError
from damselfly.core.pieces import PiecePlan
from damselfly.core.protocol import PieceAssignment, PieceSource
from damselfly.peer.output import (
    check_output_dir,
    check_room,
    is_temp_name,
    place,
    temp_path,
)
from damselfly.peer.wholefile import (
    WINDOW,
    Confirmed,
    Expected,
    PrefixHasher,
    expected_digest,
    hash_range,
    needs_full_hash,
    pieces_suffice,
)


def test_place_links_then_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_bytes(b"new content")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "f.bin"
    out.write_bytes(b"old content")
    assert place(data, str(out)) == "link"
    assert out.read_bytes() == b"new content" and os.listdir(out_dir) == ["f.bin"]
    assert os.stat(out).st_ino == os.stat(data).st_ino
    # placing the same data again: rename() of two links to one file is a no-op
    assert place(data, str(out)) == "link"
    assert os.listdir(out_dir) == ["f.bin"]


def test_place_failure_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "f.bin"
    with pytest.raises(DamselflyError) as e:
        place(tmp_path / "missing", str(out))
    assert "could not write" in str(e.value)
    assert os.listdir(tmp_path) == []


def test_temp_names_are_hidden_beside_the_output(tmp_path: Path) -> None:
    t = temp_path(str(tmp_path / "f.bin"))
    assert os.path.dirname(t) == str(tmp_path) and is_temp_name(os.path.basename(t))
    assert temp_path(str(tmp_path / "f.bin")) != t


@pytest.mark.parametrize(
    ("make", "fragment"),
    [("dir", "is a directory"), ("nodir", "does not exist"), ("ok", "")],
)
def test_check_output_dir(tmp_path: Path, make: str, fragment: str) -> None:
    target = {"dir": tmp_path, "nodir": tmp_path / "no" / "f", "ok": tmp_path / "f"}[make]
    if fragment:
        with pytest.raises(DamselflyError) as e:
            check_output_dir(str(target))
        assert fragment in str(e.value)
    else:
        assert check_output_dir(str(target)) == str(tmp_path)


def test_check_room(tmp_path: Path) -> None:
    check_room(tmp_path, 1, "x")
    with pytest.raises(NoSpaceError) as e:
        check_room(tmp_path, 2**60, "the output")
    assert "the output" in str(e.value) and "free some space" in str(e.value)


@pytest.mark.parametrize(
    ("md5", "url", "sn", "expect"),
    [
        ("", None, "", None),
        ("", None, "CC", Expected("sha256", "cc", "the supernode")),
        ("", "bb", "cc", Expected("sha256", "bb", "the sha256 in the URL")),
        ("AA", "bb", "cc", Expected("md5", "aa", "--md5")),
    ],
)
def test_expected_digest_order(md5: str, url: str | None, sn: str, expect: Expected | None) -> None:
    assert expected_digest(md5, url, sn) == expect


@pytest.mark.parametrize("algo", ["sha256", "md5"])
async def test_prefix_hasher_follows_pieces_in_any_order(tmp_path: Path, algo: str) -> None:
    content = os.urandom(10 * 1000 + 17)
    path = tmp_path / "data"
    path.write_bytes(content)
    plan = PiecePlan(len(content), 1000)
    held: set[int] = set()
    fd = os.open(path, os.O_RDONLY)
    try:
        h = PrefixHasher(algo, fd, plan, held.__contains__)
        h.start("test-hasher")
        for num in [3, 1, 0, 2, 10, 5, 4, 9, 8, 7, 6]:
            held.add(num)
            h.poke()
            await asyncio.sleep(0)
        assert await h.result() == hashlib.new(algo, content).hexdigest()
        assert h.next_piece == plan.count
    finally:
        os.close(fd)


async def test_prefix_hasher_close_stops_it(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"x" * 100)
    fd = os.open(path, os.O_RDONLY)
    try:
        h = PrefixHasher("sha256", fd, PiecePlan(100, 10), lambda n: n < 3)
        h.start("test-hasher")
        await asyncio.sleep(0)
        await h.close()
        assert h._task is not None and h._task.done()
    finally:
        os.close(fd)


@pytest.mark.parametrize("links", [1, 2])
def test_hash_range_reads_any_range(tmp_path: Path, links: int) -> None:
    # one link: mapped windows; two (an output shares the inode): pread
    content = os.urandom(3 * WINDOW + 12345)
    path = tmp_path / "data"
    path.write_bytes(content)
    if links == 2:
        os.link(path, tmp_path / "output")
    fd = os.open(path, os.O_RDONLY)
    try:
        for start, end in [(0, len(content)), (5, 5), (4097, WINDOW + 3), (WINDOW, len(content))]:
            h = hashlib.sha256()
            hash_range(fd, h, start, end)
            assert h.hexdigest() == hashlib.sha256(content[start:end]).hexdigest()
        with pytest.raises(OSError, match="shorter"):
            hash_range(fd, hashlib.sha256(), 0, len(content) + 1)
    finally:
        os.close(fd)


def a(num: int, digest: str) -> PieceAssignment:
    return PieceAssignment(num, num * 10, 10, digest, PieceSource("sn", "supernode", "h", 1))


@pytest.mark.parametrize(
    ("verified", "assigned", "here", "count", "covered"),
    [
        # fetched and verified in this download, each against its assignment's digest
        ({0: "aa", 1: "bb", 2: "cc"}, [], {}, 3, True),
        # a piece that came without a digest was written unverified
        ({0: "aa", 1: "", 2: "cc"}, [], {}, 3, False),
        # verified by this process earlier, assigned again with the same digest
        ({0: "aa"}, [a(1, "BB"), a(2, "cc")], {1: "bb", 2: "cc"}, 3, True),
        # assigned again with another digest, or held only from an earlier run's meta
        ({0: "aa"}, [a(1, "bb"), a(2, "dd")], {1: "bb", 2: "cc"}, 3, False),
        ({0: "aa"}, [a(1, "bb"), a(2, "cc")], {1: "bb"}, 3, False),
        ({}, [], {}, 0, True),  # an empty file
    ],
)
def test_confirmed_pieces(
    verified: dict[int, str],
    assigned: list[PieceAssignment],
    here: dict[int, str],
    count: int,
    covered: bool,
) -> None:
    c = Confirmed()
    for num, d in verified.items():
        c.on_verified(num, d)
    c.on_assigned(assigned, here)
    assert c.covers(count) is covered
    c.clear()
    assert c.covers(count) is (count == 0)


@pytest.mark.parametrize(
    ("exp", "all_confirmed", "confirmed_sha256", "suffice"),
    [
        (Expected("sha256", "cc", "the supernode"), True, "", True),
        (Expected("sha256", "cc", "the supernode"), False, "", False),
        (Expected("sha256", "cc", "the supernode"), False, "cc", True),  # confirmed earlier
        (Expected("sha256", "cc", "the supernode"), False, "dd", False),  # under another digest
        (Expected("sha256", "cc", "the sha256 in the URL"), True, "cc", False),
        (Expected("md5", "cc", "--md5"), True, "cc", False),
    ],
)
def test_when_the_pieces_stand_for_the_whole_file(
    exp: Expected, all_confirmed: bool, confirmed_sha256: str, suffice: bool
) -> None:
    c = Confirmed()
    for n in range(4 if all_confirmed else 3):
        c.on_verified(n, "ab")
    assert pieces_suffice(exp, c, 4, confirmed_sha256) is suffice


@pytest.mark.parametrize(
    ("md5", "url_sha256", "full"), [("", None, False), ("ab", None, True), ("", "cd", True)]
)
def test_needs_full_hash(md5: str, url_sha256: str | None, full: bool) -> None:
    assert needs_full_hash(md5, url_sha256) is full
