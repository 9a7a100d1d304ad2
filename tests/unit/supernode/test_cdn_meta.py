"""The CDN's on-disk records (cdn_meta.py) and data-file helpers (cdn_disk.py)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from damselfly.core.pieces import MiB, PiecePlan, piece_size_for
from damselfly.supernode import cdn_disk
from damselfly.supernode.cdn_meta import Layout, TaskMeta, read_meta, scan, write_meta

TID = "ab" + "0" * 62
D = "1" * 64


def meta(**kw: Any) -> TaskMeta:
    base: dict[str, Any] = dict(
        task_id=TID,
        url="http://o/f?sig=x",
        length=10,
        piece_size=piece_size_for(10),
        etag='"e"',
        last_modified="",
        digests=[D],
        complete=True,
        file_sha256=D,
    )
    base.update(kw)
    return TaskMeta(**base)


def test_round_trip(tmp_path: Path) -> None:
    lay = Layout(tmp_path)
    m = meta()
    write_meta(lay.meta(TID), m.to_json())
    assert lay.meta(TID) == tmp_path / "repo" / "ab" / f"{TID}.meta"
    assert read_meta(lay.meta(TID)) == m
    assert not list(lay.dir(TID).glob("*.tmp"))  # the temporary file was renamed


BAD_RECORDS = [
    ("version", 2),
    ("task_id", "../../etc"),
    ("task_id", "AB" + "0" * 62),
    ("url", ""),
    ("url", 7),
    ("length", -1),
    ("length", True),
    ("length", 2**51),
    ("piece_size", 1024),  # not the piece plan's size for that length
    ("digests", [D, D]),  # one piece only
    ("digests", ["xyz"]),
    ("digests", "abc"),
    ("etag", None),
    ("etag", "x" * 2000),
    ("complete", "yes"),
    ("file_sha256", "nothex"),
]


@pytest.mark.parametrize(("key", "value"), BAD_RECORDS)
def test_invalid_records_are_rejected(key: str, value: Any) -> None:
    obj = meta().to_json()
    obj[key] = value
    with pytest.raises(ValueError):
        TaskMeta.from_json(obj)


def test_complete_record_needs_every_digest() -> None:
    obj = meta(digests=[None], complete=True).to_json()
    with pytest.raises(ValueError):
        TaskMeta.from_json(obj)
    assert TaskMeta.from_json(meta(digests=[None], complete=False, file_sha256="").to_json())


def test_scan_loads_valid_tasks_and_removes_the_rest(tmp_path: Path) -> None:
    lay = Layout(tmp_path)
    good = meta()
    write_meta(lay.meta(TID), good.to_json())
    lay.data(TID).write_bytes(b"x" * 10)
    # A meta that does not parse, a data file without meta, a crash's temporary file.
    bad_id = "ab" + "1" * 62
    lay.meta(bad_id).write_text("{not json")
    lay.data(bad_id).write_bytes(b"y")
    orphan = "cd" + "2" * 62
    lay.dir(orphan).mkdir(parents=True)
    lay.data(orphan).write_bytes(b"z")
    (lay.dir(TID) / f"{TID}.meta.123.tmp").write_text("{}")
    # A meta whose name does not match its content.
    other = "ef" + "3" * 62
    lay.dir(other).mkdir(parents=True)
    (lay.dir(other) / f"{other}.meta").write_text(json.dumps(good.to_json()))
    (lay.dir(other) / f"{other}.data").write_bytes(b"x" * 10)

    loaded, removed = scan(lay, now_wall=lay.meta(TID).stat().st_mtime + 30)
    assert [x.meta for x in loaded] == [good]
    assert 29 <= loaded[0].age <= 31
    left = sorted(p.name for p in lay.root.rglob("*") if p.is_file())
    assert left == sorted([f"{TID}.meta", f"{TID}.data"])
    assert len(removed) == 6


def test_scan_keeps_only_the_pieces_a_short_data_file_holds(tmp_path: Path) -> None:
    lay = Layout(tmp_path)
    length = 9 * MiB  # nine pieces of 1 MiB
    assert piece_size_for(length) == MiB
    m = meta(length=length, piece_size=MiB, digests=[D] * 9, complete=True, file_sha256=D)
    write_meta(lay.meta(TID), m.to_json())
    with lay.data(TID).open("wb") as f:
        f.truncate(5 * MiB + 100)
    (loaded,), _ = scan(lay, now_wall=0.0)
    assert loaded.meta.digests == [D] * 5 + [None] * 4
    assert loaded.meta.complete is False and loaded.meta.file_sha256 == ""


def test_scan_of_a_missing_cache_is_empty(tmp_path: Path) -> None:
    assert scan(Layout(tmp_path / "nowhere"), 0.0) == ([], [])


def test_write_piece_hash_range_and_verify_file(tmp_path: Path) -> None:
    path = tmp_path / "f.data"
    plan = PiecePlan(10, 4)  # pieces of 4, 4, 2 bytes
    cdn_disk.prepare_data(path, plan.length)
    assert path.stat().st_size == 10
    whole = hashlib.sha256()
    body = b"0123456789"
    digests: list[str | None] = []
    for i in range(plan.count):
        s = plan.start(i)
        part = body[s : s + plan.size(i)]
        d = cdn_disk.write_piece(path, s, memoryview(part), whole)
        assert d == hashlib.sha256(part).hexdigest()
        digests.append(d)
    assert path.read_bytes() == body
    assert whole.hexdigest() == hashlib.sha256(body).hexdigest()
    assert cdn_disk.hash_range(path, 4, 4) == hashlib.sha256(b"4567").hexdigest()
    assert cdn_disk.hash_range(path, 8, 4) is None  # short
    assert cdn_disk.hash_range(tmp_path / "gone", 0, 1) is None
    assert cdn_disk.verify_file(path, plan, digests) == (whole.hexdigest(), [])
    with path.open("r+b") as f:  # flip a byte in piece 1
        f.seek(5)
        f.write(b"X")
    _, bad = cdn_disk.verify_file(path, plan, digests)
    assert bad == [1]
    os.truncate(path, 6)
    assert cdn_disk.verify_file(path, plan, digests)[1] == [1, 2]
    assert cdn_disk.digest_pieces(path, plan) is None


def test_prepare_data_replaces_the_inode(tmp_path: Path) -> None:
    path = tmp_path / "f.data"
    path.write_bytes(b"old version")
    with path.open("rb") as reader:  # an upload in progress keeps reading the old bytes
        cdn_disk.prepare_data(path, 4)
        assert reader.read() == b"old version"
    assert path.read_bytes() == b"\0" * 4
    cdn_disk.ensure_data(path, 8)
    assert path.stat().st_size == 8
    cdn_disk.ensure_data(tmp_path / "sub" / "new.data", 3)
    assert (tmp_path / "sub" / "new.data").stat().st_size == 3


def test_os_errors_become_user_errors(tmp_path: Path) -> None:
    import errno

    e = cdn_disk.translate_os_error(OSError(errno.ENOSPC, "No space left"), tmp_path / "x")
    assert e.code == "no_space" and e.hint
    e = cdn_disk.translate_os_error(OSError(errno.EACCES, "Permission denied"), tmp_path / "x")
    assert "Permission denied" in str(e) and e.hint
