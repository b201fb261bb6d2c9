"""The CRI stats messages, built from what the pools measured
(proto/stats.py): the one place ContainerStats and PodSandboxStats are
made.

Figures follow cAdvisor's, which the kubelet's eviction manager and
metrics-server were written against:

- ``usage_nano_cores`` is the CPU rate since the previous sample of the
  same cgroup (``CpuRates``); the first sample has none, as the kubelet's
  own fallback would compute none either;
- ``available_bytes`` is the limit minus the working set, and is left out
  when there is no limit (the kubelet then uses the node's);
- a created or exited container has zero CPU and memory, and its writable
  layer; every figure carries the time it was read.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from ...proto import api_pb2 as api
from ...proto.stats import (
    CgroupSample,
    ContainerSample,
    FsCapacity,
    LayerUsage,
    NetworkSample,
    PodSample,
)

# A baseline younger than this is kept, not replaced: two clients polling
# a moment apart would otherwise each see the rate of a few milliseconds.
MIN_WINDOW_NS = 1_000_000_000
# Baselines of objects not sampled for this long are dropped, in a sweep
# at most once a minute (not on every sample of a large listing).
FORGET_AFTER_NS = 600 * 1_000_000_000
SWEEP_EVERY_NS = 60 * 1_000_000_000


@dataclass(frozen=True)
class _Baseline:
    timestamp_ns: int
    cpu_ns: int
    seen_ns: int


class CpuRates:
    """The previous CPU sample of each cgroup, for ``usage_nano_cores``.
    Shared by every stats RPC of the supervisor (one process), so the
    kubelet, crictl and metrics callers see one consistent rate."""

    def __init__(self) -> None:
        self._baselines: dict[str, _Baseline] = {}
        self._lock = threading.Lock()
        self._swept_ns = 0

    def rate(self, key: str, sample: CgroupSample) -> int | None:
        """Nanocores used between the baseline and ``sample``; None for the
        first sample of ``key``, or a counter that went back (a new cgroup
        under the same id)."""
        now = sample.timestamp_ns
        with self._lock:
            base = self._baselines.get(key)
            if base is None or sample.cpu_usage_ns < base.cpu_ns or now <= base.timestamp_ns:
                self._baselines[key] = _Baseline(now, sample.cpu_usage_ns, now)
                return None
            rate = (sample.cpu_usage_ns - base.cpu_ns) * 1_000_000_000 \
                // (now - base.timestamp_ns)
            if now - base.timestamp_ns >= MIN_WINDOW_NS:
                self._baselines[key] = _Baseline(now, sample.cpu_usage_ns, now)
            else:
                self._baselines[key] = _Baseline(base.timestamp_ns, base.cpu_ns, now)
            self._forget(now)
        return rate

    def _forget(self, now: int) -> None:
        if now - self._swept_ns < SWEEP_EVERY_NS:
            return
        self._swept_ns = now
        stale = [key for key, base in self._baselines.items()
                 if now - base.seen_ns > FORGET_AFTER_NS]
        for key in stale:
            del self._baselines[key]

    def __len__(self) -> int:
        return len(self._baselines)


def _u64(value: int) -> api.UInt64Value:
    return api.UInt64Value(value=max(value, 0))


def cpu(sample: CgroupSample | None, rate: int | None, now: int) -> api.CpuUsage:
    if sample is None:
        return api.CpuUsage(timestamp=now, usage_core_nano_seconds=_u64(0),
                            usage_nano_cores=_u64(0))
    usage = api.CpuUsage(timestamp=sample.timestamp_ns,
                         usage_core_nano_seconds=_u64(sample.cpu_usage_ns))
    if rate is not None:
        usage.usage_nano_cores.CopyFrom(_u64(rate))
    return usage


def memory(sample: CgroupSample | None, now: int) -> api.MemoryUsage:
    if sample is None:
        zero = _u64(0)
        return api.MemoryUsage(timestamp=now, working_set_bytes=zero, usage_bytes=zero,
                               rss_bytes=zero, page_faults=zero, major_page_faults=zero)
    usage = api.MemoryUsage(
        timestamp=sample.timestamp_ns, working_set_bytes=_u64(sample.memory_working_set_bytes),
        usage_bytes=_u64(sample.memory_usage_bytes), rss_bytes=_u64(sample.memory_rss_bytes),
        page_faults=_u64(sample.page_faults), major_page_faults=_u64(sample.major_page_faults))
    if sample.memory_limit_bytes is not None:
        usage.available_bytes.CopyFrom(
            _u64(sample.memory_limit_bytes - sample.memory_working_set_bytes))
    return usage


def swap(sample: CgroupSample | None, now: int) -> api.SwapUsage | None:
    """None where the host does not account swap."""
    if sample is None:
        return api.SwapUsage(timestamp=now, swap_usage_bytes=_u64(0))
    if sample.swap_usage_bytes is None:
        return None
    usage = api.SwapUsage(timestamp=sample.timestamp_ns,
                          swap_usage_bytes=_u64(sample.swap_usage_bytes))
    if sample.swap_limit_bytes is not None:
        usage.swap_available_bytes.CopyFrom(
            _u64(sample.swap_limit_bytes - sample.swap_usage_bytes))
    return usage


def writable_layer(layer: LayerUsage | None, fs: FsCapacity | None,
                   now: int) -> api.FilesystemUsage | None:
    if layer is None or fs is None:
        return None
    return api.FilesystemUsage(
        timestamp=layer.timestamp_ns or now,
        fs_id=api.FilesystemIdentifier(mountpoint=fs.mountpoint),
        used_bytes=_u64(layer.used_bytes), inodes_used=_u64(layer.inodes_used))


@dataclass(frozen=True)
class Disk:
    """The storage pool's answer: every writable layer and their filesystem."""

    filesystem: FsCapacity | None
    layers: dict[str, LayerUsage]


