"""cgroup placement and limits: ``linux.cgroupsPath`` and ``linux.resources``.

cgroupsPath, as CRI-O's cgroup managers name it (``internal/config/cgmgr``):

- cgroupfs: ``<cgroup_parent>/<prefix>-<id>``, the parent defaulting to
  ``/<prefix>``; a systemd slice as parent is refused, since the cgroupfs
  driver would create a directory literally named ``….slice``;
- systemd: ``<parent.slice>:<prefix>:<id>`` (runc's slice:prefix:name
  form), the parent defaulting to system.slice; a parent that is not a
  slice is refused.

Limits come from ``LinuxContainerResources`` (CRI-O
``SpecSetLinuxContainerResources``): zero means "not set" for every field,
as the kubelet sends it. A memory limit below the handler's minimum is
INVALID_ARGUMENT (CRI-O ``VerifyMemoryIsEnough``). Swap: the OCI ``swap``
is memory plus swap; it is the CRI swap limit when set (never below the
memory limit), else equal to the memory limit, i.e. no swap, and it is
written only where the kernel accounts swap, since runc fails the create
otherwise. Hugepage limits are dropped where no hugetlb controller is
mounted, as CRI-O does. ``unified`` is cgroup v2 only: on a v1 node it is
refused (the kubelet sends it only to v2 nodes). A
pids limit is written only when the node config sets one (CRI-O's default
``pids_limit`` is -1, none).

Values runc would write into cgroup files unchecked are checked here, so
a bad one is INVALID_ARGUMENT naming the field instead of a runc error:
cpu_shares, cpu_period and cpu_quota within the kernel's bounds, a swap
limit no lower than -1 (no limit), cpuset lists in the kernel's form
naming, on cgroup v1, only online CPUs and memory nodes with memory (as
they are at this create: ``NodeFacts.cpus``/``mems``), hugepage page sizes
in runc's form ("2MB") and, where they are applied, offered by this node.

``oom_score_adj`` is a process field, not a cgroup one; it is clamped to
the daemon's own value (see spec_context).
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

from ...proto import api_pb2 as api
from ...proto.errors import InvalidArgument, shorten
from .spec_context import NodeFacts, cpu_ranges

OOM_SCORE_ADJ_MIN = -1000
OOM_SCORE_ADJ_MAX = 1000

# cgroup v1 cpu.shares bounds (the kernel's MIN_SHARES and MAX_SHARES);
# runc refuses the create outside them. CRI-O hands cpu_shares to the
# runtime unchanged (SpecSetLinuxContainerResources), so such a value fails
# there with runc's error, and the kubelet never sends one: its
# MilliCPUToShares clamps to these bounds. Refusing (rather than clamping)
# keeps CRI-O's outcome with a clear code, and never silently changes the
# weight a caller asked for.
CPU_SHARES_MIN = 2
CPU_SHARES_MAX = 262144

# The kernel's CFS bandwidth bounds (kernel/sched/core.c, cgroup v1
# cpu.cfs_* and v2 cpu.max alike), in microseconds: a period of 1 ms to
# 1 s, a quota of at least 1 ms and at most 2^44-1 (about 203 days). A
# negative quota means "no limit".
CPU_PERIOD_MIN, CPU_PERIOD_MAX = 1000, 1_000_000
CPU_QUOTA_MIN, CPU_QUOTA_MAX = 1000, (1 << 44) - 1

# runc's names for huge page sizes (and the kubelet's CRI page_size).
PAGE_SIZE = re.compile(r"[1-9][0-9]{0,5}(?:KB|MB|GB|TB|PB)")


def cgroups_path(parent: str, object_id: str, node: NodeFacts) -> str:
    """The ``linux.cgroupsPath`` of a container or infra process ``object_id``."""
    if node.cgroup_manager == "systemd":
        slice_name = parent or "system.slice"
        if not posixpath.basename(slice_name).endswith(".slice") or "/" in slice_name:
            raise InvalidArgument(f"cgroup_parent {parent!r}: the systemd cgroup manager needs a "
                                  "slice name such as kubepods-besteffort-pod<uid>.slice")
        return f"{slice_name}:{node.cgroup_prefix}:{object_id}"
    if posixpath.basename(parent).endswith(".slice"):
        raise InvalidArgument(f"cgroup_parent {parent!r} is a systemd slice, but the cgroup "
                              "manager is cgroupfs")
    base = parent or f"/{node.cgroup_prefix}"
    # normpath keeps the result under the cgroup root: "/../x" becomes "/x".
    return posixpath.normpath(posixpath.join("/", base, f"{node.cgroup_prefix}-{object_id}"))


def oom_score_adj(resources: api.LinuxContainerResources, floor: int) -> int:
    """The CRI's oom_score_adj, raised to the daemon's own (never lower)."""
    value = resources.oom_score_adj
    if not OOM_SCORE_ADJ_MIN <= value <= OOM_SCORE_ADJ_MAX:
        raise InvalidArgument(f"oom_score_adj {value} is outside -1000..1000")
    return max(value, floor)


def _positive(value: int, key: str) -> int:
    if value < 0:
        raise InvalidArgument(f"{key} {value} is negative")
    return value


def linux_resources(resources: api.LinuxContainerResources, node: NodeFacts) -> dict[str, Any]:
    """The OCI ``linux.resources`` (without devices) for a LinuxContainerResources."""
    out: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    shares = _positive(resources.cpu_shares, "cpu_shares")
    period = _positive(resources.cpu_period, "cpu_period")
    # The kubelet sends 0 for "no quota"; the -1 of the cgroup files is
    # refused with every other negative value, so no typo lifts a limit.
    quota = resources.cpu_quota
    if quota < 0:
        raise InvalidArgument(f"cpu_quota {quota} is negative; 0 means no quota")
    if shares and not CPU_SHARES_MIN <= shares <= CPU_SHARES_MAX:
        raise InvalidArgument(f"cpu_shares {shares} is outside {CPU_SHARES_MIN}.."
                              f"{CPU_SHARES_MAX}, the kernel's range (0 leaves it unset)")
    if shares:
        cpu["shares"] = shares
    if quota > 0 and not CPU_QUOTA_MIN <= quota <= CPU_QUOTA_MAX:
        raise InvalidArgument(f"cpu_quota {quota} is outside {CPU_QUOTA_MIN}..{CPU_QUOTA_MAX} "
                              "microseconds, the kernel's range (0: no quota)")
    if quota:
        cpu["quota"] = quota
    if period and not CPU_PERIOD_MIN <= period <= CPU_PERIOD_MAX:
        raise InvalidArgument(f"cpu_period {period} is outside {CPU_PERIOD_MIN}.."
                              f"{CPU_PERIOD_MAX} microseconds, the kernel's range")
    if period:
        cpu["period"] = period
    for key, value, field, online in (
            ("cpuset_cpus", resources.cpuset_cpus, "cpus", node.cpus),
            ("cpuset_mems", resources.cpuset_mems, "mems", node.mems)):
        if value:
            cpu[field] = _cpuset(key, value, online)
    if cpu:
        out["cpu"] = cpu

    limit = _positive(resources.memory_limit_in_bytes, "memory_limit_in_bytes")
    if limit:
        if limit < node.min_memory:
            raise InvalidArgument(f"memory limit {limit} is too low; it should be at least "
                                  f"{node.min_memory} bytes")
        memory: dict[str, Any] = {"limit": limit}
        swap = resources.memory_swap_limit_in_bytes
        if 0 < swap < limit:
            raise InvalidArgument(f"memory swap limit ({swap}) cannot be lower than the memory "
                                  f"limit ({limit})")
        if swap < -1:
            raise InvalidArgument(f"memory_swap_limit_in_bytes {swap} is negative; -1 means "
                                  "no limit")
        if node.swap_accounting:
            memory["swap"] = swap or limit
        out["memory"] = memory

    hugepages = [{"pageSize": _page_size(index, h.page_size), "limit": h.limit}
                 for index, h in enumerate(resources.hugepage_limits)]
    if hugepages and "hugetlb" in node.controllers:
        # runc writes hugetlb.<size>.limit_in_bytes, which exists only for
        # the sizes the kernel offers.
        sizes = node.hugepage_sizes
        for index, entry in enumerate(hugepages):
            if sizes is not None and entry["pageSize"] not in sizes:
                raise InvalidArgument(
                    f"hugepage_limits[{index}].page_size {entry['pageSize']} is not a huge page "
                    f"size of this node (it has {', '.join(sorted(sizes)) or 'none'})")
        out["hugepageLimits"] = hugepages

    unified = dict(resources.unified)
    if unified and not node.cgroup_v2:
        # The kubelet sends unified keys only to a v2 node; a v1 one cannot
        # apply them, and a limit silently dropped is worse than a refusal.
        raise InvalidArgument(f"resources.unified {shorten(', '.join(sorted(unified)))}: "
                              "this node runs cgroup v1, which has no unified hierarchy")
    if unified:
        out["unified"] = unified

    if node.pids_limit > 0 and "pids" in node.controllers:
        out["pids"] = {"limit": node.pids_limit}
    return out


def _cpuset(key: str, value: str, online: frozenset[int] | None) -> str:
    """``value`` if the kernel would take it for cpuset.cpus or cpuset.mems."""
    ranges = cpu_ranges(value)
    if ranges is None:
        raise InvalidArgument(f"{key} {shorten(value)} is not a list such as 0-3,8: numbers "
                              "and ranges N-M with N <= M, separated by commas")
    if online is not None:
        top = max(online, default=-1)
        # Bounded: a range is only walked once it ends within the node.
        if any(high > top or not online.issuperset(range(low, high + 1))
               for low, high in ranges):
            what = "CPUs" if key == "cpuset_cpus" else "memory nodes"
            raise InvalidArgument(f"{key} {shorten(value)} names {what} this node does not "
                                  f"have online (it has {_list_text(online)})")
    return value


def _list_text(numbers: frozenset[int]) -> str:
    """``numbers`` as a kernel cpu list: "0-3,8"."""
    parts: list[str] = []
    for n in sorted(numbers):
        if parts and n - 1 in numbers:
            parts[-1] = f"{parts[-1].split('-')[0]}-{n}"
        else:
            parts.append(str(n))
    return shorten(",".join(parts), 64) if parts else "none"


def _page_size(index: int, value: str) -> str:
    field = f"hugepage_limits[{index}].page_size"
    if not value:
        raise InvalidArgument(f"{field} is empty; it names a huge page size such as 2MB")
    if not PAGE_SIZE.fullmatch(value):
        raise InvalidArgument(f"{field} {shorten(value)} is not a huge page size such as "
                              "2MB or 1GB")
    return value
