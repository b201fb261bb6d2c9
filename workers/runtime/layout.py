"""Where the runtime pool keeps things.

Persistent (survives reboots; ``<root>/runtime``): sandbox and container
records, name reservations, the infra rootfs. Volatile (``<runroot>/
runtime``): per-pod namespace pins, /dev/shm mounts and generated files,
container bundles, conmon's exit files and sockets, locks. After a reboot
the volatile half is gone and the start-up reconcile marks what ran as
exited.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..records import RecordDir


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
    def cgroup_ledger(self) -> str:
        return os.path.join(self.root, "cgroups-created.json")

    @property
    def infra_rootfs(self) -> str:
        return os.path.join(self.root, "infra-rootfs")

    @property
    def exits_dir(self) -> str:
        return os.path.join(self.runroot, "exits")

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
