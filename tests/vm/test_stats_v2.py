"""Container and pod stats and the CRI metrics on a cgroup v2 + systemd
host, under each cgroup driver, through the CRI socket.

One pod per driver, under the kubelet's parent, with one container that
puts 50 MiB in /dev/shm (charged to its cgroup, in its working set),
writes 10 MiB into its writable layer and then burns a CPU, with a
128 MiB limit. The host's run of the suite covers the same on cgroup v1
(tests/test_stats.py); here the figures come from v2's files (cpu.stat,
memory.current, memory.stat, memory.max) and, with systemd, from the
container's scope.

Run by ``contrib/test-in-vm.sh``; skipped where systemd is not PID 1.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import pytest
from daemonlib import poll_until

from podvisor.proto import api_pb2 as api
from vm import RPC, VmNode, cgroup_hierarchy, systemd_running

MiB = 1 << 20
LIMIT = 128 * MiB
WORK = ("dd if=/dev/zero of=/dev/shm/held bs=1M count=50 2>/dev/null; "
        "dd if=/dev/zero of=/big bs=1M count=10 2>/dev/null; while :; do :; done")

pytestmark = [
    pytest.mark.skipif(not systemd_running() or cgroup_hierarchy() is None,
                       reason="needs systemd as init and cgroups (contrib/test-in-vm.sh)"),
    pytest.mark.timeout(900),
]


@dataclass
class Busy:
    node: VmNode
    pod_id: str
    container_id: str

    def stats(self) -> api.ContainerStats:
        return self.node.daemon.runtime.ContainerStats(
            api.ContainerStatsRequest(container_id=self.container_id), timeout=RPC).stats


def kubelet_parent(driver: str, uid: str) -> str:
    if driver == "systemd":
        pod_slice = f"kubepods-burstable-pod{uid.replace('-', '_')}.slice"
        return f"/kubepods.slice/kubepods-burstable.slice/{pod_slice}"
    return f"/kubepods/burstable/pod{uid}"


@pytest.fixture(scope="module")
def busy(stats_node: VmNode) -> Busy:
    node = stats_node
    uid = str(uuid.uuid4())
    config = node.pod_config("stats", uid, kubelet_parent(node.driver, uid))
    runtime = node.daemon.runtime
    pod_id = runtime.RunPodSandbox(api.RunPodSandboxRequest(config=config),
                                   timeout=RPC).pod_sandbox_id
    container_id = runtime.CreateContainer(api.CreateContainerRequest(
        pod_sandbox_id=pod_id, sandbox_config=config,
        config=node.container_config("busy", ["/bin/sh", "-c", WORK], LIMIT)),
        timeout=RPC).container_id
    runtime.StartContainer(api.StartContainerRequest(container_id=container_id), timeout=RPC)
    return Busy(node, pod_id, container_id)


def test_cpu_memory_and_the_writable_layer(busy: Busy) -> None:
    def settled() -> api.ContainerStats | None:
        stats = busy.stats()
        done = stats.memory.working_set_bytes.value > 50 * MiB and \
            stats.writable_layer.used_bytes.value > 10 * MiB
        return stats if done else None
    first = poll_until(settled, 300, interval=1, what="50 MiB held and 10 MiB written")
    memory = first.memory
    assert memory.usage_bytes.value >= memory.working_set_bytes.value
    # Against the 128 MiB limit (memory.max).
    assert 0 < memory.available_bytes.value < LIMIT - 50 * MiB
    time.sleep(2)
    second = busy.stats()
    assert second.cpu.usage_core_nano_seconds.value > first.cpu.usage_core_nano_seconds.value
    # A busy loop; emulation makes the share of a CPU it gets uneven.
    assert second.cpu.usage_nano_cores.value > 0.2e9, second.cpu


def test_pod_stats_read_the_pod_cgroup(busy: Busy) -> None:
    stats = busy.node.daemon.runtime.PodSandboxStats(
        api.PodSandboxStatsRequest(pod_sandbox_id=busy.pod_id), timeout=RPC).stats
    linux = stats.linux
    assert linux.memory.working_set_bytes.value > 50 * MiB
    assert linux.cpu.usage_core_nano_seconds.value > 0
    assert linux.process.process_count.value >= 2  # the shell and its monitor
    assert [c.attributes.id for c in linux.containers] == [busy.container_id]


def test_metrics_carry_the_v2_figures(busy: Busy) -> None:
    pods = busy.node.daemon.runtime.ListPodSandboxMetrics(
        api.ListPodSandboxMetricsRequest(), timeout=RPC).pod_metrics
    [pod] = [m for m in pods if m.pod_sandbox_id == busy.pod_id]
    [container] = pod.container_metrics
    values = {m.name: m.value.value for m in container.metrics}
    assert values["container_memory_working_set_bytes"] > 50 * MiB
    assert values["container_spec_memory_limit_bytes"] == LIMIT
    assert values["container_processes"] >= 1
    assert values["container_fs_usage_bytes"] > 10 * MiB
    assert "container_oom_events_total" in values
