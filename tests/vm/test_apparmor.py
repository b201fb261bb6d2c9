"""podvisor-default on a node that runs AppArmor (the VM's kernel does; this
host's does not): podvisor loads its own profile, containers that ask for
RuntimeDefault or for nothing run under it in enforce mode, and a write it
denies is denied, where an unconfined container's same write goes through.

The write goes to a host directory bind-mounted over /sys/kernel/debug, so
the profile's "nothing under /sys but the cgroup tree is written" is the
only thing that can refuse it: the directory is the test's own, mounted
read-write, and the unconfined control shows it writable.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from podvisor.proto import api_pb2 as api
from podvisor.workers.runtime import apparmor_default
from podvisor.workers.runtime.spec_context import apparmor_enabled
from vm import RPC, VmNode

pytestmark = [
    pytest.mark.skipif(not apparmor_enabled(), reason="needs a kernel running AppArmor"),
    pytest.mark.skipif(apparmor_default.DefaultProfile().parser() is None,
                       reason="needs apparmor_parser (contrib/test-in-vm.sh stages it)"),
    pytest.mark.timeout(900),
    # One cgroup driver is enough: AppArmor does not depend on it.
    pytest.mark.parametrize("vm_node", ["systemd"], indirect=True),
]

DENIED_DIR = "/sys/kernel/debug"


def start(node: VmNode, pod_id: str, pod: api.PodSandboxConfig, name: str,
          apparmor: api.SecurityProfile | None, shared: Path) -> str:
    config = node.container_config(name, ["/bin/sleep", "3600"])
    if apparmor is not None:
        config.linux.security_context.apparmor.CopyFrom(apparmor)
    config.mounts.append(api.Mount(container_path=DENIED_DIR, host_path=str(shared)))
    runtime = node.daemon.runtime
    container_id = runtime.CreateContainer(api.CreateContainerRequest(
        pod_sandbox_id=pod_id, sandbox_config=pod, config=config), timeout=RPC).container_id
    runtime.StartContainer(api.StartContainerRequest(container_id=container_id), timeout=RPC)
    return container_id


def exec_sh(node: VmNode, container_id: str, script: str) -> api.ExecSyncResponse:
    return node.daemon.runtime.ExecSync(api.ExecSyncRequest(
        container_id=container_id, cmd=["/bin/sh", "-c", script], timeout=240), timeout=RPC)


def main_pid_label(node: VmNode, container_id: str) -> str:
    info = json.loads(node.daemon.runtime.ContainerStatus(api.ContainerStatusRequest(
        container_id=container_id, verbose=True), timeout=RPC).info["info"])
    return Path(f"/proc/{info['pid']}/attr/current").read_text().strip("\0\n ")


def test_runtime_default_and_no_profile_run_enforced_and_a_denied_write_fails(
        vm_node: VmNode) -> None:
    node = vm_node
    uid = str(uuid.uuid4())
    parent = (f"/kubepods.slice/kubepods-besteffort.slice/"
              f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice")
    pod = node.pod_config("apparmor", uid, parent)
    runtime = node.daemon.runtime
    pod_id = runtime.RunPodSandbox(api.RunPodSandboxRequest(config=pod),
                                   timeout=RPC).pod_sandbox_id
    shared = Path(tempfile.mkdtemp(prefix="pv-aa-"))
    try:
        asked = start(node, pod_id, pod, "runtime-default", api.SecurityProfile(
            profile_type=api.SecurityProfile.RuntimeDefault), shared)
        nothing = start(node, pod_id, pod, "nothing-asked", None, shared)
        unconfined = start(node, pod_id, pod, "unconfined", api.SecurityProfile(
            profile_type=api.SecurityProfile.Unconfined), shared)
        loaded = Path(apparmor_default.LOADED_PROFILES).read_text()
        assert "podvisor-default (enforce)" in loaded.splitlines()

        for container_id in (asked, nothing):
            # The container's process, and a process exec'd into it.
            assert main_pid_label(node, container_id) == "podvisor-default (enforce)"
            seen = exec_sh(node, container_id, "cat /proc/self/attr/current")
            assert seen.exit_code == 0, seen.stderr
            assert seen.stdout.decode().strip("\0\n ") == "podvisor-default (enforce)"
            denied = exec_sh(node, container_id, f"echo x > {DENIED_DIR}/written")
            assert denied.exit_code != 0
            assert b"Permission denied" in denied.stderr
            allowed = exec_sh(node, container_id, "echo x > /written && cat /written")
            assert (allowed.exit_code, allowed.stdout) == (0, b"x\n"), allowed.stderr
        assert not (shared / "written").exists()

        assert main_pid_label(node, unconfined) == "unconfined"
        control = exec_sh(node, unconfined, f"echo x > {DENIED_DIR}/written")
        assert control.exit_code == 0, control.stderr
        assert (shared / "written").read_text() == "x\n"
    finally:
        runtime.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=RPC)
        runtime.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                 timeout=RPC)
        shutil.rmtree(shared, ignore_errors=True)
