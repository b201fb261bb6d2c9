"""UpdateContainerResources and the OOM killer, through the CRI socket,
observed in the container's cgroup files (cgroup v1 on this host; the
runtime writes v2's in the VM the same way).
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from podfixtures import CGROUP_ROOT, IDLE, Node

from podvisor.proto import api_pb2 as api

pytestmark = pytest.mark.timeout(240)

MiB = 1 << 20
# 100 MiB of "y\n" in a shell variable: anonymous memory past a 20 MiB limit.
HOG = "a=$(yes | head -c 104857600); echo survived"


@pytest.fixture(scope="module")
def pod(n: Node) -> tuple[str, api.PodSandboxConfig]:
    config = n.pod_config("resize")
    return n.run_pod(config), config


def cgroup_file(pod: tuple[str, api.PodSandboxConfig], cid: str, controller: str,
                name: str) -> str:
    path = CGROUP_ROOT / controller / pod[1].linux.cgroup_parent.lstrip("/") / f"podvisor-{cid}"
    return (path / name).read_text().strip()


def start(n: Node, pod: tuple[str, api.PodSandboxConfig], name: str, script: str,
          resources: api.LinuxContainerResources) -> str:
    config = n.container_config(name, script)
    config.linux.resources.CopyFrom(resources)
    return n.run(pod[0], pod[1], config)


def update(n: Node, cid: str, resources: api.LinuxContainerResources) -> None:
    n.daemon.runtime.UpdateContainerResources(api.UpdateContainerResourcesRequest(
        container_id=cid, linux=resources), timeout=30)


def test_a_running_container_gets_its_new_limits(n: Node,
                                                  pod: tuple[str, api.PodSandboxConfig]) -> None:
    cid = start(n, pod, "grow", IDLE, api.LinuxContainerResources(
        memory_limit_in_bytes=64 * MiB, cpu_shares=1024, cpu_period=100000, cpu_quota=50000))
    n.wait_state(cid, api.CONTAINER_RUNNING)
    assert cgroup_file(pod, cid, "memory", "memory.limit_in_bytes") == str(64 * MiB)
    wanted = api.LinuxContainerResources(memory_limit_in_bytes=128 * MiB, cpu_shares=512,
                                         cpu_period=100000, cpu_quota=20000)
    update(n, cid, wanted)
    assert cgroup_file(pod, cid, "memory", "memory.limit_in_bytes") == str(128 * MiB)
    assert cgroup_file(pod, cid, "cpu", "cpu.shares") == "512"
    assert cgroup_file(pod, cid, "cpu", "cpu.cfs_quota_us") == "20000"
    # What the kubelet reads back during an in-place resize.
    assert n.status(cid).resources.linux.memory_limit_in_bytes == 128 * MiB
    assert n.status(cid).resources.linux.cpu_quota == 20000


def test_bad_values_are_refused_and_change_nothing(n: Node,
                                                   pod: tuple[str, api.PodSandboxConfig]) -> None:
    cid = start(n, pod, "steady", IDLE, api.LinuxContainerResources(
        memory_limit_in_bytes=64 * MiB, cpu_period=100000, cpu_quota=50000))
    n.wait_state(cid, api.CONTAINER_RUNNING)
    for bad in (api.LinuxContainerResources(cpu_quota=-1),
                api.LinuxContainerResources(cpu_shares=1 << 40),
                api.LinuxContainerResources(memory_limit_in_bytes=64 * MiB,
                                            memory_swap_limit_in_bytes=32 * MiB),
                api.LinuxContainerResources(cpuset_cpus="0-4096"),
                api.LinuxContainerResources(unified={"memory.max": "1"})):
        with pytest.raises(grpc.RpcError) as caught:
            update(n, cid, bad)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
    assert cgroup_file(pod, cid, "cpu", "cpu.cfs_quota_us") == "50000"
    assert n.status(cid).resources.linux.memory_limit_in_bytes == 64 * MiB
    with pytest.raises(grpc.RpcError) as missing:
        update(n, "0" * 64, api.LinuxContainerResources(cpu_shares=512))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_an_exited_container_takes_the_update_in_its_record(
        n: Node, pod: tuple[str, api.PodSandboxConfig]) -> None:
    cid = start(n, pod, "done", "true", api.LinuxContainerResources(memory_limit_in_bytes=64 * MiB))
    n.wait_state(cid, api.CONTAINER_EXITED)
    update(n, cid, api.LinuxContainerResources(memory_limit_in_bytes=96 * MiB))
    assert n.status(cid).resources.linux.memory_limit_in_bytes == 96 * MiB


def test_a_container_past_its_memory_limit_ends_oom_killed(
        n: Node, pod: tuple[str, api.PodSandboxConfig]) -> None:
    cid = start(n, pod, "hog", HOG, api.LinuxContainerResources(
        memory_limit_in_bytes=20 * MiB, memory_swap_limit_in_bytes=20 * MiB))
    status = n.wait_state(cid, api.CONTAINER_EXITED, timeout=60)
    assert (status.exit_code, status.reason) == (137, "OOMKilled")
    assert b"survived" not in Path(pod[1].log_directory, "hog.log").read_bytes()


def test_pod_resources_go_to_a_pod_cgroup_podvisor_made(
        n: Node, pod: tuple[str, api.PodSandboxConfig]) -> None:
    runtime = n.daemon.runtime
    pod_dir = CGROUP_ROOT / "memory" / pod[1].linux.cgroup_parent.lstrip("/")
    runtime.UpdatePodSandboxResources(api.UpdatePodSandboxResourcesRequest(
        pod_sandbox_id=pod[0], overhead=api.LinuxContainerResources(cpu_shares=16),
        resources=api.LinuxContainerResources(memory_limit_in_bytes=256 * MiB, cpu_shares=700,
                                              cpu_period=100000, cpu_quota=150000)),
        timeout=30)
    assert (pod_dir / "memory.limit_in_bytes").read_text().strip() == str(256 * MiB)
    cpu_dir = CGROUP_ROOT / "cpu" / pod[1].linux.cgroup_parent.lstrip("/")
    assert (cpu_dir / "cpu.shares").read_text().strip() == "700"
    assert (cpu_dir / "cpu.cfs_quota_us").read_text().strip() == "150000"
    for request, code in (
            (api.UpdatePodSandboxResourcesRequest(
                pod_sandbox_id=pod[0], resources=api.LinuxContainerResources(cpu_quota=-5)),
             grpc.StatusCode.INVALID_ARGUMENT),
            (api.UpdatePodSandboxResourcesRequest(pod_sandbox_id="e" * 64),
             grpc.StatusCode.NOT_FOUND)):
        with pytest.raises(grpc.RpcError) as caught:
            runtime.UpdatePodSandboxResources(request, timeout=30)
        assert caught.value.code() == code
    assert (cpu_dir / "cpu.cfs_quota_us").read_text().strip() == "150000"
