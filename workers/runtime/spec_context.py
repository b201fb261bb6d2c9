"""The facts an OCI spec is built from, besides the CRI request itself.

``PodContext`` is what the sandbox set up for one pod (pinned namespaces,
files, cgroup parent); ``NodeFacts`` is what holds for every pod on this
node with one OCI runtime handler (cgroup version and controllers, the
handler's mount options, limits the daemon itself lives under). Both are
frozen: the builder never changes them, so one value can serve any number
of concurrent builds.

The detection helpers at the bottom read the host (``/proc/self``,
``/sys/fs/cgroup``) once; callers cache their results for the worker's
life, since none of these facts change while the daemon runs. The
exception is what a cpuset may name (``with_cpusets``): CPUs and memory
nodes go on- and offline under a running daemon, so it is read per create.

Why the daemon's own limits matter: this runtime may run without
CAP_SYS_RESOURCE (a nested sandbox), and then the OCI runtime cannot ask
the kernel for an ``oom_score_adj`` below the daemon's own or an
RLIMIT_NOFILE above its hard limit; runc would fail the create with EPERM.
The builder clamps to these floors and ceilings instead.
"""

from __future__ import annotations

import glob
import os
import re
import resource
from dataclasses import dataclass, field, replace

from ...proto.idmap import IdMap
from .cgroup.driver import PREFIX
from .spec_security import CAPABILITIES

# CRI-O's default RLIMIT_NOFILE for containers: for years its crio.service
# carried LimitNOFILE=1048576 and containers inherited it (the unit line
# was removed in CRI-O 1.33, commit b27a733c). podvisor writes the limit
# into the spec instead of relying on inheritance from conmon.
DEFAULT_NOFILE = 1048576

# CRI-O's container_min_memory: 12 MiB for runc, 500 KiB for crun
# (pkg/config/config.go). A limit below it cannot even start the runtime's
# init inside the cgroup.
MIN_MEMORY_RUNC = 12 * 1024 * 1024
MIN_MEMORY_CRUN = 500 * 1024
# crun's systemd driver on cgroup v2 moves the container into a "container"
# child of its scope unless told otherwise; podvisor reads and updates a
# container's cgroup at the scope, as with runc (CRI-O sets the same).
CRUN_SYSTEMD_ANNOTATIONS = (("run.oci.systemd.subgroup", ""),)

# Where the kernel lists online CPUs and memory nodes.
SYS_DEVICES = "/sys/devices/system"


@dataclass(frozen=True)
class PodContext:
    """What the sandbox set up, as containers of the pod must join it."""

    sandbox_id: str
    hostname: str
    cgroup_parent: str       # LinuxPodSandboxConfig.cgroup_parent (a cgroupfs path or a slice)
    netns_path: str | None   # None: the host's network namespace
    ipc_ns_path: str | None  # pinned namespace files; None: the host's
    uts_ns_path: str | None
    pid_ns_path: str | None  # the infra process's PID namespace when the pod shares one
    shm_path: str | None     # per-pod /dev/shm mount; None: host IPC, so the host's /dev/shm
    resolv_conf: str | None  # files bind-mounted into every container of the pod
    hosts_file: str | None
    hostname_file: str | None
    privileged_caps: tuple[str, ...]  # the daemon's bounding set (``bounding_caps()``)
    oom_score_adj_floor: int          # the daemon's own oom_score_adj (``own_oom_score_adj()``)
    userns_path: str | None = None    # the pod's pinned user namespace; None: the host's
    idmap: IdMap | None = None        # its maps (mode POD)


@dataclass(frozen=True)
class SpecSettings:
    """The ``[podvisor.runtime]`` keys the spec builder follows."""

    # seccomp_use_default_when_empty: RuntimeDefault for a container that
    # names no seccomp profile at all.
    seccomp_default_when_empty: bool = False
    # Where CDI device specs are read, in rising priority.
    cdi_spec_dirs: tuple[str, ...] = ("/etc/cdi", "/var/run/cdi")


