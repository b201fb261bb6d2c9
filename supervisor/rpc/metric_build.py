"""The CRI metrics: ListMetricDescriptors' catalogue and each pod's values
for ListPodSandboxMetrics, which the kubelet serves at /metrics/cadvisor.

Names, help and label keys follow cAdvisor's, so dashboards and alerts
written for cAdvisor keep working. Each metric belongs to a group of
``[podvisor.stats] included_pod_metrics`` (CRI-O's group names);
``container_last_seen`` is always on.

Labels
    Every metric has ``container, id, image, name, namespace, pod`` (a
    container's name, its id, its image, its unique podvisor name, and its
    pod's namespace and name), then its own keys (``cpu``, ``interface``,
    ``failure_type``/``scope``, ``device``). Network metrics are the pod's
    (one network namespace for all its containers), with ``container``
    "POD" as cAdvisor labels the pod's own figures.

Values
    The CRI carries whole numbers (UInt64Value): seconds are truncated.
    A figure the host does not report is left out, not sent as zero:
    swap where swap is not accounted, the memory peak on kernels that keep
    none. ``container_spec_cpu_quota`` is sent only for a container with a
    quota, as cAdvisor does. I/O is summed over devices (``device`` "");
    per-device figures and ``container_blkio_device_usage_total`` values
    are not collected yet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ...proto import api_pb2 as api
from ...proto.naming import container_name
from ...proto.stats import ContainerSample, FsCapacity, LayerUsage, NetworkSample, PodSample

BASE_LABELS = ("container", "id", "image", "name", "namespace", "pod")
ALWAYS = ""
NS = 1_000_000_000
# What the kernel applies when the CRI leaves a figure unset.
DEFAULT_CPU_PERIOD = 100_000
DEFAULT_CPU_SHARES = 1024

COUNTER, GAUGE = api.COUNTER, api.GAUGE


@dataclass(frozen=True)
class Scope:
    """What one container's values are computed from."""

    container: ContainerSample
    layer: LayerUsage | None
    filesystem: FsCapacity | None
    now_ns: int


# A metric's values for one container: (value, its own label values).
Values = Callable[[Scope], Iterable[tuple[int, Sequence[str]]]]


@dataclass(frozen=True)
class MetricDef:
    name: str
    help: str
    group: str
    kind: api.MetricType
    values: Values
    labels: tuple[str, ...] = ()

    def descriptor(self) -> api.MetricDescriptor:
        return api.MetricDescriptor(name=self.name, help=self.help,
                                    label_keys=[*BASE_LABELS, *self.labels])


def _one(get: Callable[[Scope], int | None]) -> Values:
    def values(scope: Scope) -> Iterable[tuple[int, Sequence[str]]]:
        value = get(scope)
        return () if value is None else ((value, ()),)
    return values


def _cgroup(get: Callable[..., int | None]) -> Values:
    """A figure of the container's cgroup; none while it has no cgroup."""
    return _one(lambda s: None if s.container.cgroup is None else get(s.container.cgroup))


def _procs(get: Callable[..., int]) -> Values:
    return _one(lambda s: None if s.container.processes is None else get(s.container.processes))


def _fs(get: Callable[[FsCapacity], int]) -> Values:
    return _one(lambda s: None if s.filesystem is None else get(s.filesystem))


def _faults(scope: Scope) -> Iterable[tuple[int, Sequence[str]]]:
    cgroup = scope.container.cgroup
    if cgroup is None:
        return ()
    # The figures podvisor reads are hierarchical (the cgroup and below).
    return ((cgroup.page_faults, ("pgfault", "hierarchy")),
            (cgroup.major_page_faults, ("pgmajfault", "hierarchy")))


def _seconds(ns: int) -> int:
    return ns // NS


