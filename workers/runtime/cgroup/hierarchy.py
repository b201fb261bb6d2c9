"""Which cgroup filesystems this host mounts: v1, hybrid or pure v2.

- **v1**: one ``cgroup`` mount per hierarchy (``memory``, ``cpu,cpuacct``,
  ``name=systemd``, ...). A cgroup path exists once per hierarchy.
- **hybrid**: v1 as above, plus a ``cgroup2`` mount (usually
  ``/sys/fs/cgroup/unified``) that systemd uses only to track processes;
  no controller is on it. runc places containers in it too.
- **v2** (unified): a single ``cgroup2`` mount at the root; controllers are
  listed in ``cgroup.controllers`` and handed down through
  ``cgroup.subtree_control``.

Read from ``/proc/self/mountinfo``, not by listing the directory: a v1
directory name (``cpu``) may be a symlink to a combined mount
(``cpu,cpuacct``), and only the mount options say which controllers a
hierarchy carries. Detected once per worker: mounts do not change under a
running daemon.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

ROOT = "/sys/fs/cgroup"
MOUNTINFO = "/proc/self/mountinfo"

V1 = "v1"
HYBRID = "hybrid"
V2 = "v2"


# The kernel's v1 controllers (``/proc/cgroups``); the other super options
# of a cgroup mount (xattr, noprefix, clone_children, ...) are not.
V1_CONTROLLERS = frozenset({
    "blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "hugetlb", "memory", "misc",
    "net_cls", "net_prio", "perf_event", "pids", "rdma"})


class NoCgroups(RuntimeError):
    """No cgroup filesystem is mounted below the root."""


@dataclass(frozen=True)
class Hierarchy:
    """The cgroup mounts of this host, below ``root``."""

    mode: str
    root: str = ROOT
    # v1 controller (or "name=<name>" hierarchy) -> its mount directory; a
    # combined mount appears under each of its controllers.
    v1: Mapping[str, str] = field(default_factory=dict)
    unified: str | None = None  # the cgroup2 mount, if any
    # The controllers a cgroup can have: v2's root cgroup.controllers, or
    # every v1 controller mounted.
    controllers: frozenset[str] = frozenset()

    @property
    def is_v2(self) -> bool:
        return self.mode == V2

    def mounts(self) -> list[str]:
        """Every mount a cgroup path has a directory in, each once."""
        found = sorted(set(self.v1.values()))
        if self.unified is not None:
            found.append(self.unified)
        return found

    def dirs(self, path: str) -> list[str]:
        """The directories of cgroup ``path`` (``/a/b``), one per mount."""
        return [join(mount, path) for mount in self.mounts()]

    def dir(self, controller: str, path: str) -> str | None:
        """Where ``controller``'s files for cgroup ``path`` are, or None when
        the host does not have it."""
        if self.is_v2:
            return join(self.root, path) if controller in self.controllers else None
        mount = self.v1.get(controller)
        return join(mount, path) if mount is not None else None

    def procs_dir(self, path: str) -> str:
        """The one directory whose ``cgroup.procs`` lists every process of
        ``path``: v2's, else the pids (or systemd, or any) hierarchy's."""
        if self.is_v2:
            return join(self.root, path)
        for name in ("pids", "name=systemd", "memory"):
            if name in self.v1:
                return join(self.v1[name], path)
        return self.dirs(path)[0]


def join(mount: str, path: str) -> str:
    stripped = path.strip("/")
    return os.path.join(mount, stripped) if stripped else mount


def parse(mountinfo: str, root: str = ROOT) -> Hierarchy:
    """The hierarchy described by the text of a ``/proc/<pid>/mountinfo``."""
    v1: dict[str, str] = {}
    unified: str | None = None
    for line in mountinfo.splitlines():
        before, sep, after = line.partition(" - ")
        if not sep:
            continue
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        mountpoint = _unescape(fields[4])
        if mountpoint != root and not mountpoint.startswith(root.rstrip("/") + "/"):
            continue
        fstype, super_options = tail[0], tail[2].split(",")
        if fstype == "cgroup2":
            unified = mountpoint
        elif fstype == "cgroup":
            for option in super_options:
                if option in V1_CONTROLLERS or option.startswith("name="):
                    v1.setdefault(option, mountpoint)
    if unified == root:
        return Hierarchy(V2, root, {}, unified, _v2_controllers(root))
    if v1:
        mode = HYBRID if unified is not None else V1
        return Hierarchy(mode, root, v1, unified,
                         frozenset(k for k in v1 if not k.startswith("name=")))
    if unified is not None:
        # cgroup2 mounted somewhere below the root only: treat it as v2
        # rooted there (a container with just /sys/fs/cgroup/unified).
        return Hierarchy(V2, unified, {}, unified, _v2_controllers(unified))
    raise NoCgroups(f"no cgroup filesystem is mounted at {root}")


def _v2_controllers(root: str) -> frozenset[str]:
    try:
        with open(os.path.join(root, "cgroup.controllers"), encoding="ascii") as f:
            return frozenset(f.read().split())
    except OSError:
        return frozenset()


def _unescape(path: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(code, char)
    return path


@functools.cache
def host() -> Hierarchy:
    """This host's hierarchy, read once."""
    with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
        return parse(f.read())