@dataclass(frozen=True)
class NodeFacts:
    """Per node and OCI runtime handler; ``detect_node`` fills it from the host."""

    cgroup_manager: str = "cgroupfs"           # podvisor.runtime.cgroup_manager
    cgroup_prefix: str = PREFIX                # container cgroups are <parent>/<prefix>-<id>
    cgroup_v2: bool = False
    controllers: frozenset[str] = frozenset()  # mounted cgroup controllers (cpu, memory, ...)
    swap_accounting: bool = False              # memory.memsw.* (v1) or memory.swap.max (v2)
    mount_options: frozenset[str] = frozenset()  # the handler's `features` mountOptions
    min_memory: int = MIN_MEMORY_RUNC
    nofile: int = DEFAULT_NOFILE               # RLIMIT_NOFILE soft and hard for containers
    pids_limit: int = 0                        # per-container pids.max; <= 0 leaves it unset
    # What cpuset.cpus, cpuset.mems and hugetlb.<size>.* may name on this
    # node; None where it is unknown or unchecked, and then only the syntax
    # is checked. The cpusets are current only as ``with_cpusets`` made them.
    cpus: frozenset[int] | None = None         # online CPUs
    mems: frozenset[int] | None = None         # memory (NUMA) nodes with memory
    hugepage_sizes: frozenset[str] | None = None  # "2MB", "1GB", as runc names them
    apparmor: bool = False                     # the AppArmor LSM is enabled here
    selinux: bool = False                      # SELinux is enabled here
    # Set on every spec for this handler, over any the CRI asked for.
    runtime_annotations: tuple[tuple[str, str], ...] = ()
    settings: SpecSettings = field(default_factory=lambda: SpecSettings())


def bounding_caps(status: str | None = None) -> tuple[str, ...]:
    """The capability names in our bounding set, from ``/proc/self/status`` CapBnd.

    A privileged container gets exactly these: asking runc for a
    capability outside its own bounding set fails the create.
    """
    if status is None:
        with open("/proc/self/status", encoding="ascii") as f:
            status = f.read()
    for line in status.splitlines():
        if line.startswith("CapBnd:"):
            mask = int(line.split(":", 1)[1].strip(), 16)
            return tuple(name for bit, name in enumerate(CAPABILITIES) if mask >> bit & 1)
    raise ValueError("no CapBnd line in /proc/self/status")


def own_oom_score_adj() -> int:
    with open("/proc/self/oom_score_adj", encoding="ascii") as f:
        return int(f.read().strip())


def nofile_ceiling(wanted: int = DEFAULT_NOFILE) -> int:
    """``wanted``, lowered to what a process without CAP_SYS_RESOURCE may set.

    Only a holder of CAP_SYS_RESOURCE may raise a hard limit, so without it
    the daemon's own hard limit is the most a container can be given. The
    kernel's fs.nr_open caps it in every case.
    """
    try:
        with open("/proc/sys/fs/nr_open", encoding="ascii") as f:
            wanted = min(wanted, int(f.read().strip()))
    except (OSError, ValueError):
        pass
    if "CAP_SYS_RESOURCE" in _effective_caps():
        return wanted
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)


def _effective_caps() -> tuple[str, ...]:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("CapEff:"):
                mask = int(line.split(":", 1)[1].strip(), 16)
                return tuple(name for bit, name in enumerate(CAPABILITIES) if mask >> bit & 1)
    return ()