_C = "cpu"
_M = "memory"
_CONTAINER_METRICS = (
    MetricDef("container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.",
              _C, COUNTER, lambda s: () if s.container.cgroup is None else
              ((_seconds(s.container.cgroup.cpu_usage_ns), ("total",)),), ("cpu",)),
    MetricDef("container_cpu_user_seconds_total", "Cumulative user cpu time consumed in seconds.",
              _C, COUNTER, _cgroup(lambda c: _seconds(c.cpu_user_ns))),
    MetricDef("container_cpu_system_seconds_total",
              "Cumulative system cpu time consumed in seconds.",
              _C, COUNTER, _cgroup(lambda c: _seconds(c.cpu_system_ns))),
    MetricDef("container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals.",
              _C, COUNTER, _cgroup(lambda c: c.cfs_periods)),
    MetricDef("container_cpu_cfs_throttled_periods_total", "Number of throttled period intervals.",
              _C, COUNTER, _cgroup(lambda c: c.cfs_throttled_periods)),
    MetricDef("container_cpu_cfs_throttled_seconds_total",
              "Total time duration the container has been throttled.",
              _C, COUNTER, _cgroup(lambda c: _seconds(c.cfs_throttled_ns))),
    MetricDef("container_memory_usage_bytes",
              "Current memory usage in bytes, including all memory regardless of when it was "
              "accessed", _M, GAUGE, _cgroup(lambda c: c.memory_usage_bytes)),
    MetricDef("container_memory_working_set_bytes", "Current working set in bytes.",
              _M, GAUGE, _cgroup(lambda c: c.memory_working_set_bytes)),
    MetricDef("container_memory_rss", "Size of RSS in bytes.",
              _M, GAUGE, _cgroup(lambda c: c.memory_rss_bytes)),
    MetricDef("container_memory_cache", "Number of bytes of page cache memory.",
              _M, GAUGE, _cgroup(lambda c: c.memory_cache_bytes)),
    MetricDef("container_memory_mapped_file", "Size of memory mapped files in bytes.",
              _M, GAUGE, _cgroup(lambda c: c.memory_mapped_file_bytes)),
    MetricDef("container_memory_kernel_usage", "Size of kernel memory allocated in bytes.",
              _M, GAUGE, _cgroup(lambda c: c.memory_kernel_bytes)),
    MetricDef("container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes",
              _M, GAUGE, _cgroup(lambda c: c.memory_max_usage_bytes)),
    MetricDef("container_memory_failcnt", "Number of memory usage hits limits",
              _M, COUNTER, _cgroup(lambda c: c.memory_failcnt)),
    MetricDef("container_memory_swap", "Container swap usage in bytes.",
              _M, GAUGE, _cgroup(lambda c: c.swap_usage_bytes)),
    MetricDef("container_memory_failures_total", "Cumulative count of memory allocation failures.",
              _M, COUNTER, _faults, ("failure_type", "scope")),
    MetricDef("container_oom_events_total",
              "Count of out of memory events observed for the container",
              "oom", COUNTER, _cgroup(lambda c: c.oom_kills)),
    MetricDef("container_fs_usage_bytes", "Number of bytes that are consumed by the container on "
              "this filesystem.", "disk", GAUGE,
              _one(lambda s: None if s.layer is None else s.layer.used_bytes)),
    MetricDef("container_fs_limit_bytes", "Number of bytes that can be consumed by the container "
              "on this filesystem.", "disk", GAUGE, _fs(lambda f: f.capacity_bytes)),
    MetricDef("container_fs_inodes_total", "Number of Inodes", "disk", GAUGE,
              _fs(lambda f: f.inodes_total)),
    MetricDef("container_fs_inodes_free", "Number of available Inodes", "disk", GAUGE,
              _fs(lambda f: f.inodes_free)),
    MetricDef("container_fs_reads_bytes_total", "Cumulative count of bytes read", "diskIO",
              COUNTER, lambda s: () if s.container.cgroup is None else
              ((s.container.cgroup.io_read_bytes, ("",)),), ("device",)),
    MetricDef("container_fs_writes_bytes_total", "Cumulative count of bytes written", "diskIO",
              COUNTER, lambda s: () if s.container.cgroup is None else
              ((s.container.cgroup.io_write_bytes, ("",)),), ("device",)),
    MetricDef("container_fs_reads_total", "Cumulative count of reads completed", "diskIO",
              COUNTER, lambda s: () if s.container.cgroup is None else
              ((s.container.cgroup.io_reads, ("",)),), ("device",)),
    MetricDef("container_fs_writes_total", "Cumulative count of writes completed", "diskIO",
              COUNTER, lambda s: () if s.container.cgroup is None else
              ((s.container.cgroup.io_writes, ("",)),), ("device",)),
    MetricDef("container_blkio_device_usage_total", "Blkio Device bytes usage", "diskIO",
              COUNTER, lambda s: (), ("device", "major", "minor", "operation")),
    MetricDef("container_processes", "Number of processes running inside the container.",
              "process", GAUGE, _procs(lambda p: p.processes)),
    MetricDef("container_threads", "Number of threads running inside the container",
              "process", GAUGE, _procs(lambda p: p.threads)),
    MetricDef("container_threads_max", "Maximum number of threads allowed inside the container, "
              "infinity if value is zero", "process", GAUGE,
              _cgroup(lambda c: c.pids_max or 0)),
    MetricDef("container_file_descriptors", "Number of open file descriptors for the container.",
              "process", GAUGE, _procs(lambda p: p.file_descriptors)),
    MetricDef("container_sockets", "Number of open sockets for the container.",
              "process", GAUGE, _procs(lambda p: p.sockets)),
    MetricDef("container_spec_cpu_period", "CPU period of the container.", "spec", GAUGE,
              _one(lambda s: s.container.limits.cpu_period or DEFAULT_CPU_PERIOD)),
    MetricDef("container_spec_cpu_quota", "CPU quota of the container.", "spec", GAUGE,
              _one(lambda s: s.container.limits.cpu_quota if s.container.limits.cpu_quota > 0
                   else None)),
    MetricDef("container_spec_cpu_shares", "CPU share of the container.", "spec", GAUGE,
              _one(lambda s: s.container.limits.cpu_shares or DEFAULT_CPU_SHARES)),
    MetricDef("container_spec_memory_limit_bytes", "Memory limit for the container.", "spec",
              GAUGE, _one(lambda s: max(s.container.limits.memory_limit_bytes, 0))),
    MetricDef("container_spec_memory_swap_limit_bytes", "Memory swap limit for the container.",
              "spec", GAUGE, _one(lambda s: max(s.container.limits.memory_swap_limit_bytes, 0))),
    MetricDef("container_start_time_seconds",
              "Start time of the container since unix epoch in seconds.", "spec", GAUGE,
              _one(lambda s: _seconds(s.container.started_at_ns) or None)),
    MetricDef("container_last_seen", "Last time a container was seen by the exporter", ALWAYS,
              GAUGE, _one(lambda s: _seconds(s.now_ns))),
)

