"""The timing hooks (see the package docstring). Wrapping keeps the measured code unchanged."""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from typing import Any

_lock = threading.Lock()
_fd = -1


def emit(ev: str, **kw: Any) -> None:
    line = json.dumps({"t": time.time(), "ev": ev, "pid": os.getpid(), **kw}) + "\n"
    with _lock:
        os.write(_fd, line.encode())


def _wrap_async(cls: Any, name: str, before: Any, after: Any) -> None:
    orig = getattr(cls, name)

    @functools.wraps(orig)
    async def wrapper(*args: Any, **kw: Any) -> Any:
        ctx = before(*args, **kw)
        res = await orig(*args, **kw)
        after(ctx, res, *args, **kw)
        return res

    setattr(cls, name, wrapper)


def install(path: str) -> None:
    global _fd
    _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    forced = os.environ.get("DAMSELFLY_PULLTRACE_PIECES", "")
    if forced:  # an experiment: the scheduler's piece order, whatever the config says
        from damselfly.scheduler import policies, scheduler

        scheduler.piece_policy = lambda _name: policies.piece_policy(forced)  # type: ignore[assignment]
    from damselfly.supernode import cdn

    orig_apply = cdn.CDN._apply_piece

    def apply_piece(self: Any, t: Any, gen: int, num: int, digest: str) -> bool:
        ok = orig_apply(self, t, gen, num, digest)
        emit("cdn_done", task=t.task_id[:12], num=num)
        return bool(ok)

    cdn.CDN._apply_piece = apply_piece  # type: ignore[method-assign]

    from damselfly.peer import download, fetch, snclient, store

    _wrap_async(
        snclient.SupernodeClient,
        "schedule",
        lambda self, node, task_id, req: time.time(),
        lambda t0, resp, self, node, task_id, req: emit(
            "assigned",
            task=task_id[:12],
            asked=t0,
            nums=[a.num for a in resp.pieces],
            kinds=[a.source.kind for a in resp.pieces],
            status=resp.status,
        ),
    )

    _wrap_async(
        fetch.PieceFetcher,
        "fetch",
        lambda self, a: emit("fetch_start", task=self.task_id[:12], num=a.num, kind=a.source.kind),
        lambda _c, _r, self, a: emit("fetched", task=self.task_id[:12], num=a.num),
    )
    _wrap_async(
        store.LocalStore,
        "write_piece",
        lambda self, td, num, buf, digest: None,
        lambda _c, _r, self, td, num, buf, digest: emit("written", task=td.task_id[:12], num=num),
    )
    _wrap_async(
        download.Download,
        "_check_whole",
        lambda self, td, plan, hasher: emit("whole_start", task=td.task_id[:12]),
        lambda _c, _r, self, td, plan, hasher: emit("whole_end", task=td.task_id[:12]),
    )
    orig_place = download.place

    def place(data_path: Any, output: str) -> str:
        t0 = time.time()
        how = orig_place(data_path, output)
        emit("placed", file=os.path.basename(str(data_path))[:12], start=t0)
        return how

    download.place = place

    try:
        from damselfly.dfdaemon import stream
    except ImportError:
        return
    cls = stream.SwarmStream
    orig_read = cls._read_hash

    def read_hash(self: Any, path: str, offset: int, n: int, hasher: Any) -> bytes:
        t0 = time.time()
        data = orig_read(self, path, offset, n, hasher)
        td = self.feed.td
        size = td.piece_size if td is not None else 0
        emit("read", task=self.dl.tid[:12], offset=offset, n=n, start=t0, piece_size=size)
        return data

    cls._read_hash = read_hash  # type: ignore[method-assign]
    _wrap_async(
        cls,
        "respond",
        lambda self, request, headers: emit("respond_start", task=self.dl.tid[:12]),
        lambda _c, _r, self, request, headers: emit(
            "respond_end", task=self.dl.tid[:12], sent=self.stats.sent
        ),
    )
    _wrap_async(
        cls,
        "_verified",
        lambda self, hasher: emit("verify_start", task=self.dl.tid[:12]),
        lambda _c, _r, self, hasher: emit("verify_end", task=self.dl.tid[:12]),
    )
