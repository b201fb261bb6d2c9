"""Prometheus metrics of the daemon, on a registry of its own.

RPC counts and latencies are recorded by the gRPC front for every call;
worker gauges, bus counters and the status cache's figures are read at scrape
time, so there is one source of truth and nothing to keep in sync.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..proto import stream_ops
from .bus import PoolBus
from .pool import SlotState, WorkerPool
from .status_cache import StatusCache

# From 1 ms to 2 min: Version takes under a millisecond, pulls take minutes.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rpc_requests = Counter(
            "podvisor_rpc_requests", "CRI requests served, by method and gRPC status code",
            ["method", "code"], registry=self.registry)
        self.rpc_latency = Histogram(
            "podvisor_rpc_duration_seconds", "Latency of CRI requests, by method",
            ["method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.pulls = Counter(
            "podvisor_image_pulls", "Image pulls, by result (ok or the gRPC code of the "
            "failure)", ["result"], registry=self.registry)
        self.pull_bytes = Counter(
            "podvisor_image_pull_bytes", "Bytes received from registries by pulls",
            registry=self.registry)
        self.pull_layers = Counter(
            "podvisor_image_pull_layers", "Layers fetched from registries by pulls",
            registry=self.registry)

        self.stream_sessions = Gauge(
            "podvisor_stream_sessions", "Live streaming sessions, by kind (exec, attach, "
            "portforward); -1 while the stream worker does not answer, 0 while it is not "
            "started (on demand)", ["kind"],
            registry=self.registry)
        self.stream_tokens = Gauge(
            "podvisor_stream_tokens", "Streaming URLs issued and not yet used or expired",
            registry=self.registry)
        self.stream_refused = Gauge(
            "podvisor_stream_refused", "Streaming requests refused since the stream worker "
            "started, by reason", ["reason"], registry=self.registry)

    def observe_streaming(self, stats: Mapping[str, Any] | None) -> None:
        """The stream pool's stats, read at scrape time (health.py)."""
        if stats is None or stats.get("started") is False:
            # Not started (on demand) has no sessions and no URLs; not
            # answering is -1, never mistaken for a count.
            for kind in stream_ops.KINDS:
                self.stream_sessions.labels(kind).set(-1 if stats is None else 0)
            if stats is not None:
                self.stream_tokens.set(0)
            return
        for kind, count in stats["active"].items():
            self.stream_sessions.labels(kind).set(count)
        self.stream_tokens.set(stats["tokens"])
        for reason, count in stats["refused"].items():
            self.stream_refused.labels(reason).set(count)

    def watch(self, pools: Mapping[str, WorkerPool], buses: Mapping[str, PoolBus]) -> None:
        self.registry.register(_PoolCollector(pools, buses))

    def watch_cache(self, cache: StatusCache) -> None:
        self.registry.register(_CacheCollector(cache))

    def observe_pull(self, result: str, received: int = 0, layers: int = 0) -> None:
        self.pulls.labels(result).inc()
        self.pull_bytes.inc(received)
        self.pull_layers.inc(layers)

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        self.rpc_requests.labels(method, code).inc()
        self.rpc_latency.labels(method).observe(seconds)


class _PoolCollector(Collector):
    def __init__(self, pools: Mapping[str, WorkerPool], buses: Mapping[str, PoolBus]) -> None:
        self._pools = pools
        self._buses = buses

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("podvisor_workers_up", "Workers READY, by pool", labels=["pool"])
        size = GaugeMetricFamily("podvisor_workers_configured", "Slots per pool",
                                 labels=["pool"])
        fatal = GaugeMetricFamily("podvisor_workers_fatal", "Slots given up on (FATAL)",
                                  labels=["pool"])
        restarts = CounterMetricFamily("podvisor_worker_restarts",
                                       "Worker restarts, by pool", labels=["pool"])
        waiting = GaugeMetricFamily("podvisor_workers_not_started",
                                    "Slots of a pool started on demand that no call has "
                                    "needed yet (not down)", labels=["pool"])
        for name, pool in self._pools.items():
            up.add_metric([name], pool.ready_count())
            waiting.add_metric([name], len(pool.not_started()))
            size.add_metric([name], len(pool.slots))
            fatal.add_metric([name], sum(s.state is SlotState.FATAL for s in pool.slots))
            restarts.add_metric([name], sum(s.restarts for s in pool.slots))
        bus = CounterMetricFamily("podvisor_bus_events", "Bus anomalies: late replies, "
                                  "protocol errors, retries, refused workers",
                                  labels=["pool", "kind"])
        for name, pool_bus in self._buses.items():
            for kind, count in sorted(pool_bus.stats.items()):
                bus.add_metric([name, kind], count)
        yield from (up, size, fatal, restarts, waiting, bus)


class _CacheCollector(Collector):
    def __init__(self, cache: StatusCache) -> None:
        self._cache = cache

    def collect(self) -> Iterator[Metric]:
        entries = GaugeMetricFamily("podvisor_status_cache_entries",
                                    "Status answers kept in memory (status_cache.py)")
        entries.add_metric([], len(self._cache))
        reads = CounterMetricFamily(
            "podvisor_status_cache_reads", "Status reads: hit (from memory), miss (asked "
            "the pool), stale (asked, and not kept: it changed meanwhile)",
            labels=["result"])
        for result, count in sorted(self._cache.stats.items()):
            reads.add_metric([result], count)
        yield from (entries, reads)
