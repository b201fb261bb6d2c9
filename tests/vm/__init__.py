"""Tests on a real systemd host: the VM of ``contrib/test-in-vm.sh``
(software-emulated, 15-80x slower than this host), booted pure cgroup v2,
hybrid or v1 (its ``VM_APPEND``).

This package holds what its modules share (``import vm``: tests/ is on the
path): a daemon started with emulation-long waits and a node to make pods
on; the fixtures are in conftest.py.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from daemonlib import PODVISOR, Daemon

from podvisor.proto import api_pb2 as api
from podvisor.workers.runtime.cgroup import hierarchy
from podvisor.workers.runtime.cgroup.hierarchy import Hierarchy

# Long enough for everything in the VM: a worker's imports alone take tens
# of seconds there, a container start a few.
DAEMON_START = 600.0
RPC = 300.0
APPLETS = ("sh", "sleep", "dd", "cat", "true")
DRIVERS = ("cgroupfs", "systemd")
# conmon_cgroup naming one place for every monitor, per driver.
NAMED_CONMON_CGROUP = {"cgroupfs": "/podvisor-conmons", "systemd": "system.slice"}
VM_WORKERS = {"image": 1, "storage": 1, "runtime": 1, "net": 1, "start_timeout": 300.0,
              "heartbeat_interval": 1.0, "heartbeat_liveness": 30}
# Host network, no shared PID namespace (so no infra process): the fewest
# processes a pod can have. The kubelet sends the same options for the pod
# and each of its containers.
NAMESPACES = api.NamespaceOption(network=api.NODE, pid=api.CONTAINER, ipc=api.POD)


SYSTEMD_HIERARCHY = "name=systemd"
UNIFIED = ""  # the cgroup2 hierarchy's name in /proc/<pid>/cgroup ("0::/a/b")


def cgroups_of(pid: int) -> dict[str, str]:
    """The cgroup of ``pid`` in each hierarchy, from /proc/<pid>/cgroup:
    ``memory``, ``cpu``, ``cpuacct`` (a combined line counts for each of
    its controllers), ``name=systemd``, ``""`` for cgroup2."""
    found: dict[str, str] = {}
    with open(f"/proc/{pid}/cgroup", encoding="ascii") as f:
        for line in f:
            number, names, path = line.rstrip("\n").split(":", 2)
            for name in names.split(",") if number != "0" else [UNIFIED]:
                found[name] = path
    return found


def systemd_running() -> bool:
    return os.path.isdir("/run/systemd/system")


@functools.cache
def cgroup_hierarchy() -> Hierarchy | None:
    """This host's cgroup mounts (podvisor's own reading of them), or None
    where there is no cgroup filesystem."""
    try:
        return hierarchy.host()
    except (OSError, hierarchy.NoCgroups):
        return None


def describe_hierarchy() -> str:
    """One line naming the hierarchy: which one a VM run booted is in its
    output."""
    h = cgroup_hierarchy()
    if h is None:
        return "cgroups: none"
    mounts = ", ".join(sorted({os.path.basename(m) for m in h.v1.values()}))
    return (f"cgroups: {h.mode}; v1 hierarchies: {mounts or '-'}; "
            f"cgroup2: {h.unified or '-'}; controllers: {' '.join(sorted(h.controllers))}")


@dataclass
class VmNode:
    daemon: Daemon = field(repr=False)  # its env would fill a failure report
    driver: str
    image: str
    logs: Path

    def pod_config(self, name: str, uid: str, cgroup_parent: str) -> api.PodSandboxConfig:
        log_dir = self.logs / uid
        log_dir.mkdir(parents=True, exist_ok=True)
        return api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name=name, namespace="vm-test", uid=uid),
            hostname=name, log_directory=str(log_dir),
            linux=api.LinuxPodSandboxConfig(
                cgroup_parent=cgroup_parent,
                security_context=api.LinuxSandboxSecurityContext(namespace_options=NAMESPACES)))

    def container_config(self, name: str, command: list[str],
                         memory_limit: int = 0) -> api.ContainerConfig:
        resources = api.LinuxContainerResources(memory_limit_in_bytes=memory_limit)
        security = api.LinuxContainerSecurityContext(namespace_options=NAMESPACES)
        return api.ContainerConfig(
            metadata=api.ContainerMetadata(name=name), image=api.ImageSpec(image=self.image),
            command=command, log_path=f"{name}.log",
            linux=api.LinuxContainerConfig(resources=resources, security_context=security))

    def remove_all_pods(self) -> None:
        runtime = self.daemon.runtime
        with contextlib.suppress(grpc.RpcError):
            for item in runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=RPC).items:
                runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=item.id),
                                       timeout=RPC)
                runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=item.id),
                                         timeout=RPC)


def start_daemon(daemon: Daemon, timeout: float) -> None:
    """``Daemon.start`` with emulation-long waits, giving up as soon as the
    daemon exits (a refused configuration must not cost the whole wait)."""
    daemon.socket.unlink(missing_ok=True)
    (daemon.runroot / "health.addr").unlink(missing_ok=True)
    with open(daemon.log_path, "ab") as log:
        daemon.proc = subprocess.Popen(
            [PODVISOR, "--config", str(daemon.config_path),
             "--config-dir", str(daemon.base / "conf.d"), "run"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=daemon.env,
            start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        if daemon.proc.poll() is not None:
            raise AssertionError(f"podvisor exited with {daemon.proc.returncode}:\n"
                                 f"{log_tail(daemon)}")
        with contextlib.suppress(Exception):  # no health address yet, or mid-restart
            if daemon.socket.exists() and daemon.all_ready():
                break
        if time.monotonic() > deadline:
            raise AssertionError(f"podvisor not ready within {timeout:.0f}s:\n"
                                 f"{log_tail(daemon)}")
        time.sleep(1)
    daemon.channel = grpc.insecure_channel(f"unix:{daemon.socket}")


def log_tail(daemon: Daemon, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(daemon.log_path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def keep_log(daemon: Daemon, name: str) -> None:
    """Copy the daemon's log where the VM's caller keeps it (the share)."""
    target = os.environ.get("PODVISOR_TEST_LOGS")
    if target:
        os.makedirs(target, exist_ok=True)
        with contextlib.suppress(OSError):
            shutil.copyfile(daemon.log_path, os.path.join(target, f"{name}.log"))


def remove_empty_cgroups(*paths: str) -> None:
    """rmdir cgroup directories (deepest first), in every mount, that a
    daemon created as parents and left empty; anything busy or populated
    stays."""
    h = cgroup_hierarchy()
    for path in paths:
        for directory in h.dirs(path) if h is not None else []:
            with contextlib.suppress(OSError):
                os.rmdir(directory)
