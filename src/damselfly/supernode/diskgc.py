"""Disk GC of the CDN cache: which cached tasks to delete when free space runs low.

As in Dragonfly v1 there are two thresholds on the free space of the cache's file system:

- below ``young`` (default 20 GiB) a *young* GC removes tasks idle for at least ``min_idle``
  (default 1 hour), least recently used first, until free space is back above ``young``;
- below ``full`` (default 5 GiB, v1's value) a *full* GC removes tasks least recently used
  first whatever their age, until free space is back above ``young``.

(v1's young threshold was 100 GiB; on the 50–100 GB disks Kubernetes nodes usually have, that
would make the young GC run all the time, so Damselfly starts lower.) A task that is being
fetched or that the shell reports in use is never a candidate: the caller filters those out.
The choice is pure (``choose_victims``); ``CDN.gc_once`` does the deleting.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

GiB = 1024**3
DEFAULT_YOUNG = 20 * GiB
DEFAULT_FULL = 5 * GiB
DEFAULT_MIN_IDLE = 3600.0


@dataclass(frozen=True, slots=True)
class GCThresholds:
    young: int = DEFAULT_YOUNG  # bytes free below which idle tasks are removed
    full: int = DEFAULT_FULL  # bytes free below which any unused task may be removed
    min_idle: float = DEFAULT_MIN_IDLE  # seconds idle before a young GC may remove a task


@dataclass(frozen=True, slots=True)
class GCCandidate:
    task_id: str
    last_used: float  # clock time of the last registration or piece served
    size: int  # bytes it occupies on disk


def choose_victims(
    candidates: list[GCCandidate], free: int, th: GCThresholds, now: float
) -> list[str]:
    """Task ids to delete, least recently used first, until ``free`` would reach ``th.young``."""
    if free >= th.young:
        return []
    full = free < th.full
    victims: list[str] = []
    for c in sorted(candidates, key=lambda c: (c.last_used, c.task_id)):
        if free >= th.young:
            break
        if not full and now - c.last_used < th.min_idle:
            continue
        victims.append(c.task_id)
        free += c.size
    return victims


def free_space(path: Path) -> int:
    """Bytes available to this process on the file system holding ``path`` (or its parent)."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def allocated(path: Path) -> int:
    """Bytes a file occupies on disk (sparse files count what is really allocated); 0 if gone."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return 0
    return st.st_blocks * 512
