"""What the pools measure for the stats and metrics RPCs, before any CRI
message is built.

Three pools each own part of one sample: the runtime pool reads the
cgroups and /proc (``CgroupSample``, ``ProcessSample``), the storage pool
keeps the writable layers' disk usage (``LayerUsage``, ``FsCapacity``) and
the net pool reads each pod's interfaces from inside its network namespace
(``InterfaceSample``). The supervisor joins them and builds every CRI
stats and metrics message from them in one place
(``supervisor/rpc/stats_build.py`` and ``metric_build.py``).

Counters are cumulative since the cgroup (or interface) was made. A figure
the host does not report is None, never a made-up zero: the kubelet treats
an absent value as "unknown".
"""

from __future__ import annotations

from .contract import Record


class CgroupSample(Record, frozen=True, kw_only=True):
    """One cgroup's figures at one instant (workers/runtime/cgroup/usage.py)."""

    timestamp_ns: int
    """Wall clock (ns since the epoch) when it was read."""
    cpu_usage_ns: int
    cpu_user_ns: int
    cpu_system_ns: int
    cfs_periods: int
    cfs_throttled_periods: int
    cfs_throttled_ns: int
    memory_usage_bytes: int
    memory_working_set_bytes: int
    memory_rss_bytes: int
    memory_cache_bytes: int
    memory_mapped_file_bytes: int
    memory_kernel_bytes: int
    memory_max_usage_bytes: int | None
    """The high-water mark; None where the hierarchy keeps none (v2
    before 5.19's memory.peak)."""
    memory_failcnt: int
    """How often usage hit the limit (v1 failcnt, v2 memory.events max)."""
    memory_limit_bytes: int | None
    """None: no limit."""
    page_faults: int
    major_page_faults: int
    oom_kills: int
    swap_usage_bytes: int | None
    """None: the host does not account swap."""
    swap_limit_bytes: int | None
    """Swap the cgroup may use (v2 memory.swap.max; v1 memsw limit minus the
    memory limit); None: unlimited or not accounted."""
    pids_current: int | None
    pids_max: int | None
    """None: no pids controller, or no limit."""
    io_read_bytes: int
    io_write_bytes: int
    io_reads: int
    io_writes: int


class ProcessSample(Record, frozen=True, kw_only=True):
    """What the processes of a cgroup hold, from /proc: asked for by the
    metrics RPCs only, since it costs a directory listing per process."""

    processes: int
    threads: int
    file_descriptors: int
    sockets: int


class SpecLimits(Record, frozen=True, kw_only=True):
    """The limits the container was created with (its CRI resources), for
    the ``container_spec_*`` metrics."""

    cpu_period: int
    cpu_quota: int
    cpu_shares: int
    memory_limit_bytes: int
    memory_swap_limit_bytes: int


class ContainerSample(Record, frozen=True, kw_only=True):
    id: str
    sandbox_id: str
    attributes: bytes
    """The CRI ContainerAttributes, serialized."""
    image: str
    """The image the kubelet named, for the metrics' ``image`` label."""
    state: str
    """"created", "running" or "exited"."""
    started_at_ns: int
    """0 until started."""
    cgroup: CgroupSample | None
    """None: not running, or its cgroup is gone."""
    processes: ProcessSample | None = None
    limits: SpecLimits


class PodSample(Record, frozen=True, kw_only=True):
    id: str
    attributes: bytes
    """The CRI PodSandboxAttributes, serialized."""
    ready: bool
    host_network: bool
    cgroup: CgroupSample | None
    """The pod cgroup (its containers and their monitors); None when it
    has none or it is gone."""
    processes: ProcessSample | None = None
    containers: list[ContainerSample]


class StatsQuery(Record, frozen=True, kw_only=True):
    """Which pods or containers: one by id (NOT_FOUND if absent) or a CRI
    filter."""

    id: str = ""
    """A full id or unique prefix; "" to use ``filter``."""
    filter: bytes = b""
    """The CRI ContainerStatsFilter or PodSandboxStatsFilter, serialized;
    empty for all."""
    processes: bool = False
    """Also count processes, threads, descriptors and sockets (metrics)."""


class ContainerSamples(Record, frozen=True, kw_only=True):
    items: list[ContainerSample]


class PodSamples(Record, frozen=True, kw_only=True):
    items: list[PodSample]


class LayerUsage(Record, frozen=True, kw_only=True):
    """A container's writable layer, as the storage pool last measured it."""

    used_bytes: int
    inodes_used: int
    timestamp_ns: int
    """When that measurement was taken; 0 until the first one is done.
    Figures are re-measured every ``layer_usage_interval``, later when a
    round of many large upper dirs outlasts it under the CPU budget."""


class FsCapacity(Record, frozen=True, kw_only=True):
    """The filesystem holding the writable layers (statvfs)."""

    mountpoint: str
    """The directory the CRI's FilesystemIdentifier names."""
    capacity_bytes: int
    available_bytes: int
    inodes_total: int
    inodes_free: int


class LayerUsageQuery(Record, frozen=True, kw_only=True):
    container_ids: list[str]
    """Full ids; an id with no rootfs is left out of the answer."""


class LayerUsages(Record, frozen=True, kw_only=True):
    filesystem: FsCapacity
    layers: dict[str, LayerUsage]
    """By container id."""


class InterfaceSample(Record, frozen=True, kw_only=True):
    """One interface's counters (``/proc/net/dev``) inside a pod."""

    name: str
    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_dropped: int


class NetworkQuery(Record, frozen=True, kw_only=True):
    sandbox_ids: list[str]
    """Full ids; a pod with no network namespace of the pool's (host
    network, or gone) is left out of the answer."""


class NetworkSample(Record, frozen=True, kw_only=True):
    timestamp_ns: int
    interfaces: list[InterfaceSample]
    """Every interface but the loopback."""


class NetworkSamples(Record, frozen=True, kw_only=True):
    pods: dict[str, NetworkSample]
    """By sandbox id."""
