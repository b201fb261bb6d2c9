"""A node for pod tests: a real registry with a busybox image, a private CNI
world (bridge + host-local + portmap + loopback, host state restored after),
and a podvisor daemon wired to both; plus CRI helpers used by several tests.

The leak checks shared by the kill -9 and leak tests live here too: pods
under a cgroup parent of the test's own (``cgroup_prefix``, ``in_prefix``)
and ``leftovers``, what a daemon whose pods are all gone must not hold.
Modules that use the ``n`` and ``prefix`` fixtures import them by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import imagebuild
import pytest
import registry
from daemonlib import Daemon, poll_until, write_config
from netfixtures import CniWorld, private_cni_world

from podvisor.proto import api_pb2 as api
from podvisor.workers.storage import layer_usage

CGROUP_ROOT = Path("/sys/fs/cgroup")
# A container that idles until stopped and exits 0 on SIGTERM.
IDLE = "trap 'exit 0' TERM; sleep 86400 & wait"
MEASURER_LOCK = f"{layer_usage.LOCK_KEY}.lock"
APPLETS = ("sh", "echo", "sleep", "cat", "ls", "id", "ip", "hostname", "readlink", "true",
           "false", "env", "ps", "kill", "yes", "head", "date", "wc", "mkdir", "touch")


@dataclass
class Node:
    daemon: Daemon
    image: str
    net: CniWorld
    logs: Path
    registry: str  # host:port of the test registry (insecure, plain HTTP)

    def pod_config(self, name: str, *, host_network: bool = False, share_pid: bool = True,
                   port_mappings: list[api.PortMapping] | None = None) -> api.PodSandboxConfig:
        uid = uuid.uuid4().hex[:12]
        log_dir = self.logs / uid
        log_dir.mkdir(parents=True, exist_ok=True)
        options = api.NamespaceOption(
            network=api.NODE if host_network else api.POD,
            pid=api.POD if share_pid else api.CONTAINER)
        return api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name=name, namespace="test", uid=uid),
            hostname=name, log_directory=str(log_dir), labels={"app": name},
            port_mappings=port_mappings or [],
            linux=api.LinuxPodSandboxConfig(
                cgroup_parent=f"/podvisor-test/pod{uid}",
                security_context=api.LinuxSandboxSecurityContext(namespace_options=options)))

    def run_pod(self, config: api.PodSandboxConfig, handler: str = "",
                timeout: float = 60) -> str:
        return str(self.daemon.runtime.RunPodSandbox(
            api.RunPodSandboxRequest(config=config, runtime_handler=handler),
            timeout=timeout).pod_sandbox_id)

    def container_config(self, name: str, script: str, **extra: Any) -> api.ContainerConfig:
        return api.ContainerConfig(
            metadata=api.ContainerMetadata(name=name), image=api.ImageSpec(image=self.image),
            command=["/bin/sh", "-c", script], log_path=f"{name}.log", **extra)

    def create(self, pod_id: str, pod: api.PodSandboxConfig, config: api.ContainerConfig,
               timeout: float = 60) -> str:
        return str(self.daemon.runtime.CreateContainer(api.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=pod),
            timeout=timeout).container_id)

    def start(self, container_id: str) -> None:
        self.daemon.runtime.StartContainer(
            api.StartContainerRequest(container_id=container_id), timeout=30)

    def run(self, pod_id: str, pod: api.PodSandboxConfig, config: api.ContainerConfig) -> str:
        container_id = self.create(pod_id, pod, config)
        self.start(container_id)
        return container_id

    def status(self, container_id: str) -> api.ContainerStatus:
        return self.daemon.runtime.ContainerStatus(
            api.ContainerStatusRequest(container_id=container_id), timeout=10).status

    def wait_state(self, container_id: str, state: int, timeout: float = 15) -> api.ContainerStatus:
        def reached() -> api.ContainerStatus | None:
            status = self.status(container_id)
            return status if status.state == state else None
        return poll_until(reached, timeout, what=f"container {container_id[:12]} in state "
                          f"{api.ContainerState.Name(state)}")

    def pod_status(self, pod_id: str, verbose: bool = False) -> api.PodSandboxStatusResponse:
        return self.daemon.runtime.PodSandboxStatus(
            api.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=verbose), timeout=10)

    def exec(self, container_id: str, *cmd: str, timeout: int = 10) -> api.ExecSyncResponse:
        return self.daemon.runtime.ExecSync(api.ExecSyncRequest(
            container_id=container_id, cmd=list(cmd), timeout=timeout), timeout=timeout + 20)

    def remove_pod(self, pod_id: str) -> None:
        self.daemon.runtime.StopPodSandbox(
            api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        self.daemon.runtime.RemovePodSandbox(
            api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)

    def remove_all_pods(self) -> None:
        with contextlib.suppress(grpc.RpcError):
            for item in self.daemon.runtime.ListPodSandbox(
                    api.ListPodSandboxRequest(), timeout=30).items:
                self.remove_pod(item.id)


def log_lines(path: Path) -> list[tuple[str, str, str]]:
    """(stream, tag, text) of each CRI log record, timestamps checked."""
    out = []
    for line in path.read_text().splitlines():
        stamp, stream, tag, text = [*line.split(" ", 3), ""][:4]
        assert stamp.endswith("Z") and "T" in stamp, line
        out.append((stream, tag, text))
    return out


def cgroup_exists(parent: str) -> bool:
    return any(os.path.isdir(f"/sys/fs/cgroup/{c}{parent}")
               for c in ("pids", "memory", "cpu", "devices", "freezer"))


def hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy (not the cpu,cpuacct aliases)."""
    return sorted(h for h in CGROUP_ROOT.iterdir() if h.is_dir() and not h.is_symlink())


