"""What a cgroup uses now: CPU, memory, swap, OOM kills, pids, block I/O.

One ``Usage`` for both hierarchies, from these files:

=================  ==========================  ====================================
figure             v2                          v1
=================  ==========================  ====================================
CPU                cpu.stat usage_usec         cpuacct.usage (already ns)
user, system CPU   cpu.stat user/system_usec   cpuacct.stat user/system (ticks)
CFS throttling     cpu.stat nr_periods,        cpu.stat nr_periods, nr_throttled,
                   nr_throttled, throttled_us  throttled_time (ns)
memory usage       memory.current              memory.usage_in_bytes
peak usage         memory.peak (5.19+)         memory.max_usage_in_bytes
working set        usage - inactive_file       usage - total_inactive_file
RSS                memory.stat anon            memory.stat total_rss
cache, mapped      memory.stat file,           memory.stat total_cache,
                   file_mapped                 total_mapped_file
kernel             memory.stat kernel (5.18+)  memory.kmem.usage_in_bytes
limit hits         memory.events max           memory.failcnt
page faults        pgfault, pgmajfault         total_pgfault, total_pgmajfault
limit              memory.max                  memory.limit_in_bytes
OOM kills          memory.events oom_kill      memory.oom_control oom_kill
swap               memory.swap.current         memory.memsw.usage_in_bytes - usage
swap limit         memory.swap.max             memsw.limit_in_bytes - limit
pids               pids.current, pids.max      pids.current, pids.max
I/O bytes, ops     io.stat rbytes/wbytes,      blkio.throttle.io_service_bytes_
                   rios/wios                   recursive, io_serviced_recursive
=================  ==========================  ====================================

The working set is cAdvisor's (``container/libcontainer/handler.go``,
``setMemoryStats``), which the kubelet's eviction manager and metrics-server
read: usage minus the inactive file cache, floored at zero, since the two
counters are not read atomically and the cache can briefly exceed the
fuzzy usage figure. v1 figures are the ``total_*`` (hierarchical) ones so
a pod cgroup counts its containers, as v2's memory.stat always does.

Missing pieces
    A controller the host lacks, or one not enabled for this cgroup on v2
    (its files are then absent from the directory), gives 0, or None for
    the optional figures (limit, swap, pids): stats must not fail because
    a node has no swap accounting or no pids controller. A cgroup that is
    gone (its directory missing) raises ``FileNotFoundError``: the caller
    tells "removed under us" from "nothing used".

Cost
    One open and read per file, no directory listing: ListContainerStats
    reads this for every container every 10-15 s (issue 13).
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass

from ....proto.stats import CgroupSample
from .hierarchy import Hierarchy

# What memory.limit_in_bytes (and memsw) shows when unlimited: the page
# counter's maximum, LONG_MAX / PAGE_SIZE pages, times the page size
# (mm/page_counter.h PAGE_COUNTER_MAX); 9223372036854771712 with 4 KiB
# pages.
V1_UNLIMITED = (2**63 - 1) // os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PAGE_SIZE")
# cpuacct.stat counts in USER_HZ ticks.
_NS_PER_TICK = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


# One sample of a cgroup's usage, counters cumulative: the shape the
# stats ops carry, so nothing restates it field by field.
Usage = CgroupSample


def read(h: Hierarchy, path: str) -> Usage:
    """The usage of cgroup ``path`` ("/a/b") now.

    Raises FileNotFoundError when the cgroup is gone.
    """
    timestamp = time.time_ns()
    return _read_v2(h, path, timestamp) if h.is_v2 else _read_v1(h, path, timestamp)


def oom_kills(h: Hierarchy, path: str) -> int:
    """How many processes the OOM killer killed in ``path`` (its
    descendants included on v2, and on v1 in the cgroup itself)."""
    memory = h.dir("memory", path)
    if h.is_v2:
        return _keyed(_file(memory, "memory.events")).get("oom_kill", 0)
    return _keyed(_file(memory, "memory.oom_control")).get("oom_kill", 0)


def _read_v2(h: Hierarchy, path: str, timestamp: int) -> Usage:
    # cpu.stat's usage_usec is a core file, there without the cpu
    # controller; procs_dir is the cgroup's own directory on v2.
    here = h.procs_dir(path)
    cpu_stat = _keyed(_file(here, "cpu.stat"))
    memory = h.dir("memory", path)
    usage = _int(_file(memory, "memory.current")) or 0
    stat = _keyed(_file(memory, "memory.stat"))
    events = _keyed(_file(memory, "memory.events"))
    io = _io_stat(_file(h.dir("io", path), "io.stat"))
    pids = h.dir("pids", path)
    return Usage(
        timestamp_ns=timestamp,
        cpu_usage_ns=cpu_stat.get("usage_usec", 0) * 1000,
        cpu_user_ns=cpu_stat.get("user_usec", 0) * 1000,
        cpu_system_ns=cpu_stat.get("system_usec", 0) * 1000,
        cfs_periods=cpu_stat.get("nr_periods", 0),
        cfs_throttled_periods=cpu_stat.get("nr_throttled", 0),
        cfs_throttled_ns=cpu_stat.get("throttled_usec", 0) * 1000,
        memory_usage_bytes=usage,
        memory_working_set_bytes=max(usage - stat.get("inactive_file", 0), 0),
        memory_rss_bytes=stat.get("anon", 0),
        memory_cache_bytes=stat.get("file", 0),
        memory_mapped_file_bytes=stat.get("file_mapped", 0),
        memory_kernel_bytes=_v2_kernel(stat),
        memory_max_usage_bytes=_int(_file(memory, "memory.peak")),
        memory_failcnt=events.get("max", 0),
        memory_limit_bytes=_int(_file(memory, "memory.max")),
        page_faults=stat.get("pgfault", 0),
        major_page_faults=stat.get("pgmajfault", 0),
        oom_kills=events.get("oom_kill", 0),
        swap_usage_bytes=_int(_file(memory, "memory.swap.current")),
        swap_limit_bytes=_int(_file(memory, "memory.swap.max")),
        pids_current=_int(_file(pids, "pids.current")),
        pids_max=_int(_file(pids, "pids.max")),
        io_read_bytes=io.read_bytes,
        io_write_bytes=io.write_bytes,
        io_reads=io.reads,
        io_writes=io.writes,
    )


def _read_v1(h: Hierarchy, path: str, timestamp: int) -> Usage:
    cpuacct = h.dir("cpuacct", path)
    cpu = _int(_file(cpuacct, "cpuacct.usage")) or 0
    ticks = _keyed(_file(cpuacct, "cpuacct.stat"))
    cpu_stat = _keyed(_file(h.dir("cpu", path), "cpu.stat"))
    memory = h.dir("memory", path)
    usage = _int(_file(memory, "memory.usage_in_bytes")) or 0
    stat = _keyed(_file(memory, "memory.stat"))
    limit = _v1_limit(_int(_file(memory, "memory.limit_in_bytes")))
    memsw = _int(_file(memory, "memory.memsw.usage_in_bytes"))
    memsw_limit = _v1_limit(_int(_file(memory, "memory.memsw.limit_in_bytes")))
    blkio = h.dir("blkio", path)
    io = _Io(*_blkio(_file(blkio, "blkio.throttle.io_service_bytes_recursive")),
             *_blkio(_file(blkio, "blkio.throttle.io_serviced_recursive")))
    pids = h.dir("pids", path)
    return Usage(
        timestamp_ns=timestamp,
        cpu_usage_ns=cpu,
        cpu_user_ns=ticks.get("user", 0) * _NS_PER_TICK,
        cpu_system_ns=ticks.get("system", 0) * _NS_PER_TICK,
        cfs_periods=cpu_stat.get("nr_periods", 0),
        cfs_throttled_periods=cpu_stat.get("nr_throttled", 0),
        cfs_throttled_ns=cpu_stat.get("throttled_time", 0),
        memory_usage_bytes=usage,
        memory_working_set_bytes=max(usage - stat.get("total_inactive_file", 0), 0),
        memory_rss_bytes=stat.get("total_rss", 0),
        memory_cache_bytes=stat.get("total_cache", 0),
        memory_mapped_file_bytes=stat.get("total_mapped_file", 0),
        memory_kernel_bytes=_int(_file(memory, "memory.kmem.usage_in_bytes")) or 0,
        memory_max_usage_bytes=_int(_file(memory, "memory.max_usage_in_bytes")),
        memory_failcnt=_int(_file(memory, "memory.failcnt")) or 0,
        memory_limit_bytes=limit,
        page_faults=stat.get("total_pgfault", 0),
        major_page_faults=stat.get("total_pgmajfault", 0),
        oom_kills=_keyed(_file(memory, "memory.oom_control")).get("oom_kill", 0),
        # memsw counts memory plus swap; the two are read a moment apart.
        swap_usage_bytes=None if memsw is None else max(memsw - usage, 0),
        swap_limit_bytes=None if memsw_limit is None or limit is None
        else max(memsw_limit - limit, 0),
        pids_current=_int(_file(pids, "pids.current")),
        pids_max=_int(_file(pids, "pids.max")),
        io_read_bytes=io.read_bytes,
        io_write_bytes=io.write_bytes,
        io_reads=io.reads,
        io_writes=io.writes,
    )


def _v1_limit(value: int | None) -> int | None:
    return None if value is None or value >= V1_UNLIMITED else value


def _v2_kernel(stat: dict[str, int]) -> int:
    """Kernel memory: memory.stat's ``kernel`` (5.18+), else the sum of
    the kernel figures older kernels list one by one."""
    if "kernel" in stat:
        return stat["kernel"]
    return sum(stat.get(key, 0) for key in ("kernel_stack", "pagetables", "percpu", "sock",
                                            "vmalloc", "slab"))


def _file(directory: str | None, name: str) -> str | None:
    """The text of ``directory/name``; None when the controller is not
    here (no directory for it, or the file absent from a cgroup that
    exists). Raises FileNotFoundError when the cgroup itself is gone."""
    if directory is None:
        return None
    try:
        with open(os.path.join(directory, name), encoding="ascii") as f:
            return f.read()
    except FileNotFoundError:
        if not os.path.isdir(directory):
            raise FileNotFoundError(errno.ENOENT, "cgroup is gone", directory) from None
        return None
    except OSError as e:
        # A cgroup removed while its file was open reads ENODEV.
        if e.errno == errno.ENODEV:
            raise FileNotFoundError(errno.ENOENT, "cgroup is gone", directory) from None
        raise


def _int(text: str | None) -> int | None:
    """A one-value file; v2's "max" (no limit) is None."""
    if text is None:
        return None
    value = text.strip()
    return None if value == "max" else int(value)


