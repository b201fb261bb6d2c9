"""The cgroup driver of this node: where pods, containers and monitors go.

``cgroupfs`` (CRI-O's name) writes the cgroup directories itself;
``systemd`` asks systemd for slices and scopes over D-Bus and has runc do
the same (``--systemd-cgroup``), so that systemd, the only writer of the
cgroup tree on such a host, keeps track of them. The kubelet must use the
same driver: RuntimeConfig reports this one and the kubelet adopts it.

Which cgroup a pod's parent names depends on the driver: a cgroupfs path
(``/kubepods/burstable/pod<uid>``), or a slice
(``kubepods-burstable-pod<uid>.slice``) that stands for a nested path.
A pod record keeps what the kubelet sent; ``path`` turns it into the cgroup
path the filesystem has.

A container's monitor (conmon) leaves the daemon's cgroup, so that
stopping the daemon's unit never reaches it. ``conmon_cgroup = "pod"``
puts it beside the pod's containers: in a leaf ``<prefix>-conmon-<id>``
below the pod cgroup (on v2 a cgroup that hands controllers down holds no
processes), or in a scope of that name in the pod's slice. A named cgroup
or slice gathers every monitor instead.
"""

from __future__ import annotations

import logging
import posixpath
import time
from dataclasses import dataclass

from ....proto.errors import FailedPrecondition, InvalidArgument, shorten
from ....proto.limits import check_path
from . import slices, systemd, tree
from .hierarchy import Hierarchy

log = logging.getLogger(__name__)

SYSTEMD = "systemd"
POD = "pod"
# Containers' cgroups are <parent>/<PREFIX>-<id>, monitors' <PREFIX>-conmon-<id>.
PREFIX = "podvisor"

# A pod that names no parent: a cgroup of its own below this one
# (cgroupfs), or the slice systemd itself uses for services.
DEFAULT_PARENT = "/podvisor"
DEFAULT_SLICE = "system.slice"

SETTING = "[podvisor.runtime] cgroup_manager"

# A killed monitor leaves its cgroup within milliseconds; this bounds the
# wait for one that does not.
CONMON_EXIT_WAIT = 2.0


@dataclass(frozen=True)
class Driver:
    manager: str
    hierarchy: Hierarchy
    conmon_cgroup: str = POD
    prefix: str = PREFIX

    @property
    def systemd(self) -> bool:
        return self.manager == SYSTEMD

    def check(self) -> None:
        """Refuse a driver this host cannot serve, naming the setting."""
        if self.systemd and not systemd.running():
            raise FailedPrecondition(
                f'{SETTING} is "systemd", but systemd is not running on this node '
                f'(no /run/systemd/system or no system bus); set it to "cgroupfs", '
                "and the kubelet's cgroupDriver with it")

    def pod_parent(self, cgroup_parent: str, sandbox_id: str) -> str:
        """The parent a new pod's cgroups go under, as its record keeps it.

        With systemd the kubelet sends the slice's expanded path
        (``/kubepods.slice/kubepods-burstable.slice/...-pod<uid>.slice``)
        and crictl users often the bare name; the last component names the
        slice either way (CRI-O takes it the same way).
        """
        if self.systemd:
            name = posixpath.basename(cgroup_parent) or DEFAULT_SLICE
            if not slices.is_slice(name):
                raise InvalidArgument(f"cgroup_parent {shorten(cgroup_parent)} is not a systemd "
                                      f'slice, but {SETTING} is "systemd"')
            slices.expand(name)  # refuses a malformed name before anything is made
            return name
        if not cgroup_parent:
            return f"{DEFAULT_PARENT}/pod-{sandbox_id[:12]}"
        if posixpath.basename(cgroup_parent).endswith(slices.SLICE):
            raise InvalidArgument(f"cgroup_parent {shorten(cgroup_parent)} is a systemd slice, "
                                  f'but {SETTING} is "cgroupfs"')
        if not cgroup_parent.startswith("/") or ".." in cgroup_parent.split("/"):
            raise InvalidArgument(f"cgroup_parent {shorten(cgroup_parent)} must be an absolute "
                                  "cgroupfs path (the kubelet's cgroupfs driver)")
        check_path("cgroup_parent", cgroup_parent)
        # One spelling per directory: "/a//b/" must share "/a/b"'s records
        # and locks. normpath keeps a leading "//" (POSIX leaves it open);
        # the root alone stays "": no pod's parent, nothing to drain.
        normal = posixpath.normpath(cgroup_parent).lstrip("/")
        return f"/{normal}" if normal else ""

    def path(self, parent: str) -> str:
        """The cgroup path a record's parent stands for."""
        return slices.expand(parent) if slices.is_slice(parent) else parent

    def object_path(self, parent: str, object_id: str) -> str:
        """The cgroup path of container (or infra) ``object_id``: where the
        runtime put it from its ``linux.cgroupsPath`` (spec_resources.py)."""
        leaf = f"{self.prefix}-{object_id}"
        if self.systemd:
            return f"{self.path(parent or DEFAULT_SLICE).rstrip('/')}/{leaf}.scope"
        return f"{(self.path(parent) or DEFAULT_PARENT).rstrip('/')}/{leaf}"

    def conmon_place(self, object_id: str, parent: str) -> str:
        """Where the monitor of ``object_id`` goes: a cgroup path
        (cgroupfs) or a scope's cgroup path (systemd)."""
        leaf = f"{self.prefix}-conmon-{object_id}"
        if self.systemd:
            base = self.path(parent if self.conmon_cgroup == POD else self.conmon_cgroup)
            return f"{base.rstrip('/')}/{leaf}.scope"
        base = self.path(parent) if self.conmon_cgroup == POD else self.conmon_cgroup
        return f"{base.rstrip('/')}/{leaf}"

    def place_conmon(self, pid: int, object_id: str, parent: str, deadline: float) -> None:
        """Move monitor ``pid`` of ``object_id`` out of the daemon's cgroup."""
        place = self.conmon_place(object_id, parent)
        if self.systemd:
            slice_name = parent if self.conmon_cgroup == POD else self.conmon_cgroup
            with systemd.Systemd() as bus:
                bus.start_scope(posixpath.basename(place), slice_name, [pid], deadline)
        else:
            tree.move(self.hierarchy, pid, place)

    def remove_conmon(self, object_id: str, parent: str, deadline: float) -> None:
        """Drop the cgroup of ``object_id``'s monitor once it has exited.
        systemd drops an empty scope by itself; a cgroupfs leaf is removed
        here, waiting a little for a monitor that is on its way out."""
        if self.systemd or not parent:
            return
        place = self.conmon_place(object_id, parent)
        until = min(deadline, time.monotonic() + CONMON_EXIT_WAIT)
        while left := [d for d in self.hierarchy.dirs(place) if tree.rmdir(d)]:
            if time.monotonic() >= until:
                log.warning("Monitor cgroup %s is still in use", left[0])
                return
            time.sleep(0.02)
