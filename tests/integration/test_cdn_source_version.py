"""The CDN's source pattern and the version it announces (in process, the real test origin on
127.0.0.1, a fake clock): ``validator()`` is what peers pin with If-Range; ``confirm_change()``
(a peer found another version) probes the origin again, at most every REPROBE_INTERVAL, one
probe for any number of reports, and a new version resets the task."""

from __future__ import annotations

import asyncio
from pathlib import Path

from damselfly.core.clock import FakeClock
from damselfly.core.ids import task_id
from damselfly.core.pieces import MiB
from damselfly.supernode.cdn import REPROBE_INTERVAL
from tests.integration.cdn_helpers import (
    Recorder,
    make_file,
    replace_file,
    running_cdn,
    running_origin,
)


def etag_of(path: Path) -> str:
    st = path.stat()
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'  # the test origin's ETag


async def test_a_reported_change_is_probed_and_resets_the_task(tmp_path: Path) -> None:
    f = tmp_path / "www" / "f.bin"
    make_file(f, 9 * MiB)
    rec = Recorder()
    clock = FakeClock()
    async with (
        running_origin(tmp_path / "www") as (origin, base),
        running_cdn(tmp_path / "home", rec, clock=clock, pattern="source") as cdn,
    ):
        url = f"{base}/f.bin"
        tid = task_id(url)
        await cdn.ensure(tid, url, {"Authorization": "Bearer x"})
        assert cdn.validator(tid) == etag_of(f) and origin.requests == 1
        # a report right after the probe that announced the version: not probed again
        await cdn.confirm_change(tid)
        assert origin.requests == 1
        clock.advance(REPROBE_INTERVAL + 0.01)
        # unchanged: one probe, nothing reset, nothing new announced
        await cdn.confirm_change(tid)
        assert origin.requests == 2 and rec.of("task_reset", tid) == []
        assert cdn.validator(tid) == etag_of(f)
        replace_file(f, 10 * MiB, seed=2)
        clock.advance(REPROBE_INTERVAL + 0.01)
        # twenty peers report at once: one probe, the task reset once, to the new version
        await asyncio.gather(*(cdn.confirm_change(tid) for _ in range(20)))
        assert origin.requests == 3
        assert rec.of("task_reset", tid) == [("task_reset", tid, 10 * MiB, 4 * MiB)]
        assert cdn.validator(tid) == etag_of(f)
        assert rec.ready_digests(tid) == {0: "", 1: "", 2: ""}  # no digest survives a reset
        # the probe went with the credentials of the task's registrations
        assert origin.header_hashes[-1].get("authorization") is not None


async def test_the_local_pattern_and_unknown_tasks_are_not_probed(tmp_path: Path) -> None:
    make_file(tmp_path / "www" / "f.bin", 1 * MiB)
    async with (
        running_origin(tmp_path / "www") as (origin, base),
        running_cdn(tmp_path / "home", Recorder(), pattern="source") as cdn,
        running_cdn(tmp_path / "home2", Recorder()) as local,
    ):
        await cdn.confirm_change("0" * 64)
        url = f"{base}/f.bin"
        await local.ensure(task_id(url), url, {})
        before = origin.requests
        await local.confirm_change(task_id(url))
        assert origin.requests == before == 1


async def test_an_origin_without_validators_announces_none(tmp_path: Path) -> None:
    make_file(tmp_path / "www" / "f.bin", 1 * MiB)
    async with (
        running_origin(tmp_path / "www") as (origin, base),
        running_cdn(tmp_path / "home", Recorder(), pattern="source") as cdn,
    ):
        origin.no_validators = True
        url = f"{base}/f.bin"
        await cdn.ensure(task_id(url), url, {})
        assert cdn.validator(task_id(url)) == ""
