"""A pod's cgroups under each cgroup driver, on whichever hierarchy the
host has (pure v2, hybrid or v1), checked from the host's side of the CRI
socket as the kubelet would see them.

One pod per driver, the tests below in order (emulation makes each pod
cost minutes): the pod cgroup where the kubelet expects it, a container
with a 32 MiB memory limit in its own cgroup (the devices hierarchy's
too, on v1 and hybrid), its conmon beside it, usage
read through podvisor's cgroup layer, an allocating container OOM-killed
and reported so, and nothing left after removal.

Kubelet conventions (pkg/kubelet/cm): cgroupfs parent
``/kubepods/burstable/pod<uid>``; systemd parent the slice
``kubepods-burstable-pod<uid with _ for ->.slice`` expanded, as the kubelet
sends it: the cgroup
``/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice``.

The hierarchy decides where a path shows (``hierarchy.host()``): v2 has one
directory per cgroup and one ``0::`` line in /proc/<pid>/cgroup; v1 has the
path once per mount and one line per hierarchy. The lines the kubelet and
cAdvisor go by are checked: ``memory`` (limits, usage, OOM) and
``name=systemd`` (the one systemd tracks processes by), and on hybrid
``0::`` too: systemd tracks there, and the OCI runtime (runc 1.1+, crun,
the default handler these tests run) joins it at the container's path with
either driver. The limit is ``memory.max`` on v2,
``memory.limit_in_bytes`` on v1; conmon reports the OOM kill from
``memory.events`` or ``memory.oom_control``.

Run by ``contrib/test-in-vm.sh`` (``VM_APPEND`` picks the hierarchy the VM
boots with); skipped where systemd is not PID 1: this host kind (hybrid, no
systemd) has the cgroupfs driver covered by tests/test_pods.py and
tests/test_leaks.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from daemonlib import poll_until

from podvisor.proto import api_pb2 as api
from podvisor.workers.runtime.cgroup import hierarchy
from podvisor.workers.runtime.cgroup.hierarchy import Hierarchy
from vm import (
    RPC,
    SYSTEMD_HIERARCHY,
    UNIFIED,
    VmNode,
    cgroup_hierarchy,
    cgroups_of,
    systemd_running,
)

CGROUP_ROOT = "/sys/fs/cgroup"
MEMORY_LIMIT = 32 * 1024 * 1024

pytestmark = [
    pytest.mark.skipif(not systemd_running() or cgroup_hierarchy() is None,
                       reason="needs systemd as init and cgroups (contrib/test-in-vm.sh)"),
    # A daemon's start alone takes minutes under emulation.
    pytest.mark.timeout(900),
]


@dataclass
class Pod:
    """The one pod of a driver, and what the tests made in it."""

    node: VmNode
    uid: str
    config: api.PodSandboxConfig = field(repr=False)
    path: str  # the pod's cgroup, as the kubelet expects it
    id: str = ""
    containers: list[str] = field(default_factory=list)
    _sleeper: tuple[str, int] | Exception | None = field(default=None, repr=False)
    # Where the sleeper's process was just after its start, for a failure
    # report that finds it elsewhere later.
    sleeper_cgroups: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def systemd(self) -> bool:
        return self.node.driver == "systemd"

    def container_path(self, container_id: str) -> str:
        leaf = f"podvisor-{container_id}"
        return f"{self.path}/{leaf}.scope" if self.systemd else f"{self.path}/{leaf}"

    def conmon_path(self, container_id: str) -> str:
        leaf = f"podvisor-conmon-{container_id}"
        return f"{self.path}/{leaf}.scope" if self.systemd else f"{self.path}/{leaf}"

    def run(self, name: str, command: list[str]) -> str:
        runtime = self.node.daemon.runtime
        container_id = str(runtime.CreateContainer(api.CreateContainerRequest(
            pod_sandbox_id=self.id, sandbox_config=self.config,
            config=self.node.container_config(name, command, MEMORY_LIMIT)),
            timeout=RPC).container_id)
        self.containers.append(container_id)
        runtime.StartContainer(api.StartContainerRequest(container_id=container_id),
                               timeout=RPC)
        return container_id

    def sleeper(self) -> tuple[str, int]:
        """(id, pid) of the pod's ``sleep`` container with the 32 MiB limit,
        started by the first test that needs it; its failure is every later
        test's too, without a second try."""
        if self._sleeper is None:
            try:
                container_id = self.run("sleeper", ["/bin/sleep", "3600"])
                self._sleeper = (container_id, pid_of(self.node, container_id))
                self.sleeper_cgroups = cgroups_of(self._sleeper[1])
            except Exception as exc:
                self._sleeper = exc
                raise
        if isinstance(self._sleeper, Exception):
            raise AssertionError("the sleep container did not start") from self._sleeper
        return self._sleeper


