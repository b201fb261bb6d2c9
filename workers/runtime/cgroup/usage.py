"""What a cgroup uses now: CPU, memory, swap, OOM kills, pids, block I/O.

One ``Usage`` for both hierarchies, from these files:

=================  ==========================  ====================================
figure             v2                          v1
=================  ==========================  ====================================
CPU                cpu.stat usage_usec         cpuacct.usage (already ns)
memory usage       memory.current              memory.usage_in_bytes
working set        usage - inactive_file       usage - total_inactive_file
RSS                memory.stat anon            memory.stat total_rss
page faults        pgfault, pgmajfault         total_pgfault, total_pgmajfault
limit              memory.max                  memory.limit_in_bytes
OOM kills          memory.events oom_kill      memory.oom_control oom_kill
swap               memory.swap.current         memory.memsw.usage_in_bytes - usage
pids               pids.current                pids.current
I/O bytes          io.stat rbytes/wbytes       blkio.throttle.io_service_bytes_
                                               recursive Read/Write
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

from .hierarchy import Hierarchy

# What memory.limit_in_bytes (and memsw) shows when unlimited: the page
# counter's maximum, LONG_MAX / PAGE_SIZE pages, times the page size
# (mm/page_counter.h PAGE_COUNTER_MAX); 9223372036854771712 with 4 KiB
# pages.
V1_UNLIMITED = (2**63 - 1) // os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Usage:
    """One sample of a cgroup's usage; counters are cumulative."""

    timestamp_ns: int  # wall clock (time.time_ns) when the sample was taken
    cpu_usage_ns: int
    memory_usage_bytes: int
    memory_working_set_bytes: int
    memory_rss_bytes: int
    memory_limit_bytes: int | None  # None: no limit
    page_faults: int
    major_page_faults: int
    oom_kills: int
    swap_usage_bytes: int | None  # None: the host does not account swap
    pids_current: int | None  # None: no pids controller here
    io_read_bytes: int
    io_write_bytes: int


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
    cpu = _keyed(_file(here, "cpu.stat")).get("usage_usec", 0) * 1000
    memory = h.dir("memory", path)
    usage = _int(_file(memory, "memory.current")) or 0
    stat = _keyed(_file(memory, "memory.stat"))
    read_bytes, write_bytes = _io_stat(_file(h.dir("io", path), "io.stat"))
    return Usage(
        timestamp_ns=timestamp,
        cpu_usage_ns=cpu,
        memory_usage_bytes=usage,
        memory_working_set_bytes=max(usage - stat.get("inactive_file", 0), 0),
        memory_rss_bytes=stat.get("anon", 0),
        memory_limit_bytes=_int(_file(memory, "memory.max")),
        page_faults=stat.get("pgfault", 0),
        major_page_faults=stat.get("pgmajfault", 0),
        oom_kills=_keyed(_file(memory, "memory.events")).get("oom_kill", 0),
        swap_usage_bytes=_int(_file(memory, "memory.swap.current")),
        pids_current=_int(_file(h.dir("pids", path), "pids.current")),
        io_read_bytes=read_bytes,
        io_write_bytes=write_bytes,
    )


def _read_v1(h: Hierarchy, path: str, timestamp: int) -> Usage:
    cpu = _int(_file(h.dir("cpuacct", path), "cpuacct.usage")) or 0
    memory = h.dir("memory", path)
    usage = _int(_file(memory, "memory.usage_in_bytes")) or 0
    stat = _keyed(_file(memory, "memory.stat"))
    limit = _int(_file(memory, "memory.limit_in_bytes"))
    memsw = _int(_file(memory, "memory.memsw.usage_in_bytes"))
    read_bytes, write_bytes = _blkio(
        _file(h.dir("blkio", path), "blkio.throttle.io_service_bytes_recursive"))
    return Usage(
        timestamp_ns=timestamp,
        cpu_usage_ns=cpu,
        memory_usage_bytes=usage,
        memory_working_set_bytes=max(usage - stat.get("total_inactive_file", 0), 0),
        memory_rss_bytes=stat.get("total_rss", 0),
        memory_limit_bytes=None if limit is None or limit >= V1_UNLIMITED else limit,
        page_faults=stat.get("total_pgfault", 0),
        major_page_faults=stat.get("total_pgmajfault", 0),
        oom_kills=_keyed(_file(memory, "memory.oom_control")).get("oom_kill", 0),
        # memsw counts memory plus swap; the two are read a moment apart.
        swap_usage_bytes=None if memsw is None else max(memsw - usage, 0),
        pids_current=_int(_file(h.dir("pids", path), "pids.current")),
        io_read_bytes=read_bytes,
        io_write_bytes=write_bytes,
    )


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


def _io_stat(text: str | None) -> tuple[int, int]:
    """rbytes and wbytes summed over devices, from v2's nested-keyed
    io.stat ("8:0 rbytes=1 wbytes=2 rios=3 ...")."""
    read_bytes = write_bytes = 0
    for line in (text or "").splitlines():
        for pair in line.split()[1:]:
            key, _, value = pair.partition("=")
            if key == "rbytes":
                read_bytes += int(value)
            elif key == "wbytes":
                write_bytes += int(value)
    return read_bytes, write_bytes


def _blkio(text: str | None) -> tuple[int, int]:
    """Read and Write bytes summed over devices, from v1's "8:0 Read 4096"
    lines; the closing "Total N" line has no device and is skipped."""
    read_bytes = write_bytes = 0
    for line in (text or "").splitlines():
        fields = line.split()
        if len(fields) != 3:
            continue
        if fields[1] == "Read":
            read_bytes += int(fields[2])
        elif fields[1] == "Write":
            write_bytes += int(fields[2])
    return read_bytes, write_bytes