# The pod's interfaces: (name, help, counter field).
_NETWORK = (
    ("container_network_receive_bytes_total", "Cumulative count of bytes received", "rx_bytes"),
    ("container_network_receive_packets_total", "Cumulative count of packets received",
     "rx_packets"),
    ("container_network_receive_packets_dropped_total",
     "Cumulative count of packets dropped while receiving", "rx_dropped"),
    ("container_network_receive_errors_total",
     "Cumulative count of errors encountered while receiving", "rx_errors"),
    ("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted",
     "tx_bytes"),
    ("container_network_transmit_packets_total", "Cumulative count of packets transmitted",
     "tx_packets"),
    ("container_network_transmit_packets_dropped_total",
     "Cumulative count of packets dropped while transmitting", "tx_dropped"),
    ("container_network_transmit_errors_total",
     "Cumulative count of errors encountered while transmitting", "tx_errors"),
)


def descriptors(groups: Iterable[str]) -> list[api.MetricDescriptor]:
    """What ListMetricDescriptors answers for the enabled ``groups``."""
    enabled = {ALWAYS, *groups}
    found = [m.descriptor() for m in _CONTAINER_METRICS if m.group in enabled]
    if "network" in enabled:
        found += [api.MetricDescriptor(name=name, help=text,
                                       label_keys=[*BASE_LABELS, "interface"])
                  for name, text, _field in _NETWORK]
    return found


class Catalogue:
    """The enabled metrics, fixed for the daemon's life (its config)."""

    def __init__(self, groups: Iterable[str]) -> None:
        self.groups = tuple(groups)
        enabled = {ALWAYS, *self.groups}
        self._container = [m for m in _CONTAINER_METRICS if m.group in enabled]
        self.network = "network" in enabled
        self.processes = "process" in enabled

    def descriptors(self) -> list[api.MetricDescriptor]:
        return descriptors(self.groups)

    def pod_metrics(self, pod: PodSample, layers: dict[str, LayerUsage],
                    filesystem: FsCapacity | None, net: NetworkSample | None,
                    now_ns: int) -> api.PodSandboxMetrics:
        meta = api.PodSandboxAttributes.FromString(pod.attributes).metadata
        found = api.PodSandboxMetrics(pod_sandbox_id=pod.id)
        if self.network and net is not None:
            labels = ["POD", pod.id, "", "", meta.namespace, meta.name]
            found.metrics.extend(
                api.Metric(name=name, timestamp=net.timestamp_ns, metric_type=COUNTER,
                           label_values=[*labels, i.name],
                           value=api.UInt64Value(value=getattr(i, field)))
                for name, _text, field in _NETWORK for i in net.interfaces)
        for container in pod.containers:
            scope = Scope(container, layers.get(container.id), filesystem, now_ns)
            found.container_metrics.append(self._container_metrics(scope, meta))
        return found

    def _container_metrics(self, scope: Scope, pod: api.PodSandboxMetadata
                           ) -> api.ContainerMetrics:
        container = scope.container
        meta = api.ContainerAttributes.FromString(container.attributes).metadata
        # cAdvisor's ``name`` is the runtime's own name of the container.
        labels = [meta.name, container.id, container.image, container_name(meta, pod),
                  pod.namespace, pod.name]
        timestamp = container.cgroup.timestamp_ns if container.cgroup else scope.now_ns
        metrics = [api.Metric(name=m.name, timestamp=timestamp, metric_type=m.kind,
                              label_values=[*labels, *extra],
                              value=api.UInt64Value(value=max(value, 0)))
                   for m in self._container for value, extra in m.values(scope)]
        return api.ContainerMetrics(container_id=container.id, metrics=metrics)