def kubelet_parent(driver: str, uid: str) -> tuple[str, str]:
    """(cgroup_parent the kubelet sends, the cgroup path it stands for)."""
    if driver == "systemd":
        # The kubelet sends the slice expanded (cgroupName.ToSystemd()).
        pod_slice = f"kubepods-burstable-pod{uid.replace('-', '_')}.slice"
        path = f"/kubepods.slice/kubepods-burstable.slice/{pod_slice}"
        return path, path
    return f"/kubepods/burstable/pod{uid}", f"/kubepods/burstable/pod{uid}"


def pid_of(node: VmNode, container_id: str) -> int:
    status = node.daemon.runtime.ContainerStatus(
        api.ContainerStatusRequest(container_id=container_id, verbose=True), timeout=RPC)
    return int(json.loads(status.info["info"])["pid"])


def host() -> Hierarchy:
    found = cgroup_hierarchy()
    assert found is not None, "no cgroup filesystem here"
    return found


def tracked(h: Hierarchy) -> list[str]:
    """The hierarchies whose line in /proc/<pid>/cgroup says where a
    process is, for the kubelet and cAdvisor: v2's one; on v1 the memory
    controller's and systemd's own, and on hybrid cgroup2 as well (systemd
    tracks processes there, and runc and crun join it with either driver)."""
    if h.is_v2:
        return [UNIFIED]
    names = ["memory", SYSTEMD_HIERARCHY]
    return [*names, UNIFIED] if h.unified is not None else names


def tracked_dirs(h: Hierarchy, path: str) -> list[str]:
    """The directories of cgroup ``path`` in the ``tracked`` hierarchies."""
    if h.is_v2:
        return h.dirs(path)
    found = [hierarchy.join(h.v1[name], path) for name in ("memory", SYSTEMD_HIERARCHY)]
    return [*found, hierarchy.join(h.unified, path)] if h.unified is not None else found


def assert_in_cgroup(pid: int, path: str) -> None:
    """``pid`` is in cgroup ``path`` in every ``tracked`` hierarchy."""
    lines = cgroups_of(pid)
    names = tracked(host())
    placed = {name: lines.get(name) for name in names}
    assert placed == dict.fromkeys(names, path), f"pid {pid} is in {lines}"


def memory_limit(path: str) -> str:
    """The memory limit of cgroup ``path`` as its file shows it."""
    h = host()
    directory = h.dir("memory", path)
    assert directory is not None, f"no memory controller on this {h.mode} host"
    name = "memory.max" if h.is_v2 else "memory.limit_in_bytes"
    return Path(directory, name).read_text().strip()


