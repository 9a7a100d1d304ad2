"""Prometheus metrics of a host's peer engine (v1 names, ``dragonfly_dfget_*``), served by
dfdaemon on its proxy port at ``GET /metrics``.

One ``EngineMetrics`` per process (``ENGINE``: a process runs one engine). Downloads are counted
from their ``DownloadResult`` when they end — dfget's through the control channel
(``peer/control.py``) and the registry mirror's through dfdaemon's task owner
(``dfdaemon/daemon.py``) — so the engine's download code needs no metrics library. Labels carry
only a result, a v1 reason code or a source class: never a URL, a header or a credential.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from damselfly.peer.download import DownloadResult
from damselfly.peer.tasks import TaskOwner

if TYPE_CHECKING:
    from damselfly.peer.engine import Engine

NS = "dragonfly_dfget"
SOURCES = ("origin", "supernode", "peers")
T = TypeVar("T")


class _EngineCollector(Collector):
    """Gauges read from the engine at scrape time (nothing when no engine is bound)."""

    def __init__(self, owner: EngineMetrics) -> None:
        self.owner = owner

    def collect(self) -> Iterator[Any]:
        engine = self.owner.engine
        if engine is None:
            return
        yield GaugeMetricFamily(
            f"{NS}_active_downloads", "Downloads running in this engine", engine.active_downloads
        )
        yield GaugeMetricFamily(
            f"{NS}_tasks_stored", "Tasks whose pieces this engine holds", len(engine.store.tasks)
        )
        yield GaugeMetricFamily(
            f"{NS}_uploads_active", "Piece uploads being sent now", engine.pieceserver.active
        )
        yield CounterMetricFamily(
            f"{NS}_ratelimit_total_wait_seconds",
            "Seconds transfers waited for the host-wide rate limit (--totallimit / ratelimit)",
            engine.total_limiter.waited,
        )


class EngineMetrics:
    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(self))
        self.downloads = Counter(
            f"{NS}_downloads",
            "Downloads finished, by result and v1 reason code (0 none, 1 register fail, "
            "2 md5 mismatch, 3 download error, 4 no space, 8 no supernode, 10 source error, "
            "100 user asked for the origin)",
            ["result", "reason"],
            registry=self.registry,
        )
        self.bytes = Counter(
            f"{NS}_download_bytes",
            "Bytes downloads received, by source",
            ["source"],
            registry=self.registry,
        )
        self.back_source = Counter(
            f"{NS}_back_source",
            "Downloads that fetched bytes from the origin, by v1 reason code",
            ["reason"],
            registry=self.registry,
        )
        self.duration = Histogram(
            f"{NS}_download_duration_seconds",
            "Time a download took, end to end",
            buckets=(0.1, 0.3, 1, 3, 10, 30, 100, 300, 1000),
            registry=self.registry,
        )
        self.ratelimit_wait = Counter(
            f"{NS}_ratelimit_task_wait_seconds",
            "Seconds downloads waited for their own rate limit (--locallimit)",
            registry=self.registry,
        )
        self.upload_bytes = Counter(
            f"{NS}_upload_bytes",
            "Piece bytes this engine sent to other peers",
            registry=self.registry,
        )
        self.uploads = Counter(
            f"{NS}_uploads", "Pieces this engine sent to other peers", registry=self.registry
        )
        for src in SOURCES:
            self.bytes.labels(source=src)

    def bind(self, engine: Engine) -> None:
        """Read the engine's gauges at scrape time and count the pieces it uploads."""
        self.engine = engine
        server = engine.pieceserver
        before = server.on_served

        def served(task_id: str, num: int, size: int) -> None:
            if before is not None:
                before(task_id, num, size)
            self.uploaded(size)

        server.on_served = served

    def uploaded(self, size: int) -> None:
        self.uploads.inc()
        self.upload_bytes.inc(size)

    def record(self, result: DownloadResult, task_wait: float = 0.0) -> None:
        self.downloads.labels(
            result="success" if result.ok else "failure", reason=str(result.reason)
        ).inc()
        for src in SOURCES:
            n = int(result.bytes_from.get(src, 0))
            if n > 0:
                self.bytes.labels(source=src).inc(n)
        if result.bytes_from.get("origin", 0) > 0:
            self.back_source.labels(reason=str(result.reason)).inc()
        self.duration.observe(max(result.cost, 0.0))
        if task_wait > 0:
            self.ratelimit_wait.inc(task_wait)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


#: the process's engine metrics (one engine per process)
ENGINE = EngineMetrics()


class MeteredOwner(TaskOwner):
    """A TaskOwner that records the ``DownloadResult`` of every task that returns one (the
    registry mirror's swarm downloads), so their results reach ``/metrics``."""

    def __init__(self, name: str, metrics: EngineMetrics = ENGINE) -> None:
        super().__init__(name)
        self.metrics = metrics

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        task = super().spawn(coro, name)
        task.add_done_callback(self._record)
        return task

    def _record(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        result = task.result()
        if isinstance(result, DownloadResult):
            self.metrics.record(result)
