"""Prometheus metrics of a supernode (v1 names, ``dragonfly_supernode_*``).

Counters owned by the scheduler and the CDN are read at scrape time by a collector, so the pure
core needs no metrics library. No label ever carries a URL, a header or a credential.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from damselfly.supernode.app import Supernode

NS = "dragonfly_supernode"


class _StateCollector(Collector):
    def __init__(self, node: Supernode) -> None:
        self.node = node

    def collect(self) -> Iterator[Any]:
        s = self.node.scheduler.stats()
        c = self.node.cdn.stats
        yield GaugeMetricFamily(f"{NS}_tasks", "Tasks known to the scheduler", s.get("tasks", 0))
        yield GaugeMetricFamily(f"{NS}_peers", "Peers known to the scheduler", s.get("peers", 0))
        yield GaugeMetricFamily(
            f"{NS}_isolated_peers", "Peers isolated for failing", s.get("isolated_peers", 0)
        )
        yield CounterMetricFamily(
            f"{NS}_origin_bytes", "Body bytes fetched from origins", c.get("origin_bytes", 0)
        )
        yield CounterMetricFamily(
            f"{NS}_origin_requests", "Requests sent to origins", c.get("origin_requests", 0)
        )
        yield CounterMetricFamily(
            f"{NS}_cdn_cache_hits", "Registrations served from the cache", c.get("cache_hits", 0)
        )
        by_kind = CounterMetricFamily(
            f"{NS}_piece_bytes_reported",
            "Piece bytes peers reported downloaded, by source kind",
            labels=["source"],
        )
        for kind, n in (s.get("bytes_by_source") or {}).items():
            by_kind.add_metric([kind], n)
        yield by_kind
        fails = CounterMetricFamily(
            f"{NS}_piece_failures", "Piece transfers reported failed, by kind", labels=["kind"]
        )
        for kind, n in (s.get("failures_by_kind") or {}).items():
            fails.add_metric([kind or "other"], n)
        yield fails


class SupernodeMetrics:
    def __init__(self, node: Supernode) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StateCollector(node))
        self.piece_bytes_served = Counter(
            f"{NS}_piece_bytes_served",
            "Piece bytes the supernode's piece server sent",
            registry=self.registry,
        )
        self.registrations = Counter(
            f"{NS}_registrations",
            "Peer registrations by result",
            ["result"],
            registry=self.registry,
        )
        self.schedule_latency = Histogram(
            f"{NS}_schedule_latency_seconds",
            "Time the scheduler core spends on one schedule decision",
            buckets=(1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1),
            registry=self.registry,
        )
        self.register_latency = Histogram(
            f"{NS}_register_latency_seconds",
            "Time to answer a registration (includes waiting for the origin's headers)",
            registry=self.registry,
        )

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
