"""Helpers for the CDN's integration tests: an in-process origin, a recording listener, files.

Also runnable as a process (used to kill a CDN mid-fetch with SIGKILL)::

    python -m tests.integration.cdn_helpers --home H --url U --task-id T --rate R

prints one JSON line per listener event and keeps fetching until it completes or is killed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from damselfly.core.clock import Clock, MonotonicClock
from damselfly.core.errors import DamselflyError
from damselfly.core.pieces import PiecePlan
from damselfly.core.ratelimit import AsyncLimiter
from damselfly.supernode.cdn import CDN, CDNConfig
from tests.support.origin import Origin, make_app

Event = tuple[Any, ...]


class Recorder:
    """A CDNListener that records every event in order and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.hooks: list[Callable[[Event], None]] = []
        self._changed = asyncio.Event()

    def _add(self, ev: Event) -> None:
        self.events.append(ev)
        for hook in self.hooks:
            hook(ev)
        self._changed.set()

    def piece_ready(self, task_id: str, num: int, digest: str) -> None:
        self._add(("piece_ready", task_id, num, digest))

    def piece_lost(self, task_id: str, num: int) -> None:
        self._add(("piece_lost", task_id, num))

    def task_complete(self, task_id: str, file_sha256: str) -> None:
        self._add(("task_complete", task_id, file_sha256))

    def task_failed(self, task_id: str, error: DamselflyError) -> None:
        self._add(("task_failed", task_id, error))

    def task_reset(self, task_id: str, length: int, piece_size: int) -> None:
        self._add(("task_reset", task_id, length, piece_size))

    def of(self, kind: str, task_id: str | None = None) -> list[Event]:
        return [e for e in self.events if e[0] == kind and (task_id is None or e[1] == task_id)]

    def index(self, kind: str, task_id: str | None = None) -> int:
        """Position of the first event of ``kind`` (ValueError when none)."""
        for i, e in enumerate(self.events):
            if e[0] == kind and (task_id is None or e[1] == task_id):
                return i
        raise ValueError(kind)

    async def wait_for(self, pred: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait (bounded) until ``pred()`` holds; it is re-checked after every event."""
        async with asyncio.timeout(timeout):
            while not pred():
                self._changed.clear()
                await self._changed.wait()

    async def wait_event(self, kind: str, task_id: str, count: int = 1) -> None:
        await self.wait_for(lambda: len(self.of(kind, task_id)) >= count)

    def ready_digests(self, task_id: str) -> dict[int, str]:
        """The last digest announced for each piece (a later reset clears earlier ones)."""
        out: dict[int, str] = {}
        for e in self.events:
            if e[1] != task_id:
                continue
            if e[0] == "task_reset":
                out.clear()
            elif e[0] == "piece_ready":
                out[e[2]] = e[3]
            elif e[0] == "piece_lost":
                out.pop(e[2], None)
        return out


class CountingLimiter(AsyncLimiter):
    """The real limiter, counting the bytes it paced (to show every origin byte went through)."""

    def __init__(self, rate: float | None = None) -> None:
        super().__init__(rate)
        self.acquired = 0
        self.calls = 0

    async def acquire(self, n: int) -> None:
        self.acquired += n
        self.calls += 1
        await super().acquire(n)


@asynccontextmanager
async def running_origin(
    root: Path, require: tuple[str, str] | None = None
) -> AsyncIterator[tuple[Origin, str]]:
    """The test origin on 127.0.0.1 (a free port), in this process; yields (origin, base url)."""
    origin = Origin(root, require)
    runner = web.AppRunner(make_app(origin), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield origin, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def running_app(app: web.Application) -> AsyncIterator[str]:
    """Any aiohttp app on 127.0.0.1 (a free port); yields its base url."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def running_cdn(
    home: Path,
    listener: Any,
    clock: Clock | None = None,
    limiter: AsyncLimiter | None = None,
    free_space: Callable[[Path], int] | None = None,
    **cfg: Any,
) -> AsyncIterator[CDN]:
    cfg.setdefault("retry_backoff", 0.01)
    cfg.setdefault("piece_sizes", "v1")  # these tests reason in v1's 4 MiB pieces
    cfg.setdefault("disk_reserve", 0)
    kw: dict[str, Any] = {}
    if limiter is not None:
        kw["limiter"] = limiter
    if free_space is not None:
        kw["free_space"] = free_space
    cdn = CDN(CDNConfig(home=home, **cfg), listener, clock or MonotonicClock(), **kw)
    await cdn.start()
    try:
        yield cdn
    finally:
        await cdn.close()


def make_file(path: Path, size: int, seed: int = 1) -> bytes:
    """Write ``size`` deterministic pseudo-random bytes to ``path`` and return them."""
    data = random.Random(seed).randbytes(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def replace_file(path: Path, size: int, seed: int) -> bytes:
    """New content at the origin, with a modification time (hence ETag) surely different."""
    st = path.stat()
    data = make_file(path, size, seed)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 7_000_000_000))
    return data


def piece_digests(data: bytes) -> dict[int, str]:
    plan = PiecePlan.for_length(len(data), "v1")  # running_cdn cuts with v1's rule
    return {
        i: hashlib.sha256(data[plan.start(i) : plan.start(i) + plan.size(i)]).hexdigest()
        for i in range(plan.count)
    }


def sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


async def _fetch_main(args: argparse.Namespace) -> None:
    class Printer(Recorder):
        def _add(self, ev: Event) -> None:
            out = [str(x) if isinstance(x, DamselflyError) else x for x in ev]
            print(json.dumps(out), flush=True)
            super()._add(ev)

    rec = Printer()
    async with running_cdn(Path(args.home), rec, rate=args.rate or None) as cdn:
        await cdn.ensure(args.task_id, args.url, {})
        await rec.wait_for(lambda: bool(rec.of("task_complete") or rec.of("task_failed")), 600)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="run a CDN fetch and print its events")
    ap.add_argument("--home", required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--task-id", required=True)
    ap.add_argument("--rate", type=int, default=0)
    asyncio.run(_fetch_main(ap.parse_args(argv)))
    sys.exit(0)


if __name__ == "__main__":
    main()