def detect_node(cgroup_manager: str = "cgroupfs", mount_options: frozenset[str] = frozenset(),
                min_memory: int = MIN_MEMORY_RUNC, cgroup_root: str = "/sys/fs/cgroup",
                pids_limit: int = 0, settings: SpecSettings | None = None,
                runtime_annotations: tuple[tuple[str, str], ...] = ()) -> NodeFacts:
    """Read the cgroup layout and the LSMs of this host; the handler's facts
    come from its probe."""
    v2 = os.path.exists(os.path.join(cgroup_root, "cgroup.controllers"))
    if v2:
        with open(os.path.join(cgroup_root, "cgroup.controllers"), encoding="ascii") as f:
            controllers = frozenset(f.read().split())
        # The root cgroup has no memory.* files, so look one level down.
        swap = bool(glob.glob(os.path.join(cgroup_root, "*", "memory.swap.max")))
    else:
        controllers = frozenset(name for name in ("cpu", "cpuset", "memory", "pids", "hugetlb",
                                                  "devices", "freezer", "blkio")
                                if os.path.isdir(os.path.join(cgroup_root, name)))
        swap = os.path.exists(os.path.join(cgroup_root, "memory", "memory.memsw.limit_in_bytes"))
    return with_cpusets(NodeFacts(
        cgroup_manager=cgroup_manager, cgroup_v2=v2, controllers=controllers,
        swap_accounting=swap, mount_options=mount_options, min_memory=min_memory,
        nofile=nofile_ceiling(), pids_limit=pids_limit, hugepage_sizes=hugepage_sizes(),
        apparmor=apparmor_enabled(), selinux=selinux_enabled(),
        settings=settings or SpecSettings(), runtime_annotations=runtime_annotations))


def apparmor_enabled(parameter: str = "/sys/module/apparmor/parameters/enabled") -> bool:
    """The AppArmor LSM is on (the kernel's own switch, as runc reads it)."""
    try:
        with open(parameter, encoding="ascii") as f:
            return f.read().strip() == "Y"
    except OSError:
        return False


def selinux_enabled(root: str = "/sys/fs/selinux") -> bool:
    """SELinux is on: selinuxfs is mounted and has its enforce switch."""
    return os.path.exists(os.path.join(root, "enforce"))


def with_cpusets(node: NodeFacts) -> NodeFacts:
    """``node`` with the CPUs and memory nodes a cpuset may name now.

    On cgroup v1 a cpuset must lie within its parent's, at the top the
    online CPUs and the nodes that have memory (``has_memory``; ``online``
    lists memory-less nodes too, and serves only where that file is
    missing); runc would fail the create otherwise. On v2 the kernel takes
    any list and applies what is online, so nothing is checked there.
    """
    if node.cgroup_v2:
        return replace(node, cpus=None, mems=None)
    mems = _online(f"{SYS_DEVICES}/node/has_memory")
    if mems is None:
        mems = _online(f"{SYS_DEVICES}/node/online")
    return replace(node, cpus=_online(f"{SYS_DEVICES}/cpu/online"), mems=mems)


def cpu_ranges(text: str) -> list[tuple[int, int]] | None:
    """The ranges of a kernel cpu list ("0-3,8"), or None if it is not one.

    This is the form cpuset.cpus and cpuset.mems take: comma-separated
    numbers and ranges N-M with N <= M. Numbers have at most nine digits
    (the kernel's NR_CPUS is far below), so no range is ever expanded
    beyond what a node could have.
    """
    ranges = []
    for part in text.split(","):
        match = _CPU_RANGE.fullmatch(part)
        if match is None:
            return None
        low = int(match[1])
        high = int(match[2]) if match[2] is not None else low
        if low > high:
            return None
        ranges.append((low, high))
    return ranges


_CPU_RANGE = re.compile(r"([0-9]{1,9})(?:-([0-9]{1,9}))?")


def _online(path: str) -> frozenset[int] | None:
    try:
        with open(path, encoding="ascii") as f:
            ranges = cpu_ranges(f.read().strip())
    except OSError:
        return None
    if ranges is None:
        return None
    return frozenset(n for low, high in ranges for n in range(low, high + 1))


def hugepage_sizes(root: str = "/sys/kernel/mm/hugepages") -> frozenset[str] | None:
    """The huge page sizes this kernel offers, named as runc names the
    hugetlb files (and the kubelet the CRI page_size): "2MB", "1GB"."""
    try:
        names = os.listdir(root)
    except OSError:
        return None
    sizes = (re.fullmatch(r"hugepages-([0-9]+)kB", name) for name in names)
    return frozenset(page_size_name(int(m[1]) * 1024) for m in sizes if m)


def page_size_name(size: int) -> str:
    """``size`` bytes in binary units, as runc and the kubelet print it."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024:
            return f"{value:g}{unit}"
        value /= 1024
    return f"{value:g}PB"