def cgroup_dirs(prefix: str) -> list[str]:
    """Every cgroup directory at or below ``prefix``, in every hierarchy."""
    found = []
    for hierarchy in hierarchies():
        for dirpath, _dirs, _files in os.walk(hierarchy / prefix.lstrip("/")):
            found.append(dirpath)
    return sorted(found)


def remove_cgroups(prefix: str) -> None:
    """rmdir what a test left under ``prefix``, deepest first."""
    for hierarchy in hierarchies():
        for dirpath, _dirs, _files in os.walk(hierarchy / prefix.lstrip("/"), topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


@contextlib.contextmanager
def cgroup_prefix() -> Iterator[str]:
    """A cgroup parent of the caller's own, and whatever is left below it
    removed at the end, fixed or not."""
    prefix = f"/pvleak-{uuid.uuid4().hex[:10]}"
    try:
        yield prefix
    finally:
        remove_cgroups(prefix)


def leftovers(daemon: Daemon, prefix: str) -> list[str]:
    """What a daemon whose pods are all removed must not hold any more: pod
    cgroups under ``prefix``, lock files, name reservations, records and
    the per-pod and per-container files of the runtime, net and storage
    pools. Lock files of the image's layers stay: the image does; so does
    the storage pool's one measurer lock (it lives as long as the pool)."""
    root, run = daemon.base / "root", daemon.runroot
    found = [f"cgroup {d}" for d in cgroup_dirs(prefix)]
    for state in (root / "runtime/sandboxes", root / "runtime/containers",
                  root / "runtime/names", run / "runtime/locks", run / "runtime/cgroups",
                  run / "runtime/pods", run / "runtime/bundles", run / "runtime/exits",
                  run / "c", root / "net/pods", run / "net/locks", run / "netns",
                  root / "storage/containers", run / "storage/mounts", run / "storage/usage"):
        if state.is_dir():
            found += [str(p) for p in sorted(state.iterdir())]
    layers_dir = root / "storage/layers"
    layers = {p.name for p in layers_dir.iterdir()} if layers_dir.is_dir() else set()
    locks_dir = run / "storage/locks"
    for lock in sorted(locks_dir.iterdir()) if locks_dir.is_dir() else []:
        if lock.name == MEASURER_LOCK:
            continue
        if lock.name.removeprefix("layer-").removesuffix(".lock") not in layers:
            found.append(str(lock))
    return found


def in_prefix(n: Node, name: str, prefix: str, *, share_pid: bool = True
              ) -> api.PodSandboxConfig:
    """A pod of ``n`` whose cgroup parent is ``<prefix>/pod<uid>``."""
    config = n.pod_config(name, share_pid=share_pid)
    config.linux.cgroup_parent = f"{prefix}/pod{config.metadata.uid}"
    return config


@pytest.fixture
def n() -> Iterator[Node]:
    """A node of its own for each test (two runtime and storage workers)."""
    with node(workers={"runtime": 2, "storage": 2}) as here:
        yield here


@pytest.fixture
def prefix() -> Iterator[str]:
    """The test's own cgroup parent (``cgroup_prefix``)."""
    with cgroup_prefix() as made:
        yield made


@contextlib.contextmanager
def node(workers: dict[str, Any] | None = None, pause_image: bool = False,
         config: str = "") -> Iterator[Node]:
    """A registry, a CNI world and a daemon; everything undone on exit.

    ``pause_image``: configure ``test/pause:1`` (busybox running ``sleep``)
    as the daemon's pause image instead of the built-in catatonit rootfs.
    ``config``: more TOML for the daemon's config (other sections than
    ``[podvisor.image]``).
    """
    work = Path(tempfile.mkdtemp(prefix="pvn-"))
    base = Path(tempfile.mkdtemp(prefix="pv-"))
    reg = registry.start_registry(work / "registry")
    try:
        image = imagebuild.build_image([imagebuild.busybox_layer(APPLETS)])
        imagebuild.Pusher(reg.host).push_image("test/busybox", "latest", image)
        pause = ""
        if pause_image:
            imagebuild.Pusher(reg.host).push_image("test/pause", "1", imagebuild.build_image(
                [imagebuild.busybox_layer(("sleep",))], cmd=["/bin/sleep", "86400"]))
            pause = f'pause_image = "{reg.host}/test/pause:1"\n'
        (base / "registries.conf").write_text(
            f'[[registry]]\nlocation = "{reg.host}"\ninsecure = true\n')
        write_config(base, workers or {"runtime": 2, "storage": 2},
                     extra=f'[podvisor.image]\nregistries_conf = "{base}/registries.conf"\n'
                           f'signature_policy = "{base}/no-policy.json"\n{pause}{config}')
        # The CNI world's exit (DEL of what is left, bridge, iptables) runs
        # after the daemon and its containers are gone.
        with private_cni_world(base) as world:
            world.write_conflist()
            daemon = Daemon(base, dict(os.environ)).start()
            try:
                ref = f"{reg.host}/test/busybox:latest"
                daemon.images.PullImage(api.PullImageRequest(image=api.ImageSpec(image=ref)),
                                        timeout=120)
                here = Node(daemon, ref, world, work / "logs", reg.host)
                yield here
                here.remove_all_pods()
            finally:
                daemon.stop()
                daemon.remove_leftovers()
    finally:
        reg.stop()
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