def container_stats(sample: ContainerSample, disk: Disk, rates: CpuRates,
                    now: int) -> api.ContainerStats:
    cgroup = sample.cgroup
    rate = rates.rate(sample.id, cgroup) if cgroup is not None else None
    stats = api.ContainerStats(
        attributes=api.ContainerAttributes.FromString(sample.attributes),
        cpu=cpu(cgroup, rate, now), memory=memory(cgroup, now))
    layer = writable_layer(disk.layers.get(sample.id), disk.filesystem, now)
    if layer is not None:
        stats.writable_layer.CopyFrom(layer)
    swapped = swap(cgroup, now)
    if swapped is not None:
        stats.swap.CopyFrom(swapped)
    return stats


def network(sample: NetworkSample | None) -> api.NetworkUsage | None:
    if sample is None:
        return None
    interfaces = [api.NetworkInterfaceUsage(
        name=i.name, rx_bytes=_u64(i.rx_bytes), rx_errors=_u64(i.rx_errors),
        tx_bytes=_u64(i.tx_bytes), tx_errors=_u64(i.tx_errors)) for i in sample.interfaces]
    usage = api.NetworkUsage(timestamp=sample.timestamp_ns, interfaces=interfaces)
    # The kubelet reads the default interface only; CNI names the pod's
    # first one eth0.
    default = next((i for i in interfaces if i.name == "eth0"),
                   interfaces[0] if interfaces else None)
    if default is not None:
        usage.default_interface.CopyFrom(default)
    return usage


def pod_stats(sample: PodSample, disk: Disk, net: NetworkSample | None, rates: CpuRates,
              now: int) -> api.PodSandboxStats:
    cgroup = sample.cgroup
    rate = rates.rate(f"pod/{sample.id}", cgroup) if cgroup is not None else None
    linux = api.LinuxPodSandboxStats(
        cpu=cpu(cgroup, rate, now), memory=memory(cgroup, now),
        containers=[container_stats(c, disk, rates, now) for c in sample.containers])
    if cgroup is not None and cgroup.pids_current is not None:
        linux.process.CopyFrom(api.ProcessUsage(timestamp=cgroup.timestamp_ns,
                                                process_count=_u64(cgroup.pids_current)))
    usage = network(net)
    if usage is not None:
        linux.network.CopyFrom(usage)
    return api.PodSandboxStats(
        attributes=api.PodSandboxAttributes.FromString(sample.attributes), linux=linux)


def now_ns() -> int:
    return time.time_ns()