def conmons(container_id: str) -> list[int]:
    """Every podvisor-conmon process of ``container_id``: its command line
    names the id, as ``--id <id>`` or, once it set its title,
    ``podvisor-conmon <id>``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if b"podvisor-conmon" in cmdline and container_id.encode() in cmdline:
            found.append(int(entry))
    return found


def stuck(pod: Pod, container_id: str) -> str:
    """What is left of a container that would not stop, for the failure
    report: each process in its cgroup and each of its conmons, with its
    state and cgroups, and the freezer's state. On v1 ``runc kill --all``
    freezes the cgroup around the kill and, with the systemd driver, finds
    the processes to signal in the devices hierarchy only."""
    h = host()
    path = pod.container_path(container_id)
    try:
        pids = [int(p) for p in Path(h.procs_dir(path), "cgroup.procs").read_text().split()]
    except OSError as exc:
        pids, path = [], f"{path} ({exc.strerror})"
    report = [f"in {path}: {pids}"]
    if pod.systemd:
        unit = path.rsplit("/", 1)[-1]
        shown = subprocess.run(["systemctl", "show", unit, "-p", "ActiveState,DevicePolicy,"
                                "DeviceAllow,Delegate"], capture_output=True, text=True,
                               check=False).stdout.split()
        report.append(f"{unit}: {shown}")
    if pod.sleeper_cgroups and container_id == pod.sleeper()[0]:
        report.append(f"sleeper's cgroups just after its start: {pod.sleeper_cgroups}")
    freezer = h.dir("freezer", path)
    if freezer is not None:
        try:
            report.append(f"freezer.state {Path(freezer, 'freezer.state').read_text().strip()}")
        except OSError as exc:
            report.append(f"freezer.state: {exc.strerror}")
    for pid in [*pids, *conmons(container_id)]:
        try:
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            state = next((line for line in status if line.startswith("State:")), "")
            report.append(f"pid {pid} {state} cgroups {cgroups_of(pid)}")
        except OSError:
            report.append(f"pid {pid} gone")
    return "; ".join(report)


def find_cgroups(*patterns: str) -> list[str]:
    """``find /sys/fs/cgroup -name '*<pattern>*'`` for each pattern; find
    descends into every mount below it, so on v1 this is each hierarchy."""
    expression: list[str] = []
    for pattern in patterns:
        expression += [*(["-o"] if expression else []), "-name", f"*{pattern}*"]
    done = subprocess.run(["find", CGROUP_ROOT, "(", *expression, ")"], capture_output=True,
                          text=True, check=False)
    return done.stdout.split()


def units(*patterns: str) -> list[str]:
    """systemd units, loaded or not, whose names hold one of ``patterns``."""
    done = subprocess.run(["systemctl", "list-units", "--all", "--plain", "--no-legend"],
                          capture_output=True, text=True, check=False)
    return [line.split()[0] for line in done.stdout.splitlines()
            if line.split() and any(p in line.split()[0] for p in patterns)]


@pytest.fixture(scope="module")
def pod(vm_node: VmNode) -> Iterator[Pod]:
    uid = str(uuid.uuid4())
    parent, path = kubelet_parent(vm_node.driver, uid)
    config = vm_node.pod_config(f"cg-{vm_node.driver}", uid, parent)
    made = Pod(vm_node, uid, config, path)
    made.id = str(vm_node.daemon.runtime.RunPodSandbox(
        api.RunPodSandboxRequest(config=config), timeout=RPC).pod_sandbox_id)
    yield made
    vm_node.remove_all_pods()


def test_runtime_config_reports_the_driver(vm_node: VmNode) -> None:
    answer = vm_node.daemon.runtime.RuntimeConfig(api.RuntimeConfigRequest(), timeout=RPC)
    want = api.SYSTEMD if vm_node.driver == "systemd" else api.CGROUPFS
    assert answer.linux.cgroup_driver == want, api.CgroupDriver.Name(answer.linux.cgroup_driver)


def test_pod_cgroup_is_where_the_kubelet_expects_it(pod: Pod) -> None:
    h = host()
    # cgroupfs makes the pod cgroup in every mount, as runc and the
    # kubelet's cgroupfs driver do; systemd makes a slice's wherever its
    # accounting needs it, always in the hierarchies it tracks by.
    wanted = tracked_dirs(h, pod.path) if pod.systemd else h.dirs(pod.path)
    missing = [d for d in wanted if not os.path.isdir(d)]
    named = find_cgroups(pod.uid, pod.uid.replace("-", "_"))
    assert not missing, f"no {missing} on this {h.mode} host; cgroups naming the pod: {named}"
    if pod.systemd:
        slice_name = pod.path.rsplit("/", 1)[1]
        state = subprocess.run(["systemctl", "is-active", slice_name], capture_output=True,
                               text=True, check=False).stdout.strip()
        assert state == "active", f"{slice_name} is {state}"


def test_container_cgroup_and_memory_limit(pod: Pod) -> None:
    container_id, pid = pod.sleeper()
    assert_in_cgroup(pid, pod.container_path(container_id))
    assert memory_limit(pod.container_path(container_id)) == str(MEMORY_LIMIT)


def test_container_devices_cgroup_is_its_own(pod: Pod) -> None:
    # On v1 and hybrid the device rules are the devices hierarchy's: the
    # process must be in the container's own cgroup there too. crun, the
    # default handler, puts it there with either driver; runc 1.1.5 under
    # the systemd driver leaves it in the pod slice's (README, "Known limit").
    h = host()
    if h.is_v2:
        pytest.skip("v2: device rules are BPF programs on the container's own cgroup")
    container_id, pid = pod.sleeper()
    lines = cgroups_of(pid)
    assert lines.get("devices") == pod.container_path(container_id), f"pid {pid}: {lines}"


def test_conmon_cgroup(pod: Pod) -> None:
    container_id, _ = pod.sleeper()
    found = conmons(container_id)
    assert found, f"no podvisor-conmon with --id {container_id}"
    for pid in found:
        assert_in_cgroup(pid, pod.conmon_path(container_id))


def test_usage_through_the_cgroup_layer(pod: Pod) -> None:
    from podvisor.workers.runtime.cgroup import usage

    container_id, _ = pod.sleeper()
    used = usage.read(host(), pod.container_path(container_id))
    assert used.cpu_usage_ns > 0, used
    assert used.memory_usage_bytes > 0, used
    assert used.memory_limit_bytes == MEMORY_LIMIT, used
    pod_used = usage.read(host(), pod.path)
    assert pod_used.memory_usage_bytes >= used.memory_usage_bytes > 0, pod_used


def test_oom_kill_is_reported(pod: Pod) -> None:
    # A 64 MiB buffer filled from /dev/zero, against a 32 MiB limit.
    container_id = pod.run("hog", ["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=64M",
                                   "count=1"])

    def exited() -> api.ContainerStatus | None:
        status = pod.node.daemon.runtime.ContainerStatus(
            api.ContainerStatusRequest(container_id=container_id), timeout=RPC).status
        return status if status.state == api.CONTAINER_EXITED else None

    status = poll_until(exited, 240, interval=1, what="the allocating container's exit")
    assert status is not None  # poll_until returns only a truthy value
    assert (status.exit_code, status.reason) == (137, "OOMKilled"), status


def test_nothing_left_after_removal(pod: Pod) -> None:
    runtime = pod.node.daemon.runtime
    conmon_pids = {cid: conmons(cid) for cid in pod.containers}
    for container_id in pod.containers:
        try:
            runtime.StopContainer(api.StopContainerRequest(container_id=container_id,
                                                           timeout=0), timeout=RPC)
        except grpc.RpcError as exc:
            pytest.fail(f"StopContainer: {exc.code()}: {exc.details()}; "
                        f"{stuck(pod, container_id)}")
        runtime.RemoveContainer(api.RemoveContainerRequest(container_id=container_id),
                                timeout=RPC)
    runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=RPC)
    runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=RPC)
    with pytest.raises(grpc.RpcError) as gone:
        runtime.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=pod.id),
                                 timeout=RPC)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND

    names = [pod.uid, pod.uid.replace("-", "_"), *pod.containers]
    # systemd removes a stopped unit's cgroup asynchronously: a short grace.
    try:
        poll_until(lambda: not find_cgroups(*names), 30, interval=1, what="no cgroup left")
    except AssertionError:
        pytest.fail(f"left in {CGROUP_ROOT}: {find_cgroups(*names)}")
    try:
        poll_until(lambda: not any(conmons(c) for c in pod.containers), 60, interval=1,
                   what="no conmon left")
    except AssertionError:
        pytest.fail(f"conmons left: {({c: conmons(c) for c in pod.containers})} "
                    f"(before removal: {conmon_pids})")
    if pod.systemd and systemd_running():
        assert units(*names) == []
