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

from damselfly.core.protocol import BACK_SOURCE_NAMES
from damselfly.supernode.preheat import RUNNING, WAITING

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
        assigned = CounterMetricFamily(
            f"{NS}_piece_assignments",
            "Pieces the scheduler handed out, by the source it chose",
            labels=["source"],
        )
        for kind, n in (s.get("assignments_by_source") or {}).items():
            assigned.add_metric([kind], n)
        yield assigned
        yield GaugeMetricFamily(
            f"{NS}_pieces_inflight",
            "Piece transfers assigned and not yet reported",
            s.get("inflight", 0),
        )
        yield CounterMetricFamily(
            f"{NS}_piece_timeouts",
            "Assigned pieces released because no report came in time",
            s.get("timeouts", 0),
        )
        yield CounterMetricFamily(
            f"{NS}_isolations", "Peers isolated for failing as a source", s.get("isolations", 0)
        )
        yield CounterMetricFamily(
            f"{NS}_cdn_fetches", "Origin fetches the CDN started", c.get("fetches_started", 0)
        )
        yield CounterMetricFamily(
            f"{NS}_cdn_fetch_failures", "Origin fetches that failed", c.get("fetches_failed", 0)
        )
        yield CounterMetricFamily(
            f"{NS}_cdn_revalidations",
            "Conditional requests that revalidated a cached task",
            c.get("revalidations", 0),
        )
        yield CounterMetricFamily(
            f"{NS}_cdn_pieces_lost", "Cached pieces found corrupt", c.get("pieces_lost", 0)
        )
        pre = self.node.preheater
        done = CounterMetricFamily(
            f"{NS}_preheats", "Preheat jobs finished, by status", labels=["status"]
        )
        for status, n in pre.counts.items():
            done.add_metric([status], n)
        yield done
        active = GaugeMetricFamily(
            f"{NS}_preheats_active", "Preheat jobs waiting or running", labels=["status"]
        )
        for status in (WAITING, RUNNING):
            active.add_metric([status], sum(j.status == status for j in pre.jobs()))
        yield active


class SupernodeMetrics:
    def __init__(self, node: Supernode) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StateCollector(node))
        self.piece_bytes_served = Counter(
            f"{NS}_piece_bytes_served",
            "Piece bytes the supernode's piece server sent",
            registry=self.registry,
        )
        self.pieces_served = Counter(
            f"{NS}_pieces_served",
            "Pieces the supernode's piece server sent",
            registry=self.registry,
        )
        self.downloads_done = Counter(
            f"{NS}_downloads_done",
            "Peer downloads the scheduler saw through to the last piece",
            registry=self.registry,
        )
        self.preheated_bytes = Counter(
            f"{NS}_preheated_bytes",
            "Bytes of tasks preheat jobs found or put in the CDN",
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

        self.back_source = Counter(
            f"{NS}_back_source",
            "Downloads peers reported taking from the origin themselves, by reason "
            f"({', '.join(BACK_SOURCE_NAMES)})",
            ["reason"],
            registry=self.registry,
        )
        for reason in BACK_SOURCE_NAMES:  # every reason shows (at 0) before it first happens
            self.back_source.labels(reason=reason)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
