"""``conmon_cgroup`` naming one place for every monitor, in the VM: a slice
(``system.slice``) with the systemd driver, a cgroup path with cgroupfs.
The default, ``pod``, is test_pod_cgroups.py's."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest
from daemonlib import poll_until

from podvisor.proto import api_pb2 as api
from podvisor.workers.runtime.cgroup.hierarchy import host
from vm import (
    NAMED_CONMON_CGROUP,
    RPC,
    SYSTEMD_HIERARCHY,
    UNIFIED,
    VmNode,
    cgroups_of,
    systemd_running,
)

pytestmark = [
    pytest.mark.skipif(not systemd_running(),
                       reason="needs systemd as init (contrib/test-in-vm.sh)"),
    pytest.mark.timeout(900),
]


def tracking_cgroup(pid: int) -> str:
    """Where ``pid`` is, by the hierarchy that tracks processes: systemd's
    named one on v1 and hybrid, the unified one on v2."""
    lines = cgroups_of(pid)
    return lines.get(SYSTEMD_HIERARCHY, lines.get(UNIFIED, ""))


def unit_state(name: str) -> str:
    return subprocess.run(["systemctl", "is-active", name], capture_output=True, text=True,
                          check=False).stdout.strip()


def test_every_monitor_goes_below_the_named_place_and_leaves_with_its_container(
        named_conmon_node: VmNode) -> None:
    node = named_conmon_node
    runtime = node.daemon.runtime
    uid = str(uuid.uuid4())
    parent = (f"/kubepods.slice/kubepods-besteffort.slice/"
              f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice"
              if node.driver == "systemd" else f"/kubepods/besteffort/pod{uid}")
    config = node.pod_config(f"conmon-{node.driver}", uid, parent)
    pod_id = runtime.RunPodSandbox(api.RunPodSandboxRequest(config=config),
                                   timeout=RPC).pod_sandbox_id
    container_id = runtime.CreateContainer(api.CreateContainerRequest(
        pod_sandbox_id=pod_id, sandbox_config=config,
        config=node.container_config("sleeper", ["/bin/sleep", "3600"])),
        timeout=RPC).container_id
    runtime.StartContainer(api.StartContainerRequest(container_id=container_id), timeout=RPC)
    info = json.loads(runtime.ContainerStatus(api.ContainerStatusRequest(
        container_id=container_id, verbose=True), timeout=RPC).info["info"])

    place = NAMED_CONMON_CGROUP[node.driver]
    base = f"/{place}" if node.driver == "systemd" else place
    leaf = f"podvisor-conmon-{container_id}" + (".scope" if node.driver == "systemd" else "")
    assert tracking_cgroup(int(info["conmon_pid"])) == f"{base}/{leaf}"

    runtime.StopContainer(api.StopContainerRequest(container_id=container_id, timeout=0),
                          timeout=RPC)
    runtime.RemoveContainer(api.RemoveContainerRequest(container_id=container_id), timeout=RPC)
    dirs = host().dirs(f"{base}/{leaf}")
    poll_until(lambda: not any(os.path.isdir(d) for d in dirs), 30, interval=0.5,
               what=f"{leaf} removed")
    if node.driver == "systemd":
        assert unit_state(leaf) in ("inactive", "unknown", "")
    runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=RPC)
    runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=RPC)
