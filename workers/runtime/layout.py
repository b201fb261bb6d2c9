"""Where the runtime pool keeps things.

Persistent (survives reboots; ``<root>/runtime``): sandbox and container
records, name reservations, the infra rootfs. Volatile (``<runroot>/
runtime``): per-pod namespace pins, /dev/shm mounts and generated files,
container bundles, conmon's exit files and sockets, locks, and the records
of the cgroup directories podvisor made (cgroups do not survive a reboot
either). After a reboot the volatile half is gone and the start-up
reconcile marks what ran as exited.

Locks (workers/locks.py) are per object: ``<sandbox id>``, ``<container
id>``, ``name-<name>``, ``cgroup-<path>``; each one's file goes when its
object does (its record deleted, its reservation released).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from ..locks import ObjectLock, locked
from ..records import RecordDir
from . import names
from .cgroup.pods import Owned


@dataclass(frozen=True)
class Layout:
    root: str
    runroot: str
    # conmon's state dirs hold unix sockets, whose paths are limited to 107
    # bytes: they sit right under the daemon's runroot with a short name.
    state_root: str

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Layout:
        return cls(os.path.join(settings["root"], "runtime"),
                   os.path.join(settings["runroot"], "runtime"),
                   os.path.join(settings["runroot"], "c"))

    @property
    def daemon_root(self) -> str:
        """podvisor's own root, above which nothing is ever chmodded."""
        return os.path.dirname(self.root)

    @property
    def daemon_runroot(self) -> str:
        return os.path.dirname(self.runroot)

    def idmap_dir(self, object_id: str) -> str:
        """Where a container of a user-namespaced pod has its volumes'
        idmapped mounts attached (one per CRI mount, by index); never under
        its bundle, whose removal deletes a tree."""
        return os.path.join(self.runroot, "idmap", object_id)

    @property
    def sandboxes(self) -> RecordDir:
        return RecordDir(os.path.join(self.root, "sandboxes"))

    @property
    def containers(self) -> RecordDir:
        return RecordDir(os.path.join(self.root, "containers"))

    @property
    def names_dir(self) -> str:
        return os.path.join(self.root, "names")

    @property
    def locks_dir(self) -> str:
        return os.path.join(self.runroot, "locks")

    @property
    def cgroups(self) -> Owned:
        return Owned(RecordDir(os.path.join(self.runroot, "cgroups")), self.locks_dir)

    def pod_lock(self, sandbox_id: str, deadline: float) -> AbstractContextManager[ObjectLock]:
        """The sandbox's lock; its file goes once the sandbox has no record."""
        return locked(self.locks_dir, sandbox_id, deadline, f"pod sandbox {sandbox_id}",
                      gone=lambda: self.sandboxes.load(sandbox_id) is None)

    def container_lock(self, container_id: str,
                       deadline: float) -> AbstractContextManager[ObjectLock]:
        """The container's lock; its file goes once the container has no record."""
        return locked(self.locks_dir, container_id, deadline, f"container {container_id}",
                      gone=lambda: self.containers.load(container_id) is None)

    def name_lock(self, name: str, kind: str,
                  deadline: float) -> AbstractContextManager[ObjectLock]:
        """The lock of a CRI name; its file goes once nobody reserves the name."""
        return locked(self.locks_dir, f"name-{name}", deadline, f"{kind} name {name}",
                      gone=lambda: names.holder(self.names_dir, name) is None)

    def on_record(self, object_id: str) -> bool:
        """Is ``object_id`` a pod or container on record? An unreadable
        record counts, as does an id no record could have."""
        try:
            return (self.sandboxes.load(object_id) is not None
                    or self.containers.load(object_id) is not None)
        except ValueError:  # RecordCorrupt, or an id no record could have
            return True

    @property
    def legacy_cgroup_ledger(self) -> str:
        """Where podvisor before per-directory cgroup records listed every
        cgroup directory it made (``pods.import_ledger``)."""
        return os.path.join(self.root, "cgroups-created.json")

    @property
    def infra_rootfs(self) -> str:
        return os.path.join(self.root, "infra-rootfs")

    @property
    def exits_dir(self) -> str:
        return os.path.join(self.runroot, "exits")

    @property
    def journal_dir(self) -> str:
        return os.path.join(self.runroot, "changes")

    def pod_dir(self, sandbox_id: str) -> str:
        return os.path.join(self.runroot, "pods", sandbox_id)

    def state_dir(self, container_id: str) -> str:
        return os.path.join(self.state_root, container_id)

    @property
    def logs_dir(self) -> str:
        """Where container logs go when the kubelet names no log directory."""
        return os.path.join(self.runroot, "logs")

    def default_log(self, container_id: str) -> str:
        return os.path.join(self.logs_dir, f"{container_id}.log")

    def bundle_dir(self, container_id: str) -> str:
        return os.path.join(self.runroot, "bundles", container_id)
