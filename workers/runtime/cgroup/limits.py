"""Writing a cgroup's limits on either hierarchy, the CRI's ``unified`` keys
included.

Values
    ``None`` leaves a limit as it is; -1 lifts it ("max" on v2, -1 on v1).
    Other negative values are refused here. The CRI's "0 means not set"
    is the caller's to map to None: 0 is written as 0 where the kernel
    takes it. ``memory_swap_bytes`` is memory plus swap, as in the CRI and
    the OCI spec; v2 limits swap alone, so it gets ``swap - memory``
    (runc's ConvertMemorySwapToCgroupV2Value).

Files
    =============  ==============================  ===============================
    limit          v2                              v1
    =============  ==============================  ===============================
    memory         memory.max                      memory.limit_in_bytes
    swap           memory.swap.max                 memory.memsw.limit_in_bytes
    CPU shares     cpu.weight (converted)          cpu.shares
    quota/period   cpu.max "quota|max period"      cpu.cfs_quota_us, cfs_period_us
    cpuset         cpuset.cpus, cpuset.mems        cpuset.cpus, cpuset.mems
    pids           pids.max                        pids.max
    unified        the named file                  refused
    =============  ==============================  ===============================

Errors
    Everything that can be checked without the kernel is checked before
    the first write, so a refused request changes nothing: a bad value or
    key is ``InvalidArgument``; a limit whose controller the host lacks,
    or that is not enabled for this cgroup (v2 delegation), is
    ``FailedPrecondition``. Then the kernel judges: EINVAL or ERANGE is
    ``InvalidArgument`` naming the file and value, EBUSY (v1 cannot
    reclaim below a new memory limit) ``FailedPrecondition``. Writes that
    passed before a kernel refusal stay; a retry with the same limits is
    safe. A gone cgroup raises ``FileNotFoundError``.

``unified`` keys
    A key is a file name in the cgroup's directory (no "/", not "." or
    "..", a regular file that exists there), like runc's and crun's
    setUnified. Of the ``cgroup.*`` interface files only the limits
    ``cgroup.max.depth`` and ``cgroup.max.descendants`` may be written: the
    rest move processes (procs, threads), delegate controllers
    (subtree_control, type), or act on the whole container (kill, freeze),
    which are the runtime's own operations, out of step with runc's state
    if a client did them; the others are read-only. Unified values are
    written last, so they override the typed limits (runc's order), one
    line per write, as multi-device files like io.max want.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from ....proto.errors import FailedPrecondition, InvalidArgument, shorten
from .hierarchy import Hierarchy
from .usage import V1_UNLIMITED

UNLIMITED = -1

# cgroup v1 cpu.shares bounds (kernel MIN_SHARES, MAX_SHARES) and v2
# cpu.weight's (CGROUP_WEIGHT_MIN, CGROUP_WEIGHT_MAX).
SHARES_MIN, SHARES_MAX = 2, 262144
WEIGHT_MIN, WEIGHT_MAX = 1, 10000

# The cgroup.* files a client may write through unified: limits, not
# interface (see the module docstring).
UNIFIED_CGROUP_FILES = frozenset({"cgroup.max.depth", "cgroup.max.descendants"})

# A unified key's controller, when the key names one, for telling "not
# enabled here" (FailedPrecondition) from "no such file" (InvalidArgument).
V2_CONTROLLERS = frozenset({"cpu", "cpuset", "io", "memory", "pids", "hugetlb", "rdma",
                            "misc"})


@dataclass(frozen=True)
class Limits:
    """Limits to write; None leaves one as it is, -1 lifts it."""

    memory_bytes: int | None = None
    memory_swap_bytes: int | None = None  # memory plus swap
    cpu_shares: int | None = None  # v1 shares; converted to cpu.weight on v2
    cpu_quota_us: int | None = None
    cpu_period_us: int | None = None
    cpuset_cpus: str | None = None
    cpuset_mems: str | None = None
    pids_max: int | None = None
    unified: Mapping[str, str] = field(default_factory=dict)


def from_cri(cpu_shares: int, cpu_quota: int, cpu_period: int, memory: int, swap: int,
             cpuset_cpus: str, cpuset_mems: str, unified: Mapping[str, str]) -> Limits:
    """The limits a CRI LinuxContainerResources asks for (its fields,
    already checked): 0 and "" leave a limit as it is, as the CRI means."""
    return Limits(memory_bytes=memory or None, memory_swap_bytes=swap or None,
                  cpu_shares=cpu_shares or None, cpu_quota_us=cpu_quota or None,
                  cpu_period_us=cpu_period or None, cpuset_cpus=cpuset_cpus or None,
                  cpuset_mems=cpuset_mems or None, unified=dict(unified))


def write(h: Hierarchy, path: str, limits: Limits) -> None:
    """Write ``limits`` to cgroup ``path`` ("/a/b")."""
    writes = _plan_v2(h, path, limits) if h.is_v2 else _plan_v1(h, path, limits)
    for directory, name, value in writes:
        _write(directory, name, value)


def cpu_weight(shares: int) -> int:
    """cgroup v2 cpu.weight for v1 cpu.shares, as current runc and the
    kubelet convert it (opencontainers/cgroups, runc PR 4785, kubernetes
    issue 131216): a quadratic in log2(shares) mapping 2 -> 1, the default
    1024 -> the default 100, and 262144 -> 10000. The linear formula of
    older runc left a default-shares pod at weight 39, below system
    services at 100."""
    if shares <= SHARES_MIN:
        return WEIGHT_MIN
    if shares >= SHARES_MAX:
        return WEIGHT_MAX
    exponent = math.log2(shares)
    return math.ceil(10 ** ((exponent * exponent + 125 * exponent) / 612 - 7 / 34))


# A planned write: (directory, file name, value).
Write = tuple[str, str, str]


def _plan_v2(h: Hierarchy, path: str, limits: Limits) -> list[Write]:
    _check_numbers(limits)
    writes: list[Write] = []
    if limits.cpuset_cpus is not None or limits.cpuset_mems is not None:
        cpuset = _need(h, "cpuset", path, "cpuset.cpus")
        writes += _cpuset(cpuset, limits)
    if limits.cpu_shares is not None and limits.cpu_shares != 0:
        writes.append((_need(h, "cpu", path, "cpu.weight"), "cpu.weight",
                       str(cpu_weight(limits.cpu_shares))))
    if limits.cpu_quota_us is not None or limits.cpu_period_us is not None:
        cpu = _need(h, "cpu", path, "cpu.max")
        writes.append((cpu, "cpu.max", _cpu_max(cpu, limits)))
    writes += _memory_v2(h, path, limits)
    if limits.pids_max is not None:
        writes.append((_need(h, "pids", path, "pids.max"), "pids.max",
                       _value(limits.pids_max, "max")))
    if limits.unified:
        here = h.procs_dir(path)
        for key, value in limits.unified.items():
            _check_unified(h, here, key, value)
            writes += [(here, key, line) for line in _lines(value)]
    return writes


def _plan_v1(h: Hierarchy, path: str, limits: Limits) -> list[Write]:
    if limits.unified:
        key = shorten(sorted(limits.unified)[0], 64)
        raise InvalidArgument(f"unified cgroup setting {key} needs cgroup v2; this host "
                              f"runs cgroup {h.mode}")
    _check_numbers(limits)
    writes: list[Write] = []
    if limits.cpuset_cpus is not None or limits.cpuset_mems is not None:
        writes += _cpuset(_need(h, "cpuset", path, "cpuset.cpus"), limits)
    if limits.cpu_shares is not None and limits.cpu_shares != 0:
        writes.append((_need(h, "cpu", path, "cpu.shares"), "cpu.shares",
                       str(limits.cpu_shares)))
    if limits.cpu_quota_us is not None or limits.cpu_period_us is not None:
        writes += _cfs(_need(h, "cpu", path, "cpu.cfs_quota_us"), limits)
    writes += _memory_v1(h, path, limits)
    if limits.pids_max is not None:
        writes.append((_need(h, "pids", path, "pids.max"), "pids.max",
                       _value(limits.pids_max, "max")))
    return writes


def _check_numbers(limits: Limits) -> None:
    for name in ("memory_bytes", "memory_swap_bytes", "cpu_shares", "cpu_quota_us",
                 "cpu_period_us", "pids_max"):
        value = getattr(limits, name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidArgument(f"{name} {shorten(value, 64)} is not an integer")
        if value < UNLIMITED or (value == UNLIMITED and name in ("cpu_shares", "cpu_period_us")):
            raise InvalidArgument(f"{name} {value} is negative")
    memory, swap = limits.memory_bytes, limits.memory_swap_bytes
    if swap is not None and swap != UNLIMITED:
        if memory is None:
            raise InvalidArgument(f"memory_swap_bytes {swap} needs memory_bytes: it is "
                                  "memory plus swap")
        if memory != UNLIMITED and swap < memory:
            raise InvalidArgument(f"memory_swap_bytes {swap} is below memory_bytes {memory}; "
                                  "it is memory plus swap")
    for name in ("cpuset_cpus", "cpuset_mems"):
        value = getattr(limits, name)
        if value is not None and (not isinstance(value, str) or "\n" in value or "\0" in value):
            raise InvalidArgument(f"{name} {shorten(value, 64)} is not a CPU or node list")


def _cpuset(directory: str, limits: Limits) -> list[Write]:
    # mems before cpus is what runc does; neither depends on the other in
    # the kernel, and each must be a subset of the parent's.
    writes: list[Write] = []
    if limits.cpuset_mems is not None:
        writes.append((directory, "cpuset.mems", limits.cpuset_mems))
    if limits.cpuset_cpus is not None:
        writes.append((directory, "cpuset.cpus", limits.cpuset_cpus))
    return writes


def _cpu_max(directory: str, limits: Limits) -> str:
    quota, period = limits.cpu_quota_us, limits.cpu_period_us
    if quota is None:
        # A period alone keeps the quota in force: cpu.max takes both or
        # the quota alone, so the current quota is written back with it.
        current = _read(directory, "cpu.max").split()
        return f"{current[0]} {period}"
    text = _value(quota, "max")
    return text if period is None else f"{text} {period}"


def _cfs(directory: str, limits: Limits) -> list[Write]:
    writes: list[Write] = []
    if limits.cpu_period_us is not None:
        writes.append((directory, "cpu.cfs_period_us", str(limits.cpu_period_us)))
    if limits.cpu_quota_us is not None:
        writes.append((directory, "cpu.cfs_quota_us", str(limits.cpu_quota_us)))
    if len(writes) == 2:
        # The kernel checks quota/period against the parent's ratio at each
        # write. A longer period lowers the ratio of the current quota, so
        # it goes first; a shorter one raises it, so the new quota goes
        # first and meets the old, longer period.
        assert limits.cpu_period_us is not None
        if limits.cpu_period_us < int(_read(directory, "cpu.cfs_period_us")):
            writes.reverse()
    return writes


def _memory_v2(h: Hierarchy, path: str, limits: Limits) -> list[Write]:
    memory, swap = limits.memory_bytes, limits.memory_swap_bytes
    if memory is None and swap is None:
        return []
    directory = _need(h, "memory", path, "memory.max")
    writes: list[Write] = []
    if memory == UNLIMITED and swap is None:
        # Unlimited memory with swap unsaid lifts both, as runc does.
        swap = UNLIMITED
    if swap is not None:
        if swap == UNLIMITED or memory == UNLIMITED:
            swap_max = _value(swap, "max")
        else:
            assert memory is not None  # _check_numbers
            swap_max = str(swap - memory)
        if _exists(directory, "memory.swap.max"):
            writes.append((directory, "memory.swap.max", swap_max))
        elif swap_max not in ("max", "0"):
            # Lifting swap, or allowing none, needs no swap accounting.
            raise FailedPrecondition(f"cgroup {shorten(path)}: cannot limit swap to "
                                     f"{swap_max} bytes: this host does not account swap "
                                     "(no memory.swap.max)")
    if memory is not None:
        # memory.max and memory.swap.max are independent on v2.
        writes.insert(0, (directory, "memory.max", _value(memory, "max")))
    return writes


def _memory_v1(h: Hierarchy, path: str, limits: Limits) -> list[Write]:
    memory, swap = limits.memory_bytes, limits.memory_swap_bytes
    if memory is None and swap is None:
        return []
    directory = _need(h, "memory", path, "memory.limit_in_bytes")
    if memory == UNLIMITED and swap is None:
        swap = UNLIMITED
    writes: list[Write] = []
    if memory is not None:
        writes.append((directory, "memory.limit_in_bytes", str(memory)))
    if swap is not None:
        if _exists(directory, "memory.memsw.limit_in_bytes"):
            writes.append((directory, "memory.memsw.limit_in_bytes", str(swap)))
        elif swap not in (UNLIMITED, memory):
            raise FailedPrecondition(f"cgroup {shorten(path)}: cannot limit memory+swap to "
                                     f"{swap} bytes: this host does not account swap (no "
                                     "memory.memsw.limit_in_bytes)")
    if len(writes) == 2 and memory is not None:
        # The kernel keeps memsw >= memory at every write: raising memory
        # needs the new memsw first, lowering it needs memory first.
        current = int(_read(directory, "memory.limit_in_bytes"))
        if _infinite(memory) > _infinite(current):
            writes.reverse()
    return writes


def _infinite(value: int) -> float:
    return math.inf if value == UNLIMITED or value >= V1_UNLIMITED else value


def _check_unified(h: Hierarchy, directory: str, key: object, value: object) -> None:
    shown = shorten(key, 64)
    if not isinstance(key, str) or not key or "/" in key or "\0" in key or key in (".", ".."):
        raise InvalidArgument(f"unified cgroup setting {shown} is not a file name")
    if key.startswith("cgroup.") and key not in UNIFIED_CGROUP_FILES:
        raise InvalidArgument(f"unified cgroup setting {shown} is a cgroup interface file "
                              "the runtime manages; only cgroup.max.depth and "
                              "cgroup.max.descendants may be set")
    if not isinstance(value, str) or "\0" in value:
        raise InvalidArgument(f"unified cgroup setting {shown} has a value that is not text")
    target = os.path.join(directory, key)
    if os.path.isfile(target):
        return
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, "cgroup is gone", directory)
    controller = key.partition(".")[0]
    if controller in V2_CONTROLLERS:
        where = "this host" if controller not in h.controllers else "this cgroup"
        raise FailedPrecondition(f"unified cgroup setting {shown} needs the {controller} "
                                 f"controller, which {where} does not have")
    raise InvalidArgument(f"unified cgroup setting {shown} is not a file of the cgroup")


def _lines(value: str) -> list[str]:
    lines = [line for line in value.split("\n") if line.strip()]
    return lines or [value]


def _need(h: Hierarchy, controller: str, path: str, name: str) -> str:
    """The directory holding ``name`` for ``path``; FailedPrecondition when
    the host, or on v2 this cgroup, lacks the controller."""
    directory = h.dir(controller, path)
    if directory is None:
        raise FailedPrecondition(f"cannot set {name}: this host has no {controller} cgroup "
                                 "controller")
    if not _exists(directory, name):
        raise FailedPrecondition(f"cannot set {name} for cgroup {shorten(path)}: the "
                                 f"{controller} controller is not enabled for it")
    return directory


def _exists(directory: str, name: str) -> bool:
    """Whether ``name`` is in ``directory``; FileNotFoundError when the
    cgroup itself is gone."""
    if os.path.exists(os.path.join(directory, name)):
        return True
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, "cgroup is gone", directory)
    return False


def _value(number: int, unlimited: str) -> str:
    return unlimited if number == UNLIMITED else str(number)


def _read(directory: str, name: str) -> str:
    with open(os.path.join(directory, name), encoding="ascii") as f:
        return f.read()


def _write(directory: str, name: str, value: str) -> None:
    target = os.path.join(directory, name)
    try:
        # No O_CREAT and no truncation: a cgroup file is an interface,
        # and a gone cgroup must not get a regular file made in its place.
        fd = os.open(target, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "cgroup is gone", directory) from None
    except PermissionError:
        raise InvalidArgument(f"{name} of cgroup {shorten(directory)} is read-only") from None
    try:
        os.write(fd, value.encode())
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ERANGE, errno.E2BIG, errno.EOVERFLOW):
            raise InvalidArgument(f"{name} of cgroup {shorten(directory)} refused "
                                  f"{shorten(value, 64)}: {os.strerror(e.errno)}") from None
        if e.errno == errno.EBUSY:
            raise FailedPrecondition(f"{name} of cgroup {shorten(directory)} refused "
                                     f"{shorten(value, 64)}: {os.strerror(e.errno)}") from None
        if e.errno == errno.ENODEV:
            raise FileNotFoundError(errno.ENOENT, "cgroup is gone", directory) from None
        raise
    finally:
        os.close(fd)
