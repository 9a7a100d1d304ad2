"""One owner for background asyncio tasks: every task is named, tracked and cancelled at close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("damselfly.peer")


class TaskOwner:
    def __init__(self, name: str) -> None:
        self.name = name
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        task = asyncio.create_task(coro, name=f"{self.name}:{name}")
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("task %s failed: %s: %s", task.get_name(), type(exc).__name__, exc)

    async def close(self) -> None:
        """Cancel every task still running and wait for them all."""
        while self.tasks:
            pending = list(self.tasks)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for t in pending:
                self.tasks.discard(t)

    def __repr__(self) -> str:
        return f"TaskOwner({self.name}, {len(self.tasks)} running)"


async def drain(task: asyncio.Task[Any]) -> None:
    """Cancel a task and wait for it, without swallowing our own cancellation."""
    if task.done():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        cur = asyncio.current_task()
        if cur is not None and cur.cancelling():
            raise
    except Exception:  # noqa: S110  (the task's own handler already reported its error)
        pass