def _keyed(text: str | None) -> dict[str, int]:
    """A flat-keyed file: "key value" lines (memory.stat, cpu.stat,
    memory.events, memory.oom_control)."""
    found: dict[str, int] = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        try:
            found[key] = int(value)
        except ValueError:
            continue
    return found


@dataclass(frozen=True)
class _Io:
    read_bytes: int = 0
    write_bytes: int = 0
    reads: int = 0
    writes: int = 0


def _io_stat(text: str | None) -> _Io:
    """Bytes and operations summed over devices, from v2's nested-keyed
    io.stat ("8:0 rbytes=1 wbytes=2 rios=3 wios=4 ...")."""
    sums = {"rbytes": 0, "wbytes": 0, "rios": 0, "wios": 0}
    for line in (text or "").splitlines():
        for pair in line.split()[1:]:
            key, _, value = pair.partition("=")
            if key in sums:
                sums[key] += int(value)
    return _Io(sums["rbytes"], sums["wbytes"], sums["rios"], sums["wios"])


def _blkio(text: str | None) -> tuple[int, int]:
    """Read and Write summed over devices, from v1's "8:0 Read 4096" lines
    (bytes or operations, by file); the closing "Total N" line has no
    device and is skipped."""
    read = write = 0
    for line in (text or "").splitlines():
        fields = line.split()
        if len(fields) != 3:
            continue
        if fields[1] == "Read":
            read += int(fields[2])
        elif fields[1] == "Write":
            write += int(fields[2])
    return read, write
